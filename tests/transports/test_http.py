"""HTTP/1.1 on the client port, driven by raw sockets: keep-alive, pipelining, bad input."""

from __future__ import annotations

import asyncio
import re

from tidings import Hub

from ..conftest import HubFactory

TIMEOUT = 5


async def exchange(hub: Hub, data: bytes, *, until_eof: bool = True, size: int = 0) -> bytes:
    """Send raw bytes; read until the server closes (or ``size`` bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            if until_eof:
                return await reader.read()
            return await reader.readexactly(size)
    finally:
        writer.close()


def statuses(data: bytes) -> list[int]:
    """The status of every response in ``data`` (bodies here never contain a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


async def test_http_1_0_and_connection_close_get_their_answer_then_eof(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    for request in (
        b"GET /health HTTP/1.0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        data = await exchange(hub, request)
        assert statuses(data) == [200]
        assert data.endswith(b'{"status":"ok"}')
        assert b"Connection: close" in data


async def test_keep_alive_answers_pipelined_requests_in_order_on_one_connection(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    requests = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await exchange(hub, requests)
    assert statuses(data) == [200, 404, 200]


async def test_a_keep_alive_connection_stays_open_between_requests(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        for _ in range(3):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"Content-Length: 15" in head
            assert await asyncio.wait_for(reader.readexactly(15), TIMEOUT) == b'{"status":"ok"}'
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def test_garbage_gets_400_and_the_port_still_serves(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    data = await exchange(hub, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert statuses(data) == [400]
    assert b"Connection: close" in data
    assert statuses(await exchange(hub, b"GET /health HTTP/1.0\r\n\r\n")) == [200]


async def test_an_oversized_head_gets_431_and_an_oversized_body_413(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert statuses(await exchange(hub, big_header)) == [431]
    body = b"x" * (70 * 1024)
    big_body = (
        b"POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    assert statuses(await exchange(hub, big_body)) == [413]


async def test_websocket_endpoint_refuses_other_methods_with_405(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    data = await exchange(
        hub,
        b"POST /connection/websocket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert statuses(data) == [405, 200]
    assert b"Allow: GET" in data


async def test_idle_http_connections_are_closed_at_shutdown(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)
    await asyncio.wait_for(hub.stop(), TIMEOUT)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
