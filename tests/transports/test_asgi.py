"""The ASGI mount (``Hub.asgi``), under a real uvicorn in the test's event loop.

Raw ``websockets`` clients check what the SDKs depend on: the same protocol,
codes, limits and hooks as on the hub's own port. The SDKs themselves, under
uvicorn, hypercorn and daphne, are in ``tests/e2e/test_asgi.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tidings import Disconnect, DisconnectEvent, Hub, load_config
from tidings.protocol import client_pb2
from tidings.transports.asgi import ASGIApp, Receive, Scope, Send

from ..conftest import SECRET, eventually, free_port
from ..wsclient import closed_with, receive, receive_until
from .test_framing import client_frame, handshake_request, new_key

Serve = Callable[[ASGIApp], Awaitable[str]]
"""Serve an application with uvicorn; returns its ``http://host:port``."""


def make_config(**overrides: Any) -> Any:
    return load_config(
        env={}, overrides={"dev": True, "token_hmac_secret_key": SECRET, **overrides}
    )


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: ASGIApp) -> str:
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="auto",
            log_level="warning",
            ws="websockets-sansio",
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        await eventually(lambda: server.started or task.done(), "uvicorn to start")
        assert server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def fastapi_app(hub: Hub) -> FastAPI:
    app = FastAPI(lifespan=hub.lifespan)
    app.mount("/realtime", hub.asgi())
    return app


def _data(message: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = message.get("push", {}).get("pub", {}).get("data", {})
    return data


async def stalled_subscriber(base: str, channel: str) -> asyncio.StreamWriter:
    """A raw client with a 4 KiB receive buffer, subscribed to ``channel``, that never
    reads after the handshake (closing the returned writer ends it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(base.rsplit(":", 1)[1])))
    response, stalled = await asyncio.open_connection(sock=sock)
    stalled.write(handshake_request(new_key(), path="/realtime/connection/websocket"))
    assert (await response.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    commands = {"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": channel}}
    stalled.write(client_frame(0x1, "\n".join(map(json.dumps, commands)).encode()))
    return stalled


def recorded_closes(hub: Hub) -> list[int]:
    """The close codes of the hub's connections, as its disconnect hook gets them."""
    closes: list[int] = []

    @hub.on_disconnect
    async def record(event: DisconnectEvent) -> None:
        closes.append(event.code)

    return closes


def ws_url(base: str, path: str = "/realtime/connection/websocket") -> str:
    return base.replace("http://", "ws://") + path


async def connected(url: str, **connect: Any) -> ClientConnection:
    ws = await connect_ws(url)
    await ws.send(json.dumps({"id": 1, "connect": connect}))
    (reply,) = await receive(ws)
    assert "connect" in reply, reply
    return ws


async def connect_ws(url: str, **kwargs: Any) -> ClientConnection:
    return await connect(url, **kwargs)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_a_mounted_hub_serves_the_protocol_on_the_apps_port(serve: Serve) -> None:
    hub = Hub(make_config())
    base = await serve(fastapi_app(hub))
    assert hub.api is None, "a mounted hub opens the API port only when asked"
    ws = await connected(ws_url(base))
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "news"}}))
    assert (await receive(ws))[0]["id"] == 2
    await hub.publish("news", {"text": "hello"})
    push = await receive_until(ws, lambda m: "push" in m)
    assert push["push"] == {"channel": "news", "pub": {"data": {"text": "hello"}, "offset": 1}}
    assert hub.metrics.registry.get_sample_value("tidings_connections") == 1
    status, body = await asyncio.to_thread(http_get, f"{base}/realtime/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _ = await asyncio.to_thread(http_get, f"{base}/realtime/nope")
    assert status == 404
    await ws.close()


async def test_protobuf_is_chosen_by_subprotocol(serve: Serve) -> None:
    hub = Hub(make_config())
    base = await serve(fastapi_app(hub))
    async with await connect_ws(
        ws_url(base), subprotocols=["centrifuge-protobuf", "centrifuge-json"]
    ) as ws:
        assert ws.subprotocol == "centrifuge-protobuf"
        command = client_pb2.Command(id=1, connect=client_pb2.ConnectRequest())
        data = command.SerializeToString()
        await ws.send(bytes([len(data)]) + data)  # varint-delimited, one byte of length
        frame = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(frame, bytes)
        reply = client_pb2.Reply.FromString(frame[1 : 1 + frame[0]])
        assert reply.id == 1 and reply.connect.client


async def test_origin_and_connection_limit_are_checked_as_on_the_native_port(
    serve: Serve,
) -> None:
    config = make_config(
        **{"client.connection_limit": 1, "allowed_origins": ["https://ok.example"]}
    )
    hub = Hub(config)
    base = await serve(fastapi_app(hub))
    with pytest.raises(InvalidStatus) as refused:
        await connect_ws(ws_url(base), origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    first = await connected(ws_url(base))
    with pytest.raises(InvalidStatus) as refused:
        await connect_ws(ws_url(base))
    assert refused.value.response.status_code == 503
    assert b"Too many connections" in refused.value.response.body
    await first.close()


async def test_an_oversized_message_closes_with_1009(serve: Serve) -> None:
    hub = Hub(make_config(**{"client.max_message_size": 1024}))
    base = await serve(fastapi_app(hub))
    ws = await connected(ws_url(base))
    await ws.send("é" * 600)  # 600 characters, 1,200 bytes: the limit is in bytes
    assert (await closed_with(ws))[0] == 1009


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_closed_with_3008(serve: Serve) -> None:
    hub = Hub(make_config(**{"client.queue_max_size": 64 * 1024}))
    closes = recorded_closes(hub)
    base = await serve(fastapi_app(hub))
    stalled = await stalled_subscriber(base, "feed")
    reader = await connected(ws_url(base))
    await reader.send(json.dumps({"id": 2, "subscribe": {"channel": "feed"}}))
    await receive_until(reader, lambda m: m.get("id") == 2)
    for n in range(400):  # 3.2 MB, each publication taken by the reader before the next
        await hub.publish("feed", {"n": n, "blob": "y" * 8000}, skip_history=True)
        await receive_until(reader, lambda m, n=n: _data(m).get("n") == n)
    await eventually(lambda: 3008 in closes, "the stalled client to be closed with 3008", 10)
    assert hub.metrics.registry.get_sample_value("tidings_queue_overflows_total") == 1
    await reader.close()
    stalled.close()


async def test_hub_stop_closes_clients_with_3001(serve: Serve) -> None:
    hub = Hub(make_config())
    app = FastAPI()
    app.mount("/realtime", hub.asgi())
    await hub.start(listen=False)
    base = await serve(app)
    ws = await connected(ws_url(base))
    await hub.stop()
    assert (await closed_with(ws))[0] == 3001
    with pytest.raises(InvalidStatus) as refused:
        await connect_ws(ws_url(base))
    assert refused.value.response.status_code == 503
    assert (await asyncio.to_thread(http_get, f"{base}/realtime/health"))[0] == 503


@pytest.mark.slow
async def test_a_close_the_client_never_takes_is_cut_after_its_deadline(serve: Serve) -> None:
    hub = Hub(make_config(**{"client.queue_max_size": 64 * 1024 * 1024}))
    closes = recorded_closes(hub)
    base = await serve(fastapi_app(hub))
    stalled = await stalled_subscriber(base, "feed")
    await eventually(lambda: len(hub.server.clients) == 1, "the subscriber")
    for n in range(400):  # 3.2 MB: the ASGI server's sends stop returning, no 3008 yet
        await hub.publish("feed", {"n": n, "blob": "y" * 8000}, skip_history=True)
        await asyncio.sleep(0)
    (connection,) = hub.server.clients
    connection.client.disconnect(Disconnect(3503, "force disconnect"))
    # The close frame waits behind 3 MB the client never reads: cut after 5 s.
    await eventually(lambda: closes == [3503], "the connection to be cut", timeout=8)
    assert not hub.server.clients
    stalled.close()


async def test_a_prefix_routes_the_rest_to_the_fallback_and_lifespan_starts_the_hub(
    serve: Serve,
) -> None:
    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    hub = Hub(make_config())
    base = await serve(hub.asgi(prefix="/realtime", fallback=fallback))
    assert hub.server.started, "the lifespan events started the hub"
    assert await asyncio.to_thread(http_get, f"{base}/elsewhere") == (200, b"/elsewhere")
    assert (await asyncio.to_thread(http_get, f"{base}/realtime/health"))[0] == 200
    ws = await connected(ws_url(base))
    await ws.close()


async def test_a_hub_mounted_without_lifespan_starts_with_the_first_request(
    serve: Serve,
) -> None:
    hub = Hub(make_config())
    app = FastAPI()  # no lifespan: as under daphne, which sends no lifespan events
    app.mount("/realtime", hub.asgi())
    base = await serve(app)
    assert not hub.server.started
    ws = await connected(ws_url(base))
    assert hub.server.started
    await ws.close()
    await hub.stop()


async def test_the_api_port_opens_when_asked(serve: Serve) -> None:
    hub = Hub(make_config(**{"http_api.port": 0, "http_api.key": "k"}), api=True)
    await serve(fastapi_app(hub))
    assert hub.api is not None
    status, _ = await asyncio.to_thread(http_get, hub.api_url.replace("/api", "/health"))
    assert status == 200
