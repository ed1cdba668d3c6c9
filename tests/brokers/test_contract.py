"""The contract every broker meets (``tidings.brokers.base``), on each of them.

Single-node tests run on ``memory``, ``redis``, ``redis_cluster`` and ``nats``; the
multi-node ones (two brokers on one server play two nodes) on the shared brokers
only, since the memory broker serves one process. Each test talks to brokers made by
``make_broker`` from a ``broker.url``, with a recording BrokerEventHandler in place of
a node. What only one broker has lives in ``test_<broker>.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import pytest
from msgspec import Raw

from tidings import (
    Broker,
    ClientInfo,
    HistoryOptions,
    PresenceManager,
    Publication,
    StreamPosition,
)
from tidings.brokers import make_broker
from tidings.brokers.base import ControlBus, NodeRegistry, UnrecoverablePosition
from tidings.options import BrokerOptions

from ..conftest import eventually
from .recording import KEEP, Recorder, fill, number, offsets, pub

KINDS = ["memory", "redis", "redis_cluster", "nats"]
SHARED = ["redis", "redis_cluster", "nats"]
"""The brokers several processes share (multi-node tests)."""

shared = pytest.mark.parametrize("kind", SHARED)
"""Runs a test on the shared brokers only."""

WAIT = 5.0
"""Bound of every wait for something to arrive through a broker."""
SETTLE = 0.1
"""Room for what must not arrive (an unrouted publication) to arrive anyway."""


class AnyBroker(Broker, PresenceManager, Protocol):
    """A broker that is also its own presence manager (every broker here is)."""


Node = tuple[AnyBroker, Recorder]
NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def broker_url(kind: str, request: pytest.FixtureRequest) -> str:
    """The ``broker.url`` of a clean server of ``kind`` (``memory``: none)."""
    if kind == "memory":
        return "memory"
    url: str = request.getfixturevalue(f"{kind}_url")
    return url


@pytest.fixture
async def nodes(broker_url: str) -> AsyncIterator[NodeFactory]:
    """Start brokers of ``broker_url`` (``BrokerOptions`` as keywords), each with its
    recorder; close them after the test."""
    started: list[AnyBroker] = []

    async def make(**options: Any) -> Node:
        broker: Any = make_broker(BrokerOptions(url=broker_url, **options))
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield make
    for broker in started:
        async with asyncio.timeout(WAIT):
            await broker.close()


async def arrived(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check`` holds (a shared broker delivers asynchronously)."""
    await eventually(check, what, WAIT)


# -- history streams -----------------------------------------------------------------------------


async def test_each_publication_with_history_advances_the_offset_by_one(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 3)
    assert offsets(positions) == [1, 2, 3]
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2, 3]
    assert [bytes(p.data) for p in publications] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert top == StreamPosition(offset=3, epoch=positions[0].epoch)


async def test_the_epoch_stays_the_same_across_publications_and_reads(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 3)
    epoch = positions[0].epoch
    assert epoch
    assert {p.epoch for p in positions} == {epoch}
    _, top = await broker.history("ch", since=None, limit=0)
    _, again = await broker.history("ch", since=None, limit=-1)
    assert top == again == StreamPosition(offset=3, epoch=epoch)


async def test_a_channel_never_published_to_has_offset_zero_and_a_stable_epoch(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    publications, top = await broker.history("empty", since=None, limit=-1)
    assert publications == []
    assert top.offset == 0
    assert top.epoch
    _, again = await broker.history("empty", since=None, limit=0)
    assert again == top
    (position,) = await fill(broker, "empty", 1)
    assert position == StreamPosition(offset=1, epoch=top.epoch)


async def test_channels_have_their_own_offsets_and_epochs(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    (a3,) = (await fill(broker, "a", 3))[-1:]
    (b1,) = await fill(broker, "b", 1)
    assert (a3.offset, b1.offset) == (3, 1)
    assert a3.epoch != b1.epoch


async def test_a_publication_without_history_has_no_position_and_is_not_stored(
    nodes: NodeFactory,
) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("ch")
    await fill(broker, "ch", 2)
    position = await broker.publish("ch", pub(9), None)
    assert position == StreamPosition()
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]
    assert top.offset == 2
    await arrived(lambda: len(recorder.publications) == 3, "the publication without history")
    assert recorder.received("ch") == [(1, 1), (2, 2), (0, 9)]


async def test_history_keeps_only_the_last_size_publications(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    await fill(broker, "ch", 5, HistoryOptions(size=3, ttl=60.0))
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [3, 4, 5]
    assert [number(p) for p in publications] == [3, 4, 5]
    assert top.offset == 5


async def test_history_expires_after_its_ttl_but_keeps_epoch_and_top(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    short = HistoryOptions(size=10, ttl=0.3)
    expired_at = time.monotonic() + short.ttl  # at the earliest
    positions = await fill(broker, "ch", 2, short)
    kept, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(kept) == [1, 2]  # within the ttl
    publications: Sequence[Publication] = kept
    while publications and time.monotonic() < expired_at + WAIT:
        await asyncio.sleep(0.05)
        publications, top = await broker.history("ch", since=None, limit=-1)
    assert publications == [], "still there long after the ttl"
    assert time.monotonic() >= expired_at, "gone before the ttl"
    assert top == StreamPosition(offset=2, epoch=positions[0].epoch)
    (position,) = await fill(broker, "ch", 1)
    assert position == StreamPosition(offset=3, epoch=positions[0].epoch)
    # The new publication does not bring the expired ones back.
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [3]


@pytest.mark.slow
async def test_a_new_publication_extends_the_ttl_of_the_whole_stream(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    short = HistoryOptions(size=10, ttl=0.6)
    await fill(broker, "ch", 1, short)
    await asyncio.sleep(0.35)
    await broker.publish("ch", pub(2), short)
    await asyncio.sleep(0.35)  # past the ttl of the first, not of the second
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_history_since_a_position_returns_only_later_publications(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 5)
    publications, top = await broker.history("ch", since=positions[1], limit=-1)
    assert offsets(publications) == [3, 4, 5]
    assert top == positions[-1]
    nothing, top = await broker.history("ch", since=positions[-1], limit=-1)
    assert nothing == []
    assert top == positions[-1]


async def test_history_limit_zero_returns_only_the_position_and_minus_one_everything(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 7)
    publications, top = await broker.history("ch", since=None, limit=0)
    assert publications == []
    assert top == positions[-1]
    everything, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(everything) == [1, 2, 3, 4, 5, 6, 7]


async def test_a_positive_limit_returns_the_oldest_publications_after_since(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 6)
    first, _ = await broker.history("ch", since=None, limit=2)
    assert offsets(first) == [1, 2]
    after, top = await broker.history("ch", since=positions[2], limit=2)
    assert offsets(after) == [4, 5]
    assert top.offset == 6


async def test_reverse_history_returns_the_newest_first(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 5)
    everything, top = await broker.history("ch", since=None, limit=-1, reverse=True)
    assert offsets(everything) == [5, 4, 3, 2, 1]
    assert top.offset == 5
    newest, _ = await broker.history("ch", since=None, limit=2, reverse=True)
    assert offsets(newest) == [5, 4]
    earlier, _ = await broker.history("ch", since=positions[3], limit=-1, reverse=True)
    assert offsets(earlier) == [3, 2, 1]
    two_earlier, _ = await broker.history("ch", since=positions[3], limit=2, reverse=True)
    assert offsets(two_earlier) == [3, 2]


async def test_history_since_another_epoch_raises_unrecoverable_position(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    await fill(broker, "ch", 3)
    wrong = StreamPosition(offset=1, epoch="not-the-epoch")
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=-1)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=0)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=-1, reverse=True)


async def test_history_since_a_position_without_epoch_is_accepted(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    await fill(broker, "ch", 3)
    publications, _ = await broker.history("ch", since=StreamPosition(offset=1), limit=-1)
    assert offsets(publications) == [2, 3]


async def test_removing_history_drops_publications_but_keeps_the_position(
    nodes: NodeFactory,
) -> None:
    broker, _ = await nodes()
    positions = await fill(broker, "ch", 3)
    await broker.remove_history("ch")
    await broker.remove_history("never-used")
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert publications == []
    assert top == positions[-1]
    (position,) = await fill(broker, "ch", 1)
    assert position == StreamPosition(offset=4, epoch=positions[0].epoch)
    publications, _ = await broker.history("ch", since=positions[-1], limit=-1)
    assert offsets(publications) == [4]
    await fill(broker, "ch", 1)  # right after: nothing of it is removed with the old
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [4, 5]


async def test_a_position_outliving_its_meta_ttl_starts_a_new_epoch(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    short = HistoryOptions(size=10, ttl=60.0, meta_ttl=0.3)
    forgotten_at = time.monotonic() + short.meta_ttl  # at the earliest
    first = await broker.publish("ch", pub(1), short)
    kept = await broker.publish("other", pub(1), KEEP)  # the broker's meta ttl: 30 days
    _, top = await broker.history("ch", since=None, limit=0)  # a read does not extend it
    assert top == first
    while top == first and time.monotonic() < forgotten_at + WAIT:
        await asyncio.sleep(0.05)
        _, top = await broker.history("ch", since=None, limit=0)
    assert time.monotonic() >= forgotten_at, "forgotten before its meta ttl"
    assert (top.offset, top.epoch != first.epoch) == (0, True)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=first, limit=-1)
    assert (await broker.history("other", since=None, limit=0))[1] == kept
    (again,) = await fill(broker, "ch", 1)
    assert again == StreamPosition(offset=1, epoch=top.epoch)
    # Publications of the new epoch right after the old one was forgotten: all kept.
    await fill(broker, "ch", 2)
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert (offsets(publications), top.epoch) == ([1, 2, 3], again.epoch)


# -- routing -------------------------------------------------------------------------------------


async def test_only_publications_of_subscribed_channels_reach_the_node(
    nodes: NodeFactory,
) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("on")
    await broker.publish("off", pub(1), KEEP)
    await broker.publish("on", pub(2), KEEP)
    await broker.publish("off", pub(3), KEEP)
    await broker.publish("on", pub(4), None)
    await arrived(lambda: len(recorder.publications) >= 2, "the publications of 'on'")
    await asyncio.sleep(SETTLE)
    assert [(c, number(p), p.offset) for c, p in recorder.publications] == [
        ("on", 2, 1),
        ("on", 4, 0),
    ]


async def test_publications_stop_reaching_the_node_after_unsubscribe(
    nodes: NodeFactory,
) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("ch")
    await broker.publish("ch", pub(1), KEEP)
    await arrived(lambda: len(recorder.publications) == 1, "the first publication")
    await broker.unsubscribe("ch")
    # unsubscribe() may return before the server stopped routing: give it that moment.
    await asyncio.sleep(SETTLE)
    await broker.publish("ch", pub(2), KEEP)
    await broker.subscribe("sentinel")
    await broker.publish("sentinel", pub(3), KEEP)
    await arrived(lambda: len(recorder.received("sentinel")) == 1, "the sentinel")
    await asyncio.sleep(SETTLE)
    assert recorder.received("ch") == [(1, 1)]
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_join_and_leave_reach_the_node_only_for_subscribed_channels(
    nodes: NodeFactory,
) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("on")
    alice = ClientInfo(user="alice", client="c1", conn_info=Raw(b'{"x":1}'))
    await broker.publish_join("on", alice)
    await broker.publish_join("off", alice)
    await broker.publish_leave("off", alice)
    await broker.publish_leave("on", alice)
    await arrived(lambda: len(recorder.leaves) == 1, "the leave")
    await asyncio.sleep(SETTLE)
    assert recorder.joins == [("on", alice)]
    assert recorder.leaves == [("on", alice)]


async def test_what_a_node_sends_on_a_channel_comes_back_in_the_order_it_was_sent(
    nodes: NodeFactory,
) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("ch")
    alice = ClientInfo(user="alice", client="c1")
    await broker.publish_join("ch", alice)
    await broker.publish("ch", pub(1), None)
    await broker.publish("ch", pub(2), None, idempotency_key="k")
    await broker.publish("ch", pub(3), None)
    await broker.publish_leave("ch", alice)
    await arrived(lambda: len(recorder.events) == 5, "the five messages")
    assert recorder.events == [
        ("j", "ch", "alice"),
        ("p", "ch", 1),
        ("p", "ch", 2),
        ("p", "ch", 3),
        ("l", "ch", "alice"),
    ]


# -- idempotency, exclusion, delta ---------------------------------------------------------------


async def test_the_same_idempotency_key_publishes_once_and_returns_the_first_position(
    nodes: NodeFactory,
) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("c")
    first = await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    again = await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    other = await broker.publish("c", pub(2), KEEP, idempotency_key="k2")
    assert again == first
    assert offsets([first, other]) == [1, 2]
    await arrived(lambda: len(recorder.publications) >= 2, "two publications")
    await asyncio.sleep(SETTLE)
    assert recorder.received("c") == [(1, 1), (2, 2)]
    publications, _ = await broker.history("c", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_an_idempotency_key_is_per_channel(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    a = await broker.publish("a", pub(1), KEEP, idempotency_key="k")
    b = await broker.publish("b", pub(1), KEEP, idempotency_key="k")
    assert offsets([a, b]) == [1, 1]
    assert a.epoch != b.epoch


async def test_the_excluded_client_travels_with_the_publication(nodes: NodeFactory) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("c")
    await broker.publish("c", pub(1), KEEP, exclude_client="client-1")
    await broker.publish("c", pub(2), None)
    await arrived(lambda: len(recorder.excluded) == 2, "both publications")
    assert recorder.excluded == ["client-1", ""]


async def test_a_delta_publication_travels_with_the_one_before_it(nodes: NodeFactory) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("c")
    await broker.publish("c", pub(1), KEEP, delta=True)  # the first: none before it
    await broker.publish("c", pub(2), KEEP, delta=True)
    await broker.publish("c", pub(3), KEEP)  # without delta: none handed along
    await broker.publish("c", pub(4), KEEP, delta=True)
    await broker.publish("c", pub(5), None, delta=True)  # without history: none kept
    await arrived(lambda: len(recorder.previous) == 5, "five publications")
    previous = [p and (p.offset, number(p)) for p in recorder.previous]
    assert previous == [None, (1, 1), None, (3, 3), None]


async def test_publication_info_and_tags_survive_the_trip(nodes: NodeFactory) -> None:
    broker, recorder = await nodes()
    await broker.subscribe("c")
    info = ClientInfo(user="alice", client="c1", chan_info=Raw(b'{"role":"admin"}'))
    sent = Publication(data=Raw(b'{"n":1,"text":"a b\\nc"}'), info=info, tags={"k": "v"})
    await broker.publish("c", sent, KEEP)
    await arrived(lambda: len(recorder.publications) == 1, "the publication")
    (_, received) = recorder.publications[0]
    assert (received.info, received.tags, received.offset) == (info, {"k": "v"}, 1)
    assert bytes(received.data) == bytes(sent.data)
    (stored,), _ = await broker.history("c", since=None, limit=-1)
    assert (stored.info, stored.tags, stored.offset) == (info, {"k": "v"}, 1)
    assert bytes(stored.data) == bytes(sent.data)


# -- presence ------------------------------------------------------------------------------------


async def test_presence_lists_the_clients_added_to_a_channel(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    one = ClientInfo(user="alice", client="c1")
    two = ClientInfo(user="bob", client="c2", conn_info=Raw(b'{"device":"phone"}'))
    await broker.add_presence("ch", "c1", one)
    await broker.add_presence("ch", "c2", two)
    await broker.add_presence("other", "c3", ClientInfo(user="carol", client="c3"))
    assert await broker.presence("ch") == {"c1": one, "c2": two}
    await broker.remove_presence("ch", "c1")
    assert await broker.presence("ch") == {"c2": two}
    await broker.remove_presence("ch", "c2")
    assert await broker.presence("ch") == {}
    assert list(await broker.presence("other")) == ["c3"]


async def test_removing_unknown_presence_is_harmless(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    await broker.remove_presence("nowhere", "c1")
    await broker.add_presence("ch", "c1", ClientInfo(user="u", client="c1"))
    await broker.remove_presence("ch", "c2")
    assert list(await broker.presence("ch")) == ["c1"]


async def test_presence_stats_count_clients_and_distinct_users(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    await broker.add_presence("ch", "c1", ClientInfo(user="alice", client="c1"))
    await broker.add_presence("ch", "c2", ClientInfo(user="alice", client="c2"))
    await broker.add_presence("ch", "c3", ClientInfo(user="bob", client="c3"))
    await broker.add_presence("ch", "c4", ClientInfo(user="", client="c4"))
    stats = await broker.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (4, 3)
    await broker.remove_presence("ch", "c1")
    stats = await broker.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (3, 3)
    empty = await broker.presence_stats("nobody")
    assert (empty.num_clients, empty.num_users) == (0, 0)


async def test_adding_the_same_client_twice_counts_it_once(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    first = ClientInfo(user="alice", client="c1")
    second = ClientInfo(user="alice", client="c1", chan_info=Raw(b'{"x":1}'))
    await broker.add_presence("ch", "c1", first)
    await broker.add_presence("ch", "c1", second)
    assert await broker.presence("ch") == {"c1": second}
    stats = await broker.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_the_presence_returned_is_a_copy(nodes: NodeFactory) -> None:
    broker, _ = await nodes()
    await broker.add_presence("ch", "c1", ClientInfo(user="u", client="c1"))
    snapshot = await broker.presence("ch")
    snapshot.clear()
    assert list(await broker.presence("ch")) == ["c1"]


# -- several nodes on one server -----------------------------------------------------------------


@shared
async def test_offsets_advance_by_one_whichever_node_publishes_and_every_node_sees_them(
    nodes: NodeFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await nodes(), await nodes()
    _, first = await b.history("ch", since=None, limit=0)
    await a.subscribe("ch")
    await b.subscribe("ch")
    positions = []
    for n in range(1, 7):  # alternate the publishing node
        publisher = a if n % 2 else b
        positions.append(await publisher.publish("ch", pub(n), KEEP))
    assert offsets(positions) == [1, 2, 3, 4, 5, 6]
    assert {p.epoch for p in positions} == {first.epoch}
    expected = [(n, n) for n in range(1, 7)]
    await arrived(lambda: len(seen_by_a.received("ch")) == 6, "6 publications on node a")
    await arrived(lambda: len(seen_by_b.received("ch")) == 6, "6 publications on node b")
    assert seen_by_a.received("ch") == seen_by_b.received("ch") == expected
    from_a, top_a = await a.history("ch", since=None, limit=-1)
    from_b, top_b = await b.history("ch", since=None, limit=-1)
    assert offsets(from_a) == offsets(from_b) == [1, 2, 3, 4, 5, 6]
    assert [number(p) for p in from_b] == [1, 2, 3, 4, 5, 6]
    assert top_a == top_b == positions[-1]


@shared
async def test_concurrent_publishes_from_two_nodes_never_share_an_offset(
    nodes: NodeFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await nodes(), await nodes()
    await a.subscribe("race")
    await b.subscribe("race")
    history = HistoryOptions(size=500, ttl=60.0)
    async with asyncio.timeout(WAIT * 4):
        positions = await asyncio.gather(
            *(a.publish("race", pub(n), history) for n in range(200)),
            *(b.publish("race", pub(n), history) for n in range(200, 400)),
        )
    assert sorted(offsets(positions)) == list(range(1, 401))
    assert len({p.epoch for p in positions}) == 1
    by_offset = {p.offset: n for n, p in enumerate(positions)}
    for seen in (seen_by_a, seen_by_b):
        await arrived(lambda seen=seen: len(seen.publications) == 400, "400 publications")
        # In offset order, each offset once, carrying what was published at it.
        assert seen.received("race") == sorted(by_offset.items())
    stored, top = await b.history("race", since=None, limit=-1)
    assert [(p.offset, number(p)) for p in stored] == sorted(by_offset.items())
    assert top.offset == 400


@shared
async def test_only_the_nodes_subscribed_to_a_channel_receive_its_publications_joins_and_leaves(
    nodes: NodeFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await nodes(), await nodes()
    await a.subscribe("room")
    await b.subscribe("elsewhere")
    alice = ClientInfo(user="alice", client="c1")
    await b.publish("room", pub(1), KEEP)
    await b.publish_join("room", alice)
    await b.publish_join("nowhere", alice)
    await b.publish_leave("room", alice)
    await arrived(lambda: len(seen_by_a.leaves) == 1, "the leave on a")
    await asyncio.sleep(SETTLE)
    assert seen_by_a.received("room") == [(1, 1)]
    assert seen_by_a.joins == seen_by_a.leaves == [("room", alice)]
    assert seen_by_b.publications == seen_by_b.joins == seen_by_b.leaves == []


@shared
async def test_a_publication_right_after_subscribe_returns_reaches_the_node(
    nodes: NodeFactory,
) -> None:
    (a, seen_by_a), (b, _) = await nodes(), await nodes()
    for n in range(30):
        await a.subscribe(f"fresh-{n}")
        await b.publish(f"fresh-{n}", pub(n), KEEP)  # no pause in between
    await arrived(lambda: len(seen_by_a.publications) == 30, "30 publications")
    assert sorted(number(p) for _, p in seen_by_a.publications) == list(range(30))


@shared
async def test_the_same_idempotency_key_publishes_once_across_nodes(nodes: NodeFactory) -> None:
    (a, seen_by_a), (b, _) = await nodes(), await nodes()
    await a.subscribe("c")
    first = await a.publish("c", pub(1), KEEP, idempotency_key="k")
    from_b = await b.publish("c", pub(1), KEEP, idempotency_key="k")
    other = await b.publish("c", pub(2), KEEP, idempotency_key="k2")
    assert from_b == first
    assert offsets([first, other]) == [1, 2]
    await arrived(lambda: len(seen_by_a.publications) >= 2, "two publications")
    await asyncio.sleep(SETTLE)
    assert seen_by_a.received("c") == [(1, 1), (2, 2)]


@shared
async def test_the_excluded_client_and_the_previous_publication_reach_every_node(
    nodes: NodeFactory,
) -> None:
    """The previous publication is read with the append, so it is the one before in
    the stream however the nodes' publications interleave (and 2 KiB of it crosses)."""
    (a, seen_by_a), (b, seen_by_b) = await nodes(), await nodes()
    await a.subscribe("c")
    await b.subscribe("c")
    big = "x " * 1024
    await a.publish("c", pub(1, text=big), KEEP, delta=True, exclude_client="client-1")
    await b.publish("c", pub(2, text=big), KEEP, delta=True)
    await a.publish("c", pub(3), KEEP)
    await b.publish("c", pub(4), KEEP, delta=True, exclude_client="client-2")
    await a.publish("c", pub(5), None, delta=True)
    for seen in (seen_by_a, seen_by_b):
        await arrived(lambda seen=seen: len(seen.previous) == 5, "five publications")
        previous = [
            p and (p.offset, number(p), json.loads(bytes(p.data)).get("text"))
            for p in seen.previous
        ]
        assert previous == [None, (1, 1, big), None, (3, 3, None), None]
        assert [number(p) for _, p in seen.publications] == [1, 2, 3, 4, 5]
        assert seen.excluded == ["client-1", "", "", "client-2", ""]


@shared
async def test_presence_added_on_one_node_is_listed_and_counted_on_another(
    nodes: NodeFactory,
) -> None:
    (a, _), (b, _) = await nodes(), await nodes()
    one = ClientInfo(user="alice", client="c1")
    two = ClientInfo(user="alice", client="c2", conn_info=Raw(b'{"device":"phone"}'))
    three = ClientInfo(user="bob", client="c3")
    await a.add_presence("room", "c1", one)
    await b.add_presence("room", "c2", two)
    await b.add_presence("room", "c3", three)
    everyone = {"c1": one, "c2": two, "c3": three}
    assert await a.presence("room") == await b.presence("room") == everyone
    stats = await a.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (3, 2)
    await b.remove_presence("room", "c1")  # removed by another node than the one that added
    assert await a.presence("room") == {"c2": two, "c3": three}
    stats = await b.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (2, 2)
    await b.add_presence("room", "c3", ClientInfo(user="bob", client="c3", chan_info=Raw(b"1")))
    assert (await a.presence("room"))["c3"].chan_info == Raw(b"1")


@pytest.mark.slow
@shared
async def test_presence_that_is_not_refreshed_expires_after_presence_ttl(
    nodes: NodeFactory,
) -> None:
    ttl = 0.6
    (a, _), (b, _) = await nodes(presence_ttl=ttl), await nodes(presence_ttl=ttl)
    stale = ClientInfo(user="alice", client="stale")
    fresh = ClientInfo(user="bob", client="fresh")
    await a.add_presence("room", "stale", stale)
    await a.add_presence("room", "fresh", fresh)
    assert await b.presence("room") == {"stale": stale, "fresh": fresh}
    added_at = time.monotonic()
    for _ in range(5):  # refreshed every 0.2 s, for longer than the ttl
        await asyncio.sleep(0.2)
        await a.add_presence("room", "fresh", fresh)
    assert time.monotonic() - added_at > ttl
    refreshed_at = time.monotonic()
    await a.add_presence("room", "fresh", fresh)
    assert await b.presence("room") == {"fresh": fresh}
    stats = await b.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (1, 1)
    while await b.presence("room") and time.monotonic() < refreshed_at + WAIT:
        await asyncio.sleep(0.05)  # nobody refreshes anymore
    assert await b.presence("room") == {}
    assert time.monotonic() - refreshed_at >= ttl, "gone before its ttl"


@shared
async def test_a_heartbeat_lists_the_node_everywhere_until_it_is_forgotten(
    nodes: NodeFactory,
) -> None:
    (a, _), (b, _) = await nodes(), await nodes()
    assert isinstance(a, NodeRegistry) and isinstance(b, NodeRegistry)
    assert await b.nodes() == []
    await a.heartbeat("n1", b'{"uid":"n1"}', 10.0)
    await b.heartbeat("n2", b'{"uid":"n2"}', 10.0)
    assert sorted(await a.nodes()) == sorted(await b.nodes()) == [b'{"uid":"n1"}', b'{"uid":"n2"}']
    await a.heartbeat("n1", b'{"uid":"n1","v":2}', 10.0)  # a new heartbeat replaces the info
    assert sorted(await b.nodes()) == [b'{"uid":"n1","v":2}', b'{"uid":"n2"}']
    await a.forget_node("n1")
    assert await b.nodes() == [b'{"uid":"n2"}']
    await a.forget_node("never-seen")
    assert await a.nodes() == [b'{"uid":"n2"}']


@shared
async def test_a_node_that_stops_heartbeating_disappears_after_its_own_ttl(
    nodes: NodeFactory,
) -> None:
    """Each node announces itself with its own ttl (hubs may differ in
    ``node_info_interval``): one node's short ttl does not cut another's."""
    (a, _), (b, _) = await nodes(), await nodes()
    assert isinstance(a, NodeRegistry) and isinstance(b, NodeRegistry)
    announced_at = time.monotonic()
    await a.heartbeat("short", b'{"uid":"short"}', 0.4)
    await b.heartbeat("long", b'{"uid":"long"}', 10.0)
    assert len(await b.nodes()) == 2
    while len(await b.nodes()) == 2 and time.monotonic() < announced_at + WAIT:
        await asyncio.sleep(0.05)
    assert await a.nodes() == [b'{"uid":"long"}']
    assert time.monotonic() - announced_at >= 0.4, "gone before its ttl"


@shared
async def test_control_messages_reach_every_node_or_only_the_one_named(
    nodes: NodeFactory,
) -> None:
    (a, _), (b, _) = await nodes(), await nodes()
    assert isinstance(a, ControlBus) and isinstance(b, ControlBus)
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    await a.start_control("node-a", got["a"].append)
    await b.start_control("node-b", got["b"].append)
    await a.publish_control(b"to all")
    await arrived(lambda: got["a"] == got["b"] == [b"to all"], "the message to all on both")
    await a.publish_control(b"to b", node="node-b")
    await b.publish_control(b"to a", node="node-a")
    await arrived(lambda: len(got["a"]) == len(got["b"]) == 2, "a message to each node")
    await asyncio.sleep(SETTLE)
    assert got == {"a": [b"to all", b"to a"], "b": [b"to all", b"to b"]}


# -- churn ---------------------------------------------------------------------------------------

CHURN_CHANNELS = 1_000
"""Fresh channels a round goes through: a leak of one map entry a channel (1,000) is ten
times the maps' threshold, and of one Python object a channel twice the blocks'."""
CHURN_ROUNDS = 3
"""The first also fills caches and pools, and the second may still settle (up to 800
Python blocks on Redis Cluster when measured): only the third is checked for growth."""
CHURN_CONCURRENCY = 50
CHURN_HISTORY = HistoryOptions(size=5, ttl=0.2, meta_ttl=0.3)
RSS_NOISE = 1024 * 1024
"""RSS the third round may add without a leak (the allocator settling: under 150 KiB when
measured). It catches what the block count cannot see (memory allocated outside Python's
allocator) from about 1 KiB a channel; leaks of Python objects are caught far below that,
by ``BLOCKS_NOISE``."""
BLOCKS_NOISE = CHURN_CHANNELS // 2
"""Python memory blocks (``sys.getallocatedblocks``) the third round may add without a
leak: up to about 100 when measured (Redis Cluster; under 40 elsewhere), where a leak of
a single object a channel adds 1,000, wherever it is held (not only in the maps walked
here)."""


class _Counter:
    """A BrokerEventHandler that only counts (a recorder would grow with the churn)."""

    def __init__(self) -> None:
        self.count = 0

    def handle_publication(self, channel: str, publication: Publication, *args: Any) -> None:
        self.count += 1

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        pass

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        pass

    def handle_lost(self, channels: Sequence[str]) -> None:
        pass


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_WALKED = ("tidings.", "redis.", "nats.")
"""Modules whose objects the size walk enters (not asyncio's loop, nor the stdlib)."""


def container_sizes(root: object, depth: int = 5) -> dict[str, int]:
    """The length of every dict, set, list and deque reachable from ``root`` through
    attributes of tidings', redis-py's and nats-py's objects, by attribute path; those
    of the items of a list add up (``_shards[*].channels``: the channels of every shard)."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()

    def walk(value: object, path: str, depth: int) -> None:
        if id(value) in seen or depth < 0:
            return
        seen.add(id(value))
        if isinstance(value, dict | set | frozenset | list | deque):
            sizes[path] = sizes.get(path, 0) + len(value)
            if isinstance(value, dict):
                for key, item in list(value.items())[:20]:  # per-channel entries look alike
                    walk(item, f"{path}[{key!r}]", depth - 1)
            elif not isinstance(value, set | frozenset):
                for item in list(value)[:20]:
                    walk(item, f"{path}[*]", depth - 1)
            return
        if not type(value).__module__.startswith(_WALKED):
            return
        fields = dict(getattr(value, "__dict__", {}))
        for slot in getattr(type(value), "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                fields[slot] = getattr(value, slot)
        for name, field in fields.items():
            walk(field, f"{path}.{name}", depth - 1)

    walk(root, "broker", depth)
    return sizes


@pytest.fixture
def sweep_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory broker sweeps forgotten streams every few tenths of a second instead of
    every minute, so that a churn test sees them go."""
    monkeypatch.setattr("tidings.brokers.memory.SWEEP_INTERVAL", 0.2)


async def churn(broker: AnyBroker, prefix: str, count: int) -> None:
    """Go through ``count`` fresh channels as subscribers of per-user channels do:
    subscribe, be present, publish, read history, leave."""
    info = ClientInfo(user="u", client="c")
    pending = iter(range(count))

    async def worker() -> None:
        for n in pending:
            channel = f"{prefix}-{n}"
            await broker.subscribe(channel)
            await broker.add_presence(channel, "c", info)
            await broker.publish(channel, pub(n), CHURN_HISTORY)
            await broker.history(channel, since=None, limit=-1)
            await broker.remove_presence(channel, "c")
            await broker.unsubscribe(channel)

    async with asyncio.timeout(120):
        await asyncio.gather(*(worker() for _ in range(CHURN_CONCURRENCY)))


async def settle(broker: AnyBroker) -> None:
    """Let the churned channels' ttls pass, and use the broker once more (a sweep)."""
    await asyncio.sleep(CHURN_HISTORY.meta_ttl + 0.1)
    await broker.history("probe", since=None, limit=0)
    await broker.subscribe("probe")
    await broker.unsubscribe("probe")
    gc.collect()


@pytest.mark.slow
@pytest.mark.usefixtures("sweep_soon")
async def test_churn_through_fresh_channels_returns_maps_and_rss_to_their_baseline(
    broker_url: str,
) -> None:
    handler = _Counter()
    broker: Any = make_broker(BrokerOptions(url=broker_url, presence_ttl=1.0))
    await broker.start(handler)
    try:
        await broker.subscribe("kept")
        await fill(broker, "kept", 3)
        # A few channels first: connection pools grow to the churn's concurrency.
        await churn(broker, "warm-up", CHURN_CONCURRENCY * 2)
        await settle(broker)
        baseline = container_sizes(broker)
        rss = [_rss()]
        blocks = [sys.getallocatedblocks()]
        for turn in range(CHURN_ROUNDS):
            await churn(broker, f"churn{turn}", CHURN_CHANNELS)
            await settle(broker)
            rss.append(_rss())
            blocks.append(sys.getallocatedblocks())
            sizes = container_sizes(broker)
            grown = {
                path: (baseline.get(path, 0), size)
                for path, size in sizes.items()
                if size - baseline.get(path, 0) > CHURN_CHANNELS // 10
            }
            assert not grown, f"round {turn}: maps grew with the channels (before, after): {grown}"
        # The churn was routed (a publication may still be on its way at unsubscribe).
        assert handler.count >= CHURN_ROUNDS * CHURN_CHANNELS * 0.9
        growth = [after - before for before, after in zip(rss, rss[1:], strict=False)]
        assert growth[-1] < max(growth[0] * 0.2, RSS_NOISE), (
            f"RSS grows round after round: {[g // 1024 for g in growth]} KiB"
        )
        added = [after - before for before, after in zip(blocks, blocks[1:], strict=False)]
        assert added[-1] < BLOCKS_NOISE, f"Python blocks grow round after round: {added}"
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()


# -- what a churn leaves on the server ------------------------------------------------------------


def _redis_keys(clients: Iterable[Any]) -> list[str]:
    """Every key of these Redis servers (each client closed after)."""
    keys: list[str] = []
    for client in clients:
        with client:
            keys += [key.decode() for key in client.scan_iter(count=1000)]
    return keys


async def _nats_messages(url: str) -> list[str]:
    """``<stream> <subject>`` of every subject with stored messages (history, key-value
    entries and their deletion markers), and ``<stream> consumer <name>`` of consumers."""
    import nats

    client: Any = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        manager = client.jetstream()
        found: list[str] = []
        for info in await manager.streams_info():
            name = info.config.name
            state = (await manager.stream_info(name, subjects_filter=">")).state
            found += [f"{name} {subject}" for subject in state.subjects or {}]
            found += [f"{name} consumer {c.name}" for c in await manager.consumers_info(name)]
        return found
    finally:
        await client.close()


async def server_leftovers(kind: str, request: pytest.FixtureRequest) -> list[str]:
    """What the server of ``kind`` holds, but for the channel ``kept``."""
    if kind == "redis":
        import redis

        url = request.getfixturevalue("redis_server").url
        found = _redis_keys([redis.Redis.from_url(url)])
    elif kind == "redis_cluster":
        cluster = request.getfixturevalue("redis_cluster")
        found = _redis_keys(cluster.client(i) for i in cluster.masters())
    else:
        found = await _nats_messages(request.getfixturevalue("nats_server").url)
    return sorted(item for item in found if "kept" not in item)


@shared
@pytest.mark.slow
async def test_churned_channels_leave_nothing_on_the_server_once_their_ttls_passed(
    nodes: NodeFactory, kind: str, request: pytest.FixtureRequest
) -> None:
    # NATS drops a channel's stored messages after the broker's history_meta_ttl (the
    # stream's age limit), not a namespace's shorter one: give the broker the same.
    broker, _ = await nodes(presence_ttl=0.5, history_meta_ttl=CHURN_HISTORY.meta_ttl)
    await fill(broker, "kept", 3)
    await churn(broker, "churn", 300)
    await asyncio.sleep(max(CHURN_HISTORY.meta_ttl, 0.5) + 0.2)
    left: list[str] = []
    gone_by = time.monotonic() + WAIT  # expiry on the server is not to the millisecond
    while time.monotonic() < gone_by:
        left = await server_leftovers(kind, request)
        if not left:
            break
        await asyncio.sleep(0.2)
    assert left == [], f"{len(left)} outlived the channels' ttls, e.g. {left[:5]}"
