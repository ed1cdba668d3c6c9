"""Tests for tidings.brokers.memory.MemoryBroker: history streams, routing and presence."""

from __future__ import annotations

import asyncio
import time

import pytest
from msgspec import Raw

from tidings import ClientInfo, HistoryOptions, MemoryBroker, StreamPosition
from tidings.brokers.base import UnrecoverablePosition
from tidings.brokers.memory import UNPUBLISHED_TTL

from .recording import KEEP, Recorder, fill, number, offsets, pub


@pytest.fixture
async def broker() -> MemoryBroker:
    return MemoryBroker()


# -- history streams -----------------------------------------------------------------------------


async def test_each_publication_with_history_advances_the_offset_by_one(broker: MemoryBroker):
    positions = await fill(broker, "ch", 3)
    assert offsets(positions) == [1, 2, 3]
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2, 3]
    assert [bytes(p.data) for p in publications] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert top == StreamPosition(offset=3, epoch=positions[0].epoch)


async def test_the_epoch_stays_the_same_across_publications_and_reads(broker: MemoryBroker):
    positions = await fill(broker, "ch", 3)
    epoch = positions[0].epoch
    assert epoch
    assert {p.epoch for p in positions} == {epoch}
    _, top = await broker.history("ch", since=None, limit=0)
    _, again = await broker.history("ch", since=None, limit=0)
    assert top.epoch == again.epoch == epoch


async def test_a_channel_never_published_to_has_offset_zero_and_a_stable_epoch(
    broker: MemoryBroker,
):
    publications, top = await broker.history("empty", since=None, limit=-1)
    assert publications == []
    assert top.offset == 0
    assert top.epoch
    (position,) = await fill(broker, "empty", 1)
    assert position == StreamPosition(offset=1, epoch=top.epoch)


async def test_channels_have_their_own_offsets(broker: MemoryBroker):
    await fill(broker, "a", 3)
    (position,) = await fill(broker, "b", 1)
    assert position.offset == 1


async def test_a_publication_without_history_has_no_position_and_is_not_stored(
    broker: MemoryBroker,
):
    await fill(broker, "ch", 2)
    position = await broker.publish("ch", pub(9), None)
    assert position == StreamPosition()
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]
    assert top.offset == 2


async def test_history_keeps_only_the_last_size_publications(broker: MemoryBroker):
    await fill(broker, "ch", 5, HistoryOptions(size=3, ttl=60.0))
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [3, 4, 5]
    assert top.offset == 5


async def test_history_expires_after_its_ttl_but_keeps_epoch_and_top(broker: MemoryBroker):
    positions = await fill(broker, "ch", 2, HistoryOptions(size=10, ttl=0.05))
    await asyncio.sleep(0.07)
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert publications == []
    assert top == StreamPosition(offset=2, epoch=positions[0].epoch)
    (position,) = await fill(broker, "ch", 1, HistoryOptions(size=10, ttl=0.05))
    assert position == StreamPosition(offset=3, epoch=positions[0].epoch)


async def test_a_new_publication_extends_the_ttl_of_the_whole_stream(broker: MemoryBroker):
    short = HistoryOptions(size=10, ttl=0.15)
    await fill(broker, "ch", 1, short)
    await asyncio.sleep(0.09)
    await broker.publish("ch", pub(2), short)
    await asyncio.sleep(0.07)  # past the ttl of the first, not of the second
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_history_since_a_position_returns_only_later_publications(broker: MemoryBroker):
    positions = await fill(broker, "ch", 5)
    since = positions[1]  # offset 2
    publications, top = await broker.history("ch", since=since, limit=-1)
    assert offsets(publications) == [3, 4, 5]
    assert top.offset == 5


async def test_history_since_the_top_returns_nothing(broker: MemoryBroker):
    positions = await fill(broker, "ch", 3)
    publications, top = await broker.history("ch", since=positions[-1], limit=-1)
    assert publications == []
    assert top == positions[-1]


async def test_history_limit_zero_returns_only_the_position(broker: MemoryBroker):
    positions = await fill(broker, "ch", 3)
    publications, top = await broker.history("ch", since=None, limit=0)
    assert publications == []
    assert top == positions[-1]


async def test_history_limit_minus_one_returns_everything(broker: MemoryBroker):
    await fill(broker, "ch", 7)
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2, 3, 4, 5, 6, 7]


async def test_a_positive_limit_returns_the_oldest_publications_after_since(
    broker: MemoryBroker,
):
    positions = await fill(broker, "ch", 6)
    publications, top = await broker.history("ch", since=None, limit=2)
    assert offsets(publications) == [1, 2]
    publications, top = await broker.history("ch", since=positions[2], limit=2)
    assert offsets(publications) == [4, 5]
    assert top.offset == 6


async def test_reverse_history_returns_the_newest_first(broker: MemoryBroker):
    await fill(broker, "ch", 5)
    publications, top = await broker.history("ch", since=None, limit=-1, reverse=True)
    assert offsets(publications) == [5, 4, 3, 2, 1]
    publications, _ = await broker.history("ch", since=None, limit=2, reverse=True)
    assert offsets(publications) == [5, 4]
    assert top.offset == 5


async def test_reverse_history_since_a_position_returns_earlier_publications(
    broker: MemoryBroker,
):
    positions = await fill(broker, "ch", 5)
    publications, _ = await broker.history("ch", since=positions[3], limit=-1, reverse=True)
    assert offsets(publications) == [3, 2, 1]
    publications, _ = await broker.history("ch", since=positions[3], limit=2, reverse=True)
    assert offsets(publications) == [3, 2]


async def test_history_since_another_epoch_raises_unrecoverable_position(
    broker: MemoryBroker,
):
    await fill(broker, "ch", 3)
    wrong = StreamPosition(offset=1, epoch="not-the-epoch")
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=-1)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=0)


async def test_history_since_a_position_without_epoch_is_accepted(broker: MemoryBroker):
    await fill(broker, "ch", 3)
    publications, _ = await broker.history("ch", since=StreamPosition(offset=1), limit=-1)
    assert offsets(publications) == [2, 3]


async def test_removing_history_drops_publications_but_keeps_the_position(
    broker: MemoryBroker,
):
    positions = await fill(broker, "ch", 3)
    await broker.remove_history("ch")
    await broker.remove_history("never-used")
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert publications == []
    assert top == positions[-1]


# -- routing -------------------------------------------------------------------------------------


async def test_publications_reach_the_handler_only_for_subscribed_channels(
    broker: MemoryBroker,
):
    handler = Recorder()
    await broker.start(handler)
    await broker.subscribe("on")
    await broker.publish("on", pub(1), KEEP)
    await broker.publish("off", pub(2), KEEP)
    await broker.publish("on", pub(3), None)
    assert [(c, bytes(p.data), p.offset) for c, p in handler.publications] == [
        ("on", b'{"n":1}', 1),
        ("on", b'{"n":3}', 0),
    ]


async def test_publications_stop_reaching_the_handler_after_unsubscribe(broker: MemoryBroker):
    handler = Recorder()
    await broker.start(handler)
    await broker.subscribe("ch")
    await broker.publish("ch", pub(1), KEEP)
    await broker.unsubscribe("ch")
    await broker.publish("ch", pub(2), KEEP)
    assert offsets(p for _, p in handler.publications) == [1]
    publications, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_join_and_leave_reach_the_handler_only_for_subscribed_channels(
    broker: MemoryBroker,
):
    handler = Recorder()
    await broker.start(handler)
    await broker.subscribe("on")
    alice = ClientInfo(user="alice", client="c1")
    await broker.publish_join("on", alice)
    await broker.publish_join("off", alice)
    await broker.publish_leave("on", alice)
    await broker.publish_leave("off", alice)
    assert handler.joins == [("on", alice)]
    assert handler.leaves == [("on", alice)]


async def test_nothing_is_delivered_before_start_or_after_close(broker: MemoryBroker):
    handler = Recorder()
    await broker.subscribe("ch")
    await broker.publish("ch", pub(1), KEEP)
    await broker.start(handler)
    await broker.publish("ch", pub(2), KEEP)
    await broker.close()
    await broker.publish("ch", pub(3), KEEP)
    await broker.publish_join("ch", ClientInfo(user="u", client="c"))
    assert offsets(p for _, p in handler.publications) == [2]
    assert handler.joins == []


# -- presence ------------------------------------------------------------------------------------


async def test_presence_lists_the_clients_added_to_a_channel(broker: MemoryBroker):
    one = ClientInfo(user="alice", client="c1")
    two = ClientInfo(user="bob", client="c2")
    await broker.add_presence("ch", "c1", one)
    await broker.add_presence("ch", "c2", two)
    await broker.add_presence("other", "c3", ClientInfo(user="carol", client="c3"))
    assert await broker.presence("ch") == {"c1": one, "c2": two}
    await broker.remove_presence("ch", "c1")
    assert await broker.presence("ch") == {"c2": two}
    await broker.remove_presence("ch", "c2")
    assert await broker.presence("ch") == {}
    assert list(await broker.presence("other")) == ["c3"]


async def test_removing_unknown_presence_is_harmless(broker: MemoryBroker):
    await broker.remove_presence("nowhere", "c1")
    await broker.add_presence("ch", "c1", ClientInfo(user="u", client="c1"))
    await broker.remove_presence("ch", "c2")
    assert list(await broker.presence("ch")) == ["c1"]


async def test_presence_stats_count_clients_and_distinct_users(broker: MemoryBroker):
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


async def test_adding_the_same_client_twice_counts_it_once(broker: MemoryBroker):
    first = ClientInfo(user="alice", client="c1")
    second = ClientInfo(user="alice", client="c1", chan_info=Raw(b'{"x":1}'))
    await broker.add_presence("ch", "c1", first)
    await broker.add_presence("ch", "c1", second)
    assert await broker.presence("ch") == {"c1": second}
    stats = await broker.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_the_presence_returned_is_a_copy(broker: MemoryBroker):
    await broker.add_presence("ch", "c1", ClientInfo(user="u", client="c1"))
    snapshot = await broker.presence("ch")
    snapshot.clear()
    assert list(await broker.presence("ch")) == ["c1"]


# -- idempotency and exclusion -------------------------------------------------------------------


async def test_the_same_idempotency_key_publishes_once_and_returns_the_first_position(
    broker: MemoryBroker,
):
    recorder = Recorder()
    await broker.start(recorder)
    await broker.subscribe("c")
    first = await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    again = await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    other = await broker.publish("c", pub(2), KEEP, idempotency_key="k2")
    assert again == first
    assert offsets([first, other]) == [1, 2]
    assert len(recorder.publications) == 2


async def test_an_idempotency_key_is_per_channel(broker: MemoryBroker):
    a = await broker.publish("a", pub(1), KEEP, idempotency_key="k")
    b = await broker.publish("b", pub(1), KEEP, idempotency_key="k")
    assert offsets([a, b]) == [1, 1]
    assert a.epoch != b.epoch


async def test_an_idempotency_key_is_forgotten_after_its_ttl(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("tidings.brokers.memory.IDEMPOTENCY_TTL", 0.01)
    await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    await asyncio.sleep(0.02)
    again = await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    assert again.offset == 2


async def test_a_delta_publication_travels_with_the_one_before_it(broker: MemoryBroker):
    recorder = Recorder()
    await broker.start(recorder)
    await broker.subscribe("c")
    await broker.publish("c", pub(1), KEEP, delta=True)  # the first: none before it
    await broker.publish("c", pub(2), KEEP, delta=True)
    await broker.publish("c", pub(3), KEEP)  # without delta: none handed along
    await broker.publish("c", pub(4), None, delta=True)  # without history: none kept
    previous = [p and (p.offset, number(p)) for p in recorder.previous]
    assert previous == [None, (1, 1), None, None]


async def test_the_excluded_client_travels_with_the_publication(broker: MemoryBroker):
    recorder = Recorder()
    await broker.start(recorder)
    await broker.subscribe("c")
    await broker.publish("c", pub(1), None, exclude_client="client-1")
    assert recorder.excluded == ["client-1"]


async def test_a_position_outliving_its_meta_ttl_starts_a_new_epoch(broker: MemoryBroker):
    short = HistoryOptions(size=10, ttl=60.0, meta_ttl=0.05)
    first = await broker.publish("ch", pub(1), short)
    _, top = await broker.history("ch", since=None, limit=0)  # a read does not extend it
    assert top == first
    await asyncio.sleep(0.06)
    _, top = await broker.history("ch", since=None, limit=0)
    assert (top.offset, top.epoch != first.epoch) == (0, True)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=first, limit=-1)
    # Without its own meta_ttl a stream keeps the broker's (30 days by default).
    kept = await broker.publish("other", pub(1), KEEP)
    await asyncio.sleep(0.06)
    assert (await broker.history("other", since=None, limit=0))[1] == kept


async def test_churn_through_fresh_channels_leaves_no_stream_behind(broker: MemoryBroker):
    """Subscribers of per-user or per-document channels read a position each: once they
    left, the streams of channels never published to go at the next sweep, and the
    broker holds what it held before."""
    recorder = Recorder()
    await broker.start(recorder)
    await fill(broker, "kept", 1)
    before = len(broker._streams)
    for n in range(2_000):
        channel = f"doc-{n}"
        await broker.subscribe(channel)
        await broker.history(channel, since=None, limit=0)
        await broker.unsubscribe(channel)
    await broker.subscribe("open")
    await broker.history("open", since=None, limit=0)  # still subscribed: kept
    assert len(broker._streams) == before + 2_001
    broker._sweep(time.monotonic())  # a client back within a few minutes still recovers
    assert len(broker._streams) == before + 2_001
    broker._sweep(time.monotonic() + UNPUBLISHED_TTL + 1)
    assert set(broker._streams) == {"kept", "open"}
