"""Every code block of the README runs as written.

A ``make run``-style hub (``tidings serve --dev``) serves the blocks that are
clients; the blocks run in order in one directory, so the TOML block is the
``tidings.toml`` the others read. Addresses are the only thing changed: the hub
runs on free ports and the tests' own Redis replaces 127.0.0.1:6379, so nothing
here depends on what else listens on this machine.

- ``toml``: saved as ``tidings.toml``; it must load (and warn about nothing).
- ``sh``: each line must exit 0; ``tidings serve`` must reach "serving", then it is
  stopped; ``make`` lines are what this suite and its hub already are.
- ``python``: must exit 0, or still be serving when the block ends with
  ``serve_forever()``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings import load_config

from .conftest import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 30.0

BLOCKS = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    """Free ports for the hubs the blocks start themselves (config file < environment)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TIDINGS_PORT"] = str(free_port())
    env["TIDINGS_HTTP_API_PORT"] = str(free_port())
    return env


@pytest.fixture(scope="module")
def dev_hub(workdir: Path, environment: dict[str, str]) -> Iterator[tuple[int, int]]:
    """``make run``'s hub: ``tidings serve --dev``, on free ports."""
    port, api_port = free_port(), free_port()
    with subprocess.Popen(
        [str(BIN / "tidings"), "serve", "--dev", "--port", str(port), "--api-port", str(api_port)],
        cwd=workdir,
        env={k: v for k, v in environment.items() if not k.startswith("TIDINGS_")},
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            _wait_for_serving(process)
            yield port, api_port
        finally:
            process.terminate()


def _wait_for_serving(process: subprocess.Popen[str], count: int = 1) -> None:
    """Read the server's output until ``count`` processes said they are serving."""
    assert process.stderr is not None
    # A server that goes silent is killed: its output ends, and so does the loop.
    watchdog = threading.Timer(TIMEOUT, process.kill)
    watchdog.start()
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if " serving " in line:
                count -= 1
                if count == 0:
                    return
    finally:
        watchdog.cancel()
    raise AssertionError("no 'serving' line:\n" + "".join(seen))


def _addressed(block: str, ports: tuple[int, int], redis_url: str) -> str:
    port, api_port = ports
    return (
        block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        .replace("127.0.0.1:9000", f"127.0.0.1:{api_port}")
        .replace("redis://127.0.0.1:6379/0", redis_url)
    )


def test_the_readme_has_blocks_of_every_kind_this_test_runs() -> None:
    assert {lang for lang, _ in BLOCKS} >= {"toml", "sh", "python"}


def test_every_readme_block_runs_as_written(
    workdir: Path,
    environment: dict[str, str],
    dev_hub: tuple[int, int],
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    blocks = [(lang, _addressed(body, dev_hub, redis_server.url)) for lang, body in BLOCKS]
    # The TOML block is the tidings.toml that blocks before it in the text read too.
    for lang, body in blocks:
        if lang == "toml":
            (workdir / "tidings.toml").write_text(body)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                load_config(workdir / "tidings.toml", env={})
    for number, (lang, body) in enumerate(blocks):
        if lang == "sh":
            for line in body.splitlines():
                _run_shell_line(line, workdir, environment)
        elif lang == "python":
            _run_python(number, body, workdir, environment)


def _run_shell_line(line: str, workdir: Path, env: dict[str, str]) -> None:
    command = re.sub(r"\s+#\s.*$", "", line).strip()
    if not command or command.startswith("make "):
        return  # make run is the dev_hub fixture; make test is this suite
    if command.startswith("tidings serve"):
        workers = re.search(r"--workers (\d+)", command)
        with subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=workdir, env=env, stderr=subprocess.PIPE,
            text=True,
        ) as process:  # fmt: skip
            try:
                _wait_for_serving(process, int(workers.group(1)) if workers else 1)
            finally:
                process.terminate()
                try:
                    process.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    message = f"{command}: still running {TIMEOUT} s after SIGTERM"
                    raise AssertionError(message) from None
        return
    result = subprocess.run(
        ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{command}\n{result.stderr}"


def _run_python(number: int, body: str, workdir: Path, env: dict[str, str]) -> None:
    script = workdir / f"block{number}.py"
    script.write_text(body)
    serving = "serve_forever()" in body
    with subprocess.Popen(
        [sys.executable, "-W", "error::RuntimeWarning", str(script)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            _, stderr = process.communicate(timeout=5.0 if serving else TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()
            _, stderr = process.communicate(timeout=TIMEOUT)
            assert serving, f"block {number} did not end:\n{body}\n{stderr}"
            assert "Traceback" not in stderr, f"block {number}:\n{body}\n{stderr}"
            return
    assert process.returncode == 0, f"block {number} failed:\n{body}\n{stderr}"
