"""The documentation site builds without a warning, and the code blocks of the README and
of every page of ``docs/`` run as written.

Each page runs in a directory of its own, against one ``tidings serve --dev``
hub (what ``make run`` starts) on free ports, with the tests' own Redis; the addresses
``127.0.0.1:8000``, ``127.0.0.1:9000`` and the brokers' addresses (``snippets.BROKER_URLS``)
in the text are replaced by theirs (``tests/snippets.py``). Blocks run in the order of the page:

- ``toml``: a tidings configuration, saved as ``tidings.toml`` before anything on the page
  runs; it must load without a warning.
- ``sh``: each command must exit 0 (``\\`` continues a line). A server (``tidings serve``,
  ``uvicorn``) must come up, then it is stopped; ``make`` lines are skipped (``make run``
  is the hub above, ``make test`` this suite).
- ``python``: must exit 0, or still be serving after 5 s when it ends with
  ``serve_forever()``.

Other languages (``js``, ``html``, ``nginx``, ``yaml``, ``text``, ...) are never run:
``KNOWN_LANGUAGES`` lists them, and a block in any other language (``bash``, ``py``,
none at all) fails the test, so that nothing escapes it by a spelling.

Markers change what happens to one block. A marker is an HTML comment alone on the line
right above the opening fence (visible in the Markdown, not on the site); several are
separated by ``;``. Use them sparingly:

- ``<!-- snippet: file NAME -->``: write the block to ``NAME`` (before anything runs)
  instead of running it: a module that a later command imports, a config of another name
  (in any language: a ``json`` or ``yaml`` config too).
- ``<!-- snippet: needs tidings.DOTTED.NAME -->``: run (or write) the block only when
  that name exists; the page's blocks that need a name not there yet are reported as
  skipped.
- ``<!-- snippet: skip REASON -->``: never run it; the reason is required.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidings.app.config import read_config

from .snippets import (
    BIN,
    BROKER_URLS,
    Block,
    addressed,
    blocks,
    dev_hub,
    run_python,
    run_shell_line,
    shell_lines,
    snippet_environment,
)

pytestmark = pytest.mark.slow  # left out of `make check`

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

RUN = {"python", "sh", "toml"}
KNOWN_LANGUAGES = RUN | {"js", "html", "nginx", "yaml", "json", "text", "ini", "promql"}
RUNNABLE = [page for page in PAGES if any(b.lang in RUN for b in blocks(page.read_text()))]


@dataclass(frozen=True)
class Plan:
    """What the markers of a block say."""

    file: str = ""
    needs: str = ""
    skip: str = ""


def plan(block: Block) -> Plan:
    fields: dict[str, str] = {}
    for marker in filter(None, (part.strip() for part in block.marker.split(";"))):
        key, _, value = marker.partition(" ")
        assert key in Plan.__dataclass_fields__, f"line {block.line}: unknown marker {key!r}"
        assert value.strip(), f"line {block.line}: marker {key!r} needs a value"
        fields[key] = value.strip()
    return Plan(**fields)


def exists(dotted: str) -> bool:
    """Whether ``tidings.x.y`` names something (module, then attributes)."""
    module, *attributes = dotted.split(".")
    target: object = importlib.import_module(module)
    for name in attributes:
        if not hasattr(target, name):
            return False
        target = getattr(target, name)
    return True


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    return snippet_environment()


@pytest.fixture(scope="module")
def hub_ports(
    tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]
) -> Iterator[tuple[int, int]]:
    with dev_hub(tmp_path_factory.mktemp("docs-hub"), environment) as ports:
        yield ports


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for page in ("reference/options", "reference/server-api", "reference/cli"):
        assert (tmp_path / "site" / page / "index.html").is_file(), f"{page} not generated"


def test_every_block_is_in_a_known_language_with_valid_markers() -> None:
    for page in PAGES:
        for block in blocks(page.read_text()):
            where = f"{page.relative_to(ROOT)}:{block.line}"
            assert block.lang in KNOWN_LANGUAGES, f"{where}: language {block.lang!r}"
            plan(block)


def test_the_docs_have_blocks_of_every_kind_this_test_runs() -> None:
    langs = {block.lang for page in PAGES for block in blocks(page.read_text())}
    assert langs >= RUN


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(page.relative_to(ROOT)) for page in RUNNABLE])
def test_every_block_runs_as_written(
    page: Path,
    tmp_path: Path,
    environment: dict[str, str],
    hub_ports: tuple[int, int],
    request: pytest.FixtureRequest,
) -> None:
    # The tests' own broker servers, started (and flushed) for the pages that name them.
    text = page.read_text()
    fixtures = dict(zip(BROKER_URLS, ("redis_url", "redis_cluster_url", "nats_url"), strict=True))
    brokers = {url: request.getfixturevalue(fixtures[url]) for url in BROKER_URLS if url in text}
    missing: set[str] = set()
    steps: list[tuple[Block, Plan]] = []
    for block in blocks(text):
        what = plan(block)
        if block.lang not in RUN and not what.file:
            continue
        if what.needs and not exists(what.needs):
            missing.add(what.needs)
            continue
        if what.skip:
            continue
        block = Block(block.lang, addressed(block.body, hub_ports, brokers), "", block.line)
        steps.append((block, what))
    # Files first: the configuration and the modules that blocks before them use too.
    for block, what in steps:
        if what.file or block.lang == "toml":
            path = tmp_path / (what.file or "tidings.toml")
            path.write_text(block.body)
            if block.lang == "toml" and not what.file:  # the page's tidings.toml
                assert read_config(path, env={})[1] == [], f"line {block.line}: warnings"
            elif block.lang == "toml":
                read_config(path, env={})  # loads, warnings allowed (a Centrifugo file)
    for block, what in steps:
        if what.file:
            continue
        if block.lang == "sh":
            for command in shell_lines(block.body):
                run_shell_line(command, tmp_path, environment)
        elif block.lang == "python":
            script = tmp_path / f"block_{block.line}.py"
            script.write_text(block.body)
            run_python(script, tmp_path, environment)
    if missing:
        pytest.skip(f"blocks that need {', '.join(sorted(missing))}, not there yet")
