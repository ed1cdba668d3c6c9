"""Tests for tidings.node.client.Client without a socket: its table of commands and its
heartbeat deadlines.

The client is driven with frames and loop times; what it writes goes to a list
(the simplest :class:`~tidings.node.client.Transport`), so each deadline is checked
to the second without waiting for it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect as ws_connect

from tidings import ChannelOptions, Disconnect, Hub, MemoryBroker, load_config, make_token
from tidings.node.auth import TokenVerifier
from tidings.node.client import _COMMANDS, Client, Context
from tidings.node.node import Node
from tidings.protocol import client_pb2
from tidings.protocol.session import COMMANDS, Method
from tidings.protocol.wire import Command

from ..conftest import SECRET, HubFactory
from ..wsclient import closed_with, receive_until

T0 = 1000.0  # loop time at which the connection was accepted


class Written:
    """A transport that keeps what the client writes, and its close."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []
        self.closed: Disconnect | None = None

    def write(self, data: bytes) -> None:
        self.messages.append(json.loads(data))

    def close(self, disconnect: Disconnect) -> None:
        self.closed = disconnect


def make_client(**client_options: float) -> tuple[Client, Written]:
    overrides: dict[str, object] = {"client.allow_anonymous_connect_without_token": True}
    overrides |= {f"client.{k}": v for k, v in client_options.items()}
    config = load_config(env={}, overrides=overrides)
    broker = MemoryBroker()
    context = Context(Node(broker, broker), config, TokenVerifier.from_config(config))
    written = Written()
    client = Client(context, written)
    client.start_heartbeat(T0)
    return client, written


async def connect(client: Client) -> None:
    await client.receive('{"id":1,"connect":{}}')


def pings(written: Written) -> int:
    return sum(1 for m in written.messages if m == {})


# --- the table of commands ------------------------------------------------------------


def test_every_command_of_the_protocol_has_a_row_in_both_tables() -> None:
    """A method added to the wire (JSON or Protobuf) needs a session row and a handler."""
    json_methods = set(Command.__struct_fields__) - {"id"}
    protobuf_methods = set(client_pb2.Command.DESCRIPTOR.fields_by_name) - {"id", "ping"}
    session_methods = [spec.method for spec in COMMANDS.values()]
    assert json_methods == protobuf_methods == set(session_methods) == set(Method)
    assert len(session_methods) == len(Method)
    assert set(_COMMANDS) == set(Method)


@pytest.mark.parametrize("method", list(Method))
def test_each_handler_is_the_coroutine_of_its_method_and_takes_its_request(
    method: Method,
) -> None:
    (request_type,) = (t for t, spec in COMMANDS.items() if spec.method is method)
    handler = _COMMANDS[method].handler
    assert inspect.iscoroutinefunction(handler)
    assert handler.__name__ == f"_on_{method}"
    assert typing.get_type_hints(handler)["request"] is request_type


FEATURES = {
    Method.SUBSCRIBE: "subscribe",
    Method.PUBLISH: "publish",
    Method.PRESENCE: "presence",
    Method.PRESENCE_STATS: "presence",
    Method.HISTORY: "history",
}
"""The methods that channel options permit, and the feature whose options do."""


@pytest.mark.parametrize("method", list(Method))
def test_the_permission_of_a_method_reads_the_options_of_its_feature(method: Method) -> None:
    allow = _COMMANDS[method].allow
    if method not in FEATURES:
        assert allow is None
        return
    assert allow is not None
    assert allow(ChannelOptions()) == (False, False, False)
    for position, who in enumerate(("client", "subscriber", "anonymous")):
        option = f"allow_{FEATURES[method]}_for_{who}"
        if option in ChannelOptions.__struct_fields__:
            expected = [False, False, False]
            expected[position] = True
            assert allow(ChannelOptions(**{option: True})) == tuple(expected), option


ANSWERS: dict[Method, tuple[dict[str, Any], str | int | None]] = {
    Method.CONNECT: ({}, "connect"),
    Method.SUBSCRIBE: ({"channel": "a"}, 103),  # no allow_subscribe_* option
    Method.UNSUBSCRIBE: ({"channel": "a"}, "unsubscribe"),
    Method.PUBLISH: ({"channel": "a", "data": {}}, 103),
    Method.PRESENCE: ({"channel": "a"}, 108),  # presence is off
    Method.PRESENCE_STATS: ({"channel": "a"}, 108),
    Method.HISTORY: ({"channel": "a"}, 108),  # no history
    Method.RPC: ({"method": "m"}, 104),  # no rpc hook
    Method.SEND: ({"data": {}}, 3508),  # never answered; without a message hook: closed
    Method.REFRESH: ({}, 3501),  # no token: closed
    Method.SUB_REFRESH: ({"channel": "a"}, 103),  # not subscribed
}
"""What each method's handler answers a fresh anonymous client: a result, an error
code, a close code, or nothing."""


@pytest.mark.parametrize("method", list(Method))
async def test_each_command_reaches_its_handler(method: Method) -> None:
    request, answer = ANSWERS[method]
    client, written = make_client()
    if method is not Method.CONNECT:
        await connect(client)
    written.messages.clear()
    await client.receive(json.dumps({"id": 2, method: request}))
    if isinstance(answer, int) and answer >= 3000:
        assert written.closed is not None and written.closed.code == answer
        return
    assert written.closed is None
    if answer is None:
        assert written.messages == []
        return
    (reply,) = written.messages
    if isinstance(answer, int):
        assert (reply["id"], reply["error"]["code"]) == (2, answer)
    else:
        assert reply["id"] == 2 and set(reply) == {"id", answer}


async def test_a_client_that_never_connects_is_closed_stale_at_its_deadline() -> None:
    client, written = make_client(stale_close_delay=10, ping_interval=25, pong_timeout=8)
    assert client.due == T0 + 10  # the first ping comes later (12.5-25 s)
    client.heartbeat(T0 + 9.9)
    assert written.closed is None
    client.heartbeat(T0 + 10)
    assert written.closed is not None and written.closed.code == 3502
    assert pings(written) == 0


async def test_a_connected_client_is_pinged_every_interval_and_the_first_ping_is_spread() -> None:
    firsts = set()
    for _ in range(20):
        client, _ = make_client(ping_interval=4, pong_timeout=2)
        firsts.add(client.due)
        assert T0 + 2 <= client.due <= T0 + 4  # between half the interval and the interval
    assert len(firsts) > 1

    client, written = make_client(ping_interval=4, pong_timeout=2, stale_close_delay=10)
    await connect(client)
    first = client.due
    client.heartbeat(first)
    assert pings(written) == 1 and client.due == first + 2  # the pong deadline comes first
    await client.receive("{}")  # the pong
    client.heartbeat(first + 2)
    assert written.closed is None and client.due == first + 4
    client.heartbeat(first + 4)
    assert pings(written) == 2
    client.heartbeat(first + 5)  # nothing due: nothing happens
    assert pings(written) == 2 and written.closed is None


async def test_a_ping_without_a_pong_by_the_deadline_closes_the_client_with_3012() -> None:
    client, written = make_client(ping_interval=4, pong_timeout=2, stale_close_delay=10)
    await connect(client)
    ping_at = client.due
    client.heartbeat(ping_at)
    client.heartbeat(ping_at + 1.9)
    assert written.closed is None
    client.heartbeat(ping_at + 2)
    assert written.closed is not None and written.closed.code == 3012


async def test_a_closed_client_has_no_deadline_left() -> None:
    client, written = make_client(ping_interval=4, pong_timeout=2)
    await connect(client)
    client.disconnect(Disconnect(3000, "test"))
    client.heartbeat(T0 + 100)
    assert client.due == float("inf") and pings(written) == 0


# --- subscription token expiry (a real hub, raw WebSocket clients) -------------------------


async def _subscribed_with_token(hub: Hub, ttl: float) -> ClientConnection:
    ws = await ws_connect(hub.url)
    await ws.send(json.dumps({"id": 1, "connect": {"token": make_token(SECRET, "kim")}}))
    await receive_until(ws, lambda m: m.get("id") == 1)
    token = make_token(SECRET, "kim", channel="$room", ttl=ttl)
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "$room", "token": token}}))
    reply = await receive_until(ws, lambda m: m.get("id") == 2)
    assert reply["subscribe"]["expires"] is True, reply
    return ws


async def test_a_subscription_whose_token_lapses_is_unsubscribed_with_2501(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(**{"client.expired_sub_close_delay": 0.2})
    ws = await _subscribed_with_token(hub, ttl=1)
    push = await receive_until(ws, lambda m: "push" in m)
    assert push["push"] == {
        "channel": "$room",
        "unsubscribe": {"code": 2501, "reason": "subscription expired"},
    }
    assert hub.node.num_subscriptions == 0
    await ws.close()


async def test_sub_refresh_extends_a_subscription_and_an_expired_token_closes_with_3006(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(**{"client.expired_sub_close_delay": 0.2})
    ws = await _subscribed_with_token(hub, ttl=1)
    fresh = make_token(SECRET, "kim", channel="$room", ttl=60)
    await ws.send(json.dumps({"id": 3, "sub_refresh": {"channel": "$room", "token": fresh}}))
    reply = await receive_until(ws, lambda m: m.get("id") == 3)
    assert reply["sub_refresh"]["expires"] is True and reply["sub_refresh"]["ttl"] > 50
    await asyncio.sleep(1.5)  # past the first token's expiry and grace: still subscribed
    assert hub.node.num_subscriptions == 1
    expired = make_token(SECRET, "kim", channel="$room", ttl=-10)
    await ws.send(json.dumps({"id": 4, "sub_refresh": {"channel": "$room", "token": expired}}))
    assert await closed_with(ws) == (3006, "subscription expired")


async def test_subscribe_flag_2_turns_an_unrecoverable_position_into_error_112(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True)  # history and recovery on every channel
    await hub.publish("room", {"n": 1})
    ws = await ws_connect(hub.url)
    await ws.send(json.dumps({"id": 1, "connect": {}}))
    await receive_until(ws, lambda m: m.get("id") == 1)
    stale = {"channel": "room", "recover": True, "epoch": "another", "offset": 1}
    await ws.send(json.dumps({"id": 2, "subscribe": {**stale, "flag": 2}}))
    reply = await receive_until(ws, lambda m: m.get("id") == 2)
    assert reply["error"] == {"code": 112, "message": "unrecoverable position"}
    assert hub.node.num_subscriptions == 0
    # Without the flag: subscribed, not recovered, at the channel's top.
    await ws.send(json.dumps({"id": 3, "subscribe": stale}))
    result = (await receive_until(ws, lambda m: m.get("id") == 3))["subscribe"]
    assert (result.get("recovered", False), result["offset"]) == (False, 1)
    assert result.get("was_recovering") is True
    await ws.close()


async def _subscribe_raw(hub: Hub, **subscribe: Any) -> dict[str, Any]:
    """A fresh anonymous connection's subscribe result (or error reply)."""
    async with ws_connect(hub.url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        await receive_until(ws, lambda m: m.get("id") == 1)
        await ws.send(json.dumps({"id": 2, "subscribe": subscribe}))
        reply: dict[str, Any] = await receive_until(ws, lambda m: m.get("id") == 2)
        return reply


HISTORY = {
    "client.allow_anonymous_connect_without_token": True,
    "allow_subscribe_for_client": True,
    "allow_subscribe_for_anonymous": True,
    "history_size": 10,
    "history_ttl": 60,
}


async def test_a_client_asks_recovery_or_positioning_only_where_the_channel_allows(
    make_hub: HubFactory,
) -> None:
    asked = {"channel": "c", "recoverable": True, "positioned": True}
    closed = await make_hub(**HISTORY)
    result = (await _subscribe_raw(closed, **asked))["subscribe"]
    assert "recoverable" not in result and "positioned" not in result
    opened = await make_hub(**HISTORY, allow_recovery=True, allow_positioning=True)
    result = (await _subscribe_raw(opened, **asked))["subscribe"]
    assert result["recoverable"] is True and result["positioned"] is True


async def test_cache_recovery_gives_the_latest_publication_alone(make_hub: HubFactory) -> None:
    hub = await make_hub(**HISTORY, force_recovery=True, force_recovery_mode="cache")
    empty = (await _subscribe_raw(hub, channel="np", recover=True))["subscribe"]
    assert empty.get("recovered", False) is False
    for song in "ABC":
        top = await hub.publish("np", {"song": song})
    result = (await _subscribe_raw(hub, channel="np", recover=True, epoch=top.epoch, offset=1))[
        "subscribe"
    ]
    assert result["recovered"] is True and result["offset"] == 1
    assert result["publications"] == [{"data": {"song": "C"}, "offset": 3}]
    # A client that has the latest gets nothing more.
    current = {"recover": True, "epoch": top.epoch, "offset": 3}
    result = (await _subscribe_raw(hub, channel="np", **current))["subscribe"]
    assert result["recovered"] is True and "publications" not in result
    # Without recover, nothing is recovered, unless auto_cache_recover.
    assert "publications" not in (await _subscribe_raw(hub, channel="np"))["subscribe"]
    auto = await make_hub(
        **HISTORY, force_recovery=True, force_recovery_mode="cache", auto_cache_recover=True
    )
    await auto.publish("np", {"song": "D"})
    result = (await _subscribe_raw(auto, channel="np"))["subscribe"]
    assert result["publications"] == [{"data": {"song": "D"}, "offset": 1}]


def test_an_unknown_recovery_mode_is_a_config_problem() -> None:
    with pytest.raises(ValueError, match="force_recovery_mode must be 'stream' or 'cache'"):
        load_config(env={}, overrides={"namespaces.np.force_recovery_mode": "latest"})


async def test_a_tags_filter_needs_the_channel_to_allow_it_and_must_be_valid(
    make_hub: HubFactory,
) -> None:
    tf = {"key": "ticker", "cmp": "eq", "val": "AAPL"}
    closed = await make_hub(**HISTORY)
    error = (await _subscribe_raw(closed, channel="c", tf=tf))["error"]
    assert error == {"code": 107, "message": "tags filter not allowed in this channel"}
    opened = await make_hub(**HISTORY, allow_tags_filter=True)
    assert "subscribe" in await _subscribe_raw(opened, channel="c", tf=tf)
    error = (await _subscribe_raw(opened, channel="c", tf={"key": "ticker", "cmp": "in"}))["error"]
    assert error == {"code": 107, "message": "tf: in takes a non-empty vals, not val"}


async def test_a_subscription_that_no_longer_has_its_token_does_not_lapse(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(**{"client.expired_sub_close_delay": 0.2})
    ws = await _subscribed_with_token(hub, ttl=1)
    await ws.send(json.dumps({"id": 3, "unsubscribe": {"channel": "$room"}}))
    await receive_until(ws, lambda m: m.get("id") == 3)
    await hub.subscribe("kim", "$room")  # server-side now: no token, nothing lapses
    await receive_until(ws, lambda m: "subscribe" in m.get("push", {}))
    await asyncio.sleep(1.5)
    assert hub.node.num_subscriptions == 1
    # And a sub_refresh for it is a bad request (3501), as in Centrifugo.
    token = make_token(SECRET, "kim", channel="$room", ttl=60)
    await ws.send(json.dumps({"id": 4, "sub_refresh": {"channel": "$room", "token": token}}))
    assert (await closed_with(ws))[0] == 3501


async def test_a_server_side_channel_lost_while_the_connect_runs_reconnects_the_client() -> None:
    """A channel of the token is subscribed, then loses publications before the connect
    reply went out (the next one is still being subscribed): the reply must not list a
    channel that no longer delivers; the client reconnects (3010) and recovers."""
    overrides: dict[str, object] = {
        "token_hmac_secret_key": SECRET,
        "allow_subscribe_for_client": True,
    }
    config = load_config(env={}, overrides=overrides)
    broker = MemoryBroker()
    node: Node[Client] = Node(broker, broker)
    await node.start()
    written = Written()
    client = Client(Context(node, config, TokenVerifier.from_config(config)), written)
    subscribe = node.subscribe

    async def losing_a(subscriber: Any, channel: str, *args: Any, **kwargs: Any) -> None:
        if channel == "b":  # "a" is live by now
            node.handle_lost(["a"])
        await subscribe(subscriber, channel, *args, **kwargs)

    node.subscribe = losing_a  # type: ignore[method-assign]
    token = make_token(SECRET, "42", channels=["a", "b"])
    await client.receive(json.dumps({"id": 1, "connect": {"token": token}}))
    assert written.closed is not None and written.closed.code == 3010
    assert not any("connect" in m for m in written.messages)
    await client.cleanup(3010, "")
    assert node.channels() == {}
