#!/usr/bin/env python3
"""Bandwidth of a state-like channel: Fossil delta compression and permessage-deflate.

    bench/.venv-peers/bin/python bench/bandwidth.py           # full: 500 subscribers x 200 updates
    bench/.venv-peers/bin/python bench/bandwidth.py --quick   # 50 x 30 (development)
    bench/.venv-peers/bin/python bench/bandwidth.py --only delta        # part A only (or deflate)
    bench/.venv-peers/bin/python bench/bandwidth.py --report-only --out DIR

A 4 KiB JSON document in which one field changes per publication goes to N
subscribers through ``POST /api/publish``, M times, at a fixed rate.

- Part A (delta): JSON and Protobuf subscribers, with and without
  ``"delta":"fossil"``; target >= 5x fewer bytes per delivery with delta.
- Part B (deflate): ``[websocket] compression`` off, shared, per connection
  (JSON, no delta): bytes and server CPU per delivery; then the server's RSS per
  idle subscribed connection with K connections; target: a compressed one takes
  <= 2x the memory of an uncompressed one.

Bytes are counted at the clients: every byte TCP hands to a subscriber's
connection while publishing (frame headers, payloads as sent, compressed or
not), divided by the deliveries; the hub's ``tidings_bytes_sent`` counter is
reported beside it. Server CPU is utime+stime of ``/proc/PID/stat`` over the
same window. Every subscriber checks every publication: it applies each patch
to its previous document (``fossil_delta.apply_delta``) and compares the result
with the published bytes.

The runner needs only the standard library (charts: matplotlib, as in
bench/.venv-peers); the subscribers run in worker processes of the project's
.venv (``TIDINGS_PYTHON``: tidings, websockets, python-fossil-delta, protobuf),
each an asyncio loop with the websockets client speaking Centrifugo's JSON or
Protobuf protocol. The server is pinned to core 1, the workers and the
publisher to core 0, as in run.py. Outputs: ``summary.json`` and ``REPORT.md``
(and ``bandwidth.png`` when matplotlib is there) in ``--out``
(bench/results/bandwidth, or bench/results/quick/bandwidth with --quick);
server and worker logs in bench/results/raw/logs/.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generators  # noqa: E402
import procstats  # noqa: E402
import run  # noqa: E402  (bench/run.py: servers, free ports, logging)
import scripting  # noqa: E402
from generators import emit  # noqa: E402
from procstats import busy_pct, core_times, cpu_seconds, rss_kib  # noqa: E402
from run import RAW, RESULTS, ROOT, TIDINGS_PY, Server, Spec, log  # noqa: E402
from scripting import met  # noqa: E402

CHANNEL = "state:doc"
DOC_SIZE = 4096
SEED = 7
TARGET_DELTA_RATIO = 5.0  # >= 5x fewer bytes per delivery with delta than without
TARGET_MEMORY_RATIO = 2.0  # a compressed idle connection <= 2x an uncompressed one
# per connection: "none" = compression off; "shared" = a frame deflated once for every
# connection that gets the same bytes; "per-connection" = deflated for each connection
COMPRESSIONS = ("none", "shared", "per-connection")
PARTS = ("delta", "deflate", "memory")


# --- the document --------------------------------------------------------------------------


def make_docs(count: int, size: int = DOC_SIZE, seed: int = SEED) -> list[bytes]:
    """``count`` versions of a JSON document of exactly ``size`` bytes, each one field
    (an item's 6-digit ``qty``) different from the one before: a state-like channel."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima"]
    statuses = ["active", "pending", "shipped", "on hold"]
    doc: dict[str, Any] = {"id": "doc", "kind": "inventory", "items": [], "pad": ""}

    def encode() -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    while True:
        item = {
            "sku": f"SKU-{rng.randrange(10**6):06d}",
            "name": f"{rng.choice(words)} {rng.choice(words)}",
            "status": rng.choice(statuses),
            "qty": rng.randrange(100_000, 1_000_000),
            "price": f"{rng.randrange(100, 100_000) / 100:.2f}",
        }
        doc["items"].append(item)
        if len(encode()) > size - 24:
            doc["items"].pop()
            break
    doc["pad"] = "x" * (size - len(encode()))
    docs = []
    for _ in range(count):
        rng.choice(doc["items"])["qty"] = rng.randrange(100_000, 1_000_000)  # always 6 digits
        data = encode()
        assert len(data) == size
        docs.append(data)
    return docs


# --- the subscribers (worker processes, the project's .venv) ---------------------------------


def worker_main(cfg: dict[str, Any]) -> None:
    """Connect and subscribe ``cfg["conns"]`` clients, then check each publication.

    Talks to the runner in JSON lines: prints ``ready``, waits for ``go`` on stdin
    (counters start there), prints ``started``, then ``done`` once every client has
    ``updates`` publications (or at the deadline); exits at ``quit`` or end of stdin."""
    import uvloop

    uvloop.run(_worker(cfg))


async def _worker(cfg: dict[str, Any]) -> None:
    import asyncio

    import fossil_delta  # type: ignore[import-untyped]
    import msgspec
    from websockets.asyncio.client import ClientConnection, connect

    from tidings.protocol import client_pb2 as pb

    conns: int = cfg["conns"]
    updates: int = cfg["updates"]
    protobuf: bool = cfg["protobuf"]
    want_delta: bool = cfg["delta"]
    docs = make_docs(cfg["first"] + updates)[cfg["first"] :]
    wire = [0]  # bytes TCP handed to the clients (frames as sent), once counting
    counting = [False]

    class Counting(ClientConnection):
        def data_received(self, data: bytes) -> None:
            if counting[0]:
                wire[0] += len(data)
            super().data_received(data)

    # defstruct: the runner's `from __future__ import annotations` would leave msgspec
    # string annotations it cannot resolve inside this function
    Raw = msgspec.Raw
    JPub = msgspec.defstruct(
        "JPub", [("data", Raw, Raw(b"null")), ("offset", int, 0), ("delta", bool, False)]
    )
    JPush = msgspec.defstruct("JPush", [("channel", str, ""), ("pub", JPub | None, None)])
    JError = msgspec.defstruct("JError", [("code", int, 0), ("message", str, "")])
    JReply = msgspec.defstruct(
        "JReply",
        [
            ("id", int, 0),
            ("error", JError | None, None),
            ("push", JPush | None, None),
            ("connect", dict[str, Any] | None, None),
            ("subscribe", dict[str, Any] | None, None),
        ],
    )
    reply_decoder = msgspec.json.Decoder(JReply)
    str_decoder = msgspec.json.Decoder(str)

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            if n:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                return bytes(out)

    def pb_replies(frame: bytes) -> list[Any]:
        replies = []
        pos = 0
        while pos < len(frame):
            shift = length = 0
            while True:
                byte = frame[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            reply = pb.Reply()
            reply.ParseFromString(frame[pos : pos + length])
            pos += length
            replies.append(reply)
        return replies

    if protobuf:
        c1 = pb.Command(id=1)
        c1.connect.SetInParent()
        c2 = pb.Command(id=2)
        c2.subscribe.channel = CHANNEL
        if want_delta:
            c2.subscribe.delta = "fossil"
        first = c1.SerializeToString()
        second = c2.SerializeToString()
        handshake: str | bytes = varint(len(first)) + first + varint(len(second)) + second
        pong: str | bytes = b"\x00"
    else:
        sub: dict[str, Any] = {"channel": CHANNEL}
        if want_delta:
            sub["delta"] = "fossil"
        handshake = '{"id":1,"connect":{}}\n' + json.dumps({"id": 2, "subscribe": sub})
        pong = "{}"

    stats = {
        "conns": conns,
        "subscribed": 0,
        "deflate_negotiated": 0,
        "delta_negotiated": 0,
        "delivered": 0,
        "verified": 0,
        "mismatches": 0,
        "patches": 0,
        "fulls": 0,
        "messages": 0,
        "payload_bytes": 0,
        "pings": 0,
        "closed_early": 0,
    }
    errors: list[str] = []
    finished = [0]
    all_done = asyncio.Event()
    subscribed = asyncio.Event()
    url = f"ws://127.0.0.1:{cfg['port']}/connection/websocket"
    gate = asyncio.Semaphore(100)  # handshakes in flight

    def error(text: str) -> None:
        if len(errors) < 20:
            errors.append(text)

    async def client(index: int) -> None:
        count = 0
        base: bytes | None = None
        delta_on = False
        async with gate:
            ws = await connect(
                url,
                compression="deflate" if cfg["deflate"] else None,
                subprotocols=["centrifuge-protobuf"] if protobuf else None,  # type: ignore[list-item]
                create_connection=Counting,
                ping_interval=None,  # no WebSocket pings of ours: only the hub's bytes count
                max_size=None,
                open_timeout=60,
            )
            await ws.send(handshake)
            while True:
                message = await ws.recv()
                if protobuf:
                    assert isinstance(message, bytes)
                    replies = [(r.id, r.HasField("error"), r) for r in pb_replies(message)]
                else:
                    assert isinstance(message, str)
                    replies = [
                        (r.id, r.error is not None, r)
                        for r in map(reply_decoder.decode, message.encode().split(b"\n"))
                    ]
                for rid, failed, reply in replies:
                    if failed:
                        raise RuntimeError(f"client {index}: reply {rid} is an error: {reply}")
                    if rid == 2:
                        if protobuf:
                            delta_on = reply.subscribe.delta
                        else:
                            delta_on = bool((reply.subscribe or {}).get("delta"))
                if any(rid == 2 for rid, _, _ in replies):
                    break
        if ws.protocol.extensions:
            stats["deflate_negotiated"] += 1
        if delta_on:
            stats["delta_negotiated"] += 1
        elif want_delta:
            error(f"client {index}: subscribed without delta")
        stats["subscribed"] += 1
        if stats["subscribed"] == conns:
            subscribed.set()
        try:
            async for message in ws:
                frame = message.encode() if isinstance(message, str) else message
                if counting[0]:
                    stats["messages"] += 1
                    stats["payload_bytes"] += len(frame)
                pubs = []
                if protobuf:
                    for reply in pb_replies(frame):
                        if reply.HasField("push") and reply.push.HasField("pub"):
                            pubs.append((reply.push.pub.data, reply.push.pub.delta))
                        elif reply.ByteSize() == 0:
                            stats["pings"] += 1
                            await ws.send(pong)
                else:
                    for line in frame.split(b"\n"):
                        reply = reply_decoder.decode(line)
                        if reply.push is not None and reply.push.pub is not None:
                            raw = bytes(reply.push.pub.data)
                            if delta_on:  # the document or the patch, as a JSON string
                                raw = str_decoder.decode(raw).encode()
                            pubs.append((raw, reply.push.pub.delta))
                        elif reply.id == 0 and reply.push is None:
                            stats["pings"] += 1
                            await ws.send(pong)
                for raw, is_patch in pubs:
                    if is_patch:
                        stats["patches"] += 1
                        if base is None:
                            data = b""
                            error(f"client {index}: a patch before any full publication")
                        else:
                            data = fossil_delta.apply_delta(base, raw)
                    else:
                        stats["fulls"] += 1
                        data = raw
                    stats["delivered"] += 1
                    if count < updates and data == docs[count]:
                        stats["verified"] += 1
                    else:
                        stats["mismatches"] += 1
                        error(f"client {index}: publication {count} differs from the published one")
                    base = data
                    count += 1
                    if count == updates:
                        finished[0] += 1
                        if finished[0] == conns:
                            all_done.set()
        except Exception as exc:  # noqa: BLE001  (a closed connection is reported, not fatal)
            error(f"client {index}: {type(exc).__name__}: {exc}")
        if count < updates:
            stats["closed_early"] += 1

    tasks = [asyncio.create_task(client(i)) for i in range(conns)]
    setup = asyncio.gather(*tasks)
    waiter = asyncio.create_task(subscribed.wait())
    await asyncio.wait([setup, waiter], timeout=cfg["timeout"], return_when="FIRST_COMPLETED")
    if not subscribed.is_set():
        failed = [t.exception() for t in tasks if t.done() and t.exception()]
        emit("error", message=f"{stats['subscribed']}/{conns} subscribed; {failed[:3]!r}")
        return
    emit("ready", **stats)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "go":
        return
    for key in ("messages", "payload_bytes", "pings"):
        stats[key] = 0
    wire[0] = 0
    counting[0] = True
    started = time.monotonic()
    emit("started")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done.wait(), cfg["timeout"])
    counting[0] = False
    emit(
        "done",
        **stats,
        wire_bytes=wire[0],
        expected=conns * updates,
        seconds=round(time.monotonic() - started, 3),
        errors=errors,
    )
    while (await asyncio.to_thread(sys.stdin.readline)).strip() not in ("quit", ""):
        pass
    os._exit(0)  # the kernel closes the sockets: no closing handshake for each


# --- the runner ------------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    subscribers: int
    updates: int
    rate: float  # publications per second
    idle_conns: int
    workers: int  # subscriber processes
    quiet_wait: float  # seconds to wait for the machine to be idle before each row


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        quick=quick,
        subscribers=args.subscribers or (50 if quick else 500),
        updates=args.updates or (30 if quick else 200),
        rate=args.rate,
        idle_conns=args.idle_conns or (200 if quick else 2000),
        workers=args.workers,
        quiet_wait=0.0 if quick else 30.0,
    )


def server_config(path: Path, compression: str) -> Path:
    """The hub's configuration: the ``state`` namespace with history and Fossil deltas."""
    lines = [
        'log_level = "warning"',
        "",
        "[client]",
        "allow_anonymous_connect_without_token = true",
        "",
        "[http_api]",
        "insecure = true",
        "",
    ]
    if compression != "none":
        lines += [
            "[websocket]",
            "compression = true",
            "compression_level = 1",
            "compression_min_size = 0",
            f"compression_shared = {'true' if compression == 'shared' else 'false'}",
            "",
        ]
    lines += [
        "[namespaces.state]",
        "history_size = 10",
        "history_ttl = 60",
        'allowed_delta_types = ["fossil"]',
        "delta_publish = true",
        "allow_subscribe_for_client = true",
        "allow_subscribe_for_anonymous = true",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(tag: str, compression: str) -> Server:
    config = server_config(RAW / "bandwidth" / f"{tag}.toml", compression)

    def argv(port: int, api_port: int, redis_url: str | None) -> list[str]:
        return [
            str(TIDINGS_PY), "-m", "tidings", "serve", "--config", str(config),
            "--port", str(port), "--api-port", str(api_port),
        ]  # fmt: skip

    spec = Spec("tidings", "tidings", "centrifugo", "/connection/websocket", "", argv)
    return Server(spec, tag=f"bandwidth-{tag}").__enter__()


class Workers(generators.Processes):
    """Subscriber processes (the project's .venv, pinned to the generator's core)."""

    noun, nouns = "worker", "workers"

    def __init__(self, tag: str, server: Server, conns: int, procs: int, **cfg: Any) -> None:
        super().__init__()
        (RAW / "logs").mkdir(parents=True, exist_ok=True)
        procs = max(1, min(procs, conns))
        for i in range(procs):
            share = conns // procs + (1 if i < conns % procs else 0)
            wcfg = {"port": server.port, "conns": share, "first": 0, "timeout": 120.0, **cfg}
            self.spawn(
                ["taskset", "-c", run.GEN_CORES, str(TIDINGS_PY), str(Path(__file__).resolve()),
                 "--worker", json.dumps(wcfg)],
                RAW / "logs" / f"bandwidth-worker-{tag}-{i}.log", cwd=ROOT,
            )  # fmt: skip


def publish(api_port: int, docs: list[bytes], rate: float) -> int:
    """POST each document to /api/publish, ``rate`` per second; the count of failures."""
    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
    failures = 0
    start = last = time.monotonic()
    for i, doc in enumerate(docs):
        # On schedule, but never two within half an interval: a late publisher catching up
        # would have the hub coalesce publications into one frame, which changes the bytes.
        now = time.monotonic()
        delay = max(start + i / rate - now, last + 0.5 / rate - now if i else 0.0)
        if delay > 0:
            time.sleep(delay)
        last = time.monotonic()
        body = b'{"channel":"' + CHANNEL.encode() + b'","data":' + doc + b"}"
        conn.request("POST", "/api/publish", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200 or b'"error"' in answer:
            failures += 1
            if failures == 1:
                log(f"  publish failed: {response.status} {answer[:200]!r}")
    conn.close()
    return failures


def _sum(results: list[dict[str, Any]], key: str) -> int:
    return sum(int(r.get(key, 0)) for r in results)


def measure_row(
    plan: Plan, tag: str, *, protobuf: bool, delta: bool, compression: str
) -> dict[str, Any]:
    """One row: N subscribers, M publications; bytes and server CPU per delivery."""
    docs = make_docs(plan.updates)
    if plan.quiet_wait:
        run.wait_quiet(plan.quiet_wait)
    server = start_server(tag, compression)
    try:
        workers = Workers(
            tag, server, plan.subscribers, plan.workers, updates=plan.updates,
            protobuf=protobuf, delta=delta, deflate=compression != "none",
            timeout=plan.updates / plan.rate + 60,
        )  # fmt: skip
        try:
            ready = workers.expect("ready", 120)
            time.sleep(1.0)  # the connections' setup done on the server too
            workers.tell("go")
            workers.expect("started", 30)
            pid = server.pids[0]
            metrics0, cpu0, cores0 = server.metrics(), cpu_seconds(pid), core_times()
            t0 = time.monotonic()
            failures = publish(server.api_port, docs, plan.rate)
            done = workers.expect("done", plan.updates / plan.rate + 90)
            cpu1, cores1, seconds = cpu_seconds(pid), core_times(), time.monotonic() - t0
            metrics = run._metrics_delta(metrics0, server.metrics())
        finally:
            workers.close()
    finally:
        server.__exit__()
    delivered = _sum(done, "delivered")
    expected = _sum(done, "expected")
    cpu = cpu1 - cpu0
    sent = metrics.get("tidings_bytes_sent_total", 0.0)
    errors = [e for r in done for e in r.get("errors", [])]
    row = {
        "tag": tag,
        "codec": "protobuf" if protobuf else "json",
        "delta": delta,
        "compression": compression,
        "subscribers": plan.subscribers,
        "updates": plan.updates,
        "rate": plan.rate,
        "doc_bytes": len(docs[0]),
        "expected": expected,
        "delivered": delivered,
        "verified": _sum(done, "verified"),
        "mismatches": _sum(done, "mismatches"),
        "patches": _sum(done, "patches"),
        "fulls": _sum(done, "fulls"),
        "delta_negotiated": _sum(ready, "delta_negotiated"),
        "deflate_negotiated": _sum(ready, "deflate_negotiated"),
        "closed_early": _sum(done, "closed_early"),
        "publish_failures": failures,
        "wire_bytes": _sum(done, "wire_bytes"),
        "payload_bytes": _sum(done, "payload_bytes"),
        "messages": _sum(done, "messages"),
        "server_bytes_sent": sent,
        "server_frames_sent": metrics.get("tidings_frames_sent_total", 0.0),
        "server_cpu_s": round(cpu, 3),
        "seconds": round(seconds, 2),
        "core_busy_pct": busy_pct(cores0, cores1),
        "errors": errors[:20],
    }
    per = max(1, delivered)
    row["wire_bytes_per_delivery"] = row["wire_bytes"] / per
    row["payload_bytes_per_delivery"] = row["payload_bytes"] / per
    row["server_bytes_per_delivery"] = sent / per
    row["server_cpu_us_per_delivery"] = cpu / per * 1e6
    row["ok"] = delivered == expected and row["verified"] == expected and not failures
    log(
        f"  {tag}: {row['wire_bytes_per_delivery']:,.0f} B/delivery on the wire "
        f"(server counter {row['server_bytes_per_delivery']:,.0f}), "
        f"{row['server_cpu_us_per_delivery']:,.1f} us CPU/delivery, "
        f"{row['messages'] / per:.2f} frames/delivery, "
        f"{row['verified']:,}/{expected:,} verified, {row['patches']:,} patches, "
        f"deflate on {row['deflate_negotiated']}/{plan.subscribers}, "
        f"cores busy {row['core_busy_pct']}%" + (f"; errors: {errors[:3]}" if errors else "")
    )
    return row


def measure_memory(plan: Plan, compression: str) -> dict[str, Any]:
    """Server RSS per idle subscribed connection (clients offer permessage-deflate)."""
    tag = f"memory-{compression}"
    if plan.quiet_wait:
        run.wait_quiet(plan.quiet_wait)
    server = start_server(tag, compression)
    docs = make_docs(2)
    try:
        pid = server.pids[0]
        # Warm-up: the first connections, publication and (de)compression load code and
        # fill caches that later ones reuse; they are not part of a connection's cost.
        warm = Workers(f"{tag}-warm", server, 10, 1, updates=1, protobuf=False, delta=False,
                       deflate=True, timeout=60.0)  # fmt: skip
        try:
            warm.expect("ready", 60)
            warm.tell("go")
            warm.expect("started", 30)
            publish(server.api_port, docs[:1], 1.0)
            warm_done = warm.expect("done", 60)
        finally:
            warm.close()
        time.sleep(1.5)
        rss0 = rss_kib(pid)
        workers = Workers(
            tag, server, plan.idle_conns, plan.workers, updates=1, first=1, protobuf=False,
            delta=False, deflate=True, timeout=120.0,
        )  # fmt: skip
        try:
            ready = workers.expect("ready", 180)
            time.sleep(2.0)
            rss_idle = rss_kib(pid)
            workers.tell("go")
            workers.expect("started", 30)
            publish(server.api_port, docs[1:], 1.0)
            done = workers.expect("done", 60)
            time.sleep(1.5)
            rss_after = rss_kib(pid)
        finally:
            workers.close()
    finally:
        server.__exit__()
    k = plan.idle_conns
    row = {
        "compression": compression,
        "conns": k,
        "subscribed": _sum(ready, "subscribed"),
        "deflate_negotiated": _sum(ready, "deflate_negotiated"),
        "warmup_deflate_negotiated": _sum(warm_done, "deflate_negotiated"),
        "rss_base_kib": rss0,
        "rss_idle_kib": rss_idle,
        "rss_after_publication_kib": rss_after,
        "idle_kib_per_conn": (rss_idle - rss0) / k,
        "after_publication_kib_per_conn": (rss_after - rss0) / k,
        "delivered": _sum(done, "delivered"),
        "verified": _sum(done, "verified"),
    }
    log(
        f"  {tag}: {row['idle_kib_per_conn']:.2f} KiB per idle subscribed connection, "
        f"{row['after_publication_kib_per_conn']:.2f} KiB after one publication "
        f"(base {rss0 / 1024:.1f} MiB; deflate on {row['deflate_negotiated']}/{k}; "
        f"{row['verified']}/{k} verified)"
    )
    return row


# --- machine, report, chart ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info = procstats.machine(
        ["tidings", "websockets", "msgspec", "uvloop", "python-fossil-delta", "protobuf"]
    )
    info["runner_python"] = sys.version.split()[0]
    return info


def _row_label(row: dict[str, Any]) -> str:
    codec = "Protobuf" if row["codec"] == "protobuf" else "JSON"
    if row["compression"] != "none":
        return f"{codec}, permessage-deflate {row['compression']}"
    if row["tag"].startswith("deflate-"):
        return f"{codec}, no compression"
    return f"{codec}, {'delta (fossil)' if row['delta'] else 'no delta'}"


def _checked(row: dict[str, Any]) -> str:
    text = f"{row['verified']:,}/{row['expected']:,}"
    if row["mismatches"] or row["closed_early"] or row["publish_failures"]:
        text += (
            f" ({row['mismatches']} mismatched, {row['closed_early']} closed early, "
            f"{row['publish_failures']} publish failures)"
        )
    return text


def delta_ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for codec in ("json", "protobuf"):
        plain, delta = rows.get(f"{codec}"), rows.get(f"{codec}-delta")
        ok = plain and delta and plain["ok"] and delta["ok"]
        out[codec] = (
            plain["wire_bytes_per_delivery"] / delta["wire_bytes_per_delivery"]
            if ok and delta["wire_bytes_per_delivery"]
            else None
        )
    return out


def write_report(summary: dict[str, Any], outdir: Path) -> None:
    meta = summary.get("meta", {})
    m = meta.get("machine", {})
    env = m.get("tidings_env") if isinstance(m.get("tidings_env"), dict) else {}
    plan = meta.get("plan", {})
    lines = [
        "# tidings bandwidth report: delta compression and permessage-deflate",
        "",
        f"Generated {m.get('date', '?')} from commit `{m.get('git_commit', '?')}`"
        + (" (with uncommitted changes in src/)" if m.get("git_dirty") else "")
        + f" by `{meta.get('command', 'bench/bandwidth.py')}`"
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
        f"{env.get('websockets', '?')}, msgspec {env.get('msgspec', '?')}, python-fossil-delta "
        f"{env.get('python-fossil-delta', '?')}, protobuf {env.get('protobuf', '?')}.",
        f"- **Cores**: the server on core {run.SERVER_CORES} (`taskset`), the subscriber processes "
        f"and the publisher on core {run.GEN_CORES}; each row's per-core busy time is in "
        "summary.json (`core_busy_pct`).",
        f"- **Load**: a {DOC_SIZE:,}-byte JSON document (an inventory: items with a sku, name, "
        "status, 6-digit qty and price), one item's qty changed per publication, published "
        f"{plan.get('updates', '?')} times at {plan.get('rate', '?')}/s to `{CHANNEL}` through "
        f"`POST /api/publish` (server API); {plan.get('subscribers', '?')} subscribers "
        f"(websockets client, {plan.get('workers', '?')} process(es), asyncio + uvloop) speaking "
        "Centrifugo's JSON or Protobuf protocol. Namespace `state`: history_size 10, "
        'history_ttl 60, allowed_delta_types ["fossil"], delta_publish true.',
        "- **Bytes per delivery** = every byte TCP handed the subscribers' connections while "
        "publishing (WebSocket frame headers and payloads as sent, compressed or not) / deliveries. "
        "The hub's own `tidings_bytes_sent` counter is beside it. With delta, the first "
        "publication each subscriber gets is in full (that is the protocol), the rest patches.",
        "- **Server CPU per delivery** = utime+stime of the server (`/proc/PID/stat`, 10 ms ticks) "
        "from the first publication until every subscriber had the last one / deliveries (it "
        "includes the server API's handling of the publications).",
        "- **Frames/delivery** = WebSocket messages the subscribers got / deliveries: below 1 "
        "when the hub coalesced publications into one frame (it does when they come within its "
        "write delay, e.g. when the machine stalls it), which lowers the bytes and CPU per "
        "delivery; publications are at least half an interval apart to avoid it.",
        "- **Checked**: every subscriber rebuilds every publication (patches applied with "
        "`fossil_delta.apply_delta` to its previous document) and compares it byte for byte with "
        "the published document.",
        "",
    ]
    runs = summary.get("runs", {})
    delta_rows: dict[str, dict[str, Any]] = runs.get("delta", {})
    deflate_rows: dict[str, dict[str, Any]] = runs.get("deflate", {})
    memory_rows: dict[str, dict[str, Any]] = runs.get("memory", {})
    lines += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    ratios = delta_ratios(delta_rows)
    for codec, name in (("json", "JSON"), ("protobuf", "Protobuf")):
        r = ratios.get(codec)
        if f"{codec}-delta" not in delta_rows:
            continue
        plain, delta = delta_rows.get(codec, {}), delta_rows[f"{codec}-delta"]
        text = (
            f"{plain.get('wire_bytes_per_delivery', 0):,.0f} B / "
            f"{delta['wire_bytes_per_delivery']:,.0f} B = {r:.1f}x"
            if r
            else "not measured (a row failed; see below)"
        )
        lines.append(
            f"| A. {name}: >= {TARGET_DELTA_RATIO:g}x fewer bytes per delivery with delta | "
            f"{text} | {met(r >= TARGET_DELTA_RATIO if r else None)} |"
        )
    base = memory_rows.get("none")
    for mode in ("shared", "per-connection"):
        row = memory_rows.get(mode)
        if not row or not base:
            continue
        if not row["deflate_negotiated"]:
            lines.append(
                f"| B. memory per idle compressed connection ({mode}) <= "
                f"{TARGET_MEMORY_RATIO:g}x an uncompressed one | permessage-deflate not "
                "negotiated: the server does not offer it | n/a |"
            )
            continue
        worst = max(
            row["idle_kib_per_conn"] / base["idle_kib_per_conn"],
            row["after_publication_kib_per_conn"] / base["after_publication_kib_per_conn"],
        )
        lines.append(
            f"| B. memory per idle compressed connection ({mode}) <= {TARGET_MEMORY_RATIO:g}x an "
            f"uncompressed one | idle {row['idle_kib_per_conn']:.2f} vs "
            f"{base['idle_kib_per_conn']:.2f} KiB, after one publication "
            f"{row['after_publication_kib_per_conn']:.2f} vs "
            f"{base['after_publication_kib_per_conn']:.2f} KiB: {worst:.2f}x (the larger) | "
            f"{met(worst <= TARGET_MEMORY_RATIO)} |"
        )
    lines.append("")
    table_head = [
        "| row | bytes/delivery (wire) | hub counter bytes/delivery | message bytes/delivery "
        "| frames/delivery | server CPU µs/delivery | checked | patches / full | cores busy % |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]

    def table_row(row: dict[str, Any], extra: str = "") -> str:
        return (
            f"| {_row_label(row)}{extra} | {row['wire_bytes_per_delivery']:,.1f} | "
            f"{row['server_bytes_per_delivery']:,.1f} | {row['payload_bytes_per_delivery']:,.1f} | "
            f"{row['messages'] / max(1, row['delivered']):.2f} | "
            f"{row['server_cpu_us_per_delivery']:,.1f} | {_checked(row)} | "
            f"{row['patches']:,} / {row['fulls']:,} | {row['core_busy_pct']} |"
        )

    if delta_rows:
        lines += [
            "## A. Delta compression (Fossil)",
            "",
            f"{plan.get('subscribers', '?')} subscribers x {plan.get('updates', '?')} publications; "
            "no WebSocket compression. *message bytes* = the WebSocket messages' payloads.",
            "",
            *table_head,
        ]
        lines += [table_row(row) for row in delta_rows.values()]
        lines.append("")
        for codec, name in (("json", "JSON"), ("protobuf", "Protobuf")):
            if ratios.get(codec):
                lines.append(
                    f"- {name}: delta sends {ratios[codec]:.1f}x fewer bytes per delivery."
                )
        lines.append("")
    if deflate_rows:
        none = deflate_rows.get("none")
        lines += [
            "## B. permessage-deflate",
            "",
            "JSON subscribers without delta, each offering permessage-deflate (the websockets "
            'client\'s default `compression="deflate"`); server `[websocket] compression = true, '
            "compression_level = 1, compression_min_size = 0`, `compression_shared` true "
            "(*shared*: each frame deflated once for every connection that gets the same bytes) "
            "or false (*per-connection*). *message bytes* = the messages once inflated.",
            "",
            *table_head,
        ]
        for row in deflate_rows.values():
            extra = ""
            if row["compression"] != "none" and not row["deflate_negotiated"]:
                extra = " (**not negotiated**: the server does not offer permessage-deflate)"
            lines.append(table_row(row, extra))
        lines.append("")
        for row in deflate_rows.values():
            if none and row is not none and row["deflate_negotiated"] and none["ok"] and row["ok"]:
                lines.append(
                    f"- {row['compression']}: {none['wire_bytes_per_delivery'] / row['wire_bytes_per_delivery']:.1f}x "
                    f"fewer bytes than without compression, server CPU "
                    f"{row['server_cpu_us_per_delivery'] / max(1e-9, none['server_cpu_us_per_delivery']):.2f}x."
                )
        lines.append("")
    if memory_rows:
        lines += [
            "### Memory per idle subscribed connection",
            "",
            f"Server RSS (`VmRSS`) with {plan.get('idle_conns', '?'):,} idle subscribed JSON "
            "connections (clients offering permessage-deflate) minus RSS with none (after a warm-up "
            "of 10 connections that came and went), per connection; then again once each got one "
            "4 KiB publication (a compressor or window allocated on first use shows there).",
            "",
            "| compression | deflate negotiated | base RSS MiB | KiB/connection, idle | "
            "KiB/connection, after one publication | vs none (idle / after) |",
            "|---|---|---:|---:|---:|---|",
        ]
        for row in memory_rows.values():
            versus = scripting.memory_versus(row, base)
            lines.append(
                f"| {row['compression']} | {row['deflate_negotiated']:,}/{row['conns']:,} | "
                f"{row['rss_base_kib'] / 1024:.1f} | {row['idle_kib_per_conn']:.2f} | "
                f"{row['after_publication_kib_per_conn']:.2f} | {versus} |"
            )
        lines.append("")
    if summary.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in summary["errors"]] + [""]
    if (outdir / "bandwidth.png").exists():
        lines += ["![bytes per delivery](bandwidth.png)", ""]
    (outdir / "REPORT.md").write_text("\n".join(lines))


def write_chart(summary: dict[str, Any], outdir: Path) -> bool:
    """bandwidth.png: bytes per delivery of each row; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [*summary.get("runs", {}).get("delta", {}).values()]
    rows += [*summary.get("runs", {}).get("deflate", {}).values()]
    if not rows:
        return True
    labels = [_row_label(r) for r in rows]
    values = [r["wire_bytes_per_delivery"] for r in rows]
    colors = [
        "#55a868" if r["delta"] else "#dd8452" if r["compression"] != "none" else "#4c72b0"
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ax.barh(labels, values, color=colors)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_xlabel("bytes on the wire per delivery")
    ax.set_title(f"{DOC_SIZE:,} B state document, one field changed per publication")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center")
    fig.tight_layout()
    fig.savefig(outdir / "bandwidth.png", dpi=110)
    plt.close(fig)
    return True


def report(summary: dict[str, Any], outdir: Path) -> None:
    scripting.draw_chart(Path(__file__).resolve(), summary, outdir, "bandwidth.png", write_chart)
    write_report(summary, outdir)


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50 subscribers x 30 updates")
    parser.add_argument("--only", help=f"comma-separated parts of {list(PARTS)}")
    parser.add_argument("--out", help="output directory (default bench/results/bandwidth)")
    parser.add_argument("--subscribers", type=int, help="N (default 500; --quick 50)")
    parser.add_argument("--updates", type=int, help="M publications (default 200; --quick 30)")
    parser.add_argument("--rate", type=float, default=10.0, help="publications per second (10)")
    parser.add_argument("--idle-conns", type=int, help="K for memory (default 2000; --quick 200)")
    parser.add_argument("--workers", type=int, default=1, help="subscriber processes (1)")
    parser.add_argument("--report-only", action="store_true", help="rebuild REPORT.md")
    parser.add_argument("--chart-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    outdir = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "") / "bandwidth"
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
    summary = scripting.new_summary(
        {
            "machine": machine(),
            "plan": asdict(plan),
            "parts": parts,
            "command": " ".join(["bench/bandwidth.py", *sys.argv[1:]]),
            "targets": {"delta_ratio": TARGET_DELTA_RATIO, "memory_ratio": TARGET_MEMORY_RATIO},
        }
    )
    log(f"bandwidth: {'quick' if plan.quick else 'full'}; parts {parts}; results in {outdir}")
    started = time.monotonic()

    def guarded(part: str, key: str, measure: Any) -> None:
        scripting.guarded(summary, part, key, measure)

    try:
        if "delta" in parts:
            log("== A. delta compression")
            for codec in ("json", "protobuf"):
                for delta in (False, True):
                    key = codec + ("-delta" if delta else "")
                    guarded("delta", key, lambda c=codec, d=delta, k=key: measure_row(
                        plan, k, protobuf=c == "protobuf", delta=d, compression="none"))  # fmt: skip
        if "deflate" in parts:
            log("== B. permessage-deflate")
            for compression in COMPRESSIONS:
                guarded("deflate", compression, lambda c=compression: measure_row(
                    plan, f"deflate-{c}", protobuf=False, delta=False, compression=c))  # fmt: skip
        if "memory" in parts:
            log("== B. memory per idle connection")
            for compression in COMPRESSIONS:
                guarded("memory", compression, lambda c=compression: measure_memory(plan, c))
    finally:
        scripting.finish(summary, outdir, started, report)
    for codec, r in delta_ratios(summary["runs"].get("delta", {})).items():
        if r:
            log(f"delta ratio {codec}: {r:.1f}x (target >= {TARGET_DELTA_RATIO:g}x)")
    log(f"done in {time.monotonic() - started:.0f}s: {outdir / 'REPORT.md'}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
