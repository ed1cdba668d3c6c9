"""Fixtures for the browser tests: the built demo app and admin UI in a real Chromium.

Debian's ``chromium`` (``/usr/bin/chromium``, or ``$TIDINGS_CHROMIUM``) is driven by Python
Playwright without its own browser download. Without Chromium, Playwright or the built front-end
the tests are skipped, except under ``CI=true`` where they fail.

The hub is a real ``python -m tidings serve --dev`` subprocess on free ports, so a test can
stop it (SIGTERM) and start it again on the same ports. Screenshots land in
``tests/artifacts/``; with ``TIDINGS_DOCS_SCREENSHOTS=1`` the README's images in ``docs/img/``
are written again too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..conftest import clean_environment, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS_IMG = ROOT / "docs" / "img"
WEB = ROOT / "src" / "tidings" / "web"
CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TOKEN_SECRET = "browser-tests-secret-that-is-long-enough-for-hs256"
VIEWPORT = {"width": 1100, "height": 700}
WAIT_MS = 10_000
"""Bound of every single wait in a page: a broken app fails fast."""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    for app in ("demo", "admin"):
        if not (WEB / app / "index.html").exists():
            _unavailable(f"the {app} app is not built (run make web)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    expect.set_options(timeout=WAIT_MS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class HubProcess:
    """``tidings serve --dev`` (or ``arguments``) in a subprocess, restartable on the
    same ports; ``api_key`` goes with server API calls."""

    def __init__(self, log: Path, arguments: Sequence[str] = ("--dev",), api_key: str = "") -> None:
        self.port = free_port()
        self.api_port = free_port()
        self.log = log
        self.arguments = list(arguments)
        self.api_key = api_key
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The demo app (served by the WebSocket port with --dev)."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/admin/"

    def start(self) -> None:
        command = [sys.executable, "-m", "tidings", "serve", *self.arguments]
        command += ["--port", str(self.port), "--api-port", str(self.api_port)]
        # --dev, plus a key for connection tokens: pages are anonymous unless given a token.
        env = {**clean_environment(), "TIDINGS_TOKEN_HMAC_SECRET_KEY": TOKEN_SECRET}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        deadline = time.monotonic() + 15
        for port in (self.port, self.api_port):
            while not _healthy(port):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the hub exited with {self.process.returncode}: {self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the hub did not start: {self.log}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as a deployment would do (clients are closed with 3001 and reconnect)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def token(self, user: str) -> str:
        """A connection JWT for ``user`` (the demo page takes it as ``?token=``)."""
        import jwt

        return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, TOKEN_SECRET, "HS256")

    def api(self, method: str, body: dict[str, Any]) -> Any:
        """Call the server API (no key needed with --dev); its whole reply."""
        import json

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/{method}",
            # UTF-8 as is (not \u escapes): the hub keeps the bytes (delta patches cut them).
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": self.api_key},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def hub(request: pytest.FixtureRequest, browser: Browser) -> Iterator[HubProcess]:
    log = ARTIFACTS / f"{request.node.name}.hub.log"
    log.unlink(missing_ok=True)
    process = HubProcess(log)
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Pages:
    """Browser contexts (each one is a separate user) opened by one test, closed after it."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []

    def new(self) -> Page:
        context = self.browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        return context.new_page()

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def expect(browser: Browser) -> Any:
    """Playwright's ``expect`` (imported here: the ``browser`` fixture skips without it)."""
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    opened = Pages(browser)
    try:
        yield opened
    finally:
        opened.close()


def screenshot(page: Page, name: str, *, docs: str = "") -> None:
    """Save ``tests/artifacts/<name>.png`` (and ``docs/img/<docs>.png`` when asked)."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if docs and os.environ.get("TIDINGS_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"{docs}.png"))
