"""Hooks answered by an HTTP backend (Centrifugo's proxy shapes): a real aiohttp app plays it."""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from tidings import make_token

from ..conftest import SECRET, HubFactory
from ..wsclient import closed_with

TIMEOUT = 5.0


class Backend:
    """A backend answering proxy requests; records what it was sent."""

    def __init__(self) -> None:
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.answers: dict[str, Any] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.setdefault(name, []).append(await request.json())
        self.headers[name] = dict(request.headers)
        answer = self.answers.get(name, {"result": {}})
        if isinstance(answer, int):
            return web.Response(status=answer)
        if answer == "slow":
            await asyncio.sleep(5)
        return web.json_response(answer)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    backend = Backend()
    app = web.Application()
    app.router.add_post("/{name}", backend.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"http://127.0.0.1:{port}"
    yield backend
    await runner.cleanup()


def proxy_options(backend: Backend, *names: str) -> dict[str, Any]:
    return {f"proxy.{name}_endpoint": f"{backend.url}/{name}" for name in names}


SEEN: weakref.WeakKeyDictionary[ClientConnection, list[dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


async def receive_until(ws: ClientConnection, predicate: Any) -> dict[str, Any]:
    """The first message (already seen on this connection, or coming) that matches."""
    seen = SEEN.setdefault(ws, [])
    for message in seen:
        if predicate(message):
            seen.remove(message)
            return message
    while True:
        frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
        for line in str(frame).split("\n"):
            seen.append(json.loads(line))
        for message in seen:
            if predicate(message):
                seen.remove(message)
                return message


async def command(ws: ClientConnection, command_id: int, **body: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"id": command_id, **body}))
    return await receive_until(ws, lambda m: m.get("id") == command_id)


async def test_the_connect_endpoint_authenticates_a_client_without_a_token(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["connect"] = {
        "result": {"user": "56", "info": {"name": "Ann"}, "data": {"hi": 1}, "channels": ["news"]}
    }
    hub = await make_hub(
        **proxy_options(backend, "connect"),
        **{"proxy.http_headers": ["Cookie"], "allow_subscribe_for_client": True},
    )
    async with connect(hub.url, additional_headers={"Cookie": "session=abc"}) as ws:
        reply = await command(ws, 1, connect={"data": {"from": "client"}, "name": "py"})
        assert reply["connect"]["data"] == {"hi": 1}
        assert "news" in reply["connect"]["subs"]
        (request,) = backend.requests["connect"]
        assert request["data"] == {"from": "client"}
        assert request["name"] == "py"
        assert request["transport"] == "websocket" and request["protocol"] == "json"
        assert backend.headers["connect"]["Cookie"] == "session=abc"
        assert [c.user for c in hub.node.clients()] == ["56"]


async def test_a_client_with_a_token_is_not_sent_to_the_connect_endpoint(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["connect"] = {"result": {"user": "from-the-endpoint"}}
    hub = await make_hub(**proxy_options(backend, "connect"))
    async with connect(hub.url) as ws:
        reply = await command(ws, 1, connect={"token": make_token(SECRET, "42")})
        assert "connect" in reply, reply
        assert "connect" not in backend.requests
        assert [c.user for c in hub.node.clients()] == ["42"]


async def test_an_error_from_the_connect_endpoint_reaches_the_client(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["connect"] = {"error": {"code": 1000, "message": "no entry"}}
    hub = await make_hub(**proxy_options(backend, "connect"))
    async with connect(hub.url) as ws:
        reply = await command(ws, 1, connect={})
        assert reply["error"] == {"code": 1000, "message": "no entry"}


async def test_a_disconnect_from_the_connect_endpoint_closes_with_its_code(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["connect"] = {"disconnect": {"code": 4500, "reason": "go away"}}
    hub = await make_hub(**proxy_options(backend, "connect"))
    async with connect(hub.url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        assert (await closed_with(ws))[0] == 4500
        assert ws.close_reason == "go away"


@pytest.mark.parametrize("failure", [500, "slow"])
@pytest.mark.slow
async def test_a_failing_or_slow_backend_gives_error_100(
    make_hub: HubFactory, backend: Backend, failure: Any
) -> None:
    backend.answers["connect"] = failure
    hub = await make_hub(**proxy_options(backend, "connect"), **{"proxy.timeout": 0.3})
    async with connect(hub.url) as ws:
        reply = await command(ws, 1, connect={})
        assert reply["error"]["code"] == 100


async def test_subscribe_publish_and_rpc_endpoints_decide_and_rewrite(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["subscribe"] = {"result": {"info": {"role": "mod"}, "data": {"welcome": 1}}}
    backend.answers["publish"] = {"result": {"data": {"text": "rewritten"}}}
    backend.answers["rpc"] = {"result": {"data": {"sum": 3}}}
    hub = await make_hub(dev=True, **proxy_options(backend, "subscribe", "publish", "rpc"))
    async with connect(hub.url) as ws:
        await command(ws, 1, connect={})
        reply = await command(ws, 2, subscribe={"channel": "room", "data": {"x": 1}})
        assert reply["subscribe"]["data"] == {"welcome": 1}
        assert backend.requests["subscribe"][0]["channel"] == "room"
        assert backend.requests["subscribe"][0]["data"] == {"x": 1}
        await command(ws, 3, publish={"channel": "room", "data": {"text": "original"}})
        push = await receive_until(ws, lambda m: "pub" in m.get("push", {}))
        assert push["push"]["pub"]["data"] == {"text": "rewritten"}
        assert push["push"]["pub"]["info"]["chan_info"] == {"role": "mod"}
        reply = await command(ws, 4, rpc={"method": "add", "data": [1, 2]})
        assert reply["rpc"]["data"] == {"sum": 3}
        assert backend.requests["rpc"][0]["method"] == "add"

    backend.answers["publish"] = {"error": {"code": 1001, "message": "moderated"}}
    async with connect(hub.url) as ws:
        await command(ws, 1, connect={})
        reply = await command(ws, 2, publish={"channel": "room", "data": {"text": "spam"}})
        assert reply["error"] == {"code": 1001, "message": "moderated"}


async def test_unsubscribe_and_disconnect_endpoints_are_told_with_codes(
    make_hub: HubFactory, backend: Backend
) -> None:
    hub = await make_hub(dev=True, **proxy_options(backend, "unsubscribe", "disconnect"))
    async with connect(hub.url) as ws:
        await command(ws, 1, connect={})
        await command(ws, 2, subscribe={"channel": "room"})
        await command(ws, 3, unsubscribe={"channel": "room"})
        await command(ws, 4, subscribe={"channel": "other"})
    async with asyncio.timeout(TIMEOUT):
        while (
            len(backend.requests.get("unsubscribe", [])) < 2 or "disconnect" not in backend.requests
        ):
            await asyncio.sleep(0.02)
    codes = [(r["channel"], r["code"]) for r in backend.requests["unsubscribe"]]
    assert codes == [("room", 0), ("other", 1)]
    (gone,) = backend.requests["disconnect"]
    assert gone["code"] == 1000


async def test_a_subscribe_answer_with_expire_at_is_extended_by_the_sub_refresh_endpoint(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["subscribe"] = {"result": {"expire_at": int(time.time()) + 1}}
    backend.answers["sub_refresh"] = {"result": {"expire_at": int(time.time()) + 60}}
    hub = await make_hub(dev=True, **proxy_options(backend, "subscribe", "sub_refresh"))
    async with connect(hub.url) as ws:
        await command(ws, 1, connect={})
        reply = await command(ws, 2, subscribe={"channel": "room"})
        assert "expires" not in reply["subscribe"]  # the server refreshes, not the client
        await asyncio.sleep(2.2)
        (request,) = backend.requests["sub_refresh"]
        assert (request["channel"], request["user"]) == ("room", "")
        assert hub.node.num_subscriptions == 1


async def test_a_sub_refresh_endpoint_answering_expired_ends_the_subscription_with_2501(
    make_hub: HubFactory, backend: Backend
) -> None:
    backend.answers["subscribe"] = {"result": {"expire_at": int(time.time()) + 1}}
    backend.answers["sub_refresh"] = {"result": {"expired": True}}
    hub = await make_hub(dev=True, **proxy_options(backend, "subscribe", "sub_refresh"))
    async with connect(hub.url) as ws:
        await command(ws, 1, connect={})
        await command(ws, 2, subscribe={"channel": "room"})
        push = await receive_until(ws, lambda m: "unsubscribe" in m.get("push", {}))
        assert push["push"]["unsubscribe"] == {"code": 2501, "reason": "subscription expired"}
        assert hub.node.num_subscriptions == 0
