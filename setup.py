"""Build hook: the web apps (demo chat, admin UI) go into every sdist and wheel.

They are vite builds from ``web/`` into ``src/tidings/web/<app>/`` (package data, not
committed). ``make`` builds them in a checkout; this hook does the same for
``python -m build`` and ``pip install`` from a clone or an sdist, so a wheel never ships
without them by accident. The rest of the metadata is in pyproject.toml.

- apps missing or older than ``web/``: ``npm ci`` (when ``web/node_modules`` is stale, as
  in the Makefile) and ``npm run build``;
- no npm: stop with how to fix it, unless ``TIDINGS_SKIP_WEB=1`` asks for a package
  without the apps (the hub then serves neither, and says so at start);
- editable installs (``pip install -e .``) build nothing: ``make`` handles a checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
BUILT = ROOT / "src" / "tidings" / "web"
APPS = ("demo", "admin")
NODE = "Node >= 20.19 with npm (vite 7 needs it)"


def _newest_source() -> float:
    sources = (p for p in WEB.rglob("*") if "node_modules" not in p.parts and p.is_file())
    return max((p.stat().st_mtime for p in sources), default=0.0)


def _web_is_current() -> bool:
    indexes = [BUILT / app / "index.html" for app in APPS]
    if not all(index.is_file() for index in indexes):
        return False
    # An sdist has the built apps and no newer sources; a checkout may have edits.
    return not WEB.is_dir() or min(i.stat().st_mtime for i in indexes) >= _newest_source()


def build_web() -> None:
    if _web_is_current():
        return
    if os.environ.get("TIDINGS_SKIP_WEB") == "1":
        print("tidings: TIDINGS_SKIP_WEB=1: packaging without the demo app and admin UI")
        return
    npm = shutil.which("npm")
    if npm is None or not (WEB / "package.json").is_file():
        raise SetupError(
            "tidings: the demo app and admin UI (web/) must be built into the package and "
            f"npm was not found: install {NODE}, or set TIDINGS_SKIP_WEB=1 to build a "
            "package without them"
        )
    lock = WEB / "package-lock.json"
    installed = WEB / "node_modules" / ".installed"  # the Makefile's stamp
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
        installed.touch()
    subprocess.run([npm, "run", "build"], cwd=WEB, check=True)
    (BUILT / ".built").touch()


class BuildPyWithWeb(build_py):
    def run(self) -> None:
        if not self.editable_mode:
            build_web()
        super().run()


class SdistWithWeb(sdist):
    """The sdist carries the built apps too: installing it needs no Node."""

    def run(self) -> None:
        build_web()
        super().run()


setup(cmdclass={"build_py": BuildPyWithWeb, "sdist": SdistWithWeb})
