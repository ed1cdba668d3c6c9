"""What only the Redis broker has, against a real redis-server of the tests' own.

The contract every broker meets is ``tests/brokers/test_contract.py``; here: pub/sub
shards and their batched SUBSCRIBEs, the keys' TTLs, and a Redis that goes away and
comes back. Two brokers on one Redis play two nodes of a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidings import ClientInfo, HistoryOptions, RedisBroker
from tidings.brokers import redis as redis_broker

from ..conftest import RedisServer, eventually
from .recording import KEEP, Recorder, number, offsets, pub

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


# -- pub/sub shards ------------------------------------------------------------------------------


async def test_an_unsubscribe_leaves_no_subscription_in_redis(
    peers: PeerFactory, redis_client: aioredis.Redis
) -> None:
    (a, _) = await peers()
    await a.subscribe("ch")
    name = a.keys.pubsub("ch")
    assert dict(await redis_client.pubsub_numsub(name)) == {name.encode(): 1}
    await a.unsubscribe("ch")
    numsub: dict[str, int] = {}
    async with asyncio.timeout(WAIT):
        while numsub.get(name, -1) != 0:
            numsub = {k.decode(): v for k, v in await redis_client.pubsub_numsub(name)}
            await asyncio.sleep(0.01)


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


# -- publications without history ---------------------------------------------------------------


async def _command_calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    calls: int = stats.get(f"cmdstat_{command}", {"calls": 0})["calls"]
    return calls


async def test_publications_without_history_are_queued_then_published_in_order_without_a_script(
    peers: PeerFactory, redis_client: aioredis.Redis
) -> None:
    (a, _), (b, seen_by_b) = await peers(), await peers(shards=4)
    channels = [f"fast-{i}" for i in range(10)]
    for channel in channels:
        await b.subscribe(channel)
    scripts = await _command_calls(redis_client, "evalsha")
    for n in range(1000):  # one loop turn: publish() does not wait for Redis
        position = await a.publish(channels[n % 10], pub(n), None, exclude_client="c1")
        assert (position.offset, position.epoch) == (0, "")
    assert len(a._outbox) == 1000
    await eventually(lambda: len(seen_by_b.publications) == 1000, "1,000 publications on b")
    for i, channel in enumerate(channels):
        assert seen_by_b.received(channel) == [(0, n) for n in range(i, 1000, 10)]
    assert set(seen_by_b.excluded) == {"c1"}
    assert await _command_calls(redis_client, "evalsha") == scripts  # PUBLISH, no script


async def test_a_scripted_publication_or_a_leave_never_overtakes_a_queued_one(
    peers: PeerFactory,
) -> None:
    (a, _), (b, seen_by_b) = await peers(), await peers()
    await b.subscribe("ch")
    alice = ClientInfo(user="alice", client="c1")
    for n in range(0, 30, 3):  # queued, script (history), queued, then a leave
        await a.publish("ch", pub(n), None)
        await a.publish("ch", pub(n + 1), KEEP)
        await a.publish("ch", pub(n + 2), None)
    await a.publish_leave("ch", alice)
    await eventually(lambda: len(seen_by_b.events) == 31, "30 publications and a leave")
    assert seen_by_b.events == [("p", "ch", n) for n in range(30)] + [("l", "ch", "alice")]


async def test_publishers_wait_for_redis_past_the_outbox_limit(
    peers: PeerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "OUTBOX_LIMIT", 5)
    (a, _), (b, seen_by_b) = await peers(), await peers()
    await b.subscribe("ch")
    for n in range(5):
        await a.publish("ch", pub(n), None)
    assert len(a._outbox) == 5  # queued: their publishers went on
    await a.publish("ch", pub(5), None)  # past the limit: returns once Redis took it
    assert a._outbox == []
    await eventually(lambda: len(seen_by_b.publications) == 6, "the six publications")
    assert [number(p) for _, p in seen_by_b.publications] == list(range(6))


@pytest.mark.slow
async def test_a_redis_that_stops_answering_fails_the_pipeline_after_the_timeout(
    peers: PeerFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    (a, _), (b, seen_by_b) = await peers(subscribe_timeout=0.5), await peers()
    await b.subscribe("ch")
    await a.publish("ch", pub(0), None)
    await eventually(lambda: len(seen_by_b.publications) == 1, "the first publication")
    redis_server.process.send_signal(signal.SIGSTOP)  # up, but silent: no reset
    try:
        with caplog.at_level(logging.WARNING, logger="tidings.redis"):
            await a.publish("ch", pub(1), None)
            await eventually(lambda: "1 publications lost" in caplog.text, "the timeout")
        with pytest.raises(RedisError):
            async with asyncio.timeout(WAIT):
                await a.publish("ch", pub(2), None)
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def test_close_publishes_what_was_queued_before_it(peers: PeerFactory) -> None:
    (b, seen_by_b) = await peers()
    await b.subscribe("ch")
    a = RedisBroker(b.url)
    await a.start(Recorder())
    for n in range(100):
        await a.publish("ch", pub(n), None)
    await a.close()
    await eventually(lambda: len(seen_by_b.publications) == 100, "the queued publications")


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


async def test_publications_of_a_failed_pipeline_are_logged_and_later_ones_fail_until_redis_is_back(
    peers: PeerFactory, restore_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    (a, _), (b, seen_by_b) = await peers(), await peers()
    await b.subscribe("ch")
    await a.publish("ch", pub(0), None)
    await eventually(lambda: len(seen_by_b.publications) == 1, "the first publication")
    restore_redis.stop()
    with caplog.at_level(logging.WARNING, logger="tidings.redis"):
        await a.publish("ch", pub(1), None)  # queued: its publisher is not told
        await eventually(lambda: "1 publications lost" in caplog.text, "the lost one logged")
    # Redis failed: publications take the confirmed way, and fail.
    with pytest.raises(RedisError):
        async with asyncio.timeout(WAIT):
            await a.publish("ch", pub(2), None)
    restore_redis.start()
    await eventually(lambda: "ch" in seen_by_b.lost_channels, "b's shard to reconnect")
    async with asyncio.timeout(WAIT):
        while True:  # a pooled connection from before the restart may fail once
            try:
                await a.publish("ch", pub(3), None)
                break
            except RedisError:
                await asyncio.sleep(0.05)
    await a.publish("ch", pub(4), None)
    assert len(a._outbox) == 1  # queued again
    await eventually(lambda: len(seen_by_b.publications) == 3, "the publications after")
    assert [number(p) for _, p in seen_by_b.publications] == [0, 3, 4]


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
