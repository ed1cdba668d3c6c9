"""Tests for tidings.brokers.redis.RedisBroker against a real redis-server.

Each test talks to the broker directly, with a recording BrokerEventHandler in
place of a node. Two brokers on one Redis play two nodes of a cluster. The
contract is the one ``tests/brokers/test_memory.py`` checks on the in-memory broker;
on top of it come what only Redis has: shards, batched SUBSCRIBEs, presence and
node entries that expire, and a Redis that goes away and comes back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
import redis.asyncio as aioredis
from msgspec import Raw
from redis.exceptions import RedisError

from tidings import ClientInfo, HistoryOptions, Publication, RedisBroker, StreamPosition
from tidings.brokers.base import UnrecoverablePosition

from ..conftest import RedisServer, eventually
from .recording import KEEP, Recorder, fill, number, offsets, pub

WAIT = 5.0
"""Bound of every wait for something to arrive through Redis."""


Peer = tuple[RedisBroker, Recorder]
PeerFactory = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def peers(redis_url: str) -> AsyncIterator[PeerFactory]:
    """Start brokers (each with its recorder) on the test's Redis; close them afterwards."""
    started: list[RedisBroker] = []

    async def make(**options: Any) -> Peer:
        options = {"max_retry_delay": 0.1, "subscribe_timeout": 2.0, **options}
        broker = RedisBroker(redis_url, **options)
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield make
    for broker in started:
        await force_close(broker)


async def force_close(broker: RedisBroker) -> None:
    """Close ``broker`` even where close() would hang (see the test of that below)."""
    for shard in broker._shards:
        # On Python 3.11 asyncio.wait_for (used by redis-py) can swallow a cancellation.
        while shard.task is not None and not shard.task.done():
            shard.task.cancel()
            await asyncio.wait([shard.task], timeout=0.1)
    async with asyncio.timeout(WAIT):
        await broker.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def restore_redis(redis_server: RedisServer) -> Iterable[RedisServer]:
    """The Redis server, started again after the test if the test left it stopped."""
    yield redis_server
    if redis_server.process is None:
        redis_server.start()


# -- history streams -----------------------------------------------------------------------------


async def test_each_publication_with_history_advances_the_offset_by_one_on_every_node(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await peers(), await peers()
    await a.subscribe("ch")
    await b.subscribe("ch")
    positions = []
    for n in range(1, 7):  # alternate the publishing node
        publisher = a if n % 2 else b
        positions.append(await publisher.publish("ch", pub(n), KEEP))
    assert offsets(positions) == [1, 2, 3, 4, 5, 6]
    assert len({p.epoch for p in positions}) == 1
    expected = [(n, n) for n in range(1, 7)]
    await eventually(lambda: len(seen_by_b.received("ch")) == 6, "6 publications on node b")
    await eventually(lambda: len(seen_by_a.received("ch")) == 6, "6 publications on node a")
    assert seen_by_a.received("ch") == seen_by_b.received("ch") == expected
    from_a, top_a = await a.history("ch", since=None, limit=-1)
    from_b, top_b = await b.history("ch", since=None, limit=-1)
    assert offsets(from_a) == offsets(from_b) == [1, 2, 3, 4, 5, 6]
    assert [number(p) for p in from_b] == [1, 2, 3, 4, 5, 6]
    assert top_a == top_b == positions[-1]


async def test_the_epoch_stays_the_same_across_publications_reads_and_nodes(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    _, first = await b.history("ch", since=None, limit=0)
    assert first == StreamPosition(offset=0, epoch=first.epoch)
    assert first.epoch
    positions = await fill(a, "ch", 3)
    assert {p.epoch for p in positions} == {first.epoch}
    _, again = await a.history("ch", since=None, limit=0)
    _, from_b = await b.history("ch", since=None, limit=0)
    assert again == from_b == StreamPosition(offset=3, epoch=first.epoch)


async def test_channels_have_their_own_offsets_and_epochs(peers: PeerFactory) -> None:
    (broker, _) = await peers()
    (a3,) = (await fill(broker, "a", 3))[-1:]
    (b1,) = await fill(broker, "b", 1)
    assert (a3.offset, b1.offset) == (3, 1)
    assert a3.epoch != b1.epoch


async def test_a_publication_without_history_has_no_position_and_is_not_stored(
    peers: PeerFactory,
) -> None:
    (broker, recorder) = await peers()
    await broker.subscribe("ch")
    await fill(broker, "ch", 2)
    position = await broker.publish("ch", pub(9), None)
    assert position == StreamPosition()
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]
    assert top.offset == 2
    await eventually(lambda: len(recorder.publications) == 3, "the publication without history")
    assert recorder.received("ch") == [(1, 1), (2, 2), (0, 9)]


async def test_history_keeps_only_the_last_size_publications(peers: PeerFactory) -> None:
    (broker, _) = await peers()
    await fill(broker, "ch", 5, HistoryOptions(size=3, ttl=60.0))
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert offsets(publications) == [3, 4, 5]
    assert [number(p) for p in publications] == [3, 4, 5]
    assert top.offset == 5


async def test_history_expires_after_its_ttl_but_keeps_epoch_and_top(peers: PeerFactory) -> None:
    (broker, _) = await peers()
    positions = await fill(broker, "ch", 2, HistoryOptions(size=10, ttl=0.1))
    await asyncio.sleep(0.25)
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert publications == []
    assert top == StreamPosition(offset=2, epoch=positions[0].epoch)
    (position,) = await fill(broker, "ch", 1, HistoryOptions(size=10, ttl=60.0))
    assert position == StreamPosition(offset=3, epoch=positions[0].epoch)


async def test_history_since_a_position_returns_only_later_publications(
    peers: PeerFactory,
) -> None:
    (broker, _) = await peers()
    positions = await fill(broker, "ch", 5)
    publications, top = await broker.history("ch", since=positions[1], limit=-1)
    assert offsets(publications) == [3, 4, 5]
    assert top == positions[-1]
    nothing, _ = await broker.history("ch", since=positions[-1], limit=-1)
    assert nothing == []


async def test_history_limit_zero_returns_only_the_position_and_minus_one_everything(
    peers: PeerFactory,
) -> None:
    (broker, _) = await peers()
    positions = await fill(broker, "ch", 4)
    publications, top = await broker.history("ch", since=None, limit=0)
    assert publications == []
    assert top == positions[-1]
    everything, _ = await broker.history("ch", since=None, limit=-1)
    assert offsets(everything) == [1, 2, 3, 4]


async def test_a_positive_limit_returns_the_oldest_publications_after_since(
    peers: PeerFactory,
) -> None:
    (broker, _) = await peers()
    positions = await fill(broker, "ch", 6)
    first, _ = await broker.history("ch", since=None, limit=2)
    assert offsets(first) == [1, 2]
    after, top = await broker.history("ch", since=positions[2], limit=2)
    assert offsets(after) == [4, 5]
    assert top.offset == 6


async def test_reverse_history_returns_the_newest_first(peers: PeerFactory) -> None:
    (broker, _) = await peers()
    positions = await fill(broker, "ch", 5)
    newest, _ = await broker.history("ch", since=None, limit=2, reverse=True)
    assert offsets(newest) == [5, 4]
    everything, _ = await broker.history("ch", since=None, limit=-1, reverse=True)
    assert offsets(everything) == [5, 4, 3, 2, 1]
    earlier, _ = await broker.history("ch", since=positions[3], limit=-1, reverse=True)
    assert offsets(earlier) == [3, 2, 1]
    two_earlier, _ = await broker.history("ch", since=positions[3], limit=2, reverse=True)
    assert offsets(two_earlier) == [3, 2]


async def test_history_since_another_epoch_raises_unrecoverable_position(
    peers: PeerFactory,
) -> None:
    (broker, _) = await peers()
    await fill(broker, "ch", 3)
    wrong = StreamPosition(offset=1, epoch="not-the-epoch")
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=-1)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=0)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("ch", since=wrong, limit=-1, reverse=True)


async def test_history_since_a_position_without_epoch_is_accepted(peers: PeerFactory) -> None:
    (broker, _) = await peers()
    await fill(broker, "ch", 3)
    publications, _ = await broker.history("ch", since=StreamPosition(offset=1), limit=-1)
    assert offsets(publications) == [2, 3]


async def test_removing_history_drops_publications_but_keeps_the_position(
    peers: PeerFactory,
) -> None:
    (broker, _) = await peers()
    positions = await fill(broker, "ch", 3)
    await broker.remove_history("ch")
    await broker.remove_history("never-used")
    publications, top = await broker.history("ch", since=None, limit=-1)
    assert publications == []
    assert top == positions[-1]
    (position,) = await fill(broker, "ch", 1)
    assert position == StreamPosition(offset=4, epoch=positions[0].epoch)


# -- routing -------------------------------------------------------------------------------------


async def test_only_publications_of_subscribed_channels_reach_the_node(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("on")
    await b.publish("off", pub(1), KEEP)
    await b.publish("on", pub(2), KEEP)
    await b.publish("off", pub(3), KEEP)
    await b.publish("on", pub(4), None)
    await eventually(lambda: len(seen_by_a.publications) >= 2, "the publications of 'on'")
    await asyncio.sleep(0.05)  # room for anything that should not come
    assert [(c, number(p), p.offset) for c, p in seen_by_a.publications] == [
        ("on", 2, 1),
        ("on", 4, 0),
    ]


async def test_publications_stop_reaching_the_node_after_unsubscribe(
    peers: PeerFactory, redis_client: aioredis.Redis
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("ch")
    await b.publish("ch", pub(1), KEEP)
    await eventually(lambda: len(seen_by_a.publications) == 1, "the first publication")
    await a.unsubscribe("ch")
    name = a.keys.pubsub("ch")

    def unsubscribed_in_redis() -> bool:
        return numsub.get(name, -1) == 0

    numsub: dict[str, int] = {}
    async with asyncio.timeout(WAIT):
        while not unsubscribed_in_redis():
            numsub = {k.decode(): v for k, v in await redis_client.pubsub_numsub(name)}
            await asyncio.sleep(0.01)
    await b.publish("ch", pub(2), KEEP)
    await a.subscribe("sentinel")
    await b.publish("sentinel", pub(3), KEEP)
    await eventually(lambda: len(seen_by_a.received("sentinel")) == 1, "the sentinel")
    assert seen_by_a.received("ch") == [(1, 1)]
    publications, _ = await a.history("ch", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_the_order_of_each_channel_is_kept_for_500_publications_spread_over_shards(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await peers(shards=4), await peers(shards=4)
    channels = [f"order-{i}" for i in range(10)]
    assert len({a._shard(a.keys.pubsub(c)).index for c in channels}) > 1, "one shard only"
    for channel in channels:
        await a.subscribe(channel)
        await b.subscribe(channel)

    async def publisher(broker: RedisBroker, worker: int) -> None:
        # 50 publications, round robin over the channels, concurrently with 9 other workers.
        for seq in range(50):
            channel = channels[(seq + worker) % len(channels)]
            await broker.publish(channel, pub(seq, worker=worker), KEEP)

    async with asyncio.timeout(WAIT * 2):
        await asyncio.gather(*(publisher(a if w % 2 else b, w) for w in range(10)))
    total = 500
    await eventually(lambda: len(seen_by_a.publications) == total, "500 publications on a")
    await eventually(lambda: len(seen_by_b.publications) == total, "500 publications on b")
    for recorder in (seen_by_a, seen_by_b):
        for channel in channels:
            publications = [p for c, p in recorder.publications if c == channel]
            assert offsets(publications) == list(range(1, len(publications) + 1)), channel
            # Each worker's publications to a channel keep the worker's order.
            for worker in range(10):
                seqs = [
                    number(p) for p in publications if json.loads(bytes(p.data))["worker"] == worker
                ]
                assert seqs == sorted(seqs)
        assert sum(len(recorder.received(c)) for c in channels) == total


async def _subscribe_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_subscribe", {"calls": 0})
    calls: int = entry["calls"]
    return calls


async def test_a_burst_of_200_subscribes_goes_out_batched_and_every_one_is_confirmed(
    peers: PeerFactory, redis_client: aioredis.Redis
) -> None:
    (a, seen_by_a), (b, _) = await peers(shards=4), await peers()
    channels = [f"burst-{i}" for i in range(200)]
    # Shards connect in the background: let their own first SUBSCRIBEs go out.
    shards = [*a._shards, *b._shards]
    await eventually(lambda: all(s._connected.is_set() for s in shards), "connected shards")
    before = await _subscribe_calls(redis_client)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(a.subscribe(channel) for channel in channels))
    calls = await _subscribe_calls(redis_client) - before
    assert 1 <= calls <= 4, f"{calls} SUBSCRIBE commands for a burst of 200 over 4 shards"
    # Every subscribe returned once confirmed: publications right after are all received.
    for n, channel in enumerate(channels):
        await b.publish(channel, pub(n), None)
    await eventually(lambda: len(seen_by_a.publications) == 200, "a publication per channel")
    assert sorted(c for c, _ in seen_by_a.publications) == sorted(channels)


async def test_a_publication_right_after_subscribe_returns_is_received(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    for n in range(30):
        await a.subscribe(f"fresh-{n}")
        await b.publish(f"fresh-{n}", pub(n), KEEP)  # no pause in between
    await eventually(lambda: len(seen_by_a.publications) == 30, "30 publications")
    assert sorted(number(p) for _, p in seen_by_a.publications) == list(range(30))


async def test_join_and_leave_reach_only_the_nodes_subscribed_to_the_channel(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await peers(), await peers()
    await a.subscribe("room")
    await b.subscribe("elsewhere")
    alice = ClientInfo(user="alice", client="c1", conn_info=Raw(b'{"x":1}'))
    await b.publish_join("room", alice)
    await b.publish_join("nowhere", alice)
    await b.publish_leave("room", alice)
    await eventually(lambda: len(seen_by_a.leaves) == 1, "the leave")
    await asyncio.sleep(0.05)
    assert seen_by_a.joins == [("room", alice)]
    assert seen_by_a.leaves == [("room", alice)]
    assert seen_by_b.joins == seen_by_b.leaves == []


# -- idempotency and exclusion -------------------------------------------------------------------


async def test_the_same_idempotency_key_publishes_once_on_every_node(peers: PeerFactory) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("c")
    first = await a.publish("c", pub(1), KEEP, idempotency_key="k")
    again = await a.publish("c", pub(1), KEEP, idempotency_key="k")
    from_b = await b.publish("c", pub(1), KEEP, idempotency_key="k")
    other = await b.publish("c", pub(2), KEEP, idempotency_key="k2")
    assert again == from_b == first
    assert offsets([first, other]) == [1, 2]
    await eventually(lambda: len(seen_by_a.publications) >= 2, "two publications")
    await asyncio.sleep(0.05)
    assert seen_by_a.received("c") == [(1, 1), (2, 2)]
    publications, _ = await a.history("c", since=None, limit=-1)
    assert offsets(publications) == [1, 2]


async def test_an_idempotency_key_is_per_channel(peers: PeerFactory) -> None:
    (broker, _) = await peers()
    a = await broker.publish("a", pub(1), KEEP, idempotency_key="k")
    b = await broker.publish("b", pub(1), KEEP, idempotency_key="k")
    assert offsets([a, b]) == [1, 1]
    assert a.epoch != b.epoch


async def test_the_excluded_client_travels_with_the_publication_to_other_nodes(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await peers(), await peers()
    await a.subscribe("c")
    await b.subscribe("c")
    await b.publish("c", pub(1), KEEP, exclude_client="client-1")
    await b.publish("c", pub(2), None)
    await eventually(lambda: len(seen_by_a.excluded) == 2, "both publications on a")
    await eventually(lambda: len(seen_by_b.excluded) == 2, "both publications on b")
    assert seen_by_a.excluded == seen_by_b.excluded == ["client-1", ""]


async def test_a_delta_publication_reaches_every_node_with_the_one_before_it(
    peers: PeerFactory,
) -> None:
    """The previous publication is read in the script that appends, so it is the one
    before in the stream however publishers interleave (and 2 KiB of it crosses)."""
    (a, seen_by_a), (b, seen_by_b) = await peers(), await peers()
    await a.subscribe("c")
    await b.subscribe("c")
    big = "x " * 1024
    await a.publish("c", pub(1, text=big), KEEP, delta=True)
    await b.publish("c", pub(2, text=big), KEEP, delta=True)
    await a.publish("c", pub(3), KEEP)
    await b.publish("c", pub(4), KEEP, delta=True)
    await a.publish("c", pub(5), None, delta=True)
    for seen in (seen_by_a, seen_by_b):
        await eventually(lambda seen=seen: len(seen.previous) == 5, "five publications")
        previous = [
            p and (p.offset, number(p), json.loads(bytes(p.data)).get("text"))
            for p in seen.previous
        ]
        assert previous == [None, (1, 1, big), None, (3, 3, None), None]
        assert [number(p) for _, p in seen.publications] == [1, 2, 3, 4, 5]


async def test_publication_info_and_tags_survive_the_trip(peers: PeerFactory) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("c")
    info = ClientInfo(user="alice", client="c1", chan_info=Raw(b'{"role":"admin"}'))
    sent = Publication(data=Raw(b'{"n":1,"text":"a b\\nc"}'), info=info, tags={"k": "v"})
    await b.publish("c", sent, KEEP)
    await eventually(lambda: len(seen_by_a.publications) == 1, "the publication")
    (_, received) = seen_by_a.publications[0]
    assert received.info == info
    assert received.tags == {"k": "v"}
    assert bytes(received.data) == bytes(sent.data)
    assert received.offset == 1
    (stored,), _ = await a.history("c", since=None, limit=-1)
    assert (stored.info, stored.tags, stored.offset) == (info, {"k": "v"}, 1)


# -- presence ------------------------------------------------------------------------------------


async def test_presence_added_on_one_node_is_listed_and_counted_on_another(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    one = ClientInfo(user="alice", client="c1")
    two = ClientInfo(user="alice", client="c2", conn_info=Raw(b'{"device":"phone"}'))
    three = ClientInfo(user="bob", client="c3")
    await a.add_presence("room", "c1", one)
    await b.add_presence("room", "c2", two)
    await b.add_presence("room", "c3", three)
    await a.add_presence("other", "c4", ClientInfo(user="carol", client="c4"))
    assert (
        await a.presence("room") == await b.presence("room") == {"c1": one, "c2": two, "c3": three}
    )
    stats = await a.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (3, 2)
    await b.remove_presence("room", "c1")
    assert await a.presence("room") == {"c2": two, "c3": three}
    stats = await b.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (2, 2)
    await a.remove_presence("room", "unknown")
    empty = await a.presence_stats("nobody")
    assert (empty.num_clients, empty.num_users) == (0, 0)
    assert list(await b.presence("other")) == ["c4"]


async def test_adding_the_same_client_twice_counts_it_once(peers: PeerFactory) -> None:
    (a, _), (b, _) = await peers(), await peers()
    first = ClientInfo(user="alice", client="c1")
    second = ClientInfo(user="alice", client="c1", chan_info=Raw(b'{"x":1}'))
    await a.add_presence("ch", "c1", first)
    await b.add_presence("ch", "c1", second)
    assert await a.presence("ch") == {"c1": second}
    stats = await a.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (1, 1)


@pytest.mark.slow
async def test_presence_that_is_not_refreshed_expires_after_presence_ttl(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(presence_ttl=0.6), await peers(presence_ttl=0.6)
    stale = ClientInfo(user="alice", client="stale")
    fresh = ClientInfo(user="bob", client="fresh")
    await a.add_presence("room", "stale", stale)
    await a.add_presence("room", "fresh", fresh)
    started = time.monotonic()
    for _ in range(4):  # refreshed every 0.25 s, for longer than the ttl
        await asyncio.sleep(0.25)
        await a.add_presence("room", "fresh", fresh)
    assert time.monotonic() - started > 0.6
    assert await b.presence("room") == {"fresh": fresh}
    stats = await b.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (1, 1)
    await asyncio.sleep(0.8)  # nobody refreshes anymore
    assert await b.presence("room") == {}


# -- nodes ---------------------------------------------------------------------------------------


async def test_a_heartbeat_lists_the_node_everywhere_until_it_is_forgotten(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    assert await b.nodes() == []
    await a.heartbeat("n1", b'{"uid":"n1"}', 10.0)
    await b.heartbeat("n2", b'{"uid":"n2"}', 10.0)
    assert sorted(await a.nodes()) == sorted(await b.nodes()) == [b'{"uid":"n1"}', b'{"uid":"n2"}']
    await a.heartbeat("n1", b'{"uid":"n1","v":2}', 10.0)  # a new heartbeat replaces the info
    assert sorted(await b.nodes()) == [b'{"uid":"n1","v":2}', b'{"uid":"n2"}']
    await a.forget_node("n1")
    assert await b.nodes() == [b'{"uid":"n2"}']
    await a.forget_node("never-seen")


@pytest.mark.slow
async def test_a_node_that_stops_heartbeating_disappears_after_its_ttl(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    await a.heartbeat("short", b'{"uid":"short"}', 0.3)
    await a.heartbeat("long", b'{"uid":"long"}', 10.0)
    assert len(await b.nodes()) == 2
    await asyncio.sleep(0.45)
    assert await b.nodes() == [b'{"uid":"long"}']


# -- Redis going away ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_subscribe_and_publish_raise_instead_of_hanging_while_redis_is_down(
    peers: PeerFactory, restore_redis: RedisServer
) -> None:
    (broker, _) = await peers(subscribe_timeout=0.5)
    await broker.subscribe("before")
    restore_redis.stop()
    started = time.monotonic()
    async with asyncio.timeout(WAIT):
        with pytest.raises(RedisError):
            await broker.subscribe("during")
        with pytest.raises(RedisError):
            await broker.publish("before", pub(1), KEEP)
        with pytest.raises(RedisError):
            await broker.history("before", since=None, limit=0)
        with pytest.raises(RedisError):
            await broker.add_presence("before", "c1", ClientInfo(user="u", client="c1"))
    assert time.monotonic() - started < 3.0
    restore_redis.start()


async def test_after_redis_restarts_the_shards_reconnect_and_report_their_channels_lost(
    peers: PeerFactory, restore_redis: RedisServer
) -> None:
    (a, seen_by_a), (b, _) = await peers(shards=4), await peers()
    channels = {f"lost-{i}" for i in range(8)}
    assert len({a._shard(a.keys.pubsub(c)).index for c in channels}) > 1, "one shard only"
    for channel in channels:
        await a.subscribe(channel)
    await a.subscribe("gone")
    await a.unsubscribe("gone")
    restore_redis.stop()
    await asyncio.sleep(0.3)
    assert seen_by_a.lost == []  # reported once the publications can flow again, not before
    restore_redis.start()
    await eventually(lambda: seen_by_a.lost_channels >= channels, "handle_lost for every channel")
    assert seen_by_a.lost_channels == channels
    assert a.errors >= 1
    # Resubscribed: publications flow again (a publisher's stale connection may fail once).
    for channel in sorted(channels):
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    await b.publish(channel, pub(1), KEEP)
                    break
                except RedisError:
                    await asyncio.sleep(0.05)
    await eventually(lambda: len(seen_by_a.publications) == len(channels), "the publications")
    assert {c for c, _ in seen_by_a.publications} == channels


async def test_the_first_publish_after_redis_came_back_succeeds(
    peers: PeerFactory, restore_redis: RedisServer
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("ch")
    await b.publish("ch", pub(1), KEEP)
    restore_redis.stop()
    restore_redis.start()
    await eventually(lambda: seen_by_a.lost_channels == {"ch"}, "the shard to reconnect")
    # Redis is up and answering: its restart is over, so nothing should fail anymore.
    position = await b.publish("ch", pub(2), KEEP)
    assert position.offset == 1  # a new stream: the restarted Redis kept nothing


async def test_a_subscribe_that_failed_while_redis_was_down_is_not_routed_once_it_is_back(
    peers: PeerFactory, restore_redis: RedisServer, redis_client: aioredis.Redis
) -> None:
    (a, seen_by_a) = await peers(subscribe_timeout=0.3)
    await a.subscribe("kept")
    restore_redis.stop()
    with pytest.raises(RedisError):
        async with asyncio.timeout(WAIT):
            await a.subscribe("failed")
    restore_redis.start()
    await eventually(lambda: "kept" in seen_by_a.lost_channels, "the shard to reconnect")
    # The caller was told the subscribe failed: the broker must not route it behind its back.
    assert "failed" not in seen_by_a.lost_channels
    counts = dict(await redis_client.pubsub_numsub(a.keys.pubsub("failed")))
    assert counts[a.keys.pubsub("failed").encode()] == 0


@pytest.mark.slow
async def test_closing_a_broker_while_its_shards_connect_does_not_hang(redis_url: str) -> None:
    for spins in range(12):  # close() at different points of the shards' connecting
        broker = RedisBroker(redis_url, shards=4)
        await broker.start(Recorder())
        for _ in range(spins):
            await asyncio.sleep(0)
        hung = False
        try:
            async with asyncio.timeout(2):
                await broker.close()
        except TimeoutError:
            hung = True
        if hung:
            await force_close(broker)
            pytest.fail(f"RedisBroker.close() hung when called {spins} loop turns after start()")


async def test_a_publication_keeps_the_position_for_its_own_meta_ttl(
    peers: PeerFactory, redis_client: aioredis.Redis
) -> None:
    (broker, _) = await peers()
    await broker.publish("short", pub(1), HistoryOptions(size=10, ttl=60.0, meta_ttl=0.2))
    await broker.publish("default", pub(1), KEEP)
    short = await redis_client.pttl(broker.keys.meta("short"))
    default = await redis_client.pttl(broker.keys.meta("default"))
    assert 0 < short <= 200
    assert default > 29 * 24 * 3600 * 1000  # the broker's: 30 days
    await asyncio.sleep(0.25)
    _, top = await broker.history("short", since=None, limit=0)
    assert top.offset == 0  # a new epoch
