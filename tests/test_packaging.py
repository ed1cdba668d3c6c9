"""The sdist and the wheel, built as a user would (``python -m build``) from a copy of this
working tree: the wheel carries the web apps and the right version, the sdist the web
sources, the tests and the LICENSE, and a build that cannot make the apps says how to fix it.

``python -m build`` builds the wheel from the sdist, so the wheel checked here is also the
proof that an sdist makes a complete wheel. The copy keeps the apps ``make`` built (with
their times, so setup.py rebuilds them only when ``web/`` is newer) and leaves out
node_modules and the virtualenvs.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tidings import __version__

pytestmark = pytest.mark.slow  # left out of `make check`

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "node_modules",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".*_cache",
    "artifacts",
    "corpus",
)


def copy_tree(to: Path) -> Path:
    shutil.copytree(ROOT, to, ignore=LEFT_OUT, symlinks=True)
    return to


def build(tree: Path, out: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    out = work / "dist"
    build(copy_tree(work / "tidings"), out)
    return out


def only(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


def test_the_wheel_has_the_web_apps_the_license_and_the_package_version(dist: Path) -> None:
    wheel = only(dist, "tidings-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"tidings-{__version__}.dist-info/METADATA").decode()
    assert {"tidings/web/demo/index.html", "tidings/web/admin/index.html"} <= names
    assert f"tidings-{__version__}.dist-info/licenses/LICENSE" in names
    assert email.parser.Parser().parsestr(metadata)["Version"] == __version__
    assert not any(name.startswith("tests/") for name in names)


def test_the_sdist_has_the_web_sources_the_tests_and_the_license(dist: Path) -> None:
    sdist = only(dist, "tidings-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    assert {"web/package.json", "web/package-lock.json", "LICENSE", "setup.py"} <= names
    assert {"tests/conftest.py", "tests/test_packaging.py"} <= names
    assert not [name for name in names if "node_modules" in name.split("/")]


def test_without_npm_and_without_built_apps_the_build_says_how_to_fix_it(
    tmp_path: Path,
) -> None:
    tree = copy_tree(tmp_path / "tidings")
    shutil.rmtree(tree / "src" / "tidings" / "web", ignore_errors=True)
    no_npm = tmp_path / "bin"  # a PATH where npm cannot be found
    no_npm.mkdir()
    env = {**os.environ, "PATH": str(no_npm)}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        build(tree, tmp_path / "dist", env)
    output = failed.value.stdout.decode() + failed.value.stderr.decode()
    assert "npm was not found: install Node >= 20.19" in output
    assert "TIDINGS_SKIP_WEB=1" in output
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
