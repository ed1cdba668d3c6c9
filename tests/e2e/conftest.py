"""Fixtures for the end-to-end tests: a real ``tidings serve`` subprocess per test.

``start_server(config_toml, dev=False)`` writes the config to ``tmp_path``, picks a
free port, starts ``python -m tidings serve`` and waits for ``GET /health`` to
answer 200. Every server started by a test is stopped (SIGTERM, then SIGKILL) at
teardown, and when the test fails its stderr is attached to the report.

``make_client(...)`` builds unmodified centrifuge-python clients whose events land
in asyncio queues (see :class:`ClientEvents` / :class:`SubEvents`), and disconnects
them at teardown, before the server is stopped; :func:`connect`, :func:`subscribe_ok`
and :func:`pubs` drive them with bounded waits.

``node`` and :func:`run_script` run the centrifuge-js scenarios of ``js/`` in Node
(test_sdk_js.py, test_sdk_js_transports.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent
from typing import Any, TypeVar

import jwt
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    OperationTimeoutError,
    Publication,
    PublicationContext,
    ServerJoinContext,
    ServerLeaveContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerSubscribingContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    SubscriptionUnsubscribedError,
    UnsubscribedContext,
)

from ..conftest import clean_environment, free_port

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

HMAC_SECRET = "e2e-secret-key-that-is-long-enough-for-hs256"
WRONG_SECRET = "not-the-secret-the-server-knows-about-at-all"

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Default bound for every single wait in the tests: a broken server fails fast.
WAIT = 5.0

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------


def make_token(
    user: str,
    *,
    secret: str = HMAC_SECRET,
    exp: float | None = 3600,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """Connection JWT: ``sub`` = user, ``exp`` = now + ``exp`` seconds (negative: expired)."""
    payload: dict[str, Any] = {"sub": user, **claims}
    if exp is not None:
        payload["exp"] = int(time.time() + exp)
    return jwt.encode(payload, secret, algorithm=algorithm)


def make_sub_token(
    user: str,
    channel: str,
    *,
    secret: str = HMAC_SECRET,
    exp: float = 3600,
    **claims: Any,
) -> str:
    """Subscription JWT: ``sub`` = user, ``channel``, ``exp``."""
    payload = {"sub": user, "channel": channel, "exp": int(time.time() + exp), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


# ---------------------------------------------------------------------------
# Waiting helpers
# ---------------------------------------------------------------------------


async def wait(aw: Awaitable[T], timeout: float = WAIT, what: str = "") -> T:
    """``asyncio.wait_for`` with a readable failure (and no chained traceback)."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        pass
    pytest.fail(f"timed out after {timeout:.1f}s waiting for {what or aw!r}")


async def next_event(queue: asyncio.Queue[T], timeout: float = WAIT, what: str = "") -> T:
    return await wait(queue.get(), timeout, what or "an event")


async def event_where(
    queue: asyncio.Queue[T],
    predicate: Callable[[T], bool],
    timeout: float = WAIT,
    what: str = "",
) -> T:
    """The first event in ``queue`` matching ``predicate`` (others are dropped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = max(0.0, deadline - loop.time())
        item = await wait(queue.get(), left, what or "a matching event")
        if predicate(item):
            return item


def drain(queue: asyncio.Queue[T]) -> list[T]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


# ---------------------------------------------------------------------------
# SDK event recorders
# ---------------------------------------------------------------------------


class ClientEvents(ClientEventHandler):
    """Client-level events (including server-side subscriptions) as queues."""

    def __init__(self) -> None:
        self.connecting: asyncio.Queue[ConnectingContext] = asyncio.Queue()
        self.connected: asyncio.Queue[ConnectedContext] = asyncio.Queue()
        self.disconnected: asyncio.Queue[DisconnectedContext] = asyncio.Queue()
        self.errors: asyncio.Queue[ErrorContext] = asyncio.Queue()
        self.subscribing: asyncio.Queue[ServerSubscribingContext] = asyncio.Queue()
        self.subscribed: asyncio.Queue[ServerSubscribedContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[ServerUnsubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[ServerPublicationContext] = asyncio.Queue()
        self.joins: asyncio.Queue[ServerJoinContext] = asyncio.Queue()
        self.leaves: asyncio.Queue[ServerLeaveContext] = asyncio.Queue()

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting.put_nowait(ctx)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.put_nowait(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.put_nowait(ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.errors.put_nowait(ctx)

    async def on_subscribing(self, ctx: ServerSubscribingContext) -> None:
        self.subscribing.put_nowait(ctx)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.unsubscribed.put_nowait(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.publications.put_nowait(ctx)

    async def on_join(self, ctx: ServerJoinContext) -> None:
        self.joins.put_nowait(ctx)

    async def on_leave(self, ctx: ServerLeaveContext) -> None:
        self.leaves.put_nowait(ctx)


class SubEvents(SubscriptionEventHandler):
    """Subscription events as queues."""

    def __init__(self) -> None:
        self.subscribing: asyncio.Queue[SubscribingContext] = asyncio.Queue()
        self.subscribed: asyncio.Queue[SubscribedContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[UnsubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[PublicationContext] = asyncio.Queue()
        self.joins: asyncio.Queue[JoinContext] = asyncio.Queue()
        self.leaves: asyncio.Queue[LeaveContext] = asyncio.Queue()
        self.errors: asyncio.Queue[SubscriptionErrorContext] = asyncio.Queue()

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self.subscribing.put_nowait(ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.put_nowait(ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.put_nowait(ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.put_nowait(ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.put_nowait(ctx)

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self.errors.put_nowait(ctx)


# ---------------------------------------------------------------------------
# The server subprocess
# ---------------------------------------------------------------------------


async def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET, so the event loop is never blocked."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        status_line = data.split(b"\r\n", 1)[0].split()
        status = int(status_line[1]) if len(status_line) >= 2 else 0
        return status, data.partition(b"\r\n\r\n")[2]

    return await asyncio.wait_for(go(), timeout)


class Server:
    """One ``tidings serve`` subprocess."""

    host = "127.0.0.1"

    def __init__(self, config_path: Path, log_dir: Path, index: int, dev: bool = False) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.index = index
        self.dev = dev
        self.port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.runs = 0
        self.log_paths: list[Path] = []

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--api-port",
            str(self.api_port),  # the server API is not under test here
        ]
        if self.dev:
            cmd.append("--dev")
        return cmd

    def logs(self) -> str:
        parts = []
        for path in self.log_paths:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                text = "<no log>"
            parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)

    async def start(self) -> None:
        self.runs += 1
        log_path = self.log_dir / f"server{self.index}-run{self.runs}.stderr.log"
        self.log_paths.append(log_path)
        env = clean_environment()
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SRC), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.log_dir),
                env=env,
            )
        self.returncode = None
        await self._wait_healthy()

    async def _wait_healthy(self) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        last_error: object = None
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                pytest.fail(
                    f"tidings server exited with {self.proc.returncode} before it was ready\n"
                    f"command: {' '.join(self.command)}\n{self.logs()}"
                )
            try:
                status, _ = await http_get(self.host, self.port, "/health")
                if status == 200:
                    return
                last_error = f"HTTP {status}"
            except (OSError, TimeoutError) as exc:
                last_error = exc
            await asyncio.sleep(0.05)
        await self.stop()
        pytest.fail(
            f"tidings server not healthy within {STARTUP_TIMEOUT}s (last: {last_error!r})\n"
            f"command: {' '.join(self.command)}\n{self.logs()}"
        )

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it did not exit in time."""
        proc = self.proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            return None
        self.returncode = proc.returncode
        self.proc = None
        return self.returncode

    def kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        self.returncode = proc.returncode
        self.proc = None

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL; returns the exit code of the SIGTERM path (None if killed)."""
        code = await self.terminate()
        if code is None and self.proc is not None:
            self.kill()
        return code

    async def restart(self) -> None:
        """Stop and start again on the same port (in-memory state is lost)."""
        await self.stop()
        await self.start()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for server in getattr(item, "_tidings_servers", []):
            report.sections.append(
                (f"tidings server #{server.index} (port {server.port}) output", server.logs())
            )
    return report


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StartServer]:
    servers: list[Server] = []
    request.node._tidings_servers = servers

    async def start(config_toml: str, dev: bool = False) -> Server:
        index = len(servers)
        config_path = tmp_path / f"tidings{index}.toml"
        config_path.write_text(config_toml)
        server = Server(config_path, tmp_path, index, dev=dev)
        servers.append(server)
        await server.start()
        return server

    yield start

    for server in servers:
        code = await server.stop()
        if code is None and server.runs:
            # Killed: worth seeing, but a teardown problem is not the test's failure.
            print(f"tidings server #{server.index} did not exit on SIGTERM; killed")


MakeClient = Callable[..., Client]

_protocol = ["json"]
"""The protocol of the clients the running test makes (set by ``make_client``)."""


def payload(value: Any) -> Any:
    """A JSON value as the SDK wants it: as is over JSON, as JSON bytes over Protobuf."""
    return json.dumps(value).encode() if _protocol[0] == "protobuf" else value


def decoded(data: Any) -> Any:
    """A payload the SDK gave back, as a JSON value (Protobuf gives the bytes)."""
    return json.loads(data) if isinstance(data, bytes) else data


@pytest.fixture(params=["json", "protobuf"])
async def make_client(
    request: pytest.FixtureRequest, start_server: StartServer
) -> AsyncIterator[MakeClient]:
    """``make_client(server, token="", events=None, **kwargs) -> Client``.

    The client gets a :class:`ClientEvents` as ``client.events`` unless given one,
    a short command timeout, and is disconnected at teardown. Every test that
    makes clients runs twice: over the JSON protocol and over Protobuf
    (``use_protobuf=True``, the subprotocol the mobile SDKs use).
    """
    clients: list[Client] = []

    def make(
        server: Server,
        token: str = "",
        events: ClientEventHandler | None = None,
        **kwargs: Any,
    ) -> Client:
        kwargs.setdefault("timeout", 3.0)
        kwargs.setdefault("min_reconnect_delay", 0.05)
        kwargs.setdefault("max_reconnect_delay", 0.5)
        kwargs.setdefault("proxy", None)
        kwargs.setdefault("use_protobuf", request.param == "protobuf")
        _protocol[0] = request.param
        client = Client(server.url, events=events or ClientEvents(), token=token, **kwargs)
        clients.append(client)
        return client

    yield make

    for client in clients:
        try:
            await asyncio.wait_for(client.disconnect(), 3)
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            print(f"client disconnect failed at teardown: {exc!r}")
    # Let the SDK's background close tasks finish before the loop goes away.
    pending = [t for c in clients for t in list(getattr(c, "_background_tasks", ()))]
    if pending:
        await asyncio.wait(pending, timeout=2)


def state_docs(n: int) -> list[dict[str, Any]]:
    """``n`` versions of a state-like document of about 4 KiB, each one field apart from
    the one before (a patch is then a few dozen bytes): what delta compression is for."""
    doc: dict[str, Any] = {
        "board": "operations",
        "items": [
            {"id": k, "name": f"item-{k:03d}", "status": "idle", "load": 0, "zone": "eu-west"}
            for k in range(60)
        ],
    }
    docs = []
    for i in range(n):
        doc = copy.deepcopy(doc)
        doc["items"][(i * 7) % 60]["load"] = i + 1
        docs.append(doc)
    assert len(json.dumps(docs[0], separators=(",", ":")).encode()) > 4000
    return docs


# ---------------------------------------------------------------------------
# Driving centrifuge-python clients
# ---------------------------------------------------------------------------


def events_of(client: Client) -> ClientEvents:
    events = client.events
    assert isinstance(events, ClientEvents)
    return events


async def connect(client: Client) -> None:
    await wait(client.connect(), what="client.connect()")
    try:
        await client.ready(timeout=WAIT)
    except Exception as exc:  # noqa: BLE001 - turned into a readable failure
        events = events_of(client)
        pytest.fail(
            f"client did not connect: {exc!r}; state={client.state}; "
            f"disconnected={drain(events.disconnected)}; errors={drain(events.errors)}"
        )
    assert client.state == ClientState.CONNECTED


def new_sub(client: Client, channel: str, **kwargs: Any) -> tuple[Subscription, SubEvents]:
    events = SubEvents()
    return client.new_subscription(channel, events=events, **kwargs), events


async def subscribe_ok(
    client: Client, channel: str, **kwargs: Any
) -> tuple[Subscription, SubEvents, SubscribedContext]:
    """Subscribe and wait until subscribed; fails with the unsubscribe code otherwise."""
    sub, events = new_sub(client, channel, **kwargs)
    await wait(sub.subscribe(), what=f"sub.subscribe({channel!r})")
    ctx = await expect_subscribed(sub, events)
    return sub, events, ctx


async def expect_subscribed(sub: Subscription, events: SubEvents) -> SubscribedContext:
    try:
        await sub.ready(timeout=WAIT)
    except SubscriptionUnsubscribedError:
        pytest.fail(
            f"subscribe to {sub.channel!r} was refused: "
            f"unsubscribed={drain(events.unsubscribed)} errors={drain(events.errors)}"
        )
    except OperationTimeoutError:
        pytest.fail(
            f"subscribe to {sub.channel!r} not done within {WAIT}s: "
            f"state={sub.state} errors={drain(events.errors)}"
        )
    return await next_event(events.subscribed, what=f"on_subscribed({sub.channel!r})")


async def pubs(events: SubEvents | ClientEvents, n: int, what: str = "") -> list[Publication]:
    out = []
    for i in range(n):
        ctx = await next_event(events.publications, what=f"publication {i + 1}/{n} {what}")
        out.append(ctx.pub)
    return out


# ---------------------------------------------------------------------------
# Node and centrifuge-js
# ---------------------------------------------------------------------------

JS = Path(__file__).resolve().parent / "js"
"""The Node scripts of the centrifuge-js tests, with the SDK in ``node_modules``."""

SCENARIO_DEADLINE = 15.0
"""Bound of one scenario inside Node (it then reports a failure itself)."""
RUN_TIMEOUT = SCENARIO_DEADLINE + 10.0
"""Bound of the Node process as seen from here (a hung process is killed)."""

Record = dict[str, Any]
Step = Callable[[Record], Awaitable[Record]]


JS_NAMESPACES = """
[namespaces.room]
presence = true
join_leave = true
history_size = 10
history_ttl = 60
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
allow_presence_for_subscriber = true

[namespaces.rec]
history_size = 100
history_ttl = 300
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_client = true
"""
"""The namespaces of both suites' scenarios: ``room`` for presence, join/leave and history,
``rec`` for recovery."""


def js_hub_config(api_key: str, sections: str = "", broker_url: str = "") -> str:
    """A hub for the centrifuge-js scenarios: the HMAC key, the server API's ``api_key``,
    ``sections`` (TOML, indented or not), ``room`` and ``rec`` (:data:`JS_NAMESPACES`), and
    with ``broker_url`` that Redis as broker."""
    text = f'token_hmac_secret_key = "{HMAC_SECRET}"\n\n[http_api]\nkey = "{api_key}"\n'
    text += dedent(sections) + JS_NAMESPACES
    if broker_url:
        text += f'\n[broker]\nurl = "{broker_url}"\n'
    return text


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"centrifuge-js tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, once the SDK is installed in ``tests/e2e/js/node_modules``."""
    path = shutil.which("node")
    if path is None:
        _unavailable("no node on PATH (apt-get install nodejs npm)")
    assert path is not None
    for package in ("centrifuge", "ws"):
        if not (JS / "node_modules" / package / "package.json").exists():
            _unavailable(f"{package} is not installed in {JS} (run make test, or npm ci there)")
    return path


@dataclass
class Results:
    """The JSON lines one scenario printed."""

    records: list[Record]
    stderr: str

    def of(self, type_: str, **match: Any) -> list[Record]:
        return [
            r
            for r in self.records
            if r["type"] == type_ and all(r.get(k) == v for k, v in match.items())
        ]

    def one(self, type_: str, **match: Any) -> Record:
        found = self.of(type_, **match)
        assert len(found) == 1, f"expected one {type_!r} record {match}, got {found}\n{self}"
        return found[0]

    def ids(self, who: str) -> list[str]:
        """The client ids the scenario's client ``who`` got, in connection order."""
        return [r["client"] for r in self.of("connected", who=who)]

    def __str__(self) -> str:
        lines = "\n".join(json.dumps(r) for r in self.records)
        return f"--- scenario output ---\n{lines}\n--- node stderr ---\n{self.stderr}"


def check_recovery(res: Results, missed: int, encoding: str) -> str:
    """What the ``recovery`` scenario (js/common.mjs) must report: the reader reconnected with
    a new client id and recovered the ``missed`` publications of the server API (no publisher,
    their tags) and of the writer, in the stream's epoch, each once and in ``encoding``; then
    one more came live. The epoch."""
    first_id, second_id = res.ids("reader")
    assert first_id != second_id, "a reconnected client got the same client id"
    [writer_id] = res.ids("writer")
    first = res.one("subscribed", who="reader")
    assert first["recoverable"] is True and first["wasRecovering"] is False, first
    assert first["streamPosition"]["epoch"], first
    assert first["streamPosition"]["offset"] == 0, first
    epoch: str = first["streamPosition"]["epoch"]

    [live] = res.of("publication", phase="live")
    assert (live["data"], live["offset"]) == ({"live": 1}, 1)
    assert live["info"]["client"] == writer_id

    gone = res.one("disconnected")
    assert gone["clientState"] == "disconnected"
    assert gone["subState"] == "subscribing", "the SDK keeps the subscription to recover it"

    again = res.one("resubscribed")
    assert again["wasRecovering"] is True, again
    assert again["recovered"] is True, again
    assert again["hasRecoveredPublications"] is True, again
    assert again["streamPosition"]["epoch"] == epoch, again

    recovered = res.of("publication", phase="recovered")
    assert [p["data"] for p in recovered] == [{"missed": i} for i in range(missed)]
    assert [p["offset"] for p in recovered] == list(range(2, missed + 2))
    # Server API publications have no publisher and keep their tags; the writer's have it.
    assert [p["info"] for p in recovered[0::2]] == [None] * len(recovered[0::2])
    assert [p["tags"] for p in recovered[0::2]] == [{"via": "api"}] * len(recovered[0::2])
    assert [p["info"]["client"] for p in recovered[1::2]] == [writer_id] * len(recovered[1::2])
    assert {p["encoding"] for p in recovered} == {encoding}

    [after] = res.of("publication", phase="after")
    assert (after["data"], after["offset"]) == ({"after": True}, missed + 2)
    assert res.one("extra_publications")["count"] == 0, "duplicates after recovery"
    return epoch


def parse_lines(text: str) -> list[Record]:
    """The scenario's JSON lines (anything else printed is kept as a ``stdout`` record)."""
    records: list[Record] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        records.append(record if isinstance(record, dict) else {"type": "stdout", "line": line})
    return records


async def run_script(
    node: str,
    script: Path,
    server: Server,
    api_key: str,
    scenario: str,
    params: Record,
    steps: dict[str, Step] | None = None,
) -> Results:
    """Run ``scenario`` of the Node ``script`` against ``server`` (whose server API takes
    ``api_key``), answering the steps it asks for; fail unless it ran to its end.

    The input is one JSON line on the script's stdin, and so is each answer to a step.
    """
    request = {
        "scenario": scenario,
        "base": server.http_url,
        "url": server.url,
        "api": {"url": f"http://{server.host}:{server.api_port}", "key": api_key},
        "deadlineMs": int(SCENARIO_DEADLINE * 1000),
        **params,
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(JS),
        env=clean_environment(),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout = proc.stdin, proc.stdout
    records: list[Record] = []
    errors = asyncio.ensure_future(proc.stderr.read())

    async def converse() -> None:
        stdin.write(json.dumps(request).encode() + b"\n")
        await stdin.drain()
        while line := await stdout.readline():
            for record in parse_lines(line.decode(errors="replace")):
                records.append(record)
                if record["type"] == "step":
                    answer = await (steps or {})[record["name"]](record)
                    stdin.write(json.dumps(answer).encode() + b"\n")
                    await stdin.drain()

    try:
        await asyncio.wait_for(converse(), RUN_TIMEOUT)
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        pytest.fail(f"node scenario {scenario!r} still running after {RUN_TIMEOUT}s: killed")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        results = Results(records, (await errors).decode(errors="replace"))
        print(results)  # the whole output, shown by pytest when the test fails
    last = results.records[-1] if results.records else None
    if proc.returncode != 0 or last is None or last["type"] != "done":
        pytest.fail(
            f"node scenario {scenario!r} did not finish (exit {proc.returncode}): "
            f"{last and last.get('error')}\n{results.stderr}",
            pytrace=False,
        )
    return results
