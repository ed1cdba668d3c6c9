#!/usr/bin/env python3
"""Load clients for the fault tests (tests/test_faults.py) and the soak runner (soak/run.py).

A minimal asyncio WebSocket client speaking the Centrifugo JSON protocol, cheap enough that a
few processes can hold thousands of connections on a 2-core machine next to the hub, and the
worker modes built on it. Each worker is a subprocess: it reads commands from stdin (one word
per line) and writes JSON lines to stdout, the last one its result.

    wsload.py subscribers --port P --clients N --channel C [--expect M]
        N clients subscribe to C, print {"event": "ready"}, then count publications (data
        {"n": 0, 1, ...} in order) until each has M ("expect M" on stdin sets it) or --timeout
        passes (or "stop" on stdin); then print {"event": "done", ...}.
    wsload.py storm --port P --clients N --channels K --prefix storm-
        N clients subscribe (positioned) to K channels, print "ready"; on "drop" they cut their
        TCP connections at once ("dropped"); on "go" they all reconnect at once and subscribe
        with recover from their last offset/epoch; they print how long it took and what was
        recovered ("served"); on "stop" they close and exit.
    wsload.py churn --port P --seconds S --concurrency C
        connect / subscribe / publish / history / presence / disconnect cycles for S seconds.
    wsload.py fanout --port P --subscribers N --rate R --seconds S
        N subscribers of one channel and one publisher at R messages/s for S seconds; each
        subscriber must get every publication, in order.

EOF on stdin stops every mode early ("stop"): a worker whose runner died does not linger.

Client frames are masked with a zero key (RFC 6455 allows any key; it leaves the payload as is,
so sending costs no Python loop). Server frames are parsed here; text frames may carry several
newline-separated messages (tidings coalesces writes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import resource
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
PING = b"{}"


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (mask key 0: the payload goes as is)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + b"\0\0\0\0" + payload


def handshake_request(host: str, port: int, path: str = "/connection/websocket") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class HandshakeError(Exception):
    pass


class Conn(asyncio.Protocol):
    """One client connection. ``on_push(push)`` gets every push; replies resolve commands."""

    def __init__(self, host: str, port: int, on_push: Callable[[dict[str, Any]], None]) -> None:
        self.host, self.port = host, port
        self.on_push = on_push
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[int] = loop.create_future()
        """Resolves to the close code (1006 when the TCP connection ended without one)."""
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self._buffer = bytearray()
        self._open = False
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(handshake_request(self.host, self.port))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(status.decode(errors="replace")))
                self.abort()
                return
            self._open = True
            self.opened.set_result(None)
        position, size = 0, len(buffer)
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length, start = second & 0x7F, position + 2
            if length == 126:
                if size - position < 4:
                    break
                length, start = int.from_bytes(buffer[position + 2 : position + 4]), position + 4
            elif length == 127:
                if size - position < 10:
                    break
                length, start = int.from_bytes(buffer[position + 2 : position + 10]), position + 10
            if size - start < length:
                break
            payload = bytes(buffer[start : start + length])
            position = start + length
            opcode = first & 0x0F
            if opcode == 0x1:
                self._text(payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
                self._write(client_frame(payload[:2], 0x8))
                if self.transport is not None:
                    self.transport.close()
            elif opcode == 0x9:
                self._write(client_frame(payload, 0xA))
        del buffer[:position]

    def connection_lost(self, exc: Exception | None) -> None:
        code = self.close_code if self.close_code is not None else 1006
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake ({exc})"))
        if not self.done.done():
            self.done.set_result(code)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionError(f"closed with {code}"))
        self._replies.clear()

    # -- the protocol --------------------------------------------------------------------------

    def _text(self, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            if line == PING:
                self._write(client_frame(PING))
                continue
            message = _decode(line)
            push = message.get("push")
            if push is not None:
                self.on_push(push)
                continue
            future = self._replies.pop(message.get("id", 0), None)
            if future is not None and not future.done():
                future.set_result(message)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_commands(self, *commands: tuple[str, dict[str, Any]]) -> list[asyncio.Future[Any]]:
        """Send commands in one frame; return the futures of their replies."""
        loop = asyncio.get_running_loop()
        lines, futures = [], []
        for method, body in commands:
            command_id = self._next_id
            self._next_id += 1
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._replies[command_id] = future
            futures.append(future)
            lines.append(_encode({"id": command_id, method: body}))
        self._write(client_frame(b"\n".join(lines)))
        return futures

    async def command(self, method: str, body: dict[str, Any], timeout: float = 10) -> Any:
        (future,) = self.send_commands((method, body))
        return await asyncio.wait_for(future, timeout)

    def send_raw(self, payload: bytes) -> None:
        self._write(client_frame(payload))

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (the server answers and closes the TCP connection)."""
        self._write(client_frame(struct.pack("!H", code), 0x8))

    def abort(self) -> None:
        """Cut the TCP connection (RST), as a network failure would."""
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self.done.done()


async def open_conn(
    host: str,
    port: int,
    on_push: Callable[[dict[str, Any]], None] = lambda push: None,
    timeout: float = 30,
) -> Conn:
    loop = asyncio.get_running_loop()
    conn = Conn(host, port, on_push)
    transport, _ = await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), timeout)
    try:
        await asyncio.wait_for(conn.opened, timeout)
    except BaseException:
        transport.abort()
        raise
    return conn


async def open_subscribed(
    host: str,
    port: int,
    channel: str,
    on_push: Callable[[dict[str, Any]], None],
    subscribe: dict[str, Any] | None = None,
    timeout: float = 30,
) -> tuple[Conn, dict[str, Any]]:
    """Connect and subscribe in one frame; return the connection and the subscribe result."""
    conn = await open_conn(host, port, on_push, timeout)
    try:
        connect, subscribed = conn.send_commands(
            ("connect", {}), ("subscribe", {"channel": channel, **(subscribe or {})})
        )
        reply = await asyncio.wait_for(connect, timeout)
        if "connect" not in reply:
            raise RuntimeError(f"connect refused: {reply}")
        reply = await asyncio.wait_for(subscribed, timeout)
        if "subscribe" not in reply:
            raise RuntimeError(f"subscribe refused: {reply}")
    except BaseException:
        conn.abort()
        raise
    return conn, reply["subscribe"]


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class StdinCommands:
    """The lines written to this process's stdin, as an asyncio queue (EOF gives "stop")."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._partial = b""
        self._fd = sys.stdin.fileno()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        data = os.read(self._fd, 4096)
        if not data:
            asyncio.get_running_loop().remove_reader(self._fd)
            self.queue.put_nowait("stop")
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self.queue.put_nowait(line.decode().strip())

    async def expect(self, *words: str) -> str:
        while True:
            word = await self.queue.get()
            if word in words or word == "stop":
                return word


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 4)}


async def gather_limited(factories: list[Callable[[], Any]], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Any]) -> Any:
        async with semaphore:
            return await factory()

    return await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)


async def close_all(conns: list[Conn], timeout: float = 5) -> None:
    for conn in conns:
        conn.close()
    pending = [conn.done for conn in conns if not conn.closed]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for conn in conns:
        if not conn.closed:
            conn.abort()


# -- subscribers: count what a channel delivers ----------------------------------------------


async def subscribers(args: argparse.Namespace) -> None:
    counts = [0] * args.clients
    disorder = [0] * args.clients
    target = args.expect  # 0: wait for "expect N" on stdin
    progress = asyncio.Event()

    def counter(index: int) -> Callable[[dict[str, Any]], None]:
        def on_push(push: dict[str, Any]) -> None:
            pub = push.get("pub")
            if pub is None:
                return
            if pub["data"]["n"] != counts[index]:
                disorder[index] += 1
            counts[index] += 1
            if counts[index] == target:
                progress.set()

        return on_push

    started = time.monotonic()
    opened = await gather_limited(
        [
            lambda i=i: open_subscribed(args.host, args.port, args.channel, counter(i))
            for i in range(args.clients)
        ],
        args.concurrency,
    )
    failures = [repr(r) for r in opened if isinstance(r, BaseException)]
    conns = [r[0] for r in opened if not isinstance(r, BaseException)]
    live = [i for i, r in enumerate(opened) if not isinstance(r, BaseException)]
    emit(event="ready", clients=len(conns), failed=failures[:5], seconds=time.monotonic() - started)
    commands = StdinCommands()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    reading = asyncio.ensure_future(commands.queue.get())
    stopped = False
    while loop.time() < deadline:
        if target and all(counts[i] >= target for i in live):
            break
        progress.clear()
        waiting = asyncio.ensure_future(progress.wait())
        await asyncio.wait(
            [waiting, reading], timeout=deadline - loop.time(), return_when="FIRST_COMPLETED"
        )
        waiting.cancel()
        if reading.done():
            word = reading.result()
            if word == "stop":
                stopped = True
                break
            if word.startswith("expect "):
                target = int(word.split()[1])
            reading = asyncio.ensure_future(commands.queue.get())
    closed = Counter(str(conn.done.result()) for conn in conns if conn.closed)
    emit(
        event="done",
        clients=len(conns),
        failed=len(failures),
        expected=target,
        complete=sum(1 for i in live if counts[i] == target),
        min=min((counts[i] for i in live), default=0),
        max=max(counts),
        total=sum(counts),
        disorder=sum(disorder),
        closed=dict(closed),
        seconds=time.monotonic() - started,
    )
    while not stopped:  # keep the connections until told (or stdin closes)
        stopped = await reading == "stop"
        reading = asyncio.ensure_future(commands.queue.get())
    reading.cancel()
    await close_all(conns)


# -- storm: everybody drops and reconnects with recovery at once -----------------------------


class StormClient:
    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.epoch = ""
        self.offset = 0
        self.conn: Conn | None = None
        self.gaps = 0

    def on_push(self, push: dict[str, Any]) -> None:
        pub = push.get("pub")
        if pub is not None:
            offset = pub.get("offset", 0)
            if offset != self.offset + 1:
                self.gaps += 1
            self.offset = offset


async def open_with_retry(
    args: argparse.Namespace,
    client: StormClient,
    subscribe: dict[str, Any],
    deadline: float,
    retries: Counter[str],
) -> dict[str, Any]:
    """Connect and subscribe, retrying with jittered backoff as SDKs do; count the retries.

    Each attempt gives up after ``--attempt-timeout`` (5 s, centrifuge-js's default timeout).
    """
    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            client.conn, result = await open_subscribed(
                args.host,
                args.port,
                client.channel,
                client.on_push,
                subscribe,
                timeout=max(0.1, min(args.attempt_timeout, deadline - loop.time())),
            )
            return result
        except (OSError, TimeoutError, HandshakeError, ConnectionError, RuntimeError) as exc:
            retries[type(exc).__name__] += 1
            if loop.time() > deadline:
                raise RuntimeError(f"gave up: {exc!r}") from exc
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 1.0)


async def storm(args: argparse.Namespace) -> None:
    clients = [StormClient(f"{args.prefix}{i % args.channels}") for i in range(args.clients)]
    loop = asyncio.get_running_loop()
    first_retries: Counter[str] = Counter()

    async def first(client: StormClient) -> None:
        result = await open_with_retry(args, client, {}, loop.time() + args.timeout, first_retries)
        client.epoch, client.offset = result["epoch"], result.get("offset", 0)

    started = loop.time()
    results = await gather_limited([lambda c=c: first(c) for c in clients], args.concurrency)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    emit(
        event="ready",
        clients=args.clients - len(failures),
        failed=failures[:5],
        retries=dict(first_retries),
        seconds=loop.time() - started,
    )
    commands = StdinCommands()
    if await commands.expect("drop") == "stop":
        return
    conns = [c.conn for c in clients if c.conn is not None]
    for conn in conns:
        conn.abort()
    await asyncio.gather(*(conn.done for conn in conns))
    emit(event="dropped", clients=len(conns))
    if await commands.expect("go") == "stop":
        return

    latencies: list[float] = []
    retries: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    recovered_counts: Counter[int] = Counter()
    errors: list[str] = []
    go = loop.time()

    async def reconnect(client: StormClient) -> None:
        subscribe = {"recover": True, "offset": client.offset, "epoch": client.epoch}
        result = await open_with_retry(args, client, subscribe, go + args.timeout, retries)
        latencies.append(loop.time() - go)
        publications = result.get("publications", [])
        offsets = [pub.get("offset", 0) for pub in publications]
        contiguous = offsets == list(range(client.offset + 1, client.offset + 1 + len(offsets)))
        if result.get("recovered") and contiguous and result.get("epoch") == client.epoch:
            outcome["recovered"] += 1
        else:
            outcome["not_recovered"] += 1
            if len(errors) < 5:
                errors.append(f"{client.channel} from {client.offset}: {result}")
        recovered_counts[len(publications)] += 1
        if offsets:
            client.offset = offsets[-1]

    results = await asyncio.gather(*(reconnect(c) for c in clients), return_exceptions=True)
    failed = [repr(r) for r in results if isinstance(r, BaseException)]
    emit(
        event="served",
        clients=len(clients),
        served=len(latencies),
        recovered=outcome["recovered"],
        not_recovered=outcome["not_recovered"],
        recovered_counts={str(k): v for k, v in recovered_counts.items()},
        failed=len(failed),
        failures=failed[:5],
        errors=errors,
        retries=sum(retries.values()),
        retry_causes=dict(retries),
        latency=percentiles(latencies),
        gaps=sum(c.gaps for c in clients),
    )
    await commands.expect("stop")
    await close_all([c.conn for c in clients if c.conn is not None])


# -- churn: short-lived clients doing a bit of everything ------------------------------------


def stop_early(deadline: list[float]) -> asyncio.Future[None]:
    """End the run (``deadline[0]``) on "stop" or EOF on stdin: when the runner goes away."""

    async def watch() -> None:
        await StdinCommands().expect("stop")
        deadline[0] = 0.0

    return asyncio.ensure_future(watch())


async def churn(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    deadline = [loop.time() + args.seconds]
    watcher = stop_early(deadline)
    rng = random.Random(args.seed)
    stats: Counter[str] = Counter()
    problems: list[str] = []

    def problem(text: str) -> None:
        stats["problems"] += 1
        if len(problems) < 10:
            problems.append(text)

    async def cycle() -> None:
        conn = await open_conn(args.host, args.port, timeout=10)
        stats["connects"] += 1
        try:
            reply = await conn.command("connect", {})
            if "connect" not in reply:
                problem(f"connect: {reply}")
                return
            channels = rng.sample(range(args.channels), rng.randint(1, 3))
            for k in channels:
                reply = await conn.command("subscribe", {"channel": f"churn:{k}"})
                if "subscribe" not in reply:
                    problem(f"subscribe: {reply}")
                stats["subscribes"] += 1
            for _ in range(rng.randint(0, 3)):
                channel = f"churn:{rng.choice(channels)}"
                reply = await conn.command("publish", {"channel": channel, "data": {"t": "x"}})
                if "publish" not in reply:
                    problem(f"publish: {reply}")
                stats["publishes"] += 1
            action = rng.random()
            if action < 0.2:
                reply = await conn.command("history", {"channel": f"churn:{channels[0]}"})
                stats["history"] += 1
                if "history" not in reply:
                    problem(f"history: {reply}")
            elif action < 0.4:
                reply = await conn.command("presence", {"channel": f"churn:{channels[0]}"})
                stats["presence"] += 1
                if "presence" not in reply:
                    problem(f"presence: {reply}")
            elif action < 0.45:
                conn.send_raw(b'{"id":99,"nonsense":')  # bad input: the hub closes it (3501)
                code = await asyncio.wait_for(asyncio.shield(conn.done), 10)
                stats[f"bad_input_closed_{code}"] += 1
                return
            await asyncio.sleep(rng.uniform(0, args.hold))
            ending = rng.random()
            if ending < 0.3:
                conn.abort()  # vanishes (RST)
                stats["aborted"] += 1
            elif ending < 0.4:
                if conn.transport is not None:
                    conn.transport.close()  # FIN, no close frame
                stats["fin"] += 1
            else:
                if rng.random() < 0.5:
                    reply = await conn.command("unsubscribe", {"channel": f"churn:{channels[0]}"})
                    stats["unsubscribes"] += 1
                conn.close()
                await asyncio.wait_for(asyncio.shield(conn.done), 10)
                stats["closed"] += 1
        finally:
            if not conn.closed:
                conn.abort()

    async def worker() -> None:
        while loop.time() < deadline[0]:
            try:
                await cycle()
            except Exception as exc:
                problem(repr(exc))
                await asyncio.sleep(0.1)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    watcher.cancel()
    emit(event="done", stats=dict(stats), problems=problems)


# -- fanout: steady publications to steady subscribers ---------------------------------------


async def fanout(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    counts = [0] * args.subscribers
    disorder = [0] * args.subscribers

    def counter(index: int) -> Callable[[dict[str, Any]], None]:
        def on_push(push: dict[str, Any]) -> None:
            pub = push.get("pub")
            if pub is not None:
                if pub["data"]["n"] != counts[index]:
                    disorder[index] += 1
                counts[index] += 1

        return on_push

    opened = await gather_limited(
        [
            lambda i=i: open_subscribed(args.host, args.port, args.channel, counter(i))
            for i in range(args.subscribers)
        ],
        50,
    )
    conns = [r[0] for r in opened if not isinstance(r, BaseException)]
    failures = [repr(r) for r in opened if isinstance(r, BaseException)]
    publisher = await open_conn(args.host, args.port)
    await publisher.command("connect", {})
    published = errors = 0
    start = loop.time()
    deadline = [start + args.seconds]
    watcher = stop_early(deadline)
    while loop.time() < deadline[0]:
        due = start + published / args.rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        reply = await publisher.command(
            "publish", {"channel": args.channel, "data": {"n": published, "p": "x" * args.size}}
        )
        if "publish" not in reply:
            errors += 1
            break
        published += 1
    watcher.cancel()
    drain_until = loop.time() + 10
    while loop.time() < drain_until and min(counts, default=published) < published:
        await asyncio.sleep(0.05)
    closed = Counter(str(conn.done.result()) for conn in conns if conn.closed)
    emit(
        event="done",
        subscribers=len(conns),
        failed=failures[:5],
        published=published,
        publish_errors=errors,
        lost=sum(published - c for c in counts[: len(conns)]),
        disorder=sum(disorder),
        closed=dict(closed),
    )
    await close_all([*conns, publisher])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    modes = parser.add_subparsers(dest="mode", required=True)

    p = modes.add_parser("subscribers")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--channel", default="fan")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=100)

    p = modes.add_parser("storm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--prefix", default="storm:")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--attempt-timeout", type=float, default=5)

    p = modes.add_parser("churn")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--channels", type=int, default=50)
    p.add_argument("--hold", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)

    p = modes.add_parser("fanout")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--channel", default="fan:steady")
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--seconds", type=float, required=True)

    args = parser.parse_args()
    raise_nofile()
    runner = {"subscribers": subscribers, "storm": storm, "churn": churn, "fanout": fanout}
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(runner[args.mode](args))
    else:
        uvloop.run(runner[args.mode](args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
