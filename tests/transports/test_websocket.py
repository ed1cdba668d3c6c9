"""The WebSocket shell, driven by raw websockets clients that check frames and close codes."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections import deque
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tidings import Hub, make_token
from tidings.transports.websocket import _FrameList

from ..conftest import SECRET, HubFactory
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


async def test_an_idle_connection_holds_lists_not_deques_nor_its_handshake(
    make_hub: HubFactory,
) -> None:
    # The memory an idle connection costs depends on websockets' internals
    # (LeanServerConnection): this fails when an upgrade changes them.
    hub = await make_hub(dev=True)
    async with connect(hub.url, additional_headers={"X-Big": "x" * 2000}) as ws:
        await ws.send('{"id":1,"connect":{}}')
        await receive(ws)
        (server_side,) = list(hub.server.clients)
        assert type(server_side.drain_waiters) is list
        assert type(server_side.recv_messages.frames.queue) is _FrameList
        assert server_side.response is None
        assert server_side.request is not None and not server_side.request.headers


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


def test_the_frame_list_behaves_as_the_deque_it_replaces() -> None:
    frames, reference = _FrameList(), deque[int]()
    for queue in (frames, reference):
        queue.extend([1, 2, 3])
        assert queue.popleft() == 1
        queue.extendleft(reversed([7, 8]))  # how websockets puts frames back
        queue.append(4)
    assert list(frames) == list(reference) == [7, 8, 2, 3, 4]


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


async def test_a_client_that_stops_reading_is_closed_with_3008_and_others_are_served(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        dev=True,
        **{"client.queue_max_size": 64 * 1024, "join_leave": False, "force_push_join_leave": False},
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
        await asyncio.sleep(0)
        while True:
            try:
                frame = await asyncio.wait_for(reader.recv(), 0.001)
            except TimeoutError:
                break
            got += str(frame).count("\n") + 1
    while got < 400:
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
