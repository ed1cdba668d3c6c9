"""The WebSocket shell, driven by raw websockets clients that check frames and close codes."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import socket
import urllib.error
import urllib.request
import zlib
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tidings import Hub, make_token
from tidings.transports import websocket as websocket_module
from tidings.transports.websocket import Deflater, Flusher, FrameCache, frame as plain_frame

from ..conftest import SECRET, HubFactory, eventually
from ..sockets import send_queues
from ..wsclient import closed_with, receive, receive_until

TIMEOUT = 5


async def connected(hub: Hub, **connect_request: Any) -> ClientConnection:
    ws = await connect(hub.url)
    await ws.send(json.dumps({"id": 1, "connect": connect_request}))
    (reply,) = await receive(ws)
    assert "connect" in reply, reply
    return ws


def http_get(hub: Hub, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{hub.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_health_answers_on_the_websocket_port(make_hub: HubFactory) -> None:
    hub = await make_hub()
    status, body = await asyncio.to_thread(http_get, hub, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_other_paths_are_not_found(make_hub: HubFactory) -> None:
    hub = await make_hub()
    status, _ = await asyncio.to_thread(http_get, hub, "/nope")
    assert status == 404


async def test_connect_without_credentials_is_refused_with_bad_request(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub()
    async with connect(hub.url) as ws:
        await ws.send('{"id":1,"connect":{}}')
        assert (await closed_with(ws))[0] == 3501


async def test_connect_and_subscribes_in_one_frame_are_answered_in_order(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    async with connect(hub.url) as ws:
        await ws.send(
            '{"id":1,"connect":{}}\n'
            '{"id":2,"subscribe":{"channel":"a"}}\n'
            '{"id":3,"subscribe":{"channel":"b"}}'
        )
        replies: list[dict[str, Any]] = []
        while len([r for r in replies if "id" in r]) < 3:
            replies += await receive(ws)
        assert [r["id"] for r in replies if "id" in r] == [1, 2, 3]
        assert replies[0]["connect"]["pong"] is True
        assert replies[0]["connect"]["ping"] == 25


async def test_pending_messages_go_out_coalesced_in_one_frame(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, force_push_join_leave=False, join_leave=False)
    async with connect(hub.url) as ws:
        await ws.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"c"}}')
        await receive_until(ws, lambda m: m.get("id") == 2)
        for n in range(50):  # in one loop iteration: one wake-up of the writer
            await hub.node.publish("c", _raw({"n": n}), hub.config.channel)
        messages: list[dict[str, Any]] = []
        frames = 0
        while len(messages) < 50:
            messages += await receive(ws)
            frames += 1
        assert [m["push"]["pub"]["data"]["n"] for m in messages] == list(range(50))
        assert frames < 50


async def test_idle_connections_hold_no_task_no_timer_nor_their_handshake(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    baseline = len(asyncio.all_tasks())
    sockets = []
    for _ in range(20):
        ws = await connect(hub.url, additional_headers={"X-Big": "x" * 2000})
        await ws.send('{"id":1,"connect":{}}')
        await receive(ws)
        sockets.append(ws)
    await asyncio.sleep(0.05)  # the readers of the connect commands end
    try:
        # Our own clients' reader tasks (websockets' client) are the only new ones.
        assert len(asyncio.all_tasks()) - baseline == len(sockets)
        assert len(hub.server.clients) == 20
        for server_side in hub.server.clients:
            assert server_side._reader is None and server_side._cut is None
            assert not server_side.client.headers  # only the connect hook needed them
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_burst_of_frames_and_a_fragmented_message_are_read_in_order(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    async with connect(hub.url) as ws:
        # 100 frames in one write: more than the 16 frames at which reading
        # pauses, so the frame queue fills, pauses and resumes reading.
        ws.protocol.send_text(b'{"id":1,"connect":{}}')
        for n in range(2, 101):
            ws.protocol.send_text(f'{{"id":{n},"subscribe":{{"channel":"c{n}"}}}}'.encode())
        ws.transport.writelines(ws.protocol.data_to_send())
        await ws.send(['{"id":101,', '"subscribe":{"channel":"fragmented"}}'])
        replies: list[dict[str, Any]] = []
        while len(replies) < 101:
            replies += [r for r in await receive(ws) if "id" in r]
        assert [r["id"] for r in replies] == list(range(1, 102))
        assert all("error" not in r for r in replies)


async def test_an_oversized_message_closes_with_1009(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, **{"client.max_message_size": 1024})
    async with connect(hub.url) as ws:
        await ws.send('{"id":1,"connect":{}}')
        await receive(ws)
        data = json.dumps({"id": 2, "publish": {"channel": "a", "data": "x" * 2000}})
        await ws.send(data)
        assert (await closed_with(ws))[0] == 1009


async def test_a_binary_frame_closes_with_3506(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    ws = await connected(hub)
    await ws.send(b'{"id":2,"subscribe":{"channel":"a"}}')
    assert await closed_with(ws) == (3506, "inappropriate protocol")


async def test_no_connect_within_the_stale_delay_closes_with_3502(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, **{"client.stale_close_delay": 0.2})
    async with connect(hub.url) as ws:
        assert (await closed_with(ws))[0] == 3502


@pytest.mark.slow
async def test_a_late_pong_closes_with_3012_and_a_timely_one_keeps_the_connection(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **{"client.ping_interval": 0.4, "client.pong_timeout": 0.2})
    silent = await connected(hub)
    polite = await connected(hub)

    async def answer_pings() -> None:
        async for frame in polite:
            if frame == "{}":
                await polite.send("{}")

    answering = asyncio.create_task(answer_pings())
    try:
        assert (await closed_with(silent))[0] == 3012
        await asyncio.sleep(1.0)  # several ping intervals
        assert polite.close_code is None
    finally:
        answering.cancel()
        await polite.close()


async def test_garbage_never_hurts_other_clients(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)
    watcher = await connected(hub)
    await watcher.send('{"id":2,"subscribe":{"channel":"watch"}}')
    await receive_until(watcher, lambda m: m.get("id") == 2)
    rng = random.Random(1234)
    samples = [
        b"\xff\xfe",
        "{}",
        "null",
        '{"id":1}',
        '{"id":1,"connect":{"subs":{"a":{"offset":-1}}}}',
        '{"id":1,"connect":{}}\n{"id":2,"history":{"channel":"x","since":{"offset":"a"}}}',
        '{"id":1,"connect":{}}\n{"id":2,"rpc":{"method":"x"}}\n{"id":2,"unsubscribe":{}}',
        '{"id":1,"connect":{"token":"a.b.c"}}',
        "\n".join(f'{{"id":{i},"connect":{{}}}}' for i in range(1, 40)),
    ]
    for _ in range(60):
        length = rng.randint(0, 200)
        samples.append(bytes(rng.getrandbits(8) for _ in range(length)).decode("latin-1"))
    for sample in samples:
        async with connect(hub.url) as ws:
            try:
                await ws.send(sample)
                assert (await closed_with(ws))[0] is not None
            except ConnectionClosed:
                pass
    # The node is intact: the watcher still gets publications, nothing leaked.
    await hub.publish("watch", {"ok": True})
    message = await receive_until(watcher, lambda m: "push" in m)
    assert message["push"]["pub"]["data"] == {"ok": True}
    await asyncio.sleep(0.1)
    assert hub.node.num_clients == 1
    assert hub.node.channels() == {"watch": 1}
    await watcher.close()


async def test_token_connect_reports_expiry(make_hub: HubFactory) -> None:
    hub = await make_hub()
    token = make_token(SECRET, "42", ttl=60)
    ws = await connect(hub.url)
    await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
    (reply,) = await receive(ws)
    assert reply["connect"]["expires"] is True
    assert 55 <= reply["connect"]["ttl"] <= 60
    await ws.close()


async def test_shutdown_flushes_queued_messages_then_closes_with_3001(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)
    ws = await connected(hub)
    await ws.send('{"id":2,"subscribe":{"channel":"c"}}')
    await receive_until(ws, lambda m: m.get("id") == 2)
    for n in range(20):
        await hub.publish("c", {"n": n})
    await hub.stop()
    received: list[dict[str, Any]] = []
    try:
        while True:
            received += await receive(ws)
    except ConnectionClosed:
        pass
    assert [m["push"]["pub"]["data"]["n"] for m in received] == list(range(20))
    assert (ws.close_code, ws.close_reason) == (3001, "shutdown")
    with pytest.raises(OSError):
        await connect(hub.url, open_timeout=1)


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_closed_with_3008_and_others_are_served(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        dev=True,
        **{
            "client.queue_max_size": 256 * 1024,
            "join_leave": False,
            "force_push_join_leave": False,
        },
    )
    # max_queue=1: the client stops reading its socket once one message waits unread.
    stalled = await connect(hub.url, max_queue=1)
    await stalled.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"c"}}')
    reader = await connected(hub)
    reader.protocol.max_size = None  # coalesced frames may be large
    await reader.send('{"id":2,"subscribe":{"channel":"c"}}')
    await receive_until(reader, lambda m: m.get("id") == 2)
    await asyncio.sleep(0.2)
    payload = "x" * 20000
    got = 0
    for n in range(400):
        await hub.publish("c", {"n": n, "p": payload})
        while got <= n:  # this reader keeps up
            frame = await asyncio.wait_for(reader.recv(), TIMEOUT)
            got += str(frame).count("\n") + 1
    assert got == 400
    # The stalled client cannot read its close frame; the server drops it anyway.
    async with asyncio.timeout(TIMEOUT):
        while hub.node.num_clients != 1:
            await asyncio.sleep(0.05)
    code, _ = await closed_with(stalled)
    assert code in (3008, 1006)  # 1006 when the close frame was stuck behind unread data
    await reader.close()


def _raw(data: Any) -> Any:
    import msgspec

    return msgspec.Raw(msgspec.json.encode(data))


@pytest.mark.slow
async def test_a_stalled_reader_holds_at_most_the_bound_and_is_reset_when_cut(
    make_hub: HubFactory,
) -> None:
    bound = 256 * 1024
    hub = await make_hub(dev=True, **{"client.queue_max_size": bound, "join_leave": False})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that stopped
    sock.setblocking(False)
    try:
        await _stall(hub, sock, bound)
    finally:
        sock.close()


async def _stall(hub: Hub, sock: socket.socket, bound: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", hub.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    message = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"c"}}'
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
    await loop.sock_sendall(sock, bytes((0x81, 0x80 | len(message))) + mask + masked)
    await eventually(lambda: hub.node.num_subscriptions == 1)
    (server_side,) = hub.server.clients
    peak = 0
    for n in range(200):  # 4 MB: far more than the bound and the kernel's default buffers
        await hub.publish("c", {"n": n, "p": "x" * 20000})
        await asyncio.sleep(0)
        buffered = server_side.transport.get_write_buffer_size()
        peak = max(peak, sum(send_queues(hub.port)) + buffered)
        if server_side.closing is not None:
            break
    assert server_side.closing is not None, "the stalled reader was not found slow"
    assert server_side.closing.code == 3008
    await eventually(lambda: hub.node.num_clients == 0, "the slow client gone")
    # What the kernel (Send-Q) and the transport held for it never went past the bound.
    assert bound / 2 < peak <= bound
    # The slow client's close frame cannot go out: the connection is reset.
    await eventually(lambda: not send_queues(hub.port), timeout=5)
    with pytest.raises(ConnectionResetError):
        while await loop.sock_recv(sock, 65536):
            pass


# --- permessage-deflate ---------------------------------------------------------------


class CountingDeflater(Deflater):
    """The server's deflater, counting the frames it compresses."""

    def __init__(self, deflater: Deflater) -> None:
        super().__init__(deflater.level, deflater.min_size, deflater.shared)
        self.compressed = 0

    def frame(self, payload: bytes, binary: bool) -> bytes:
        self.compressed += len(payload) > self.min_size
        return super().frame(payload, binary)


def _inflate(frame: bytes) -> bytes:
    """The payload of one deflated server frame (RSV1 set, 16-bit length)."""
    assert frame[0] & 0x40, "RSV1 not set"
    start = 2 if frame[1] < 126 else 4
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(frame[start:] + b"\x00\x00\xff\xff")


def test_the_deflater_compresses_past_the_minimum_size_only() -> None:
    deflater = Deflater(level=1, min_size=100, shared=True)
    small, large = b'{"n":1}', json.dumps({"text": "tidings " * 200}).encode()
    assert deflater.frame(small, binary=False) == plain_frame(small, binary=False)
    deflated = deflater.frame(large, binary=False)
    assert len(deflated) < len(large) // 10
    assert _inflate(deflated) == large


async def test_compression_is_negotiated_without_context_takeover(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, **{"websocket.compression": True})
    async with connect(hub.url, compression="deflate") as ws:
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )
    plain = await make_hub(dev=True)
    async with connect(plain.url, compression="deflate") as ws:
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers


@pytest.mark.parametrize("shared", [True, False])
async def test_a_publication_is_deflated_once_for_all_its_subscribers(
    make_hub: HubFactory, shared: bool
) -> None:
    hub = await make_hub(
        dev=True,
        join_leave=False,
        force_push_join_leave=False,
        **{"websocket.compression": True, "websocket.compression_shared": shared},
    )
    deflater = hub.server.deflater = CountingDeflater(hub.server.deflater)
    clients = [await connect(hub.url, compression="deflate") for _ in range(10)]
    for ws in clients:
        await ws.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"doc"}}')
        await receive_until(ws, lambda m: m.get("id") == 2)
    await eventually(lambda: hub.node.channels().get("doc") == 10)
    sent = hub.metrics.registry.get_sample_value
    before, written = deflater.compressed, sent("tidings_bytes_sent_total") or 0
    document = {"title": "state", "rows": [{"id": n, "value": "same text"} for n in range(100)]}
    await hub.node.publish("doc", _raw(document), hub.config.channel)
    for ws in clients:
        [message] = await receive(ws)
        assert message["push"]["pub"]["data"] == document
        await ws.close()
    assert deflater.compressed - before == (1 if shared else 10)
    written = (sent("tidings_bytes_sent_total") or 0) - written
    assert written < 10 * len(json.dumps(document)) / 5  # compressed on the wire


async def test_messages_flushed_together_are_coalesced_once_for_all_their_subscribers(
    make_hub: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)
    clients = [await connect(hub.url) for _ in range(10)]
    for ws in clients:
        await ws.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"doc"}}')
        await receive_until(ws, lambda m: m.get("id") == 2)
    await eventually(lambda: hub.node.channels().get("doc") == 10)
    coalesced = 0
    frames = websocket_module._frames

    def counted(pending: list[bytes], codec: Any) -> tuple[bytes, int]:
        nonlocal coalesced
        coalesced += 1
        return frames(pending, codec)

    monkeypatch.setattr(websocket_module, "_frames", counted)
    # Three publications in one loop turn: one flush, one frame of three for each.
    await asyncio.gather(*(hub.publish("doc", {"n": n}) for n in range(3)))
    for ws in clients:
        messages = await receive(ws)
        assert [m["push"]["pub"]["data"]["n"] for m in messages] == [0, 1, 2]
        await ws.close()
    assert coalesced == 1


async def test_a_compressed_message_is_bounded_once_inflated(make_hub: HubFactory) -> None:
    """A message that compresses well may pass max_message_size on the wire's terms;
    inflated, it is held to decompressed_message_size_limit (1009 past it)."""
    hub = await make_hub(
        dev=True,
        **{
            "client.max_message_size": 1024,
            "websocket.compression": True,
            "websocket.decompressed_message_size_limit": 8192,
        },
    )
    async with connect(hub.url, compression="deflate") as ws:
        await ws.send('{"id":1,"connect":{}}')
        await receive(ws)
        await ws.send(json.dumps({"id": 2, "publish": {"channel": "a", "data": "x" * 4000}}))
        await receive_until(ws, lambda m: m.get("id") == 2)
        bomb = json.dumps({"id": 3, "publish": {"channel": "a", "data": "x" * 1_000_000}})
        await ws.send(bomb)  # about 1 KiB deflated
        assert (await closed_with(ws))[0] == 1009


async def test_uni_websocket_takes_no_subprotocol_and_sends_bare_pushes(
    make_hub: HubFactory,
) -> None:
    """It speaks JSON only: a client offering centrifuge-protobuf is not told it got it."""
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)
    url = hub.url.replace("/connection/websocket", "/connection/uni_websocket")
    async with connect(url, subprotocols=[Subprotocol("centrifuge-protobuf")]) as ws:
        assert ws.subprotocol is None
        await ws.send(json.dumps({"subs": {"news": {}}}))
        first = json.loads(await ws.recv())
        assert list(first) == ["connect"] and "news" in first["connect"]["subs"]
        await hub.publish("news", {"n": 1})
        pub = json.loads(await ws.recv())
        assert (pub["channel"], pub["pub"]["data"]) == ("news", {"n": 1})


# -- the flusher ---------------------------------------------------------------------------------


class _SlowConnection:
    """A Flushable whose flush takes ``cost`` seconds of the loop, as a large fan-out
    on a busy core does; it records when each flush started and ended."""

    server: Any = None

    def __init__(self, flusher: Flusher, cost: float) -> None:
        self.flusher = flusher
        self.cost = cost
        self.dirty = False
        self.flushes: list[tuple[float, float]] = []

    def write(self) -> None:
        if not self.dirty:  # as a connection does: marked once until flushed
            self.dirty = True
            self.flusher.mark(self)

    def flush(self, framed: FrameCache) -> tuple[int, int]:
        self.dirty = False
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < self.cost:  # busy, as writing is
            pass
        self.flushes.append((start, loop.time()))
        return 0, 0


async def test_the_write_delay_counts_from_the_end_of_a_long_flush() -> None:
    flusher = Flusher(write_delay=0.01)
    connection = _SlowConnection(flusher, cost=0.02)
    for _ in range(20):
        connection.write()
        await asyncio.sleep(0.005)  # more messages come while the loop turns
    await eventually(lambda: not connection.dirty, "the last flush")
    assert len(connection.flushes) >= 3
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(connection.flushes)]
    # The loop had write_delay between a flush's end and the next one's start to read
    # and queue more, not a flush right after a flush.
    assert min(gaps) >= 0.009, gaps
