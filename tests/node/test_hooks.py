"""Application hooks, driven by real clients.

Raw ``websockets`` clients check exact frames and close codes; the unmodified
centrifuge-python SDK checks that hooks work the way an application uses them.
Every wait is bounded, so a broken hub fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import centrifuge
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tidings import (
    ConnectEvent,
    ConnectReply,
    Disconnect,
    DisconnectEvent,
    DisconnectRequest,
    Error,
    Hub,
    MessageEvent,
    PublishEvent,
    PublishReply,
    RefreshEvent,
    RefreshReply,
    RPCEvent,
    SubRefreshEvent,
    SubRefreshReply,
    SubscribeEvent,
    SubscribeReply,
    UnsubscribeEvent,
    make_token,
)

from ..conftest import SECRET, HubFactory, eventually
from ..wsclient import closed_with, receive, receive_until

TIMEOUT = 5.0
NO_ANONYMOUS = {"client.allow_anonymous_connect_without_token": False}


# --- raw client helpers ------------------------------------------------------------


async def reply_to(ws: ClientConnection, command_id: int) -> dict[str, Any]:
    return await receive_until(ws, lambda m: m.get("id") == command_id)


async def command(ws: ClientConnection, command_id: int, **body: Any) -> dict[str, Any]:
    """Send one command and return its reply."""
    await ws.send(json.dumps({"id": command_id, **body}))
    return await reply_to(ws, command_id)


async def send_connect(ws: ClientConnection, **request: Any) -> dict[str, Any]:
    """Send ``connect`` (id 1) and return the reply, whatever it is."""
    await ws.send(json.dumps({"id": 1, "connect": request}))
    reply, *pushes = await receive(ws)  # join pushes of server-side channels may follow
    assert all("push" in push for push in pushes), pushes
    return reply


async def connected(ws: ClientConnection, **request: Any) -> dict[str, Any]:
    """Connect and return the connect result."""
    reply = await send_connect(ws, **request)
    assert "connect" in reply, reply
    result: dict[str, Any] = reply["connect"]
    return result


async def subscribed(ws: ClientConnection, command_id: int, channel: str) -> dict[str, Any]:
    reply = await command(ws, command_id, subscribe={"channel": channel})
    assert "subscribe" in reply, reply
    result: dict[str, Any] = reply["subscribe"]
    return result


async def publication(ws: ClientConnection, channel: str) -> Any:
    """The data of the next publication pushed on ``channel``."""
    message = await receive_until(
        ws, lambda m: m.get("push", {}).get("channel") == channel and "pub" in m["push"]
    )
    return message["push"]["pub"]["data"]


async def all_gone(hub: Hub) -> None:
    """Wait until every connection's handler has finished (hooks included)."""
    await eventually(lambda: len(hub.server.clients) == 0)


def decoded(raw: msgspec.Raw) -> Any:
    return json.loads(bytes(raw)) if bytes(raw) else None


class Recorder:
    """Records the events a hook got; use ``recorder.hook`` as the hook."""

    def __init__(self, reply: Callable[[Any], Any] | None = None) -> None:
        self.events: list[Any] = []
        self.reply = reply

    async def hook(self, event: Any) -> Any:
        self.events.append(event)
        return self.reply(event) if self.reply is not None else None


def register_deciding_hook(hub: Hub, kind: str, hook: Callable[[Any], Any]) -> None:
    """Register ``hook`` as the subscribe, publish or rpc hook."""
    if kind == "subscribe":
        hub.on_subscribe(hook)
    elif kind == "publish":
        hub.on_publish(hook)
    else:
        hub.on_rpc(hook)


def deciding_command(kind: str, name: str) -> dict[str, Any]:
    """The body of a subscribe/publish command on channel ``name``, or an rpc ``name``."""
    if kind == "rpc":
        return {"rpc": {"method": name}}
    if kind == "publish":
        return {"publish": {"channel": name, "data": {"x": 1}}}
    return {"subscribe": {"channel": name}}


# --- SDK helpers -------------------------------------------------------------------


class SDKEvents(centrifuge.ClientEventHandler):
    def __init__(self) -> None:
        self.connected: asyncio.Queue[centrifuge.ConnectedContext] = asyncio.Queue()
        self.disconnected: asyncio.Queue[centrifuge.DisconnectedContext] = asyncio.Queue()

    async def on_connected(self, ctx: centrifuge.ConnectedContext) -> None:
        self.connected.put_nowait(ctx)

    async def on_disconnected(self, ctx: centrifuge.DisconnectedContext) -> None:
        self.disconnected.put_nowait(ctx)


@contextlib.asynccontextmanager
async def sdk_client(hub: Hub, **kwargs: Any) -> AsyncIterator[tuple[centrifuge.Client, SDKEvents]]:
    """An unmodified centrifuge-python client, disconnected on exit."""
    events = SDKEvents()
    client = centrifuge.Client(
        hub.url,
        events=events,
        proxy=None,
        timeout=3.0,
        min_reconnect_delay=0.05,
        max_reconnect_delay=0.5,
        **kwargs,
    )
    try:
        yield client, events
    finally:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)
        pending = list(client._background_tasks)
        if pending:
            await asyncio.wait(pending, timeout=2)


async def sdk_connected(
    client: centrifuge.Client, events: SDKEvents
) -> centrifuge.ConnectedContext:
    await asyncio.wait_for(client.connect(), TIMEOUT)
    return await asyncio.wait_for(events.connected.get(), TIMEOUT)


# --- connect -----------------------------------------------------------------------


async def test_a_connect_hook_raising_an_application_error_answers_connect_with_that_error(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)

    @hub.on_connect
    async def refuse(event: ConnectEvent) -> ConnectReply | None:
        raise Error(4403, "not today")

    async with connect(hub.url) as ws:
        reply = await send_connect(ws)
        assert reply["id"] == 1
        assert reply["error"]["code"] == 4403
        assert reply["error"]["message"] == "not today"
        assert "connect" not in reply
        # A refused connect is final: the next command closes the connection.
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "a"}}))
        assert (await closed_with(ws))[0] == 3501
    assert hub.node.num_clients == 0


async def test_a_connect_hook_raising_a_disconnect_request_closes_with_its_code_and_reason(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)

    @hub.on_connect
    async def ban(event: ConnectEvent) -> ConnectReply | None:
        raise DisconnectRequest(Disconnect(4501, "banned"))

    async with connect(hub.url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        assert await closed_with(ws) == (4501, "banned")
    assert hub.node.num_clients == 0


async def test_the_sdk_sees_a_connect_refused_by_the_hook_as_a_final_disconnect(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()

    @hub.on_connect
    async def refuse(event: ConnectEvent) -> ConnectReply | None:
        await calls.hook(event)
        raise Error(4403, "forbidden")

    async with sdk_client(hub) as (client, events):
        await asyncio.wait_for(client.connect(), TIMEOUT)
        ctx = await asyncio.wait_for(events.disconnected.get(), TIMEOUT)
        assert (ctx.code, ctx.reason) == (4403, "forbidden")
        assert client.state == centrifuge.ClientState.DISCONNECTED
        await asyncio.sleep(0.3)  # a reconnect would call the hook again
        assert len(calls.events) == 1
        assert events.connected.empty()


async def test_a_connect_hook_sets_user_info_data_and_adds_server_side_channels(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder(
        lambda event: ConnectReply(
            user="alice-admin",
            info={"role": "admin"},
            data={"welcome": True},
            channels=["alerts", "news"],
        )
    )
    hub.on_connect(calls.hook)
    token = make_token(SECRET, "alice", channels=["news"])
    async with connect(hub.url) as ws:
        result = await connected(ws, token=token)
        assert result["data"] == {"welcome": True}
        assert set(result["subs"]) == {"news", "alerts"}
        (event,) = calls.events
        assert (event.user, event.token, event.channels) == ("alice", token, ("news",))
        assert event.client == result["client"]

        presence = await hub.presence("alerts")
        (info,) = presence.values()
        assert info.user == "alice-admin"
        assert info.client == result["client"]
        assert decoded(info.conn_info) == {"role": "admin"}
        assert [c.id for c in hub.node.user_clients("alice-admin")] == [result["client"]]
        assert hub.node.user_clients("alice") == []

        await hub.publish("alerts", {"fire": 1})
        assert await publication(ws, "alerts") == {"fire": 1}


async def test_a_connect_hook_authenticates_a_client_without_a_token_when_anonymous_is_refused(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **NO_ANONYMOUS)

    @hub.on_connect
    async def login(event: ConnectEvent) -> ConnectReply | None:
        if event.data == {"password": "open sesame"}:
            return ConnectReply(user="bob")
        return None

    async with connect(hub.url) as ws:
        result = await connected(ws, data={"password": "open sesame"})
        assert [c.id for c in hub.node.user_clients("bob")] == [result["client"]]
        assert "data" not in result


async def test_a_connect_hook_returning_none_leaves_a_client_without_a_token_unauthenticated(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **NO_ANONYMOUS)
    calls = Recorder()
    hub.on_connect(calls.hook)
    async with connect(hub.url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"data": {"password": "wrong"}}}))
        assert (await closed_with(ws))[0] == 3501
    assert len(calls.events) == 1
    assert calls.events[0].user == ""
    assert hub.node.num_clients == 0


async def test_the_connect_event_carries_token_user_name_version_headers_and_data(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_connect(calls.hook)
    token = make_token(SECRET, "carol")
    async with connect(hub.url, additional_headers={"X-Tenant": "acme"}) as ws:
        result = await connected(
            ws, token=token, name="my-app", version="1.2.3", data={"k": [1, 2], "s": "é"}
        )
    (event,) = calls.events
    assert event.client == result["client"]
    assert event.user == "carol"
    assert event.token == token
    assert (event.name, event.version) == ("my-app", "1.2.3")
    assert event.data == {"k": [1, 2], "s": "é"}
    assert event.headers["X-Tenant"] == "acme"
    assert event.headers["x-tenant"] == "acme"
    assert event.channels == ()


async def test_the_connect_event_has_no_data_and_no_user_for_a_bare_connect(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_connect(calls.hook)
    async with connect(hub.url) as ws:
        await connected(ws)
    (event,) = calls.events
    assert (event.user, event.token, event.data, event.name, event.version) == (
        "",
        "",
        None,
        "",
        "",
    )


async def test_an_expiry_set_by_the_connect_hook_asks_the_client_to_refresh(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)

    @hub.on_connect
    async def expire(event: ConnectEvent) -> ConnectReply | None:
        return ConnectReply(expire_at=int(time.time()) + 600)

    async with connect(hub.url) as ws:
        result = await connected(ws)
        assert result["expires"] is True
        assert 590 <= result["ttl"] <= 600


async def test_an_sdk_client_without_a_token_is_authenticated_by_the_hook_and_seen_in_presence(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **NO_ANONYMOUS)
    accounts = {"alice-pw": ("alice", {"display": "Alice"}), "bob-pw": ("bob", {"display": "Bob"})}

    @hub.on_connect
    async def login(event: ConnectEvent) -> ConnectReply | None:
        assert event.token == ""
        account = accounts.get((event.data or {}).get("password", ""))
        if account is None:
            raise DisconnectRequest(Disconnect(4501, "who are you"))
        user, info = account
        return ConnectReply(user=user, info=info, data={"hello": user})

    async with (
        sdk_client(hub, data={"password": "alice-pw"}, name="alice-app") as (alice, alice_events),
        sdk_client(hub, data={"password": "bob-pw"}) as (bob, bob_events),
    ):
        alice_ctx = await sdk_connected(alice, alice_events)
        assert alice_ctx.data == {"hello": "alice"}
        bob_ctx = await sdk_connected(bob, bob_events)
        assert bob_ctx.data == {"hello": "bob"}

        sub = alice.new_subscription("room")
        await sub.subscribe()
        await sub.ready(timeout=TIMEOUT)
        result = await asyncio.wait_for(bob.presence("room"), TIMEOUT)
        (info,) = result.clients.values()
        assert info.client == alice_ctx.client
        assert info.user == "alice"
        assert info.conn_info == {"display": "Alice"}


# --- subscribe ---------------------------------------------------------------------


async def test_a_subscribe_hook_allows_what_the_configuration_refuses(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        dev=True, allow_subscribe_for_client=False, allow_subscribe_for_anonymous=False
    )
    token = make_token(SECRET, "dave")
    async with connect(hub.url) as ws:
        await connected(ws, token=token)
        refused = await command(ws, 2, subscribe={"channel": "room"})
        assert refused["error"]["code"] == 103

        calls = Recorder()
        hub.on_subscribe(calls.hook)
        reply = await command(ws, 3, subscribe={"channel": "room", "data": {"seat": 1}})
        assert "subscribe" in reply, reply
        (event,) = calls.events
        assert isinstance(event, SubscribeEvent)
        assert (event.user, event.channel, event.data) == ("dave", "room", {"seat": 1})
        assert hub.node.channels() == {"room": 1}


async def test_a_subscribe_hook_refuses_what_the_configuration_allows(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)

    @hub.on_subscribe
    async def check(event: SubscribeEvent) -> SubscribeReply | None:
        if event.channel == "secret":
            raise Error(103)
        if event.channel == "ghost":
            raise Error(4404, "no such room")
        return None

    async with connect(hub.url) as ws:
        await connected(ws)
        denied = await command(ws, 2, subscribe={"channel": "secret"})
        assert denied["error"] == {"code": 103, "message": "permission denied"}
        missing = await command(ws, 3, subscribe={"channel": "ghost"})
        assert (missing["error"]["code"], missing["error"]["message"]) == (4404, "no such room")
        assert "subscribe" in await command(ws, 4, subscribe={"channel": "open"})
        assert hub.node.channels() == {"open": 1}


async def test_channel_info_from_the_subscribe_reply_shows_in_presence_and_data_in_the_result(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)

    @hub.on_subscribe
    async def seat(event: SubscribeEvent) -> SubscribeReply | None:
        return SubscribeReply(info={"seat": 7}, data={"topic": "hooks"})

    async with connect(hub.url) as ws:
        client = (await connected(ws, token=make_token(SECRET, "erin")))["client"]
        result = await subscribed(ws, 2, "room")
        assert result["data"] == {"topic": "hooks"}
        reply = await command(ws, 3, presence={"channel": "room"})
        info = reply["presence"]["presence"][client]
        assert info["user"] == "erin"
        assert info["chan_info"] == {"seat": 7}


async def test_private_channels_still_need_a_token_and_never_ask_the_subscribe_hook(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_subscribe(calls.hook)
    async with connect(hub.url) as ws:
        await connected(ws, token=make_token(SECRET, "frank"))
        refused = await command(ws, 2, subscribe={"channel": "$vip"})
        assert refused["error"]["code"] == 103
        token = make_token(SECRET, "frank", channel="$vip")
        reply = await command(ws, 3, subscribe={"channel": "$vip", "token": token})
        assert "subscribe" in reply, reply
        assert calls.events == []
        assert hub.node.channels() == {"$vip": 1}


# --- publish -----------------------------------------------------------------------


async def test_a_publish_hook_refuses_a_publication(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)

    @hub.on_publish
    async def moderate(event: PublishEvent) -> PublishReply | None:
        if "spam" in json.dumps(event.data):
            raise Error(4429, "no spam")
        return None

    async with connect(hub.url) as reader, connect(hub.url) as writer:
        await connected(reader)
        await subscribed(reader, 2, "chat")
        await connected(writer)
        refused = await command(writer, 2, publish={"channel": "chat", "data": {"t": "spam"}})
        assert (refused["error"]["code"], refused["error"]["message"]) == (4429, "no spam")
        ok = await command(writer, 3, publish={"channel": "chat", "data": {"t": "ham"}})
        assert ok == {"id": 3, "publish": {}}
        assert await publication(reader, "chat") == {"t": "ham"}
        publications, _ = await hub.history("chat", limit=-1)
        assert [decoded(p.data) for p in publications] == [{"t": "ham"}]


async def test_a_publish_hook_rewrites_the_data_subscribers_receive(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)
    calls = Recorder(
        lambda event: PublishReply(data={"text": event.data["text"].upper(), "by": event.user})
    )
    hub.on_publish(calls.hook)
    async with connect(hub.url) as reader, connect(hub.url) as writer:
        await connected(reader)
        await subscribed(reader, 2, "chat")
        await connected(writer, token=make_token(SECRET, "gina"))
        reply = await command(writer, 2, publish={"channel": "chat", "data": {"text": "hi"}})
        assert "publish" in reply, reply
        assert await publication(reader, "chat") == {"text": "HI", "by": "gina"}
        (event,) = calls.events
        assert (event.user, event.channel, event.data) == ("gina", "chat", {"text": "hi"})
        publications, _ = await hub.history("chat", limit=-1)
        assert [decoded(p.data) for p in publications] == [{"text": "HI", "by": "gina"}]


async def test_a_publish_hook_can_keep_a_publication_out_of_history(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)

    @hub.on_publish
    async def typing(event: PublishEvent) -> PublishReply | None:
        return PublishReply(skip_history=bool(event.data.get("typing")))

    async with connect(hub.url) as reader, connect(hub.url) as writer:
        await connected(reader)
        await subscribed(reader, 2, "chat")
        await connected(writer)
        for n, data in enumerate([{"typing": True}, {"text": "hello"}], start=2):
            reply = await command(writer, n, publish={"channel": "chat", "data": data})
            assert "publish" in reply, reply
        assert await publication(reader, "chat") == {"typing": True}
        assert await publication(reader, "chat") == {"text": "hello"}
        publications, _ = await hub.history("chat", limit=-1)
        assert [decoded(p.data) for p in publications] == [{"text": "hello"}]


# --- rpc ---------------------------------------------------------------------------


async def test_an_rpc_hook_answers_an_sdk_clients_rpc_call(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder(
        lambda event: {"sum": event.data["a"] + event.data["b"], "method": event.method}
    )
    hub.on_rpc(calls.hook)
    async with sdk_client(hub, token=make_token(SECRET, "hank")) as (client, events):
        ctx = await sdk_connected(client, events)
        result = await asyncio.wait_for(client.rpc("add", {"a": 1, "b": 2}), TIMEOUT)
        assert result.data == {"sum": 3, "method": "add"}
    (event,) = calls.events
    assert isinstance(event, RPCEvent)
    assert (event.client, event.user, event.method) == (ctx.client, "hank", "add")


async def test_an_rpc_hook_returning_none_answers_without_data(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    hub.on_rpc(Recorder().hook)
    async with connect(hub.url) as ws:
        await connected(ws)
        assert await command(ws, 2, rpc={"method": "ping"}) == {"id": 2, "rpc": {}}


async def test_an_rpc_without_a_hook_is_answered_with_method_not_found(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    async with connect(hub.url) as ws:
        await connected(ws)
        reply = await command(ws, 2, rpc={"method": "add", "data": {}})
        assert reply["error"]["code"] == 104


async def test_a_message_hook_gets_what_a_client_sends_and_the_server_sends_back(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub()
    received = Recorder()
    hub.on_message(received.hook)
    async with connect(hub.url) as ws:
        result = await connected(ws, token=make_token(SECRET, "ivy"))
        await ws.send(json.dumps({"send": {"data": {"typing": True}}}))  # no id: no reply
        await eventually(lambda: len(received.events) == 1, "the message hook to be called")
        (event,) = received.events
        assert isinstance(event, MessageEvent)
        assert (event.client, event.user, event.data) == (
            result["client"],
            "ivy",
            {"typing": True},
        )
        await hub.send("ivy", {"seen": True})
        push = await receive_until(ws, lambda m: "push" in m)
        assert push == {"push": {"message": {"data": {"seen": True}}}}
        # The connection is still open and answers commands.
        assert await command(ws, 3, rpc={"method": "x"}) == {
            "id": 3,
            "error": {"code": 104, "message": "method not found"},
        }


async def test_a_send_without_a_message_hook_closes_with_3508(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)
    async with connect(hub.url) as ws:
        await connected(ws)
        await ws.send(json.dumps({"send": {"data": {"typing": True}}}))
        assert await closed_with(ws) == (3508, "not available")


async def test_server_sends_reach_one_connection_or_every_connection_of_a_user(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub()
    async with connect(hub.url) as first, connect(hub.url) as second:
        one = (await connected(first, token=make_token(SECRET, "jo")))["client"]
        await connected(second, token=make_token(SECRET, "jo"))
        await hub.send("jo", "to both")
        for ws in (first, second):
            push = await receive_until(ws, lambda m: "push" in m)
            assert push["push"]["message"]["data"] == "to both"
        await hub.send("jo", "to one", client=one)
        push = await receive_until(first, lambda m: "push" in m)
        assert push["push"]["message"]["data"] == "to one"
        assert await command(second, 9, rpc={"method": "x"}) == {
            "id": 9,
            "error": {"code": 104, "message": "method not found"},
        }


async def test_an_rpc_hook_raising_an_error_answers_with_that_error(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True)

    @hub.on_rpc
    async def strict(event: RPCEvent) -> Any:
        raise Error(4040, "unknown method", temporary=True)

    async with connect(hub.url) as ws:
        await connected(ws)
        reply = await command(ws, 2, rpc={"method": "nope"})
        assert reply == {
            "id": 2,
            "error": {"code": 4040, "message": "unknown method", "temporary": True},
        }
    async with sdk_client(hub) as (client, events):
        await sdk_connected(client, events)
        with pytest.raises(centrifuge.ReplyError) as raised:
            await asyncio.wait_for(client.rpc("nope", None), TIMEOUT)
        assert (raised.value.code, raised.value.message) == (4040, "unknown method")


# --- unsubscribe -------------------------------------------------------------------


async def test_the_unsubscribe_hook_gets_code_0_when_the_client_unsubscribes(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_unsubscribe(calls.hook)
    async with connect(hub.url) as ws:
        client = (await connected(ws, token=make_token(SECRET, "ivy")))["client"]
        await subscribed(ws, 2, "room")
        assert await command(ws, 3, unsubscribe={"channel": "room"}) == {
            "id": 3,
            "unsubscribe": {},
        }
        (event,) = calls.events
        assert isinstance(event, UnsubscribeEvent)
        assert (event.client, event.user, event.channel, event.code) == (client, "ivy", "room", 0)
        # Unsubscribing from a channel it is not in tells the hook nothing.
        await command(ws, 4, unsubscribe={"channel": "room"})
        assert len(calls.events) == 1


async def test_the_unsubscribe_hook_gets_code_2000_after_a_server_unsubscribe(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_unsubscribe(calls.hook)
    async with connect(hub.url) as ws:
        await connected(ws, token=make_token(SECRET, "jack"))
        await subscribed(ws, 2, "room")
        await hub.unsubscribe("jack", "room")
        push = await receive_until(ws, lambda m: "unsubscribe" in m.get("push", {}))
        assert push["push"]["unsubscribe"]["code"] == 2000
        (event,) = calls.events
        assert (event.user, event.channel, event.code, event.reason) == (
            "jack",
            "room",
            2000,
            "server unsubscribe",
        )


async def test_the_unsubscribe_hook_gets_code_1_for_each_channel_when_the_connection_ends(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    log: list[Any] = []

    @hub.on_unsubscribe
    async def left(event: UnsubscribeEvent) -> None:
        log.append(event)

    @hub.on_disconnect
    async def gone(event: DisconnectEvent) -> None:
        log.append(event)

    async with connect(hub.url) as ws:
        token = make_token(SECRET, "kate", channels=["server-side"])
        result = await connected(ws, token=token)
        assert set(result["subs"]) == {"server-side"}
        await subscribed(ws, 2, "a")
        await subscribed(ws, 3, "b")
    await all_gone(hub)
    *unsubscribes, disconnect = log
    assert sorted((e.channel, e.code, e.user) for e in unsubscribes) == [
        ("a", 1, "kate"),
        ("b", 1, "kate"),
        ("server-side", 1, "kate"),
    ]
    assert all(isinstance(e, UnsubscribeEvent) for e in unsubscribes)
    assert isinstance(disconnect, DisconnectEvent)
    assert hub.node.channels() == {}


# --- disconnect --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("close", "expected"),
    [("normal", 1000), ("without a code", 1005), ("with 4000", 4000), ("by dropping TCP", 1006)],
)
async def test_the_disconnect_hook_gets_the_peer_close_code_once_when_the_client_leaves(
    make_hub: HubFactory, close: str, expected: int
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_disconnect(calls.hook)
    async with connect(hub.url) as ws:
        client = (await connected(ws, token=make_token(SECRET, "liam")))["client"]
        if close == "normal":
            await ws.close()
        elif close == "without a code":
            await ws.close(code=None)  # type: ignore[arg-type]  # an empty close frame
        elif close == "with 4000":
            await ws.close(4000, "bye")
        else:
            ws.transport.abort()
            await closed_with(ws)
    await all_gone(hub)
    await asyncio.sleep(0.05)
    (event,) = calls.events
    assert (event.client, event.user, event.code) == (client, "liam", expected)


@pytest.mark.parametrize(
    ("disconnect", "expected"),
    [
        (None, (3503, "force disconnect")),
        (Disconnect(4321, "go home"), (4321, "go home")),
    ],
    ids=["default", "custom"],
)
async def test_the_disconnect_hook_gets_the_code_of_a_server_disconnect_once(
    make_hub: HubFactory, disconnect: Disconnect | None, expected: tuple[int, str]
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_disconnect(calls.hook)
    async with connect(hub.url) as ws, connect(hub.url) as bystander:
        client = (await connected(ws, token=make_token(SECRET, "mia")))["client"]
        await connected(bystander, token=make_token(SECRET, "noah"))
        if disconnect is None:
            await hub.disconnect("mia")
        else:
            await hub.disconnect("mia", disconnect=disconnect)
        assert await closed_with(ws) == expected
        await eventually(lambda: len(hub.server.clients) == 1)
        await asyncio.sleep(0.05)
        (event,) = calls.events
        assert (event.client, event.user, (event.code, event.reason)) == (client, "mia", expected)
        assert bystander.close_code is None


@pytest.mark.slow
async def test_the_disconnect_hook_gets_3012_once_when_a_ping_goes_unanswered(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **{"client.ping_interval": 0.4, "client.pong_timeout": 0.2})
    calls = Recorder()
    hub.on_disconnect(calls.hook)
    async with connect(hub.url) as ws:
        client = (await connected(ws))["client"]
        assert (await closed_with(ws))[0] == 3012
    await all_gone(hub)
    await asyncio.sleep(0.05)
    (event,) = calls.events
    assert (event.client, event.code, event.reason) == (client, 3012, "no pong")


async def test_the_disconnect_hook_gets_3001_for_every_client_when_the_hub_stops(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder()
    hub.on_disconnect(calls.hook)
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(connect(hub.url)) for _ in range(3)]
        clients = {(await connected(ws))["client"] for ws in sockets}
        await asyncio.wait_for(hub.stop(), TIMEOUT)
        for ws in sockets:
            assert (await closed_with(ws))[0] == 3001
    assert sorted(e.code for e in calls.events) == [3001, 3001, 3001]
    assert {e.client for e in calls.events} == clients


async def test_the_disconnect_hook_is_not_called_for_connections_that_never_connected(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **NO_ANONYMOUS)
    disconnects = Recorder()
    unsubscribes = Recorder()
    hub.on_disconnect(disconnects.hook)
    hub.on_unsubscribe(unsubscribes.hook)

    @hub.on_connect
    async def gate(event: ConnectEvent) -> ConnectReply | None:
        match event.data:
            case "error":
                raise Error(4403, "no")
            case "ban":
                raise DisconnectRequest(Disconnect(4501, "banned"))
            case "crash":
                raise RuntimeError("boom")
            case "server-side":
                # A server-side channel in an unknown namespace: error 102.
                return ConnectReply(user="olga", channels=["fine", "nope:x"])
        return None

    for data in ["error", "crash", "server-side"]:
        async with connect(hub.url) as ws:
            reply = await send_connect(ws, data=data)
            assert "error" in reply, reply
    for data in ["ban", "anonymous"]:
        async with connect(hub.url) as ws:
            await ws.send(json.dumps({"id": 1, "connect": {"data": data}}))
            await closed_with(ws)
    async with connect(hub.url):
        pass  # never sends connect
    await all_gone(hub)
    await asyncio.sleep(0.05)
    assert disconnects.events == []
    assert unsubscribes.events == []
    assert hub.node.num_clients == 0
    assert hub.node.channels() == {}


# --- refresh -----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_refresh_hook_extending_the_connection_keeps_it_past_its_token_expiry(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, **{"client.expired_close_delay": 0.1})
    calls = Recorder(lambda event: RefreshReply(expire_at=int(time.time()) + 1))
    hub.on_refresh(calls.hook)
    async with connect(hub.url) as ws:
        result = await connected(ws, token=make_token(SECRET, "paul", ttl=1))
        assert "expires" not in result
        assert "ttl" not in result
        await eventually(lambda: len(calls.events) >= 2, timeout=4)
        # Still connected and serving commands.
        assert "subscribe" in await command(ws, 2, subscribe={"channel": "room"})
        assert ws.close_code is None
    event = calls.events[0]
    assert isinstance(event, RefreshEvent)
    assert (event.client, event.user) == (result["client"], "paul")


@pytest.mark.slow
async def test_a_refresh_hook_replying_expired_closes_the_connection_with_3005(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder(lambda event: RefreshReply(expired=True))
    hub.on_refresh(calls.hook)
    disconnects = Recorder()
    hub.on_disconnect(disconnects.hook)
    async with connect(hub.url) as ws:
        await connected(ws, token=make_token(SECRET, "quinn", ttl=1))
        assert (await closed_with(ws))[0] == 3005
    await all_gone(hub)
    assert len(calls.events) == 1
    assert [e.code for e in disconnects.events] == [3005]


@pytest.mark.slow
async def test_a_refresh_hook_replying_an_expiry_in_the_past_closes_the_connection_with_3005(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    calls = Recorder(lambda event: RefreshReply(expire_at=int(time.time()) - 10))
    hub.on_refresh(calls.hook)
    async with connect(hub.url) as ws:
        await connected(ws, token=make_token(SECRET, "rita", ttl=1))
        try:
            code, _ = await asyncio.wait_for(closed_with(ws), 2.5)
        except TimeoutError:
            pytest.fail(f"still open after {len(calls.events)} refresh hook calls")
        assert code == 3005
        assert len(calls.events) == 1


# --- failing hooks -----------------------------------------------------------------


async def test_an_exception_in_a_connect_hook_answers_100_and_leaves_other_clients_alone(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)

    @hub.on_connect
    async def flaky(event: ConnectEvent) -> ConnectReply | None:
        if event.data == "crash":
            raise RuntimeError("the database is down")
        return None

    async with connect(hub.url) as watcher:
        await connected(watcher)
        await subscribed(watcher, 2, "watch")
        with caplog.at_level(logging.ERROR, logger="tidings"):
            async with connect(hub.url) as ws:
                reply = await send_connect(ws, data="crash")
                assert reply["id"] == 1
                assert reply["error"]["code"] == 100
        crashes = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
        assert [str(r.exc_info[1]) for r in crashes if r.exc_info] == ["the database is down"]
        await hub.publish("watch", {"still": "here"})
        assert await publication(watcher, "watch") == {"still": "here"}
        async with connect(hub.url) as other:
            await connected(other)


@pytest.mark.parametrize("kind", ["subscribe", "publish", "rpc"])
async def test_an_exception_in_a_deciding_hook_answers_100_and_leaves_other_clients_alone(
    make_hub: HubFactory, kind: str
) -> None:
    hub = await make_hub(dev=True, join_leave=False, force_push_join_leave=False)

    async def flaky(event: Any) -> Any:
        if getattr(event, "channel", "") == "boom" or getattr(event, "method", "") == "boom":
            raise RuntimeError("hook bug")
        return None

    register_deciding_hook(hub, kind, flaky)
    async with connect(hub.url) as watcher, connect(hub.url) as ws:
        await connected(watcher)
        await subscribed(watcher, 2, "watch")
        await connected(ws)
        reply = await command(ws, 2, **deciding_command(kind, "boom"))
        assert reply["error"]["code"] == 100
        # The failing client's connection goes on, and so does everyone else's.
        assert "subscribe" in await command(ws, 3, subscribe={"channel": "fine"})
        await command(ws, 4, publish={"channel": "watch", "data": {"after": kind}})
        assert await publication(watcher, "watch") == {"after": kind}
        assert ws.close_code is None
    assert hub.node.channels().get("boom") is None


@pytest.mark.parametrize("kind", ["subscribe", "publish", "rpc"])
async def test_a_deciding_hook_raising_a_disconnect_request_closes_the_connection_with_its_code(
    make_hub: HubFactory, kind: str
) -> None:
    hub = await make_hub(dev=True)
    disconnects = Recorder()
    unsubscribes = Recorder()
    hub.on_disconnect(disconnects.hook)
    hub.on_unsubscribe(unsubscribes.hook)

    async def kick(event: Any) -> Any:
        raise DisconnectRequest(Disconnect(4502, "kicked"), "for the log only")

    register_deciding_hook(hub, kind, kick)
    async with connect(hub.url) as ws:
        client = (await connected(ws, token=make_token(SECRET, "sam")))["client"]
        await ws.send(json.dumps({"id": 2, **deciding_command(kind, "x")}))
        assert await closed_with(ws) == (4502, "kicked")
    await all_gone(hub)
    assert [(e.client, e.user, e.code, e.reason) for e in disconnects.events] == [
        (client, "sam", 4502, "kicked")
    ]
    assert unsubscribes.events == []
    assert hub.node.channels() == {}


async def test_exceptions_in_unsubscribe_and_disconnect_hooks_are_logged_and_ignored(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await make_hub(dev=True)
    seen: list[str] = []

    @hub.on_unsubscribe
    async def broken_unsubscribe(event: UnsubscribeEvent) -> None:
        seen.append(f"unsubscribe {event.channel} {event.code}")
        raise RuntimeError("unsubscribe hook bug")

    @hub.on_disconnect
    async def broken_disconnect(event: DisconnectEvent) -> None:
        seen.append(f"disconnect {event.code}")
        raise RuntimeError("disconnect hook bug")

    with caplog.at_level(logging.ERROR, logger="tidings"):
        async with connect(hub.url) as ws:
            await connected(ws)
            await subscribed(ws, 2, "a")
            await subscribed(ws, 3, "b")
            assert await command(ws, 4, unsubscribe={"channel": "a"}) == {
                "id": 4,
                "unsubscribe": {},
            }
            # The connection is unharmed.
            assert "subscribe" in await command(ws, 5, subscribe={"channel": "a"})
            assert ws.close_code is None
        await all_gone(hub)
    # Channels are left in no particular order when the connection ends.
    assert seen[0] == "unsubscribe a 0"
    assert sorted(seen[1:3]) == ["unsubscribe a 1", "unsubscribe b 1"]
    assert seen[3:] == ["disconnect 1000"]
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    messages = {str(r.exc_info[1]) for r in failures if r.exc_info}
    assert messages == {"unsubscribe hook bug", "disconnect hook bug"}
    assert len(failures) == 4
    # The hub still serves.
    async with connect(hub.url) as ws:
        await connected(ws)
        assert "subscribe" in await command(ws, 2, subscribe={"channel": "a"})


async def test_a_subscribe_hook_expiry_without_a_sub_refresh_hook_ends_it_with_2501(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)

    @hub.on_subscribe
    async def lease(event: SubscribeEvent) -> SubscribeReply:
        return SubscribeReply(expire_at=int(time.time()) + 1)

    async with connect(hub.url) as ws:
        await connected(ws)
        await command(ws, 2, subscribe={"channel": "room"})
        push = await receive_until(ws, lambda m: "unsubscribe" in m.get("push", {}))
        assert push["push"] == {
            "channel": "room",
            "unsubscribe": {"code": 2501, "reason": "subscription expired"},
        }


async def test_a_sub_refresh_hook_extends_what_the_subscribe_hook_limited(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)
    asked: list[SubRefreshEvent] = []

    @hub.on_subscribe
    async def lease(event: SubscribeEvent) -> SubscribeReply:
        return SubscribeReply(expire_at=int(time.time()) + 1)

    @hub.on_sub_refresh
    async def extend(event: SubRefreshEvent) -> SubRefreshReply:
        asked.append(event)
        return SubRefreshReply(expire_at=int(time.time()) + 60)

    async with connect(hub.url) as ws:
        result = await connected(ws)
        await command(ws, 2, subscribe={"channel": "room"})
        await asyncio.sleep(2.2)
        assert [(e.client, e.channel) for e in asked] == [(result["client"], "room")]
        assert hub.node.num_subscriptions == 1
