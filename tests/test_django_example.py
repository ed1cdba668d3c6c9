"""End to end: the Django chat example (examples/django), with a real tidings hub.

Nothing is mocked. Every test runs twice: with the hub beside Django (``python -m
tidings serve`` and ``manage.py runserver``), and with the hub mounted in Django's
ASGI application (``chatsite/asgi_hub.py`` under uvicorn, one port). Each time the
module writes a temporary tidings config (the ``chat`` namespace options are
read from the example's own ``tidings.toml``), migrates a temporary SQLite
database and creates the user alice. The tests then act as alice's browser with an
aiohttp session (login form, CSRF, /token/, /send/) and as her WebSocket client
with the unmodified centrifuge-python SDK.

When a test fails, the output of both servers is attached to its report.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import jwt
import pytest
from centrifuge import (
    Client,
    PublicationContext,
    ReplyError,
    SubscribedContext,
    SubscriptionEventHandler,
)

from .conftest import free_port

pytestmark = pytest.mark.slow  # left out of `make check`

try:
    import django  # noqa: F401 - the example's own dependency, run in subprocesses
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(
        "the Django example needs Django: pip install 'django>=5.0'", allow_module_level=True
    )

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django"
SDK_FILE = EXAMPLE / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"
SDK_URL = "/static/centrifuge/centrifuge.js"

SECRET = "django-example-secret-" + secrets.token_hex(16)
API_KEY = "django-example-api-key-" + secrets.token_hex(8)
USER = "alice"
PASSWORD = "alice-" + secrets.token_hex(8)
CHANNEL = "chat:lobby"

STARTUP_TIMEOUT = 20.0  # per server
WAIT = 5.0  # any single wait inside a test


# ---------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------


def _tidings_config() -> str:
    """Secret and API key of this test, channel options of the example's ``tidings.toml``,
    as a tidings config in JSON (which tidings reads like TOML)."""
    with open(EXAMPLE / "tidings.toml", "rb") as file:
        chat = tomllib.load(file)["namespaces"]["chat"]
    config = {
        "token_hmac_secret_key": SECRET,
        "http_api": {"key": API_KEY},
        "namespaces": {"chat": chat},
    }
    return json.dumps(config)


class Process:
    """A server subprocess whose stdout and stderr go to a log file."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.cmd = cmd
        self.log_path = log
        self._log: TextIO = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no output>"

    def wait_http(self, url: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ``url`` until it answers 200; fail with the output if it does not."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.name} exited with {self.proc.returncode} before it was ready\n"
                    f"command: {' '.join(self.cmd)}\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            time.sleep(0.1)
        pytest.fail(
            f"{self.name} did not answer {url} within {timeout}s (last: {last!r})\n"
            f"command: {' '.join(self.cmd)}\n{self.output()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class Stack:
    ws_url: str
    api_url: str
    site: str  # Django's base URL, without a trailing slash
    processes: list[Process]

    def outputs(self) -> list[tuple[str, str]]:
        return [(p.name, p.output()) for p in self.processes]


class _AttachOutputs:
    """A pytest plugin, registered while the stack runs: server output on failed reports."""

    def __init__(self, processes: list[Process]) -> None:
        self.processes = processes

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, Any, Any]:
        report = yield
        if report.failed and item.path == Path(__file__):
            for process in self.processes:
                report.sections.append((f"{process.name} output", process.output()))
        return report


def _python_env(extra: dict[str, str]) -> dict[str, str]:
    # TIDINGS_* variables of the developer's shell would override the test config.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _manage(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        pytest.fail(
            f"manage.py {' '.join(args)} failed with {done.returncode}\n"
            f"{done.stdout}\n{done.stderr}"
        )


@pytest.fixture(scope="module", params=["beside", "mounted"])
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    mounted = request.param == "mounted"
    tmp = tmp_path_factory.mktemp(f"django-example-{request.param}")
    processes: list[Process] = []
    plugin = _AttachOutputs(processes)
    request.config.pluginmanager.register(plugin)
    try:
        ws_port, api_port, site_port = free_port(), free_port(), free_port()
        config = tmp / "tidings.json"
        config.write_text(_tidings_config())
        if mounted:
            ws_url = f"ws://127.0.0.1:{site_port}/realtime/connection/websocket"
            tidings_env = {"CHAT_HUB_CONFIG": str(config), "TIDINGS_HTTP_API_PORT": str(api_port)}
        else:
            ws_url = f"ws://127.0.0.1:{ws_port}/connection/websocket"
            tidings_env = {}
            hub = Process(
                "tidings",
                [
                    *(sys.executable, "-m", "tidings", "serve", "--config", str(config)),
                    *("--port", str(ws_port), "--api-port", str(api_port)),
                ],
                cwd=tmp,
                env=_python_env({}),
                log=tmp / "tidings.log",
            )
            processes.append(hub)
        api_url = f"http://127.0.0.1:{api_port}/api"
        django_env = _python_env(
            {
                "DJANGO_DEBUG": "true",  # Django serves static files only in DEBUG
                "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
                "DJANGO_DB_PATH": str(tmp / "db.sqlite3"),
                "CHAT_HUB_TOKEN_SECRET": SECRET,
                "CHAT_HUB_API_URL": api_url,
                "CHAT_HUB_API_KEY": API_KEY,
                "CHAT_HUB_WS_URL": ws_url,
                **tidings_env,
            }
        )
        # Migrate while tidings starts.
        _manage(["migrate", "--noinput"], django_env)
        _manage(
            ["createsuperuser", "--noinput", "--username", USER, "--email", f"{USER}@example.com"],
            {**django_env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        )
        if mounted:
            server = [sys.executable, "-m", "uvicorn", "chatsite.asgi_hub:application"]
            server += ["--host", "127.0.0.1", "--port", str(site_port)]
        else:
            server = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{site_port}"]
            server += ["--noreload"]
        site = Process("django", server, cwd=EXAMPLE, env=django_env, log=tmp / "django.log")
        processes.append(site)
        hub_health = ws_url.replace("ws://", "http://").replace("/connection/websocket", "/health")
        site.wait_http(f"http://127.0.0.1:{site_port}/login/")
        processes[0].wait_http(hub_health)
        yield Stack(ws_url, api_url, f"http://127.0.0.1:{site_port}", processes)
    finally:
        for process in reversed(processes):
            process.stop()
        request.config.pluginmanager.unregister(plugin)


@pytest.fixture(scope="session")
def centrifuge_js() -> Path:
    """The centrifuge-js browser build, installed with ``npm ci`` if it is not there yet."""
    if SDK_FILE.is_file():
        return SDK_FILE
    npm = shutil.which("npm")
    if npm is None:
        message = "npm is not installed: cannot install centrifuge-js for the Django example"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"npm ci timed out in {EXAMPLE}: {exc.stdout!r} {exc.stderr!r}")
    if done.returncode != 0 or not SDK_FILE.is_file():
        pytest.fail(f"npm ci failed in {EXAMPLE} ({done.returncode})\n{done.stdout}\n{done.stderr}")
    return SDK_FILE


# ---------------------------------------------------------------------------
# Browser and WebSocket client helpers
# ---------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session with a cookie jar that accepts cookies from 127.0.0.1."""
    timeout = aiohttp.ClientTimeout(total=WAIT * 2)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=timeout
    ) as session:
        yield session


def _csrf_cookie(session: aiohttp.ClientSession) -> str:
    for cookie in session.cookie_jar:
        if cookie.key == "csrftoken":
            return cookie.value
    raise AssertionError("Django set no csrftoken cookie")


async def _login_form_csrf(session: aiohttp.ClientSession, site: str) -> str:
    async with session.get(f"{site}/login/") as response:
        assert response.status == 200
        html = await response.text()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, f"no CSRF field in the login page:\n{html}"
    return match.group(1)


async def _login(session: aiohttp.ClientSession, site: str) -> None:
    csrf = await _login_form_csrf(session, site)
    form = {"username": USER, "password": PASSWORD, "csrfmiddlewaretoken": csrf, "next": "/"}
    async with session.post(f"{site}/login/", data=form, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == 302, f"login failed ({response.status}):\n{body}"
        assert response.headers["Location"] == "/"


async def _token(session: aiohttp.ClientSession, site: str) -> str:
    async with session.get(f"{site}/token/") as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        token = (await response.json())["token"]
    assert isinstance(token, str)
    return token


async def _send(session: aiohttp.ClientSession, site: str, payload: Any) -> aiohttp.ClientResponse:
    async with session.post(
        f"{site}/send/",
        json=payload,
        headers={"X-CSRFToken": _csrf_cookie(session)},
    ) as response:
        await response.read()
        return response


class Recorder(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[SubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[PublicationContext] = asyncio.Queue()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.put_nowait(ctx)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


async def test_message_sent_through_django_reaches_a_websocket_client(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await _login(browser, stack.site)
    token = await _token(browser, stack.site)

    client = Client(stack.ws_url, token=token)
    events = Recorder()
    sub = client.new_subscription(CHANNEL, events=events, recoverable=True)
    try:
        await asyncio.wait_for(client.connect(), WAIT)
        await sub.subscribe()
        subscribed = await asyncio.wait_for(events.subscribed.get(), WAIT)
        assert subscribed.recoverable  # force_recovery in the chat namespace
        stats = await sub.presence_stats(timeout=WAIT)
        assert (stats.num_clients, stats.num_users) == (1, 1)

        text = f"hello from Django {secrets.token_hex(4)}"
        response = await _send(browser, stack.site, {"text": text})
        assert response.status == 200
        reply = await response.json()
        assert reply["ok"] is True
        assert isinstance(reply["offset"], int) and reply["offset"] >= 1

        ctx = await asyncio.wait_for(events.publications.get(), WAIT)
        assert ctx.pub.data == {"user": USER, "text": text}
        assert ctx.pub.offset == reply["offset"]
        # Server-API publications carry no client info; the author comes as a tag.
        assert ctx.pub.tags == {"user": USER}
        assert events.publications.empty()

        # What the chat page shows on entry: the channel's history.
        history = await sub.history(limit=10, reverse=True, timeout=WAIT)
        assert history.publications[0].data == {"user": USER, "text": text}
        assert history.offset == reply["offset"]

        # Browsers cannot publish around Django's validation.
        with pytest.raises(ReplyError) as denied:
            await sub.publish({"user": "mallory", "text": "spoofed"}, timeout=WAIT)
        assert denied.value.code == 103
    finally:
        await client.disconnect()
        # The SDK closes its WebSocket in a background task: let it finish before the
        # test's event loop goes away, or the socket is reported as leaked.
        pending = list(getattr(client, "_background_tasks", ()))
        if pending:
            await asyncio.wait(pending, timeout=WAIT)


async def test_token_is_a_jwt_for_the_logged_in_user(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await _login(browser, stack.site)
    token = await _token(browser, stack.site)

    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == USER
    assert claims["info"] == {"name": USER}
    assert 3600 - 60 <= claims["exp"] - time.time() <= 3600 + 5


async def test_send_and_token_are_refused_without_login(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await _login_form_csrf(browser, stack.site)  # sets the csrftoken cookie, no session

    response = await _send(browser, stack.site, {"text": "anonymous"})
    assert response.status == 401
    async with browser.get(f"{stack.site}/token/", allow_redirects=False) as token_response:
        assert token_response.status == 401
    async with browser.get(f"{stack.site}/", allow_redirects=False) as page:
        assert page.status == 302
        assert page.headers["Location"].startswith("/login/")


async def test_send_needs_csrf_and_a_valid_message(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await _login(browser, stack.site)

    async with browser.post(f"{stack.site}/send/", json={"text": "no CSRF token"}) as response:
        assert response.status == 403
    for bad in ({"text": ""}, {"text": "   "}, {"text": 42}, {}, ["text"], {"text": "x" * 2001}):
        response = await _send(browser, stack.site, bad)
        assert response.status == 400, bad
    async with browser.post(
        f"{stack.site}/send/",
        data=b"not json",
        headers={"X-CSRFToken": _csrf_cookie(browser), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400


async def test_chat_page_loads_the_centrifuge_js_sdk(
    stack: Stack, browser: aiohttp.ClientSession, centrifuge_js: Path
) -> None:
    await _login(browser, stack.site)

    async with browser.get(f"{stack.site}/") as page:
        assert page.status == 200
        html = await page.text()
    assert f'<script src="{SDK_URL}">' in html
    assert '<script src="/static/chat/chat.js">' in html
    config = re.search(
        r'<script id="chat-config" type="application/json">(.*?)</script>', html, re.S
    )
    assert config, html
    assert json.loads(config.group(1)) == {
        "wsUrl": stack.ws_url,
        "channel": CHANNEL,
        "tokenUrl": "/token/",
        "sendUrl": "/send/",
        "loginUrl": "/login/",
        "user": USER,
    }

    async with browser.get(f"{stack.site}{SDK_URL}") as static:
        assert static.status == 200
        body = await static.read()
    assert body == centrifuge_js.read_bytes()
    assert b"globalThis.Centrifuge" in body
    async with browser.get(f"{stack.site}/static/chat/chat.js") as script:
        assert script.status == 200
        assert "newSubscription" in await script.text()
