#!/usr/bin/env python3
"""Fan-out over HTTP-streaming and SSE beside WebSocket, and memory per idle stream.

    .venv/bin/python bench/streams.py            # full (~10-15 min): bench/results/streams/
    .venv/bin/python bench/streams.py --quick    # 200 subscribers, 2 rates (development)
    .venv/bin/python bench/streams.py --only fanout --transports websocket,sse
    .venv/bin/python bench/streams.py --report-only --out DIR

The issue's target: SSE and HTTP-streaming fan-out to 1,000 subscribers of 128 B
messages reaches >= 50 % of WebSocket's deliveries/s at p99 <= 50 ms; memory per
idle stream connection is reported beside WebSocket's. Every transport runs in
the same run, against a fresh server of the same configuration:

- ``websocket``: ``/connection/websocket``, ``{"id":1,"connect":{}}`` and a
  subscribe command in one frame;
- ``http_stream``: ``POST /connection/http_stream`` (the connect command as the
  body), replies as chunked NDJSON; the subscribe command goes through
  ``POST /emulation`` with the ``session`` and ``node`` of the connect reply;
- ``sse``: ``GET /connection/sse?cf_connect=<connect command>``, ``data: <reply>``
  events; subscribe through ``/emulation`` as above;
- ``uni_http_stream``: ``POST /connection/uni_http_stream`` with
  ``{"subs":{"bench":{}}}``, one bare push per line (no commands at all).

Fan-out: N subscribers (1,000) of channel ``bench``; a publisher posts 128-byte
JSON objects carrying their send time (``"ts"``, µs of CLOCK_MONOTONIC, which all
processes of the machine share) to ``POST /api/publish`` at a rate that doubles
from 50 msg/s until a step fails (a failed step is run once more; then bisection
steps narrow the limit). A step passes when every subscriber got every message,
p99 <= 50 ms and the publisher kept its schedule (p99 of its lag <= 50 ms).
Every subscriber records the latency of every delivery (``--latency-every K``:
only every K-th subscriber does, the others count). Memory: server RSS with K
idle subscribed connections (2,000) minus RSS before them (after a warm-up of 10
connections that came and went), per connection; again after one publication.

The server runs ``python -m tidings serve --dev --config <file>`` (``--dev``
enables the stream transports and anonymous connects; the file turns off what
``--dev`` adds to channels, presence, join/leave and history, as
bench/tidings-bench.toml has it for run.py's fan-out, lifts the per-client
command rate limit, and sets ``client.ping_interval`` to an hour so that no
pings, nor pongs, happen during a run). It is pinned to core 1, the subscriber
processes and the publisher to core 0 (``nice -n -10``, as run.py's generator).
The subscribers are asyncio + uvloop protocols on raw sockets, which find the
timestamps with one regular-expression scan per read; their CPU is reported,
since a limit of theirs would hide the server's.

Outputs: ``summary.json``, ``REPORT.md`` (and ``streams.png`` where matplotlib is
installed) in ``--out`` (bench/results/streams, or bench/results/quick/streams
with --quick); server and worker logs in bench/results/raw/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generators  # noqa: E402
import procstats  # noqa: E402
import run  # noqa: E402  (bench/run.py: servers, free ports, logging, quiet-waiting)
import scripting  # noqa: E402
from generators import emit  # noqa: E402
from procstats import busy_pct, core_times, cpu_seconds, rss_kib  # noqa: E402
from run import RAW, RESULTS, ROOT, TIDINGS_PY, Server, Spec, log  # noqa: E402
from scripting import met, ms  # noqa: E402

CHANNEL = "bench"
SIZE = 128
P99_LIMIT_MS = run.P99_LIMIT_MS
TARGET_RATIO = 0.5  # a stream transport's deliveries/s >= 50 % of WebSocket's
TRANSPORTS = ("websocket", "http_stream", "sse", "uni_http_stream")
LABELS = {
    "websocket": "WebSocket",
    "http_stream": "HTTP-streaming",
    "sse": "SSE",
    "uni_http_stream": "unidirectional HTTP-streaming",
}
TARGETED = ("http_stream", "sse")  # the transports the issue names
PARTS = ("fanout", "memory")
BUCKET_US = 100  # latency histogram resolution
BUCKETS = 100_000  # up to 10 s; later deliveries land in the last bucket
LIMIT_BUSY_PCT = 90.0  # the server's CPU this high: the server is the step's limit
CLIENTS_BUSY_PCT = 80.0  # subscribers + publisher this high: they are (the kernel has the rest)
BACKGROUND_PCT = 20.0  # other work this high on a core: the machine was not quiet


def payload(ts_us: int, step: int) -> bytes:
    """The publication: ``{"ch":"bench","ts":<us>,"s":<step>,"p":"xxx…"}``, SIZE bytes."""
    head = b'{"ch":"%s","ts":%d,"s":%d,"p":"' % (CHANNEL.encode(), ts_us, step)
    return head + b"x" * (SIZE - len(head) - 2) + b'"}'


def now_us() -> int:
    return time.monotonic_ns() // 1000


# --- the subscribers (worker processes, the project's .venv) ---------------------------------

TS_FINDALL = re.compile(rb'"ts":(\d+)').findall
CONNECT = b'{"id":1,"connect":{}}'
SUBSCRIBE = json.dumps({"id": 2, "subscribe": {"channel": CHANNEL}}, separators=(",", ":"))


class Counters:
    """One worker's subscribers' shared counters (one event loop: no locks)."""

    def __init__(self) -> None:
        self.measuring = False
        self.since = 0  # µs: deliveries of messages sent before are not this step's
        self.marker = b""  # ',"s":<step>,' : how the subscribers that only count find them
        self.hist = [0] * BUCKETS
        self.delivered = 0
        self.units = 0  # WebSocket frames or HTTP chunks that held messages
        self.wire = 0  # bytes received
        self.subscribed = 0
        self.closed = 0
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class Emulation:
    """Keep-alive connections for ``POST /emulation`` (a few per worker)."""

    def __init__(self, port: int, size: int = 4) -> None:
        self.port = port
        self.size = size
        self.opened: list[asyncio.StreamWriter] = []
        self.pending: set[asyncio.Future[None]] = set()
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def post(self, session: str, node: str, data: str) -> None:
        if self.free.empty() and len(self.opened) < self.size:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened.append(writer)
        else:
            reader, writer = await self.free.get()
        body = json.dumps({"session": session, "node": node, "data": data}).encode()
        writer.write(
            b"POST /emulation HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length and int(length.group(1)):
            await reader.readexactly(int(length.group(1)))
        self.free.put_nowait((reader, writer))
        status = int(head.split(b" ", 2)[1])
        if status != 204:
            raise RuntimeError(f"/emulation answered {status}")

    def post_soon(self, subscriber: Subscriber, command: str) -> None:
        """Post in a task; a failure fails the subscriber."""

        async def post() -> None:
            try:
                await self.post(subscriber.session, subscriber.node, command)
            except Exception as exc:  # noqa: BLE001  (reported as this subscriber's failure)
                subscriber.fail(f"/emulation: {type(exc).__name__}: {exc}")

        task = asyncio.ensure_future(post())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def close(self) -> None:
        """Close the connections once the posts in flight are answered (a later post opens
        new ones)."""
        while self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        for writer in self.opened:
            writer.close()
        self.opened.clear()
        while not self.free.empty():
            self.free.get_nowait()


class Subscriber(asyncio.Protocol):
    """One subscriber: the request, the response head, then its units (frames or chunks).

    Until subscribed, each unit's messages are decoded (the handshake); from then on
    one regular-expression scan per read finds the timestamps of every complete unit."""

    session = node = ""  # of the bidirectional streams: for /emulation

    def __init__(self, counters: Counters, emulation: Emulation, port: int, record: bool) -> None:
        self.c = counters
        self.emulation = emulation
        self.port = port
        self.record = record
        self.transport: asyncio.Transport | None = None
        self.head = True
        self.buf = b""
        self.subscribed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # what each transport defines
    def request(self) -> bytes:
        raise NotImplementedError

    def scan(self, data: bytes, collect: list[bytes] | None) -> int:
        """The end of the last complete unit in ``data``; each unit's payload into collect."""
        raise NotImplementedError

    def messages(self, payload: bytes) -> list[bytes]:
        return [line for line in payload.split(b"\n") if line.strip()]

    def on_message(self, message: dict[str, Any]) -> None:
        reply_id = message.get("id")
        if message.get("error"):
            self.fail(f"reply {reply_id}: {message['error']}")
        elif reply_id == 2:
            self.done()

    # the common part
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        c = self.c
        if c.measuring:
            c.wire += len(data)
        if self.buf:
            data = self.buf + data
        if self.head:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 200 " not in status and b" 101 " not in status:
                self.fail(f"answered {status.decode('latin-1')}")
                return
            self.head = False
            data = data[end + 4 :]
        if self.subscribed:
            end = self.scan(data, None)
            if end and c.measuring:
                if self.record:
                    now = now_us()
                    found = TS_FINDALL(data, 0, end)
                    # a step's messages follow the last step's by a second or more: when the
                    # first in this read is this step's, so are the others
                    if found and int(found[0]) < c.since:
                        found = [ts for ts in found if int(ts) >= c.since]
                    hist = c.hist
                    last = BUCKETS - 1
                    for sent in map(int, found):
                        bucket = (now - sent) // BUCKET_US
                        hist[bucket if bucket < last else last] += 1
                    c.delivered += len(found)
                else:
                    c.delivered += data.count(c.marker, 0, end)
        else:
            payloads: list[bytes] = []
            end = self.scan(data, payloads)
            for unit in payloads:
                for message in self.messages(unit):
                    try:
                        self.on_message(json.loads(message))
                    except ValueError:
                        self.fail(f"not JSON: {message[:100]!r}")
        self.buf = data[end:] if end < len(data) else b""

    def done(self) -> None:
        if not self.subscribed:
            self.subscribed = True
            self.c.subscribed += 1
            if not self.ready.done():
                self.ready.set_result(None)

    def fail(self, text: str) -> None:
        self.c.error(f"{type(self).__name__}: {text}")
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(text))
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.subscribed:
            self.c.closed += 1
            self.c.error(f"{type(self).__name__}: connection lost ({exc})")
        elif not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost before subscribing ({exc})"))


class WebSocketSubscriber(Subscriber):
    def request(self) -> bytes:
        return (
            b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % self.port
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # the commands follow the upgrade request: the server reads them once upgraded
        self.send(CONNECT + b"\n" + SUBSCRIBE.encode())

    def send(self, message: bytes) -> None:
        """A masked text frame (the mask is zero: XOR leaves the bytes as they are)."""
        size = len(message)
        if size < 126:
            head = bytes((0x81, 0x80 | size))
        else:
            head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + message)

    def scan(self, data: bytes, collect: list[bytes] | None) -> int:
        pos, size = 0, len(data)
        while pos + 2 <= size:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if pos + 4 > size:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if pos + 10 > size:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            stop = start + length
            if stop > size:
                break
            opcode = data[pos] & 0x0F
            if opcode == 8:
                self.fail("close frame")
            elif opcode == 9:  # a WebSocket ping: pong with its payload
                assert self.transport is not None
                self.transport.write(bytes((0x8A, 0x80 | length)) + b"\0\0\0\0" + data[start:stop])
            elif length == 2 and data[start:stop] == b"{}":  # the hub's ping
                self.send(b"{}")
            elif collect is not None:
                collect.append(data[start:stop])
            elif self.c.measuring:
                self.c.units += 1
            pos = stop
        return pos


class ChunkedSubscriber(Subscriber):
    """A stream: an HTTP/1.1 response with chunked transfer encoding."""

    def scan(self, data: bytes, collect: list[bytes] | None) -> int:
        pos, size = 0, len(data)
        measuring = self.c.measuring
        while True:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(data[pos:eol], 16)
            start = eol + 2
            stop = start + length
            if stop + 2 > size:
                break
            pos = stop + 2
            if not length:  # the last chunk: the server ended the stream
                self.fail("the stream ended")
                break
            if length in (3, 10) and data[start:stop] in (b"{}\n", b"data: {}\n\n"):
                self.pong()  # the hub's ping, alone in its chunk
            elif collect is not None:
                collect.append(data[start:stop])
            elif measuring:
                self.c.units += 1
        return pos

    def pong(self) -> None:
        """Unidirectional clients send no pongs."""


class HTTPStreamSubscriber(ChunkedSubscriber):
    def request(self) -> bytes:
        return (
            b"POST /connection/http_stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (self.port, len(CONNECT), CONNECT)
        )

    def on_message(self, message: dict[str, Any]) -> None:
        connect = message.get("connect")
        if message.get("id") == 1 and connect:
            self.session, self.node = connect["session"], connect["node"]
            self.post(SUBSCRIBE)
        else:
            super().on_message(message)

    def pong(self) -> None:
        self.post("{}")

    def post(self, command: str) -> None:
        """Send a command through ``/emulation``."""
        self.emulation.post_soon(self, command)


class SSESubscriber(HTTPStreamSubscriber):
    def request(self) -> bytes:
        query = urllib.parse.quote(CONNECT.decode(), safe="")
        return b"GET /connection/sse?cf_connect=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (
            query.encode(),
            self.port,
        )

    def messages(self, payload: bytes) -> list[bytes]:
        return [line[6:] for line in payload.split(b"\n") if line.startswith(b"data: ")]


class UniHTTPStreamSubscriber(ChunkedSubscriber):
    BODY = json.dumps({"subs": {CHANNEL: {}}}).encode()

    def request(self) -> bytes:
        return (
            b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (self.port, len(self.BODY), self.BODY)
        )

    def on_message(self, message: dict[str, Any]) -> None:
        if "disconnect" in message:
            self.fail(f"disconnected: {message['disconnect']}")
        elif CHANNEL in (message.get("connect") or {}).get("subs", {}):
            self.done()
        elif "connect" in message:
            self.fail(f"connected without the subscription: {message}")


SUBSCRIBERS: dict[str, type[Subscriber]] = {
    "websocket": WebSocketSubscriber,
    "http_stream": HTTPStreamSubscriber,
    "sse": SSESubscriber,
    "uni_http_stream": UniHTTPStreamSubscriber,
}


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _worker(cfg: dict[str, Any]) -> None:
    """Connect and subscribe ``cfg["conns"]`` clients, then measure steps.

    JSON lines with the runner: prints ``ready``; then for each ``start`` (counters
    reset) prints ``started``, and for each ``stop`` waits until every subscriber has
    the step's ``count`` messages (or ``drain`` seconds) and prints ``result``; exits
    at ``quit`` or the end of stdin."""
    loop = asyncio.get_running_loop()
    c = Counters()
    emulation = Emulation(cfg["port"])
    kind = SUBSCRIBERS[cfg["transport"]]
    gate = asyncio.Semaphore(100)  # handshakes in flight
    every = max(1, int(cfg.get("latency_every", 1)))
    subscribers: list[Subscriber] = []

    async def one(index: int) -> None:
        sub = kind(c, emulation, cfg["port"], record=index % every == 0)
        subscribers.append(sub)
        async with gate:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: sub, "127.0.0.1", cfg["port"]), 30
                )
                await asyncio.wait_for(sub.ready, 60)
            except Exception as exc:  # noqa: BLE001  (counted and reported)
                c.error(f"subscriber {index}: {type(exc).__name__}: {exc}")

    started = time.monotonic()
    await asyncio.gather(*(one(cfg["first"] + i) for i in range(cfg["conns"])))
    connect_s = time.monotonic() - started
    await emulation.close()  # no idle keep-alive connections left (pongs would open some)
    emit(
        "ready",
        conns=cfg["conns"],
        subscribed=c.subscribed,
        recording=sum(1 for s in subscribers if s.record and s.subscribed),
        connect_s=round(connect_s, 3),
        errors=c.errors,
    )
    cpu0 = 0.0
    t0 = 0.0
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line.strip() or line.strip() == "quit":
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "start":
            c.hist = [0] * BUCKETS
            c.delivered = c.units = c.wire = 0
            c.since = cmd["since"]
            c.marker = b',"s":%d,' % cmd["step"]
            c.measuring = True
            cpu0, t0 = cpu_self(), time.monotonic()
            emit("started")
        elif cmd["cmd"] == "stop":
            expected = cmd["count"] * c.subscribed
            deadline = time.monotonic() + cmd["drain"]
            while c.delivered < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            c.measuring = False
            emit(
                "result",
                delivered=c.delivered,
                expected=expected,
                hist={str(i): n for i, n in enumerate(c.hist) if n},
                units=c.units,
                wire=c.wire,
                closed=c.closed,
                cpu_s=round(cpu_self() - cpu0, 4),
                seconds=round(time.monotonic() - t0, 4),
                errors=c.errors[-5:],
            )
    os._exit(0)  # the kernel closes the sockets


# --- the publisher (a process of its own, on the subscribers' core) --------------------------


async def _publisher(cfg: dict[str, Any]) -> None:
    """Publish steps on keep-alive connections to the server API; JSON lines as the workers."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(cfg["conns"]):
        conns.append(await asyncio.open_connection("127.0.0.1", cfg["api_port"]))
    emit("ready")
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line.strip() or line.strip() == "quit":
            break
        cmd = json.loads(line)
        emit("published", **await _publish_step(conns, cmd["rate"], cmd["count"], cmd["step"]))
    os._exit(0)


async def _publish_step(
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    rate: float,
    count: int,
    step: int,
) -> dict[str, Any]:
    """``count`` publications at ``rate``/s; each one at its time or, when every connection
    waits for an answer, as soon as one is free (its lag is reported)."""
    due: asyncio.Queue[float | None] = asyncio.Queue()
    lags: list[float] = []
    errors: list[str] = []
    cpu0 = cpu_self()

    async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            at = await due.get()
            if at is None:
                return
            lags.append(time.monotonic() - at)
            data = payload(now_us(), step)
            body = b'{"channel":"%s","data":%b}' % (CHANNEL.encode(), data)
            writer.write(
                b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            answer = await reader.readexactly(int(length.group(1))) if length else b""
            if b" 200 " not in head[: head.find(b"\r\n")] or b'"error"' in answer:
                errors.append(f"{head[:40]!r} {answer[:200]!r}")

    tasks = [asyncio.create_task(sender(r, w)) for r, w in conns]
    start = time.monotonic() + 0.01
    for i in range(count):
        at = start + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait(at)
    for _ in tasks:
        due.put_nowait(None)
    await asyncio.gather(*tasks)
    seconds = time.monotonic() - start
    lags.sort()
    return {
        "sent": len(lags),
        "seconds": round(seconds, 4),
        "lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 2) if lags else 0.0,
        "lag_max_ms": round(lags[-1] * 1000, 2) if lags else 0.0,
        "errors": len(errors),
        "first_errors": errors[:3],
        "cpu_s": round(cpu_self() - cpu0, 4),
    }


def helper_main(role: str, cfg: dict[str, Any]) -> None:
    main = _worker if role == "worker" else _publisher
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of tidings
        asyncio.run(main(cfg))
    else:
        uvloop.run(main(cfg))


# --- the runner ------------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    subscribers: int
    workers: int  # subscriber processes
    start: float  # msg/s of the first step
    factor: float
    cap: float  # no step above this rate
    rates: list[float] = field(default_factory=list)  # fixed rates instead of the ramp
    step: float = 5.0  # seconds of publishing per step
    drain: float = 3.0  # seconds to wait for the stragglers
    gap: float = 1.0
    confirm: bool = True  # run a failed step once more; it counts if it fails again
    refine: int = 2  # bisection steps between the best pass and the first failure
    idle_conns: int = 2000
    latency_every: int = 1
    pub_conns: int = 8
    quiet_wait: float = 30.0
    transports: list[str] = field(default_factory=lambda: list(TRANSPORTS))


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    plan = Plan(
        quick=quick,
        subscribers=args.subscribers or (200 if quick else 1000),
        workers=args.workers or 2,
        start=50.0,
        factor=4.0 if quick else 2.0,
        cap=200.0 if quick else 12800.0,
        step=args.step or (2.0 if quick else 5.0),
        drain=2.0 if quick else 3.0,
        confirm=not quick,
        refine=0 if quick else 2,
        idle_conns=args.idle_conns or (200 if quick else 2000),
        latency_every=args.latency_every,
        quiet_wait=5.0 if quick else 30.0,
    )
    if args.rates:
        plan.rates = [float(r) for r in args.rates.split(",")]
    if args.transports:
        plan.transports = args.transports.split(",")
    return plan


def server_config(path: Path) -> Path:
    """What --dev leaves on, minus what would not be a fan-out benchmark."""
    lines = [
        "# bench/streams.py: tidings serve --dev --config <this file>",
        'log_level = "warning"',
        "# --dev turns these on for every channel; bench/tidings-bench.toml (run.py) has them off",
        "presence = false",
        "join_leave = false",
        "force_push_join_leave = false",
        "history_size = 0",
        "history_ttl = 0",
        "force_recovery = false",
        "allowed_delta_types = []",
        "",
        "[client]",
        "# the benchmark's rates, not the per-client command rate limit",
        "command_rate_limit = 0",
        "# no pings (nor pongs through /emulation) during a run",
        "ping_interval = 3600",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(tag: str) -> Server:
    config = server_config(RAW / "streams" / "tidings-streams.toml")

    def argv(port: int, api_port: int, redis_url: str | None) -> list[str]:
        return [
            str(TIDINGS_PY), "-m", "tidings", "serve", "--dev", "--config", str(config),
            "--port", str(port), "--api-port", str(api_port),
        ]  # fmt: skip

    spec = Spec("tidings", "tidings", "centrifugo", "/connection/websocket", "", argv)
    return Server(spec, tag=f"streams-{tag}").__enter__()


class Helpers(generators.Processes):
    """Helper processes of this script (subscribers or the publisher), pinned to the
    generator's core with the generator's priority, talking JSON lines."""

    noun, nouns = "helper", "helpers"

    def __init__(self, tag: str, role: str, cfgs: list[dict[str, Any]]) -> None:
        super().__init__()
        (RAW / "logs").mkdir(parents=True, exist_ok=True)
        for i, cfg in enumerate(cfgs):
            self.spawn(
                ["nice", "-n", str(run.GEN_NICE), "taskset", "-c", run.GEN_CORES, str(TIDINGS_PY),
                 str(Path(__file__).resolve()), f"--{role}", json.dumps(cfg)],
                RAW / "logs" / f"streams-{role}-{tag}-{i}.log", cwd=ROOT,
            )  # fmt: skip


def subscribers(
    tag: str, server: Server, transport: str, conns: int, procs: int, latency_every: int = 1
) -> Helpers:
    procs = max(1, min(procs, conns))
    cfgs, first = [], 0
    for i in range(procs):
        share = conns // procs + (1 if i < conns % procs else 0)
        cfgs.append({"port": server.port, "transport": transport, "conns": share,
                     "first": first, "latency_every": latency_every})  # fmt: skip
        first += share
    return Helpers(tag, "worker", cfgs)


def percentiles(hist: dict[int, int]) -> dict[str, float | None]:
    """p50, p99 and max in ms from a histogram of BUCKET_US buckets (upper edges)."""
    total = sum(hist.values())
    out: dict[str, float | None] = {"p50_ms": None, "p99_ms": None, "max_ms": None}
    if not total:
        return out
    seen = 0
    wanted = [("p50_ms", 0.50 * total), ("p99_ms", 0.99 * total)]
    for bucket in sorted(hist):
        seen += hist[bucket]
        while wanted and seen >= wanted[0][1]:
            out[wanted.pop(0)[0]] = (bucket + 1) * BUCKET_US / 1000
        out["max_ms"] = (bucket + 1) * BUCKET_US / 1000
    return out


def run_step(
    plan: Plan, server: Server, subs: Helpers, pub: Helpers, subscribed: int,
    rate: float, step_id: int,
) -> dict[str, Any]:  # fmt: skip
    """One step: publish ``rate``/s for ``plan.step`` seconds; what every subscriber got."""
    count = max(1, round(rate * plan.step))
    pid = server.pids[0]
    subs.tell({"cmd": "start", "step": step_id, "since": now_us()})
    subs.expect("started", 30)
    metrics0, cpu0, cores0 = server.metrics(), cpu_seconds(pid), core_times()
    t0 = time.monotonic()
    pub.tell({"cmd": "publish", "rate": rate, "count": count, "step": step_id})
    published = pub.expect("published", plan.step * 3 + 60)[0]
    subs.tell({"cmd": "stop", "count": count, "drain": plan.drain})
    results = subs.expect("result", plan.drain + 60)
    seconds = time.monotonic() - t0
    cpu1, cores1, rss = cpu_seconds(pid), core_times(), rss_kib(pid)
    metrics = run._metrics_delta(metrics0, server.metrics())
    hist: dict[int, int] = {}
    for r in results:
        for bucket, n in r["hist"].items():
            hist[int(bucket)] = hist.get(int(bucket), 0) + n
    delivered = sum(r["delivered"] for r in results)
    expected = count * subscribed
    client_cpu = sum(r["cpu_s"] for r in results)
    wall = max(r["seconds"] for r in results)
    lat = percentiles(hist)
    frames = metrics.get("tidings_frames_sent_total", 0.0)
    closed = sum(r["closed"] for r in results)
    st: dict[str, Any] = {
        "rate": rate,
        "count": count,
        "offered_per_s": rate * subscribed,
        "expected": expected,
        "delivered": delivered,
        "sampled": sum(hist.values()),
        # every message published in count / rate seconds: deliveries per second of that
        "deliveries_per_s": delivered / (count / rate),
        **lat,
        "server_cpu_pct": round(100.0 * (cpu1 - cpu0) / seconds, 1),
        "server_cpu_us_per_delivery": round((cpu1 - cpu0) / max(1, delivered) * 1e6, 3),
        "server_rss_mb": round(rss / 1024, 1),
        "client_cpu_pct": round(100.0 * client_cpu / wall, 1) if wall else 0.0,
        "client_cpu_us_per_delivery": round(client_cpu / max(1, delivered) * 1e6, 3),
        "publisher_cpu_pct": round(100.0 * published["cpu_s"] / seconds, 1),
        "core_busy_pct": busy_pct(cores0, cores1),
        "background_pct": [],
        "pub_lag_p99_ms": published["lag_p99_ms"],
        "pub_lag_max_ms": published["lag_max_ms"],
        "pub_seconds": published["seconds"],
        "pub_errors": published["errors"],
        "messages_per_write": round(delivered / frames, 2) if frames else None,
        "wire_bytes_per_delivery": round(sum(r["wire"] for r in results) / max(1, delivered), 1),
        "units_with_messages": sum(r["units"] for r in results),
        "closed": closed,
        "errors": [e for r in results for e in r["errors"]][:5] + published["first_errors"],
        "seconds": round(seconds, 2),
    }
    cores = st["core_busy_pct"]
    if len(cores) >= 2:
        # other work on the cores (approximately: the kernel's softirq time for our
        # sockets is in the busy time but not always in the processes' CPU time)
        ours0 = st["client_cpu_pct"] + st["publisher_cpu_pct"]
        st["background_pct"] = [
            round(max(0.0, cores[0] - ours0), 1),
            round(max(0.0, cores[1] - st["server_cpu_pct"]), 1),
        ]
    st["pass"] = (
        delivered == expected
        and lat["p99_ms"] is not None
        and lat["p99_ms"] <= P99_LIMIT_MS
        and published["lag_p99_ms"] <= P99_LIMIT_MS
        and not published["errors"]
        and not closed
    )
    return st


def _step_line(transport: str, st: dict[str, Any]) -> str:
    return (
        f"  {transport} {st['rate']:g} msg/s: {st['delivered']:,}/{st['expected']:,} delivered, "
        f"{st['deliveries_per_s']:,.0f}/s, p50 {st['p50_ms']} p99 {st['p99_ms']} max "
        f"{st['max_ms']} ms; server CPU {st['server_cpu_pct']}%, clients {st['client_cpu_pct']}% "
        f"({st['client_cpu_us_per_delivery']} µs/delivery), publisher {st['publisher_cpu_pct']}% "
        f"(lag p99 {st['pub_lag_p99_ms']} ms); cores {st['core_busy_pct']}%; "
        f"{st['messages_per_write']} msgs/write -> {'pass' if st['pass'] else 'FAIL'}"
    )


def limit_of(st: dict[str, Any] | None) -> str | None:
    """What stopped a step: the server's core, the clients' core, other work on the
    machine, or none of them (latency)."""
    if st is None:
        return None
    if st["server_cpu_pct"] >= LIMIT_BUSY_PCT:
        return "server"
    if st["client_cpu_pct"] + st["publisher_cpu_pct"] >= CLIENTS_BUSY_PCT:
        return "clients"
    if max(st.get("background_pct") or [0.0]) >= BACKGROUND_PCT:
        return "other work on the machine"
    return "latency"


def measure_fanout(plan: Plan, transport: str) -> dict[str, Any]:
    """The sweep of one transport: steps until one fails, on one set of connections."""
    tag = f"fanout-{transport}"
    if plan.quiet_wait:
        run.wait_quiet(plan.quiet_wait)
    server = start_server(tag)
    steps: list[dict[str, Any]] = []
    try:
        subs = subscribers(tag, server, transport, plan.subscribers, plan.workers,
                           plan.latency_every)  # fmt: skip
        pub = Helpers(tag, "publisher", [{"api_port": server.api_port, "conns": plan.pub_conns}])
        try:
            ready = subs.expect("ready", 240)
            pub.expect("ready", 30)
            subscribed = sum(r["subscribed"] for r in ready)
            connect_s = max(r["connect_s"] for r in ready)
            log(f"  {transport}: {subscribed}/{plan.subscribers} subscribed in {connect_s:.1f}s")
            if subscribed < plan.subscribers:
                raise RuntimeError(
                    f"{subscribed}/{plan.subscribers} subscribed: "
                    f"{[e for r in ready for e in r['errors']][:3]}"
                )
            time.sleep(1.0)

            def step(rate: float) -> dict[str, Any]:
                st = run_step(plan, server, subs, pub, subscribed, rate, len(steps) + 1)
                steps.append(st)
                log(_step_line(transport, st))
                time.sleep(plan.gap)
                return st

            def passes(rate: float) -> bool:
                if step(rate)["pass"]:
                    return True
                if plan.confirm:  # once more: it counts only if it fails again
                    steps[-1]["retried"] = True
                    return bool(step(rate)["pass"])
                return False

            best = fail = None
            for rate in plan.rates or ramp(plan):
                if passes(rate):
                    best = rate
                else:
                    fail = rate
                    if not plan.rates:
                        break
            for _ in range(plan.refine if best and fail and not plan.rates else 0):
                assert best is not None and fail is not None
                mid = round(math.sqrt(best * fail), 1)
                if mid <= best or mid >= fail:
                    break
                if passes(mid):
                    best = mid
                else:
                    fail = mid
        finally:
            subs.close()
            pub.close()
    finally:
        server.__exit__()
    return sweep_summary(transport, steps, subscribed, connect_s, plan)


def ramp(plan: Plan) -> list[float]:
    rates, rate = [], plan.start
    while rate <= plan.cap:
        rates.append(rate)
        rate *= plan.factor
    return rates


def sweep_summary(
    transport: str, steps: list[dict[str, Any]], subscribed: int, connect_s: float, plan: Plan
) -> dict[str, Any]:
    passed = [s for s in steps if s["pass"]]
    best = max(passed, key=lambda s: s["rate"]) if passed else None
    # the limit: the lowest failure above the best pass (one below it is noise)
    failed = [s for s in steps if not s["pass"] and s["rate"] > (best["rate"] if best else 0)]
    first_fail = min(failed, key=lambda s: s["rate"]) if failed else None
    return {
        "transport": transport,
        "subscribers": subscribed,
        "size": SIZE,
        "connect_s": connect_s,
        "steps": steps,
        "best": best,
        "max_rate": best["rate"] if best else 0.0,
        "max_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
        "first_fail": first_fail,
        "first_fail_rate": first_fail["rate"] if first_fail else None,
        "limit": limit_of(first_fail),
        "ramp_exhausted": bool(steps) and first_fail is None,
        "fixed_rates": bool(plan.rates),
    }


def measure_memory(plan: Plan, transport: str) -> dict[str, Any]:
    """Server RSS per idle subscribed connection of one transport."""
    tag = f"memory-{transport}"
    if plan.quiet_wait:
        run.wait_quiet(plan.quiet_wait)
    server = start_server(tag)
    pid = server.pids[0]
    step_plan = Plan(**{**asdict(plan), "step": 1.0, "drain": 10.0})
    try:
        # Warm-up: the first connections and publication load code and fill caches that
        # later connections reuse; they are not part of a connection's cost.
        pub = Helpers(tag, "publisher", [{"api_port": server.api_port, "conns": 1}])
        try:
            pub.expect("ready", 30)
            warm = subscribers(f"{tag}-warm", server, transport, 10, 1)
            try:
                warm_subscribed = sum(r["subscribed"] for r in warm.expect("ready", 60))
                run_step(step_plan, server, warm, pub, warm_subscribed, 1.0, 1)
            finally:
                warm.close()
            time.sleep(1.5)
            rss0 = rss_kib(pid)
            subs = subscribers(tag, server, transport, plan.idle_conns, plan.workers)
            try:
                ready = subs.expect("ready", 300)
                subscribed = sum(r["subscribed"] for r in ready)
                time.sleep(2.0)
                rss_idle = rss_kib(pid)
                st = run_step(step_plan, server, subs, pub, subscribed, 1.0, 2)
                time.sleep(1.5)
                rss_after = rss_kib(pid)
            finally:
                subs.close()
        finally:
            pub.close()
    finally:
        server.__exit__()
    k = max(1, subscribed)
    row = {
        "transport": transport,
        "conns": plan.idle_conns,
        "subscribed": subscribed,
        "rss_base_kib": rss0,
        "rss_idle_kib": rss_idle,
        "rss_after_publication_kib": rss_after,
        "idle_kib_per_conn": round((rss_idle - rss0) / k, 3),
        "after_publication_kib_per_conn": round((rss_after - rss0) / k, 3),
        "delivered": st["delivered"],
        "errors": [e for r in ready for e in r["errors"]][:5],
    }
    log(
        f"  {transport}: {row['idle_kib_per_conn']:.2f} KiB per idle subscribed connection, "
        f"{row['after_publication_kib_per_conn']:.2f} KiB after one publication "
        f"(base {rss0 / 1024:.1f} MiB; {subscribed}/{plan.idle_conns} subscribed, "
        f"{st['delivered']}/{subscribed} got it)"
    )
    return row


# --- machine, report, chart ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info = procstats.machine(["tidings", "websockets", "msgspec", "uvloop", "httptools"])
    return info


def _limit_text(row: dict[str, Any]) -> str:
    st = row.get("first_fail")
    if st is None:
        return "none up to the last rate" if row.get("ramp_exhausted") else "–"
    why = []
    if st["delivered"] < st["expected"]:
        why.append(f"{st['expected'] - st['delivered']:,} not delivered")
    if st["p99_ms"] is not None and st["p99_ms"] > P99_LIMIT_MS:
        why.append(f"p99 {st['p99_ms']:.1f} ms")
    if st["pub_lag_p99_ms"] > P99_LIMIT_MS:
        why.append(f"publisher lag p99 {st['pub_lag_p99_ms']:.0f} ms")
    if st["closed"]:
        why.append(f"{st['closed']} closed")
    return f"{st['rate']:g} msg/s: {', '.join(why) or 'failed'}; the limit: {row['limit']}"


def server_cost(fanout: dict[str, dict[str, Any]]) -> tuple[float, dict[str, dict[str, Any]]]:
    """The highest rate at which every transport had everything delivered, and each one's
    step there: the server's CPU per delivery at the same load, whatever the clients'
    limit."""
    complete = [
        {s["rate"]: s for s in row["steps"] if s["delivered"] == s["expected"]}
        for row in fanout.values()
    ]
    common = set.intersection(*(set(c) for c in complete)) if complete else set()
    if not common:
        return 0.0, {}
    rate = max(common)
    return rate, {t: c[rate] for t, c in zip(fanout, complete, strict=True)}


def write_report(summary: dict[str, Any], outdir: Path) -> None:
    meta = summary.get("meta", {})
    m = meta.get("machine", {})
    env = m.get("tidings_env") if isinstance(m.get("tidings_env"), dict) else {}
    plan = meta.get("plan", {})
    runs = summary.get("runs", {})
    fanout: dict[str, dict[str, Any]] = runs.get("fanout", {})
    memory: dict[str, dict[str, Any]] = runs.get("memory", {})
    for sweep in fanout.values():  # as this version of the script judges it
        sweep["limit"] = limit_of(sweep.get("first_fail"))
    lines = [
        "# tidings streams report: HTTP-streaming and SSE beside WebSocket",
        "",
        f"Generated {m.get('date', '?')} from commit `{m.get('git_commit', '?')}`"
        + (" (with uncommitted changes in src/)" if m.get("git_dirty") else "")
        + f" by `{meta.get('command', 'bench/streams.py')}`"
        + (f" in {meta['duration_s'] / 60:.1f} minutes" if meta.get("duration_s") else "")
        + ("; **quick mode** (a smoke test, not the measurement)" if plan.get("quick") else "")
        + ".",
        "",
        "## Machine and method",
        "",
        f"- **CPU**: {m.get('nproc', '?')} cores, {m.get('cpu_model', '?')}; kernel "
        f"{m.get('kernel', '?')}; load average at start {' '.join(m.get('loadavg_start', []))}, "
        f"at end {' '.join(meta.get('loadavg_end', []))}.",
        f"- **tidings** {env.get('tidings', '?')} on Python {env.get('python', '?')}; websockets "
        f"{env.get('websockets', '?')}, msgspec {env.get('msgspec', '?')}, uvloop "
        f"{env.get('uvloop', '?')}, httptools {env.get('httptools', '?')}.",
        f"- **Server**: `tidings serve --dev --config <file>` on core {run.SERVER_CORES} "
        "(`taskset`), a fresh one for each transport and part; the file turns off what `--dev` "
        "adds to channels (presence, join/leave, history, recovery, deltas), as "
        "bench/tidings-bench.toml has it for run.py's fan-out, and sets `client.command_rate_limit "
        "= 0` and `client.ping_interval = 3600` (no pings, nor pongs through `/emulation`, "
        "during a run).",
        f"- **Clients**: {plan.get('workers', '?')} subscriber processes (asyncio + uvloop, raw "
        f"sockets, one regular-expression scan per read finds the timestamps) and a publisher "
        f"process ({plan.get('pub_conns', '?')} keep-alive connections to `POST /api/publish`), "
        f"all on core {run.GEN_CORES} with nice {run.GEN_NICE}. *clients CPU* = the subscriber "
        "processes' user+sys time over the step; the core's busy time also counts the publisher "
        "and the kernel's receive work.",
        f"- **Load**: {plan.get('subscribers', '?'):,} subscribers of one channel; {SIZE}-byte "
        "JSON publications carrying their send time (CLOCK_MONOTONIC µs); a step publishes for "
        f"{plan.get('step', '?')} s and waits up to {plan.get('drain', '?')} s for the rest. "
        + (
            f"Fixed rates {plan.get('rates')} msg/s."
            if plan.get("rates")
            else f"Rates from {plan.get('start', '?'):g} msg/s, x{plan.get('factor', '?'):g} "
            f"until a step fails (up to {plan.get('cap', '?'):g})"
            + (
                ", a failed step run once more (it counts if it fails again)"
                if plan.get("confirm")
                else ""
            )
            + (f", then {plan.get('refine')} bisection steps" if plan.get("refine") else "")
            + "; connections are kept across steps."
        )
        + " A step **passes** when every subscriber got every message, p99 <= "
        f"{P99_LIMIT_MS:g} ms and the publisher kept its schedule (p99 of its lag <= "
        f"{P99_LIMIT_MS:g} ms). Latency: "
        + (
            "every delivery to every subscriber"
            if plan.get("latency_every", 1) == 1
            else f"every delivery to every {plan.get('latency_every')}th subscriber"
        )
        + f" ({BUCKET_US} µs buckets, upper edges).",
        "- **Limit** of a failed step: *server* when the server's CPU was >= "
        f"{LIMIT_BUSY_PCT:g}%; else *clients* when the subscribers' and the publisher's CPU "
        f"were >= {CLIENTS_BUSY_PCT:g}% of core {run.GEN_CORES} (the server's limit is then "
        f"higher than measured); else *other work on the machine* when other work took >= "
        f"{BACKGROUND_PCT:g}% of a core; else *latency*.",
        "",
    ]
    ws = fanout.get("websocket")
    lines += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for transport in TRANSPORTS[1:]:
        row = fanout.get(transport)
        if not row:
            continue
        name = LABELS[transport] + ("" if transport in TARGETED else " (not named by the issue)")
        target = (
            f"{name} fan-out, {plan.get('subscribers', '?'):,} subscribers x {SIZE} B: >= "
            f"{TARGET_RATIO:.0%} of WebSocket's deliveries/s at p99 <= {P99_LIMIT_MS:g} ms"
        )
        if not ws or not ws["max_deliveries_per_s"]:
            lines.append(f"| {target} | WebSocket not measured or nothing passed | n/a |")
            continue
        ratio = row["max_deliveries_per_s"] / ws["max_deliveries_per_s"]
        text = (
            f"{row['max_deliveries_per_s']:,.0f} / {ws['max_deliveries_per_s']:,.0f} "
            f"deliveries/s = {ratio:.2f}x ({row['max_rate']:g} vs {ws['max_rate']:g} msg/s)"
        )
        if ws.get("ramp_exhausted"):
            text += "; WebSocket passed every rate tried: its limit is higher, the ratio lower"
        elif ws.get("limit") not in ("server", None):
            text += (
                f"; WebSocket's limit here was {ws['limit']}, not the server's: the ratio "
                "to a server-bound WebSocket is lower"
            )
        lines.append(f"| {target} | {text} | {met(ratio >= TARGET_RATIO)} |")
    base = memory.get("websocket")
    for transport, row in memory.items():
        if transport == "websocket":
            continue
        versus = (
            f" vs WebSocket {base['idle_kib_per_conn']:.2f} KiB "
            f"({row['idle_kib_per_conn'] / base['idle_kib_per_conn']:.2f}x)"
            if base and base["idle_kib_per_conn"] > 0
            else ""
        )
        lines.append(
            f"| memory per idle {LABELS[transport]} connection, beside WebSocket's | "
            f"{row['idle_kib_per_conn']:.2f} KiB{versus} at {row['subscribed']:,} connections "
            "| reported (no target) |"
        )
    cost_rate, cost = server_cost(fanout)
    if cost.get("websocket"):
        ws_cost = cost["websocket"]["server_cpu_us_per_delivery"]
        for transport, st in cost.items():
            if transport == "websocket" or not st["server_cpu_us_per_delivery"]:
                continue
            lines.append(
                f"| (supplementary) {LABELS[transport]}: the server's CPU per delivery beside "
                f"WebSocket's at the same load ({cost_rate:g} msg/s, every transport's highest "
                "rate with everything delivered) | "
                f"{st['server_cpu_us_per_delivery']:.2f} vs {ws_cost:.2f} µs: WebSocket's cost "
                f"/ this one's = {ws_cost / st['server_cpu_us_per_delivery']:.2f}x (the share of "
                "WebSocket's throughput a server-bound run would give, if cost per delivery "
                "stayed as it is at this rate) | reported |"
            )
    lines.append("")
    if fanout:
        lines += [
            "## Fan-out: highest passing step of each transport",
            "",
            "| transport | max msg/s | deliveries/s | vs WebSocket | p50 ms | p99 ms | server CPU "
            "| clients CPU | cores busy % | bytes/delivery | messages/write | first failing step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for transport, row in fanout.items():
            best = row.get("best")
            versus = (
                f"{row['max_deliveries_per_s'] / ws['max_deliveries_per_s']:.2f}x"
                if ws and ws["max_deliveries_per_s"]
                else "–"
            )
            if best is None:
                lines.append(
                    f"| {LABELS[transport]} | nothing passed | | | | | | | | | | "
                    f"{_limit_text(row)} |"
                )
                continue
            lines.append(
                f"| {LABELS[transport]} | {row['max_rate']:g} | {row['max_deliveries_per_s']:,.0f} "
                f"| {versus} | {ms(best['p50_ms'])} | {ms(best['p99_ms'])} | "
                f"{best['server_cpu_pct']:.0f}% | {best['client_cpu_pct']:.0f}% | "
                f"{best['core_busy_pct']} | {best['wire_bytes_per_delivery']:.0f} | "
                f"{best['messages_per_write'] or '–'} | {_limit_text(row)} |"
            )
        lines += [
            "",
            "*bytes/delivery*: every byte the subscribers read (framing included) / deliveries; "
            "*messages/write*: deliveries / the hub's `tidings_frames_sent` (its writes coalesce "
            "the messages a connection has waiting into one frame or chunk). *other work* in "
            f"the steps below: core {run.GEN_CORES}'s busy time minus the clients' and the "
            f"publisher's CPU, core {run.SERVER_CORES}'s minus the server's (approximate: the "
            "kernel's work for the sockets counts in the busy time); a shared machine shows there.",
            "",
            "### Every step",
            "",
            "| transport | msg/s | delivered | deliveries/s | p50 ms | p99 ms | max ms | server CPU "
            "| server µs/delivery | clients CPU | clients µs/delivery | publisher lag p99 ms "
            "| cores busy % | other work % | pass |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        for transport, row in fanout.items():
            for st in row["steps"]:
                lines.append(
                    f"| {LABELS[transport]} | {st['rate']:g} | {st['delivered']:,}/"
                    f"{st['expected']:,} | {st['deliveries_per_s']:,.0f} | {ms(st['p50_ms'])} | "
                    f"{ms(st['p99_ms'])} | {ms(st['max_ms'])} | {st['server_cpu_pct']:.0f}% | "
                    f"{st['server_cpu_us_per_delivery']:.2f} | {st['client_cpu_pct']:.0f}% | "
                    f"{st['client_cpu_us_per_delivery']:.2f} | {st['pub_lag_p99_ms']:.1f} | "
                    f"{st['core_busy_pct']} | {st.get('background_pct') or '–'} | "
                    f"{'yes' if st['pass'] else 'no'}"
                    + (" (retried)" if st.get("retried") else "")
                    + " |"
                )
        lines.append("")
    if memory:
        lines += [
            "## Memory per idle subscribed connection",
            "",
            f"Server RSS (`VmRSS`) with {plan.get('idle_conns', '?'):,} idle subscribed "
            "connections minus RSS before them (after a warm-up of 10 connections and one "
            "publication that came and went), per connection; then again once each got one "
            f"{SIZE}-byte publication (buffers allocated on first use show there). Socket buffers "
            "are the kernel's, not in RSS.",
            "",
            "| transport | subscribed | base RSS MiB | KiB/connection, idle | KiB/connection, after "
            "one publication | vs WebSocket (idle / after) |",
            "|---|---|---:|---:|---:|---|",
        ]
        for transport, row in memory.items():
            versus = scripting.memory_versus(row, base)
            lines.append(
                f"| {LABELS[transport]} | {row['subscribed']:,}/{row['conns']:,} | "
                f"{row['rss_base_kib'] / 1024:.1f} | {row['idle_kib_per_conn']:.2f} | "
                f"{row['after_publication_kib_per_conn']:.2f} | {versus} |"
            )
        lines.append("")
    if summary.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in summary["errors"]] + [""]
    if (outdir / "streams.png").exists():
        lines += ["![deliveries/s and p99 of each step](streams.png)", ""]
    (outdir / "REPORT.md").write_text("\n".join(lines))


def write_chart(summary: dict[str, Any], outdir: Path) -> bool:
    """streams.png: p99 against deliveries/s of every step; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fanout = summary.get("runs", {}).get("fanout", {})
    if not fanout:
        return True
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for transport, row in fanout.items():
        steps = sorted(
            (s for s in row["steps"] if s["p99_ms"] is not None), key=lambda s: s["rate"]
        )
        ax.plot(
            [s["deliveries_per_s"] for s in steps],
            [s["p99_ms"] for s in steps],
            marker="o",
            label=LABELS[transport],
        )
    ax.axhline(P99_LIMIT_MS, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("deliveries/s")
    ax.set_ylabel("p99 latency, ms")
    ax.set_title(f"Fan-out, {SIZE} B, one channel, server on one core")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "streams.png", dpi=110)
    plt.close(fig)
    return True


def report(summary: dict[str, Any], outdir: Path) -> None:
    scripting.draw_chart(Path(__file__).resolve(), summary, outdir, "streams.png", write_chart)
    write_report(summary, outdir)


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 subscribers, 50 and 200 msg/s")
    parser.add_argument("--only", help=f"comma-separated parts of {list(PARTS)}")
    parser.add_argument("--transports", help=f"comma-separated, of {list(TRANSPORTS)}")
    parser.add_argument("--out", help="output directory (default bench/results/streams)")
    parser.add_argument("--subscribers", type=int, help="N (default 1000; --quick 200)")
    parser.add_argument("--workers", type=int, help="subscriber processes (2)")
    parser.add_argument("--rates", help="fixed rates in msg/s, e.g. 50,100,200,400 (no ramp)")
    parser.add_argument("--step", type=float, help="seconds of publishing per step (5; --quick 2)")
    parser.add_argument("--idle-conns", type=int, help="K for memory (default 2000; --quick 200)")
    parser.add_argument(
        "--latency-every", type=int, default=1, help="every K-th subscriber records latency (1)"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild REPORT.md")
    parser.add_argument("--chart-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--publisher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.publisher:
        helper_main(
            "worker" if args.worker else "publisher", json.loads(args.worker or args.publisher)
        )
        return 0
    outdir = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "") / "streams"
    outdir.mkdir(parents=True, exist_ok=True)
    if args.chart_only:
        return 0 if write_chart(json.loads((outdir / "summary.json").read_text()), outdir) else 1
    if args.report_only:
        report(json.loads((outdir / "summary.json").read_text()), outdir)
        return 0
    if not TIDINGS_PY.exists():
        print(f"missing {TIDINGS_PY}: run `make install`", file=sys.stderr)
        return 2
    parts = args.only.split(",") if args.only else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    plan = make_plan(args)
    unknown = set(plan.transports) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transports {sorted(unknown)}")
    # The runner (it only waits and reads /proc) stays off the server's core.
    with contextlib.suppress(OSError, ValueError):
        os.sched_setaffinity(0, {int(c) for c in run.GEN_CORES.split(",")})
    summary = scripting.new_summary(
        {
            "machine": machine(),
            "plan": asdict(plan),
            "parts": parts,
            "command": " ".join(["bench/streams.py", *sys.argv[1:]]),
            "targets": {"ratio_to_websocket": TARGET_RATIO, "p99_limit_ms": P99_LIMIT_MS},
        }
    )
    log(
        f"streams: {'quick' if plan.quick else 'full'}; parts {parts}; transports "
        f"{plan.transports}; results in {outdir}"
    )
    started = time.monotonic()

    def guarded(part: str, key: str, measure: Any) -> None:
        scripting.guarded(summary, part, key, measure)

    try:
        if "fanout" in parts:
            log("== fan-out")
            for transport in plan.transports:
                guarded("fanout", transport, lambda t=transport: measure_fanout(plan, t))
        if "memory" in parts:
            log("== memory per idle connection")
            for transport in plan.transports:
                guarded("memory", transport, lambda t=transport: measure_memory(plan, t))
    finally:
        scripting.finish(summary, outdir, started, report)
    ws = summary["runs"].get("fanout", {}).get("websocket")
    for transport, row in summary["runs"].get("fanout", {}).items():
        ratio = (
            f", {row['max_deliveries_per_s'] / ws['max_deliveries_per_s']:.2f}x WebSocket"
            if ws and ws["max_deliveries_per_s"]
            else ""
        )
        log(
            f"{transport}: {row['max_rate']:g} msg/s = {row['max_deliveries_per_s']:,.0f} "
            f"deliveries/s at p99 <= {P99_LIMIT_MS:g} ms{ratio}"
        )
    log(f"done in {time.monotonic() - started:.0f}s: {outdir / 'REPORT.md'}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
