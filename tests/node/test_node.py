"""Tests for tidings.node.node.Node on top of the in-memory broker.

Clients are small real :class:`~tidings.node.node.Subscriber` implementations that
decode what the node delivers. Races are produced by real interleavings: broker
subclasses that let another publisher in while the node reads history.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import pytest
from centrifuge.fossil import apply_delta
from centrifuge.protocol import client_pb2
from google.protobuf.json_format import MessageToDict
from msgspec import Raw

from tidings import (
    BrokerEventHandler,
    ChannelOptions,
    ClientInfo,
    Disconnect,
    Error,
    ErrorCode,
    MemoryBroker,
    Publication,
    StreamPosition,
)
from tidings.node.node import Node, Recovery
from tidings.protocol.codecs import JSON, PROTOBUF, Codec
from tidings.protocol.wire import Reply, SubscribeResult, encode

PLAIN = ChannelOptions()
HISTORY = ChannelOptions(history_size=10, history_ttl=60.0)
RECOVERABLE = ChannelOptions(history_size=10, history_ttl=60.0, force_recovery=True)
PRESENCE = ChannelOptions(presence=True)
JOIN_LEAVE = ChannelOptions(join_leave=True)

Action = Callable[[], Awaitable[object]]


def protobuf_reply(data: bytes) -> dict[str, Any]:
    """One varint-delimited Reply, decoded by centrifuge-python's generated classes."""
    length = shift = position = 0
    while True:
        byte = data[position]
        length |= (byte & 0x7F) << shift
        position += 1
        shift += 7
        if not byte & 0x80:
            break
    assert len(data) == position + length, "one message, all of it"
    reply = client_pb2.Reply()
    reply.ParseFromString(data[position:])
    return MessageToDict(reply, preserving_proto_field_name=True)


# -- a real subscriber ---------------------------------------------------------------------------


class Client:
    """A subscriber that decodes every push and records replies in the same log."""

    def __init__(self, id: str, user: str = "", codec: Codec = JSON) -> None:
        self._id = id
        self._user = user or f"user-{id}"
        self.codec = codec
        self.raw: list[bytes] = []
        self.log: list[tuple[str, Any]] = []
        self.disconnects: list[int] = []
        self.channels: list[str] = []
        """Its record of subscriptions (``Subscriber.channels``): each reply adds one."""

    @property
    def id(self) -> str:
        return self._id

    @property
    def user(self) -> str:
        return self._user

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(user=self.user, client=self.id)

    def deliver(self, data: bytes) -> None:
        self.raw.append(data)
        if self.codec is JSON:
            self.log.append(("push", json.loads(data)))
        else:
            self.log.append(("push", protobuf_reply(data)))

    def disconnect(self, disconnect: Disconnect) -> None:
        self.disconnects.append(disconnect.code)
        self.log.append(("disconnect", disconnect.code))

    def resubscribe(self, channel: str) -> None:
        self.log.append(("resubscribe", channel))

    @property
    def pushes(self) -> list[dict[str, Any]]:
        return [entry for kind, entry in self.log if kind == "push"]

    def published(self, channel: str | None = None) -> list[tuple[int, int]]:
        """(offset, n) of every publication pushed, in order."""
        return [
            (p["push"]["pub"].get("offset", 0), p["push"]["pub"]["data"]["n"])
            for p in self.pushes
            if "pub" in p["push"] and (channel is None or p["push"]["channel"] == channel)
        ]

    def joins_and_leaves(self) -> list[tuple[str, str, str]]:
        """(channel, "join" or "leave", client id) of every join/leave push, in order."""
        return [
            (p["push"]["channel"], kind, p["push"][kind]["info"]["client"])
            for p in self.pushes
            for kind in ("join", "leave")
            if kind in p["push"]
        ]


async def subscribe(
    node: Node,
    client: Client,
    channel: str,
    options: ChannelOptions,
    *,
    recovery: Recovery | None = None,
    push_join_leave: bool = False,
) -> SubscribeResult:
    """Subscribe and return the result given to ``reply`` (which must be called once)."""
    results: list[SubscribeResult] = []

    def reply(result: SubscribeResult) -> None:
        results.append(result)
        client.log.append(("reply", result))
        client.channels.append(channel)

    await node.subscribe(
        client,
        channel,
        options,
        info=client.info,
        recovery=recovery,
        push_join_leave=push_join_leave,
        reply=reply,
    )
    assert len(results) == 1
    return results[0]


def data(n: int) -> Raw:
    return Raw(b'{"n":%d}' % n)


async def publish_many(
    node: Node, channel: str, numbers: range, options: ChannelOptions = RECOVERABLE
) -> list[StreamPosition]:
    return [await node.publish(channel, data(n), options) for n in numbers]


def offsets_and_numbers(publications: Sequence[Publication]) -> list[tuple[int, int]]:
    return [(p.offset, json.loads(bytes(p.data))["n"]) for p in publications]


def recover_from(position: StreamPosition) -> Recovery:
    return Recovery(recover=True, position=position, recoverable=True)


async def settle() -> None:
    """Let the node's background routing tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- brokers with real interleavings -------------------------------------------------------------


class TestBroker(MemoryBroker):
    """A MemoryBroker that records routing calls and runs injected actions.

    ``during_history`` actions run (once) inside the next ``history`` call, just
    before the stream is read when ``publish_before_read`` is set, just after
    it otherwise, as another node publishing concurrently would.
    ``after_route`` actions run (once) inside the next ``subscribe``, once the
    channel is routed. ``lost`` offsets are dropped on their way to the node.
    """

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.routing: list[tuple[str, str]] = []
        self.during_history: list[Action] = []
        self.publish_before_read = False
        self.after_route: list[Action] = []
        self.lost: set[int] = set()
        self.fail_subscribe: Exception | None = None
        self.fail_history: Exception | None = None

    async def start(self, handler: BrokerEventHandler) -> None:
        await super().start(_Lossy(handler, self.lost))

    async def subscribe(self, channel: str) -> None:
        self.routing.append(("subscribe", channel))
        await asyncio.sleep(0)
        if self.fail_subscribe is not None:
            raise self.fail_subscribe
        await super().subscribe(channel)
        while self.after_route:
            await self.after_route.pop(0)()

    async def unsubscribe(self, channel: str) -> None:
        self.routing.append(("unsubscribe", channel))
        await super().unsubscribe(channel)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        if self.fail_history is not None:
            raise self.fail_history
        actions, self.during_history = self.during_history, []
        if self.publish_before_read:
            for action in actions:
                await action()
        try:
            return await super().history(channel, since=since, limit=limit, reverse=reverse)
        finally:
            if not self.publish_before_read:
                for action in actions:
                    await action()


class _Lossy:
    """Passes broker events to the node, except publications whose offset is lost."""

    def __init__(self, handler: BrokerEventHandler, lost: set[int]) -> None:
        self.handler = handler
        self.lost = lost

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        exclude_client: str = "",
        previous: Publication | None = None,
        epoch: str = "",
    ) -> None:
        if publication.offset not in self.lost:
            self.handler.handle_publication(channel, publication, exclude_client, previous, epoch)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.handler.handle_join(channel, info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.handler.handle_leave(channel, info)


@pytest.fixture
async def broker() -> TestBroker:
    return TestBroker()


@pytest.fixture
async def node(broker: TestBroker) -> AsyncIterator[Node]:
    node = Node(broker, broker)
    await node.start()
    yield node
    await node.close()


# -- publishing ----------------------------------------------------------------------------------


async def test_a_publication_reaches_every_subscriber_exactly_once(node: Node):
    clients = [Client(f"c{i}") for i in range(3)]
    for client in clients:
        await subscribe(node, client, "news", PLAIN)
    outsider = Client("outsider")
    await subscribe(node, outsider, "other", PLAIN)

    await node.publish("news", data(1), PLAIN)

    for client in clients:
        assert client.pushes == [{"push": {"channel": "news", "pub": {"data": {"n": 1}}}}]
    assert outsider.pushes == []


async def test_a_publication_is_encoded_once_for_all_subscribers(node: Node):
    clients = [Client(f"c{i}") for i in range(3)]
    for client in clients:
        await subscribe(node, client, "news", RECOVERABLE)

    await node.publish("news", data(1), RECOVERABLE)

    first, second, third = (client.raw for client in clients)
    assert len(first) == len(second) == len(third) == 1
    assert first[0] is second[0] is third[0]


async def test_a_publication_is_encoded_once_per_codec_and_reaches_both(node: Node):
    json_clients = [Client(f"j{i}") for i in range(2)]
    protobuf_clients = [Client(f"p{i}", codec=PROTOBUF) for i in range(2)]
    for client in [*json_clients, *protobuf_clients]:
        await subscribe(node, client, "news", RECOVERABLE)

    await node.publish("news", data(1), RECOVERABLE)

    (j0,), (j1,) = (client.raw for client in json_clients)
    (p0,), (p1,) = (client.raw for client in protobuf_clients)
    assert j0 is j1 and p0 is p1, "one encoding per codec, shared"
    assert json.loads(j0) == {"push": {"channel": "news", "pub": {"data": {"n": 1}, "offset": 1}}}
    assert protobuf_clients[0].pushes == [
        {"push": {"channel": "news", "pub": {"data": "eyJuIjoxfQ==", "offset": "1"}}}
    ]  # MessageToDict shows bytes as base64 ({"n":1}) and uint64 as a string


async def test_a_payload_that_is_not_json_reaches_protobuf_clients_and_cuts_json_ones(
    node: Node,
):
    json_client, protobuf_client = Client("j"), Client("p", codec=PROTOBUF)
    for client in (json_client, protobuf_client):
        await subscribe(node, client, "news", PLAIN)

    await node.publish("news", Raw(b"\x00\xffbinary"), PLAIN)

    assert json_client.raw == [] and json_client.disconnects == [3506]
    assert protobuf_client.pushes == [
        {"push": {"channel": "news", "pub": {"data": "AP9iaW5hcnk="}}}
    ]


async def test_raw_newlines_in_a_payload_never_reach_a_json_client(node: Node):
    client = Client("j")
    await subscribe(node, client, "news", PLAIN)

    await node.publish("news", Raw(b'{\n"a":\r\n1}'), PLAIN)

    assert client.raw == [b'{"push":{"channel":"news","pub":{"data":{"a":1}}}}']


async def test_publications_arrive_in_order_with_their_offsets(node: Node):
    client = Client("c")
    await subscribe(node, client, "news", RECOVERABLE)
    positions = await publish_many(node, "news", range(1, 4))
    assert [p.offset for p in positions] == [1, 2, 3]
    assert client.published() == [(1, 1), (2, 2), (3, 3)]


async def test_publish_carries_info_and_tags(node: Node):
    client = Client("c")
    await subscribe(node, client, "news", PLAIN)
    author = ClientInfo(user="alice", client="a1")
    await node.publish("news", data(1), PLAIN, info=author, tags={"kind": "x"})
    assert client.pushes == [
        {
            "push": {
                "channel": "news",
                "pub": {
                    "data": {"n": 1},
                    "info": {"user": "alice", "client": "a1"},
                    "tags": {"kind": "x"},
                },
            }
        }
    ]


async def test_publish_without_history_or_with_skip_history_has_no_position(node: Node):
    assert await node.publish("plain", data(1), PLAIN) == StreamPosition()
    assert await node.publish("hist", data(1), HISTORY, skip_history=True) == StreamPosition()
    position = await node.publish("hist", data(2), HISTORY)
    assert position.offset == 1
    assert position.epoch


async def test_publishing_to_a_channel_without_local_subscribers_still_keeps_history(
    node: Node,
):
    position = await node.publish("empty", data(1), HISTORY)
    publications, top = await node.history("empty", limit=-1)
    assert offsets_and_numbers(publications) == [(1, 1)]
    assert top == position


async def test_unsubscribed_clients_receive_nothing_more(node: Node, broker: TestBroker):
    stays, leaves = Client("stays"), Client("leaves")
    await subscribe(node, stays, "news", PLAIN)
    await subscribe(node, leaves, "news", PLAIN)
    await node.unsubscribe(leaves, "news")
    await node.unsubscribe(leaves, "news")  # twice is harmless
    await node.publish("news", data(1), PLAIN)
    assert stays.published() == [(0, 1)]
    assert leaves.pushes == []
    assert node.channels() == {"news": 1}
    assert not node.is_subscribed("leaves", "news")
    assert node.is_subscribed("stays", "news")


async def test_a_channel_is_routed_once_and_unrouted_when_its_last_subscriber_leaves(
    node: Node, broker: TestBroker
):
    one, two = Client("one"), Client("two")
    await subscribe(node, one, "news", PLAIN)
    await subscribe(node, two, "news", PLAIN)
    await node.unsubscribe(one, "news")
    await settle()
    assert broker.routing == [("subscribe", "news")]
    await node.unsubscribe(two, "news")
    await settle()
    assert broker.routing == [("subscribe", "news"), ("unsubscribe", "news")]
    assert node.channels() == {}


async def test_concurrent_subscribers_of_a_new_channel_share_one_routing(
    node: Node, broker: TestBroker
):
    clients = [Client(f"c{i}") for i in range(3)]
    await asyncio.gather(*(subscribe(node, c, "news", PLAIN) for c in clients))
    assert broker.routing == [("subscribe", "news")]
    assert node.channels() == {"news": 3}
    await node.publish("news", data(1), PLAIN)
    assert [c.published() for c in clients] == [[(0, 1)]] * 3


# -- subscribe results ---------------------------------------------------------------------------


async def test_the_subscribe_result_of_a_channel_without_history_is_empty(node: Node):
    result = await subscribe(
        node,
        Client("c"),
        "plain",
        PLAIN,
        recovery=Recovery(recover=True, recoverable=True, positioned=True),
    )
    assert result == SubscribeResult()
    assert encode(result) == b"{}"


async def test_a_history_channel_is_not_positioned_unless_asked(node: Node):
    await publish_many(node, "hist", range(1, 3), HISTORY)
    result = await subscribe(node, Client("c"), "hist", HISTORY)
    assert result == SubscribeResult()


async def test_force_recovery_gives_a_recoverable_positioned_result_at_the_top(node: Node):
    positions = await publish_many(node, "hist", range(1, 4))
    result = await subscribe(node, Client("c"), "hist", RECOVERABLE)
    assert result.recoverable and result.positioned
    assert (result.epoch, result.offset) == (positions[-1].epoch, 3)
    assert result.publications == []
    assert not result.recovered and not result.was_recovering


async def test_force_positioning_gives_a_positioned_result_that_is_not_recoverable(
    node: Node,
):
    options = ChannelOptions(history_size=10, history_ttl=60.0, force_positioning=True)
    positions = await publish_many(node, "hist", range(1, 3), options)
    result = await subscribe(node, Client("c"), "hist", options)
    assert result.positioned and not result.recoverable
    assert (result.epoch, result.offset) == (positions[-1].epoch, 2)


async def test_the_client_can_ask_for_positioning_or_recovery(node: Node):
    positions = await publish_many(node, "hist", range(1, 3), HISTORY)
    positioned = await subscribe(
        node, Client("a"), "hist", HISTORY, recovery=Recovery(positioned=True)
    )
    assert positioned.positioned and not positioned.recoverable
    assert positioned.offset == 2
    recoverable = await subscribe(
        node, Client("b"), "hist", HISTORY, recovery=Recovery(recoverable=True)
    )
    assert recoverable.positioned and recoverable.recoverable
    assert (recoverable.epoch, recoverable.offset) == (positions[-1].epoch, 2)


async def test_a_new_channel_is_positioned_at_offset_zero_with_an_epoch(node: Node):
    result = await subscribe(node, Client("c"), "fresh", RECOVERABLE)
    assert result.positioned and result.offset == 0 and result.epoch
    await node.publish("fresh", data(1), RECOVERABLE)
    _, top = await node.history("fresh")
    assert top == StreamPosition(offset=1, epoch=result.epoch)


# -- recovery ------------------------------------------------------------------------------------


async def test_a_subscriber_that_knows_offset_n_recovers_exactly_the_later_publications(
    node: Node,
):
    positions = await publish_many(node, "hist", range(1, 6))
    client = Client("c")
    result = await subscribe(node, client, "hist", RECOVERABLE, recovery=recover_from(positions[1]))
    assert result.recovered and result.was_recovering
    assert result.recoverable and result.positioned
    assert (result.epoch, result.offset) == (positions[1].epoch, 2)
    assert offsets_and_numbers(result.publications) == [(3, 3), (4, 4), (5, 5)]
    assert client.pushes == []


async def test_a_subscriber_at_the_top_recovers_with_nothing_missed(node: Node):
    positions = await publish_many(node, "hist", range(1, 4))
    result = await subscribe(
        node, Client("c"), "hist", RECOVERABLE, recovery=recover_from(positions[-1])
    )
    assert result.recovered
    assert result.publications == []
    assert result.offset == 3


async def test_missing_exactly_history_size_publications_is_still_recovered(node: Node):
    options = ChannelOptions(history_size=3, history_ttl=60.0, force_recovery=True)
    positions = await publish_many(node, "hist", range(1, 7), options)
    result = await subscribe(
        node, Client("c"), "hist", options, recovery=recover_from(positions[2])
    )
    assert result.recovered
    assert offsets_and_numbers(result.publications) == [(4, 4), (5, 5), (6, 6)]
    assert result.offset == 3


async def test_missing_more_than_history_size_publications_is_not_recovered(node: Node):
    options = ChannelOptions(history_size=3, history_ttl=60.0, force_recovery=True)
    positions = await publish_many(node, "hist", range(1, 7), options)
    client = Client("c")
    result = await subscribe(node, client, "hist", options, recovery=recover_from(positions[0]))
    assert not result.recovered and result.was_recovering
    assert result.publications == []
    assert (result.epoch, result.offset) == (positions[-1].epoch, 6)
    assert client.pushes == []


async def test_recovery_after_the_history_expired_is_not_recovered(node: Node):
    options = ChannelOptions(history_size=10, history_ttl=0.05, force_recovery=True)
    positions = await publish_many(node, "hist", range(1, 4), options)
    await asyncio.sleep(0.07)
    result = await subscribe(
        node, Client("c"), "hist", options, recovery=recover_from(positions[0])
    )
    assert not result.recovered
    assert result.publications == []
    assert (result.epoch, result.offset) == (positions[-1].epoch, 3)


async def test_recovery_from_another_epoch_is_not_recovered(node: Node):
    positions = await publish_many(node, "hist", range(1, 4))
    stale = StreamPosition(offset=2, epoch="an-old-epoch")
    result = await subscribe(node, Client("c"), "hist", RECOVERABLE, recovery=recover_from(stale))
    assert not result.recovered and result.was_recovering
    assert result.publications == []
    assert (result.epoch, result.offset) == (positions[-1].epoch, 3)


async def test_recovery_from_an_offset_beyond_the_top_is_not_recovered(node: Node):
    positions = await publish_many(node, "hist", range(1, 3))
    ahead = StreamPosition(offset=7, epoch=positions[-1].epoch)
    result = await subscribe(node, Client("c"), "hist", RECOVERABLE, recovery=recover_from(ahead))
    assert not result.recovered
    assert result.offset == 2


async def test_recovery_without_an_epoch_is_accepted(node: Node):
    await publish_many(node, "hist", range(1, 4))
    result = await subscribe(
        node, Client("c"), "hist", RECOVERABLE, recovery=recover_from(StreamPosition(offset=1))
    )
    assert result.recovered
    assert offsets_and_numbers(result.publications) == [(2, 2), (3, 3)]
    assert result.offset == 1


async def test_recovered_results_encode_as_the_protocol_describes(node: Node):
    positions = await publish_many(node, "hist", range(1, 3))
    epoch = positions[0].epoch
    result = await subscribe(
        node, Client("c"), "hist", RECOVERABLE, recovery=recover_from(positions[0])
    )
    assert json.loads(encode(result)) == {
        "recoverable": True,
        "positioned": True,
        "epoch": epoch,
        "offset": 1,
        "was_recovering": True,
        "recovered": True,
        "publications": [{"data": {"n": 2}, "offset": 2}],
    }


# -- publications racing with a subscribe --------------------------------------------------------


async def test_a_publication_after_the_history_read_is_delivered_once_after_the_recovery_reply(
    node: Node, broker: TestBroker
):
    positions = await publish_many(node, "hist", range(1, 5))
    broker.during_history.append(lambda: node.publish("hist", data(5), RECOVERABLE))
    client = Client("c")

    result = await subscribe(node, client, "hist", RECOVERABLE, recovery=recover_from(positions[1]))

    assert result.recovered and result.offset == 2
    assert offsets_and_numbers(result.publications) == [(3, 3), (4, 4)]
    assert [kind for kind, _ in client.log] == ["reply", "push"]
    assert client.published() == [(5, 5)]
    await node.publish("hist", data(6), RECOVERABLE)
    assert client.published() == [(5, 5), (6, 6)]


async def test_a_publication_before_the_history_read_is_recovered_and_not_pushed_again(
    node: Node, broker: TestBroker
):
    positions = await publish_many(node, "hist", range(1, 5))
    broker.publish_before_read = True
    broker.during_history.append(lambda: node.publish("hist", data(5), RECOVERABLE))
    client = Client("c")

    result = await subscribe(node, client, "hist", RECOVERABLE, recovery=recover_from(positions[1]))

    assert result.recovered and result.offset == 2
    assert offsets_and_numbers(result.publications) == [(3, 3), (4, 4), (5, 5)]
    assert client.pushes == []
    await node.publish("hist", data(6), RECOVERABLE)
    assert [kind for kind, _ in client.log] == ["reply", "push"]
    assert client.published() == [(6, 6)]


async def test_publications_racing_a_positioned_subscribe_are_delivered_once_after_the_reply(
    node: Node, broker: TestBroker
):
    await publish_many(node, "hist", range(1, 3))
    broker.during_history.extend(
        [
            lambda: node.publish("hist", data(3), RECOVERABLE),
            lambda: node.publish("hist", data(4), RECOVERABLE),
        ]
    )
    client = Client("c")

    result = await subscribe(node, client, "hist", RECOVERABLE)

    assert result.positioned and result.offset == 2
    assert [kind for kind, _ in client.log] == ["reply", "push", "push"]
    assert client.published() == [(3, 3), (4, 4)]


async def test_a_publication_already_counted_in_the_position_is_not_pushed(
    node: Node, broker: TestBroker
):
    await publish_many(node, "hist", range(1, 3))
    broker.publish_before_read = True
    broker.during_history.append(lambda: node.publish("hist", data(3), RECOVERABLE))
    client = Client("c")

    result = await subscribe(node, client, "hist", RECOVERABLE)

    assert result.offset == 3
    assert client.pushes == []


async def test_an_unrecovered_subscribe_gets_the_racing_publication_after_the_reply(
    node: Node, broker: TestBroker
):
    positions = await publish_many(node, "hist", range(1, 4))
    broker.during_history.append(lambda: node.publish("hist", data(4), RECOVERABLE))
    client = Client("c")
    stale = StreamPosition(offset=1, epoch="an-old-epoch")

    result = await subscribe(node, client, "hist", RECOVERABLE, recovery=recover_from(stale))

    # The failed recovery is followed by a fresh read of the top, which already
    # includes the racing publication: the client starts after it.
    assert not result.recovered
    assert (result.epoch, result.offset) == (positions[0].epoch, 4)
    assert client.pushes == []
    await node.publish("hist", data(5), RECOVERABLE)
    assert client.published() == [(5, 5)]


async def test_a_publication_racing_a_subscribe_without_history_is_delivered_after_the_reply(
    node: Node, broker: TestBroker
):
    broker.after_route.append(lambda: node.publish("plain", data(1), PLAIN))
    client = Client("c")

    result = await subscribe(node, client, "plain", PLAIN)

    assert result == SubscribeResult()
    assert [kind for kind, _ in client.log] == ["reply", "push"]
    assert client.published() == [(0, 1)]


async def test_live_subscribers_are_not_held_back_by_a_subscribe_in_progress(
    node: Node, broker: TestBroker
):
    live = Client("live")
    await subscribe(node, live, "hist", RECOVERABLE)
    seen_during_history: list[list[tuple[int, int]]] = []

    async def publish_and_look() -> None:
        await node.publish("hist", data(1), RECOVERABLE)
        seen_during_history.append(live.published())

    broker.during_history.append(publish_and_look)
    newcomer = Client("newcomer")
    await subscribe(node, newcomer, "hist", RECOVERABLE)

    assert seen_during_history == [[(1, 1)]]
    assert newcomer.published() == [(1, 1)]
    assert live.raw[0] is newcomer.raw[0]


async def test_a_publication_lost_between_history_and_live_stream_disconnects_with_3010(
    node: Node, broker: TestBroker
):
    await publish_many(node, "hist", range(1, 3))
    broker.lost.add(3)
    broker.during_history.extend(
        [
            lambda: node.publish("hist", data(3), RECOVERABLE),
            lambda: node.publish("hist", data(4), RECOVERABLE),
        ]
    )
    client = Client("c")

    result = await subscribe(node, client, "hist", RECOVERABLE)

    assert result.offset == 2
    assert client.disconnects == [3010]
    assert client.published() == []


# -- join and leave ------------------------------------------------------------------------------


async def test_join_and_leave_are_pushed_only_to_subscriptions_that_asked_for_them(
    node: Node,
):
    watcher, quiet, newcomer = Client("watcher"), Client("quiet"), Client("newcomer")
    await subscribe(node, watcher, "room", JOIN_LEAVE, push_join_leave=True)
    await subscribe(node, quiet, "room", JOIN_LEAVE)
    await subscribe(node, newcomer, "room", JOIN_LEAVE)
    await node.unsubscribe(newcomer, "room")

    assert watcher.joins_and_leaves() == [
        ("room", "join", "watcher"),
        ("room", "join", "quiet"),
        ("room", "join", "newcomer"),
        ("room", "leave", "newcomer"),
    ]
    assert quiet.pushes == []
    assert newcomer.pushes == []


async def test_join_pushes_carry_the_client_info(node: Node):
    watcher = Client("watcher")
    await subscribe(node, watcher, "room", JOIN_LEAVE, push_join_leave=True)
    newcomer = Client("newcomer", user="alice")
    await subscribe(node, newcomer, "room", JOIN_LEAVE)
    assert watcher.pushes[-1] == {
        "push": {"channel": "room", "join": {"info": {"user": "alice", "client": "newcomer"}}}
    }


async def test_channels_without_join_leave_push_no_joins_or_leaves(node: Node):
    watcher, other = Client("watcher"), Client("other")
    await subscribe(node, watcher, "room", PLAIN, push_join_leave=True)
    await subscribe(node, other, "room", PLAIN)
    await node.unsubscribe(other, "room")
    assert watcher.pushes == []


async def test_a_join_during_a_subscribe_is_pushed_after_the_reply(node: Node, broker: TestBroker):
    # A client of another node joins while the watcher's subscribe is in progress.
    broker.after_route.append(
        lambda: broker.publish_join("room", ClientInfo(user="u", client="elsewhere"))
    )
    watcher = Client("watcher")
    await subscribe(node, watcher, "room", JOIN_LEAVE, push_join_leave=True)
    assert [kind for kind, _ in watcher.log] == ["reply", "push", "push"]
    assert watcher.joins_and_leaves() == [
        ("room", "join", "elsewhere"),
        ("room", "join", "watcher"),
    ]


# -- presence ------------------------------------------------------------------------------------


async def test_presence_is_added_on_subscribe_and_removed_on_unsubscribe(node: Node):
    alice1, alice2, bob = Client("a1", "alice"), Client("a2", "alice"), Client("b", "bob")
    for client in (alice1, alice2, bob):
        await subscribe(node, client, "room", PRESENCE)
    assert await node.presence("room") == {c.id: c.info for c in (alice1, alice2, bob)}
    stats = await node.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await node.unsubscribe(alice1, "room")
    assert set(await node.presence("room")) == {"a2", "b"}
    stats = await node.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (2, 2)


async def test_channels_without_presence_record_none(node: Node):
    await subscribe(node, Client("c"), "plain", PLAIN)
    assert await node.presence("plain") == {}


# -- removing a client ---------------------------------------------------------------------------


async def test_removing_a_client_leaves_every_channel(node: Node, broker: TestBroker):
    options = ChannelOptions(presence=True, join_leave=True)
    gone, watcher = Client("gone", "alice"), Client("watcher", "bob")
    node.add_client(gone)
    node.add_client(watcher)
    await subscribe(node, watcher, "a", options, push_join_leave=True)
    for channel in ("a", "b", "c"):
        await subscribe(node, gone, channel, options)
    assert node.channels() == {"a": 2, "b": 1, "c": 1}

    await node.remove_client(gone)
    await settle()

    assert node.channels() == {"a": 1}
    assert not any(node.is_subscribed("gone", channel) for channel in ("a", "b", "c"))
    assert await node.presence("a") == {"watcher": watcher.info}
    assert await node.presence("b") == {}
    assert await node.presence("c") == {}
    assert watcher.joins_and_leaves()[-1] == ("a", "leave", "gone")
    assert sorted(c for op, c in broker.routing if op == "unsubscribe") == ["b", "c"]
    assert node.clients() == [watcher]
    assert (node.num_clients, node.num_users) == (1, 1)
    await node.publish("b", data(1), options)
    assert gone.published() == []


async def test_clients_are_counted_per_user(node: Node):
    a1, a2, b = Client("a1", "alice"), Client("a2", "alice"), Client("b", "bob")
    for client in (a1, a2, b):
        node.add_client(client)
    assert (node.num_clients, node.num_users) == (3, 2)
    assert {c.id for c in node.user_clients("alice")} == {"a1", "a2"}
    await node.remove_client(a1)
    await node.remove_client(a1)  # twice is harmless
    assert (node.num_clients, node.num_users) == (2, 2)
    await node.remove_client(a2)
    assert node.user_clients("alice") == []
    assert (node.num_clients, node.num_users) == (1, 1)


async def test_subscription_counters_follow_subscribes_and_unsubscribes(node: Node):
    one, two = Client("one"), Client("two")
    await subscribe(node, one, "x", PLAIN)
    await subscribe(node, two, "x", PLAIN)
    await subscribe(node, two, "y", PLAIN)
    assert (node.num_channels, node.num_subscriptions) == (2, 3)
    await node.unsubscribe(two, "x")
    assert (node.num_channels, node.num_subscriptions) == (2, 2)


# -- broker failures -----------------------------------------------------------------------------


async def test_a_failing_broker_subscribe_raises_error_100_and_leaves_nothing_subscribed(
    node: Node, broker: TestBroker
):
    broker.fail_subscribe = RuntimeError("broker down")
    client = Client("c")
    with pytest.raises(Error) as caught:
        await subscribe(node, client, "news", PRESENCE)
    assert caught.value.code == ErrorCode.INTERNAL == 100
    assert caught.value.temporary
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert client.log == []
    assert node.channels() == {}
    assert not node.is_subscribed("c", "news")
    assert await node.presence("news") == {}
    await node.publish("news", data(1), PLAIN)
    assert client.pushes == []


async def test_concurrent_subscribers_all_fail_when_the_broker_subscribe_fails(
    node: Node, broker: TestBroker
):
    broker.fail_subscribe = RuntimeError("broker down")
    clients = [Client(f"c{i}") for i in range(3)]
    outcomes = await asyncio.gather(
        *(subscribe(node, c, "news", PLAIN) for c in clients), return_exceptions=True
    )
    assert [getattr(o, "code", None) for o in outcomes] == [100, 100, 100]
    assert node.channels() == {}
    assert broker.routing == [("subscribe", "news")]


async def test_a_subscribe_after_a_broker_failure_routes_the_channel_again(
    node: Node, broker: TestBroker
):
    broker.fail_subscribe = RuntimeError("broker down")
    with pytest.raises(Error):
        await subscribe(node, Client("first"), "news", PLAIN)
    broker.fail_subscribe = None
    client = Client("second")
    await subscribe(node, client, "news", PLAIN)
    await node.publish("news", data(1), PLAIN)
    assert client.published() == [(0, 1)]
    assert broker.routing == [("subscribe", "news"), ("subscribe", "news")]


async def test_a_failing_history_read_raises_error_100_and_unroutes_the_channel(
    node: Node, broker: TestBroker
):
    broker.fail_history = RuntimeError("history down")
    client = Client("c")
    with pytest.raises(Error) as caught:
        await subscribe(node, client, "news", RECOVERABLE)
    assert caught.value.code == 100
    await settle()
    assert node.channels() == {}
    assert not node.is_subscribed("c", "news")
    assert broker.routing == [("subscribe", "news"), ("unsubscribe", "news")]


# -- history -------------------------------------------------------------------------------------


async def test_history_returns_publications_and_the_top(node: Node):
    positions = await publish_many(node, "hist", range(1, 4), HISTORY)
    publications, top = await node.history("hist", limit=-1)
    assert offsets_and_numbers(publications) == [(1, 1), (2, 2), (3, 3)]
    assert top == positions[-1]
    publications, top = await node.history("hist", limit=-1, since=positions[0])
    assert offsets_and_numbers(publications) == [(2, 2), (3, 3)]
    publications, _ = await node.history("hist", limit=2, reverse=True)
    assert offsets_and_numbers(publications) == [(3, 3), (2, 2)]


async def test_history_limit_zero_returns_only_the_position(node: Node):
    positions = await publish_many(node, "hist", range(1, 4), HISTORY)
    assert await node.history("hist") == ([], positions[-1])
    assert await node.history("hist", limit=0) == ([], positions[-1])


async def test_history_limits_are_capped_by_history_max_publication_limit(
    broker: TestBroker,
):
    node = Node(broker, broker, history_max_publication_limit=3)
    await node.start()
    await publish_many(node, "hist", range(1, 6), HISTORY)
    for limit in (-1, 3, 4, 100):
        publications, top = await node.history("hist", limit=limit)
        assert [p.offset for p in publications] == [1, 2, 3], limit
        assert top.offset == 5
    publications, _ = await node.history("hist", limit=2)
    assert [p.offset for p in publications] == [1, 2]
    publications, _ = await node.history("hist", limit=-1, reverse=True)
    assert [p.offset for p in publications] == [5, 4, 3]
    await node.close()


async def test_history_since_another_epoch_raises_error_112(node: Node):
    await publish_many(node, "hist", range(1, 3), HISTORY)
    stale = StreamPosition(offset=1, epoch="an-old-epoch")
    for limit in (-1, 0):
        with pytest.raises(Error) as caught:
            await node.history("hist", limit=limit, since=stale)
        assert caught.value.code == ErrorCode.UNRECOVERABLE_POSITION == 112


async def test_removing_history_keeps_the_position(node: Node):
    positions = await publish_many(node, "hist", range(1, 3), HISTORY)
    await node.remove_history("hist")
    assert await node.history("hist", limit=-1) == ([], positions[-1])


# -- known bugs ----------------------------------------------------------------------------------


class SlowUnsubscribeBroker(TestBroker):
    """A broker whose unsubscribe takes a while to take effect (a network round trip)."""

    __test__ = False

    async def unsubscribe(self, channel: str) -> None:
        await asyncio.sleep(0.01)
        await super().unsubscribe(channel)


async def test_a_resubscribe_while_the_channel_is_being_unrouted_still_receives_publications():
    broker = SlowUnsubscribeBroker()
    node = Node(broker, broker)
    await node.start()
    first, second = Client("first"), Client("second")
    await subscribe(node, first, "news", PLAIN)
    await node.unsubscribe(first, "news")
    await asyncio.sleep(0)  # the unrouting reaches the broker
    await subscribe(node, second, "news", PLAIN)
    await asyncio.sleep(0.02)  # the unrouting completes
    await node.publish("news", data(1), PLAIN)
    await node.close()
    assert node.channels() == {"news": 1}
    assert second.published() == [(0, 1)]


# --- tags filters --------------------------------------------------------------------------


class CountingFilter:
    """A tags filter passing ``ticker == want``, counting its evaluations."""

    def __init__(self, want: str) -> None:
        self.want = want
        self.calls = 0

    def __call__(self, tags: Mapping[str, str] | None) -> bool:
        self.calls += 1
        return (tags or {}).get("ticker") == self.want


async def filtered(
    node: Node, client: Client, channel: str, tags_filter: CountingFilter, key: bytes, **kw: Any
) -> SubscribeResult:
    results: list[SubscribeResult] = []
    await node.subscribe(
        client,
        channel,
        RECOVERABLE,
        info=client.info,
        tags_filter=(tags_filter, key),
        reply=results.append,
        **kw,
    )
    client.channels.append(channel)
    return results[0]


async def test_a_filtered_subscription_gets_only_passing_publications_each_filter_run_once(
    node: Node,
) -> None:
    apple = CountingFilter("AAPL")
    first, second, other, everything = Client("a"), Client("b"), Client("c"), Client("d")
    await filtered(node, first, "stocks", apple, b"apple")
    await filtered(node, second, "stocks", apple, b"apple")  # the same filter: one verdict
    await filtered(node, other, "stocks", CountingFilter("MSFT"), b"msft")
    await subscribe(node, everything, "stocks", RECOVERABLE)
    for n, ticker in enumerate(["AAPL", "MSFT", "AAPL", "IBM"], start=1):
        await node.publish("stocks", data(n), RECOVERABLE, tags={"ticker": ticker})
    await asyncio.sleep(0)
    assert first.published() == second.published() == [(1, 1), (3, 3)]
    assert other.published() == [(2, 2)]
    assert everything.published() == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert apple.calls == 4  # once per publication, not once per subscriber
    # Filtered-out offsets are no gap: nobody was disconnected (3010).
    assert not (first.disconnects or second.disconnects or other.disconnects)


async def test_recovery_through_a_filter_returns_only_the_passing_publications(
    node: Node,
) -> None:
    positions = [
        await node.publish("stocks", data(n), RECOVERABLE, tags={"ticker": ticker})
        for n, ticker in enumerate(["AAPL", "MSFT", "AAPL", "IBM"], start=1)
    ]
    since = StreamPosition(0, positions[0].epoch)
    result = await filtered(
        node, Client("a"), "stocks", CountingFilter("AAPL"), b"k", recovery=recover_from(since)
    )
    assert result.recovered
    assert offsets_and_numbers(result.publications) == [(1, 1), (3, 3)]
    # Cache mode: the latest passing publication, not the latest one.
    cache = msgspec.structs.replace(RECOVERABLE, force_recovery_mode="cache")
    results: list[SubscribeResult] = []
    await node.subscribe(
        Client("b"),
        "stocks",
        cache,
        info=Client("b").info,
        recovery=recover_from(since),
        tags_filter=(CountingFilter("MSFT"), b"m"),
        reply=results.append,
    )
    (cached,) = results
    assert offsets_and_numbers(cached.publications) == [(2, 2)]
    assert cached.recovered and cached.offset == since.offset


async def test_publications_racing_a_filtered_subscribe_are_filtered_with_no_false_gap(
    node: Node, broker: TestBroker
) -> None:
    positions = [
        await node.publish("stocks", data(n), RECOVERABLE, tags={"ticker": ticker})
        for n, ticker in enumerate(["AAPL", "MSFT"], start=1)
    ]
    # While the subscribe reads the history, a filtered-out then a passing publication:
    # both are buffered (the first as an offset only), and neither is a gap.
    broker.during_history.extend(
        [
            lambda: node.publish("stocks", data(3), RECOVERABLE, tags={"ticker": "IBM"}),
            lambda: node.publish("stocks", data(4), RECOVERABLE, tags={"ticker": "AAPL"}),
        ]
    )
    client = Client("c")
    result = await filtered(
        node,
        client,
        "stocks",
        CountingFilter("AAPL"),
        b"k",
        recovery=recover_from(positions[0]),
    )
    assert result.recovered and offsets_and_numbers(result.publications) == []  # 2: MSFT
    assert client.published() == [(4, 4)]
    assert client.disconnects == []


# -- delta compression ---------------------------------------------------------------------------

DELTA = ChannelOptions(history_size=10, history_ttl=60.0, force_recovery=True, delta_publish=True)


class DeltaClient(Client):
    """A delta subscriber: applies patches as the SDKs do (centrifuge-python's own
    Fossil decoder, not the one that made them) and keeps the documents it decodes."""

    def __init__(self, id: str, codec: Codec = JSON) -> None:
        super().__init__(id, codec=codec)
        self.base = b""
        self.documents: list[tuple[int, bool, Any]] = []
        """(offset, delta, decoded document) of each publication."""

    def take(self, publication: dict[str, Any]) -> None:
        data = publication.get("data", "")
        if self.codec is JSON:
            payload = data.encode()
        else:
            payload = base64.b64decode(data)
        delta = publication.get("delta", False)
        self.base = apply_delta(self.base, payload) if delta else payload
        self.documents.append((int(publication.get("offset", 0)), delta, json.loads(self.base)))

    def deliver(self, data: bytes) -> None:
        super().deliver(data)
        push = self.pushes[-1]["push"]
        if "pub" in push:
            self.take(push["pub"])


async def delta_subscribe(
    node: Node, client: DeltaClient, channel: str, recovery: Recovery | None = None
) -> SubscribeResult:
    results: list[SubscribeResult] = []
    await node.subscribe(
        client,
        channel,
        DELTA,
        info=client.info,
        recovery=recovery,
        delta=True,
        reply=results.append,
    )
    client.channels.append(channel)
    (result,) = results
    encoded = client.codec.encode(Reply(subscribe=result))
    decoded = json.loads(encoded) if client.codec is JSON else protobuf_reply(encoded)
    for publication in decoded["subscribe"].get("publications", []):
        client.take(publication)
    return result


def state(n: int, text: str = "the same long text of a state document " * 50) -> Raw:
    return Raw(msgspec.json.encode({"version": n, "text": text}))


@pytest.mark.parametrize("codec", [JSON, PROTOBUF], ids=["json", "protobuf"])
async def test_a_delta_subscriber_gets_the_first_in_full_then_patches_made_once(
    node: Node, codec: Codec
) -> None:
    first, second = DeltaClient("a", codec), DeltaClient("b", codec)
    plain = Client("c", codec=codec)
    for client in (first, second):
        assert (await delta_subscribe(node, client, "doc")).delta
    await subscribe(node, plain, "doc", DELTA)
    for n in range(4):
        await node.publish("doc", state(n), DELTA)
    expected = [(n + 1, n > 0, json.loads(bytes(state(n)))) for n in range(4)]
    assert first.documents == second.documents == expected
    # One encoding per variant: both delta subscribers got the very same bytes.
    assert all(a is b for a, b in zip(first.raw, second.raw, strict=True))
    assert sum(map(len, first.raw[1:])) < sum(map(len, plain.raw[1:])) / 10
    assert all("delta" not in push["push"]["pub"] for push in plain.pushes)


async def test_a_publication_without_delta_goes_full_and_becomes_the_base(node: Node) -> None:
    client = DeltaClient("a")
    await delta_subscribe(node, client, "doc")
    options = msgspec.structs.replace(DELTA, delta_publish=False)
    await node.publish("doc", state(0), options)
    await node.publish("doc", state(1), options)  # no previous publication handed along
    await node.publish("doc", state(2), options, delta=True)
    assert [delta for _, delta, _ in client.documents] == [False, False, True]
    assert client.documents[-1][2]["version"] == 2


async def test_a_client_that_missed_the_previous_publication_gets_the_next_in_full(
    node: Node,
) -> None:
    author, reader = DeltaClient("author"), DeltaClient("reader")
    for client in (author, reader):
        await delta_subscribe(node, client, "doc")
    await node.publish("doc", state(0), DELTA)
    await node.publish("doc", state(1), DELTA, exclude_client="author")
    await node.publish("doc", state(2), DELTA)
    assert [(offset, delta) for offset, delta, _ in author.documents] == [(1, False), (3, False)]
    assert [(offset, delta) for offset, delta, _ in reader.documents] == [
        (1, False),
        (2, True),
        (3, True),
    ]
    assert author.documents[-1][2] == reader.documents[-1][2]


async def test_recovered_publications_are_chained_and_live_ones_patch_the_last(
    node: Node,
) -> None:
    positions = [await node.publish("doc", state(n), DELTA) for n in range(4)]
    client = DeltaClient("a")
    result = await delta_subscribe(node, client, "doc", recover_from(positions[0]))
    assert result.recovered and [p.delta for p in result.publications] == [False, True, True]
    await node.publish("doc", state(4), DELTA)
    assert [(offset, delta, doc["version"]) for offset, delta, doc in client.documents] == [
        (2, False, 1),
        (3, True, 2),
        (4, True, 3),
        (5, True, 4),
    ]


async def test_a_publication_racing_a_delta_subscribe_arrives_full_then_patches_follow(
    node: Node, broker: TestBroker
) -> None:
    await node.publish("doc", state(0), DELTA)
    broker.during_history.append(lambda: node.publish("doc", state(1), DELTA))
    client = DeltaClient("a")
    await delta_subscribe(node, client, "doc")
    await node.publish("doc", state(2), DELTA)
    assert [(offset, delta) for offset, delta, _ in client.documents] == [(2, False), (3, True)]


async def test_a_patch_that_does_not_pay_or_cuts_a_character_goes_full(node: Node) -> None:
    json_client, protobuf_client = DeltaClient("j"), DeltaClient("p", PROTOBUF)
    for client in (json_client, protobuf_client):
        await delta_subscribe(node, client, "doc")
    text = "café " * 200
    await node.publish("doc", state(0, text), DELTA)
    # é -> è changes one byte inside a two-byte character: that patch is not UTF-8,
    # so a JSON client (which reads the patch as a string) gets the document in full.
    await node.publish("doc", state(0, text.replace("é", "è", 1)), DELTA)
    await node.publish("doc", Raw(b'{"n":1}'), DELTA)  # nothing in common: full is smaller
    assert [delta for _, delta, _ in json_client.documents] == [False, False, False]
    assert [delta for _, delta, _ in protobuf_client.documents] == [False, True, False]
    assert json_client.documents == [
        (offset, False, document) for offset, _, document in protobuf_client.documents
    ]


async def test_a_new_epoch_ends_positioned_subscriptions_and_resets_delta_bases(
    node: Node,
) -> None:
    """The channel's position expired while it was idle (history_meta_ttl): offsets
    start again from 1 in a new epoch. A positioned client must not take them for
    duplicates, nor a delta client patch its old base with them."""
    short = msgspec.structs.replace(DELTA, history_meta_ttl=0.05, history_ttl=0.05)
    positioned, floating = DeltaClient("p"), DeltaClient("f")
    await delta_subscribe(node, positioned, "doc")
    results: list[SubscribeResult] = []
    unpositioned = msgspec.structs.replace(short, force_recovery=False)
    await node.subscribe(
        floating, "doc", unpositioned, info=floating.info, delta=True, reply=results.append
    )
    for n in range(3):
        await node.publish("doc", state(n), short)
    await asyncio.sleep(0.06)
    await node.publish("doc", state(10), short)  # offset 1 of a new epoch
    await node.publish("doc", state(11), short)
    assert ("resubscribe", "doc") in positioned.log
    assert [d["version"] for _, _, d in positioned.documents] == [0, 1, 2]
    assert [(offset, delta) for offset, delta, _ in floating.documents] == [
        (1, False), (2, True), (3, True), (1, False), (2, True)
    ]  # fmt: skip
    assert floating.documents[-1][2]["version"] == 11
