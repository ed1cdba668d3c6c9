"""One record of a client's subscriptions: the session's channels, which the node follows.

Real clients without a socket (their transport is a list) on a real node, driven
through every way a subscription starts or ends: the client's commands, the server
API, the connect's server-side channels, a broker that loses publications, failures,
and a connection that ends while a subscribe is in progress. After each step the
client's record (``client.channels``) and the node's subscriptions agree; once the
client is gone, the node holds nothing of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from msgspec import Raw

from tidings import ChannelOptions, ClientOptions, Config, ConnectReply, Disconnect, MemoryBroker
from tidings.node.auth import TokenVerifier
from tidings.node.client import Client, Context
from tidings.node.hooks import ConnectEvent, Hooks, UnsubscribeEvent
from tidings.node.node import Node

OPEN = ChannelOptions(
    allow_subscribe_for_client=True,
    allow_subscribe_for_anonymous=True,
    allow_history_for_subscriber=True,
    allow_history_for_anonymous=True,
    allow_presence_for_subscriber=True,
    allow_presence_for_anonymous=True,
    allow_publish_for_subscriber=True,
    allow_publish_for_anonymous=True,
    presence=True,
    join_leave=True,
    history_size=10,
    history_ttl=60.0,
)
CONFIG = Config(client=ClientOptions(allow_anonymous_connect_without_token=True), channel=OPEN)


class Written:
    """The transport: what the client writes, decoded, and its close."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed: Disconnect | None = None

    def write(self, data: bytes) -> None:
        self.messages.append(json.loads(data))

    def close(self, disconnect: Disconnect) -> None:
        self.closed = disconnect

    def replies(self) -> dict[int, dict[str, Any]]:
        return {m["id"]: m for m in self.messages if "id" in m}


class GatedBroker(MemoryBroker):
    """Routes a channel only once its gate opens; fails the channels in ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()

    async def subscribe(self, channel: str) -> None:
        gate = self.gates.get(channel)
        if gate is not None:
            await gate.wait()
        if channel in self.failing:
            raise ConnectionError(f"cannot route {channel}")
        await super().subscribe(channel)

    def gate(self, channel: str) -> asyncio.Event:
        self.gates[channel] = asyncio.Event()
        return self.gates[channel]


@pytest.fixture
async def broker() -> GatedBroker:
    return GatedBroker()


@pytest.fixture
async def node(broker: GatedBroker) -> AsyncIterator[Node[Client]]:
    node: Node[Client] = Node(broker, broker)
    await node.start()
    yield node
    await node.close()


def make_client(node: Node[Client], hooks: Hooks | None = None) -> tuple[Client, Written]:
    context = Context(node, CONFIG, TokenVerifier.from_config(CONFIG), hooks=hooks or Hooks())
    written = Written()
    return Client(context, written), written


async def connected(node: Node[Client], hooks: Hooks | None = None) -> tuple[Client, Written]:
    client, written = make_client(node, hooks)
    await client.receive('{"id":1,"connect":{}}')
    assert "connect" in written.replies()[1], written.messages
    return client, written


async def command(client: Client, written: Written, command_id: int, **body: Any) -> Any:
    await client.receive(json.dumps({"id": command_id, **body}))
    return written.replies().get(command_id)


def on_node(node: Node[Client], client: Client) -> set[str]:
    """The channels where the node has a subscription of ``client``."""
    return {channel for channel in node.channels() if node.is_subscribed(client.id, channel)}


def assert_agree(node: Node[Client], client: Client) -> None:
    assert len(set(client.channels)) == len(client.channels), "each channel once"
    assert set(client.channels) == on_node(node, client)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_client_subscribes_and_unsubscribes_keep_the_record_and_the_node_together(
    node: Node[Client],
) -> None:
    client, written = await connected(node)
    for n, channel in enumerate(("a", "b", "c"), start=2):
        assert "subscribe" in await command(client, written, n, subscribe={"channel": channel})
        assert_agree(node, client)
    assert client.channels == ("a", "b", "c")
    assert "unsubscribe" in await command(client, written, 5, unsubscribe={"channel": "b"})
    assert client.channels == ("a", "c")
    assert_agree(node, client)
    # Unsubscribing from a channel it is not in changes nothing.
    assert "unsubscribe" in await command(client, written, 6, unsubscribe={"channel": "b"})
    assert client.channels == ("a", "c")
    assert_agree(node, client)


async def test_server_side_subscribes_and_unsubscribes_keep_them_together(
    node: Node[Client],
) -> None:
    client, written = await connected(node)
    await client.subscribe_by_server("a")
    await client.subscribe_by_server("a")  # already: nothing happens
    assert client.channels == ("a",)
    assert_agree(node, client)
    await client.unsubscribe_by_server("a")
    await client.unsubscribe_by_server("a")  # not any more: nothing happens
    assert client.channels == ()
    assert_agree(node, client)
    pushes = [m["push"] for m in written.messages if "push" in m and "pub" not in m["push"]]
    assert [next(k for k in p if k != "channel") for p in pushes] == ["subscribe", "unsubscribe"]


async def test_the_connects_server_side_channels_are_in_the_record_and_on_the_node(
    node: Node[Client],
) -> None:
    async def on_connect(event: ConnectEvent) -> ConnectReply:
        return ConnectReply(channels=["a", "b"])

    client, written = await connected(node, Hooks(connect=on_connect))
    assert set(written.replies()[1]["connect"]["subs"]) == {"a", "b"}
    assert client.channels == ("a", "b")
    assert_agree(node, client)


async def test_a_connect_whose_server_side_subscribe_fails_leaves_the_channels_it_got(
    node: Node[Client], broker: GatedBroker
) -> None:
    async def on_connect(event: ConnectEvent) -> ConnectReply:
        return ConnectReply(channels=["a", "broken", "c"])

    broker.failing.add("broken")
    client, written = make_client(node, Hooks(connect=on_connect))
    await client.receive('{"id":1,"connect":{}}')
    assert written.replies()[1]["error"]["code"] == 100
    assert client.channels == ()
    assert on_node(node, client) == set()
    await settle()
    assert node.channels() == {}


async def test_a_failing_subscribe_leaves_neither_a_record_nor_a_subscription(
    node: Node[Client], broker: GatedBroker
) -> None:
    client, written = await connected(node)
    broker.failing.add("broken")
    reply = await command(client, written, 2, subscribe={"channel": "broken"})
    assert reply["error"]["code"] == 100
    assert client.channels == ()
    assert_agree(node, client)


async def test_a_subscription_the_broker_lost_leaves_the_record_and_the_node_at_once(
    node: Node[Client],
) -> None:
    client, written = await connected(node)
    await command(client, written, 2, subscribe={"channel": "a"})
    await command(client, written, 3, subscribe={"channel": "b"})
    node.handle_lost(["a"])
    assert client.channels == ("b",)
    assert_agree(node, client)
    assert written.messages[-1] == {
        "push": {"channel": "a", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}
    }


async def test_a_client_that_goes_leaves_nothing_on_the_node(node: Node[Client]) -> None:
    unsubscribed: list[tuple[str, int]] = []

    async def on_unsubscribe(event: UnsubscribeEvent) -> None:
        unsubscribed.append((event.channel, event.code))

    client, written = await connected(node, Hooks(unsubscribe=on_unsubscribe))
    await command(client, written, 2, subscribe={"channel": "a"})
    await client.subscribe_by_server("b")
    stays, stays_written = await connected(node)
    await command(stays, stays_written, 2, subscribe={"channel": "a"})
    client.disconnect(Disconnect(3000, "bye"))
    await client.cleanup(1000, "")
    assert on_node(node, client) == set()
    assert node.client(client.id) is None
    assert node.channels() == {"a": 1}
    assert_agree(node, stays)
    assert unsubscribed == [("a", 1), ("b", 1)]  # once each, code 1: the disconnect


async def test_a_server_side_subscribe_that_outlives_its_connection_is_left(
    node: Node[Client], broker: GatedBroker
) -> None:
    client, _ = await connected(node)
    gate = broker.gate("late")
    subscribing = asyncio.ensure_future(client.subscribe_by_server("late"))
    await settle()
    assert node.is_subscribed(client.id, "late")  # in progress: not in the record yet
    assert client.channels == ()
    await client.cleanup(1006, "")  # the connection ended meanwhile
    gate.set()
    await subscribing
    assert client.channels == ()
    assert on_node(node, client) == set()
    await settle()
    assert node.channels() == {}
    assert await node.presence("late") == {}


async def test_a_subscribe_command_the_server_closes_the_connection_on_is_left(
    node: Node[Client], broker: GatedBroker
) -> None:
    client, written = await connected(node)
    gate = broker.gate("late")
    receiving = asyncio.ensure_future(
        client.receive(json.dumps({"id": 2, "subscribe": {"channel": "late"}}))
    )
    await settle()
    client.disconnect(Disconnect(3000, "server closed it"))
    gate.set()
    await receiving  # no answer to write, and nothing raised
    assert 2 not in written.replies()
    assert client.channels == ()
    assert on_node(node, client) == set()
    await client.cleanup(1000, "")
    await settle()
    assert node.channels() == {}


async def test_subscriber_permissions_follow_the_record(node: Node[Client]) -> None:
    client, written = await connected(node)
    history = {"history": {"channel": "a"}}
    assert (await command(client, written, 2, **history))["error"]["code"] == 103
    await client.subscribe_by_server("a")
    assert "history" in await command(client, written, 3, **history)
    await client.unsubscribe_by_server("a")
    assert (await command(client, written, 4, **history))["error"]["code"] == 103


async def test_a_subscribers_publication_carries_its_info_in_the_channel(
    node: Node[Client],
) -> None:
    client, written = await connected(node)
    watcher, watched = await connected(node)
    await command(watcher, watched, 2, subscribe={"channel": "a"})
    await client.subscribe_by_server("a", info=Raw(b'{"seat":7}'))
    publish = {"publish": {"channel": "a", "data": {"n": 1}}}
    assert "publish" in await command(client, written, 2, **publish)
    await settle()
    (pub,) = [m["push"]["pub"] for m in watched.messages if "pub" in m.get("push", {})]
    assert pub["info"] == {"user": "", "client": client.id, "chan_info": {"seat": 7}}
    await client.unsubscribe_by_server("a")
    assert (await command(client, written, 3, **publish))["error"]["code"] == 103
