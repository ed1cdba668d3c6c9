"""Tests for tidings.brokers.redis.RedisClusterBroker against a real Redis Cluster.

Three masters with a replica each (``tests/redis_cluster.py``), on free ports. Two
brokers on the cluster play two nodes of a hub cluster, each with a recording
BrokerEventHandler in place of a node. What is checked here is what only a cluster
has: keys of a channel in one hash slot, sharded pub/sub (SPUBLISH reaches the
slot's shard, not every master), channels spread over every master, a slot that
moves while subscribed (resharding) and a master that dies (failover).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from msgspec import Raw
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisError

from tidings import (
    AsyncPublisher,
    ClientInfo,
    HistoryOptions,
    Publisher,
    StreamPosition,
    load_config,
)
from tidings.brokers import make_broker, redis as redis_broker
from tidings.brokers.base import BrokerUnavailable, UnrecoverablePosition
from tidings.brokers.redis import ClusterURL, RedisClusterBroker
from tidings.options import BrokerOptions

from ..conftest import eventually, free_port
from ..redis_cluster import RedisCluster
from .recording import KEEP, Recorder, fill, number, offsets, pub

WAIT = 5.0
"""Bound of every wait for something to arrive through the cluster."""

FAILOVER = 20.0
"""Bound of a wait that spans a failover (node timeout 1 s, then an election)."""


Peer = tuple[RedisClusterBroker, Recorder]
PeerFactory = Callable[..., Awaitable[Peer]]


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The cluster, healthy (nodes a test killed are back) and empty."""
    redis_cluster.heal()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
async def peers(cluster: RedisCluster) -> AsyncIterator[PeerFactory]:
    """Start brokers (each with its recorder) on the cluster; close them afterwards."""
    started: list[RedisClusterBroker] = []

    async def make(**options: Any) -> Peer:
        options = {"max_retry_delay": 0.1, "subscribe_timeout": 2.0, **options}
        broker = RedisClusterBroker(cluster.url, **options)
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield make
    for broker in started:
        async with asyncio.timeout(WAIT):
            await broker.close()


def spread(cluster: RedisCluster, broker: RedisClusterBroker, per_master: int) -> list[str]:
    """Channels, ``per_master`` on each master (by the slot of their pub/sub channel)."""
    wanted = {i: per_master for i in cluster.masters()}
    channels = []
    n = 0
    while any(wanted.values()):
        channel = f"spread-{n}"
        master = cluster.master_of(broker.keys.pubsub(channel))
        if wanted[master]:
            wanted[master] -= 1
            channels.append(channel)
        n += 1
    return channels


async def publish_until_accepted(broker: RedisClusterBroker, channel: str, n: int) -> None:
    """Publish, again while the cluster refuses (a failover still going on)."""
    async with asyncio.timeout(FAILOVER):
        while True:
            try:
                await broker.publish(channel, pub(n), KEEP)
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.1)


async def shard_subscribers(cluster: RedisCluster, master: int, name: str) -> int:
    client = cluster.client(master)
    try:
        counts = dict(await asyncio.to_thread(client.pubsub_shardnumsub, name))
    finally:
        client.close()
    return int(counts[name.encode()])


# -- hash slots ----------------------------------------------------------------------------------


async def test_every_key_of_a_channel_is_in_the_hash_slot_of_its_pubsub_channel(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    # Braces in a channel name must not split its keys over slots either.
    channels = ["chat:lobby", "plain", "x{y}z", "a}b{c"]
    for channel in channels:
        await a.publish(channel, pub(1), KEEP, idempotency_key="once")
        await b.add_presence(channel, "c1", ClientInfo(user="u", client="c1"))
    await a.heartbeat("n1", b'{"uid":"n1"}', 10.0)
    await b.heartbeat("n2", b'{"uid":"n2"}', 10.0)

    stored: set[str] = set()
    slots: dict[str, int] = {}
    for i in cluster.masters():
        with cluster.client(i) as client:
            for key in client.scan_iter():
                stored.add(key.decode())
                slots[key.decode()] = client.execute_command("CLUSTER KEYSLOT", key)
            for channel in channels:
                name = a.keys.pubsub(channel)
                slots[name] = client.execute_command("CLUSTER KEYSLOT", name)
    per_channel = {
        channel: [
            a.keys.stream(channel),
            a.keys.meta(channel),
            a.keys.idempotency(channel, "once"),
            a.keys.presence_data(channel),
            a.keys.presence_expiry(channel),
        ]
        for channel in channels
    }
    registry = [a.keys.nodes, a.keys.node("n1"), a.keys.node("n2")]
    assert stored == {key for keys in per_channel.values() for key in keys} | set(registry)
    for channel, keys in per_channel.items():
        assert {slots[key] for key in keys} == {slots[a.keys.pubsub(channel)]}, channel
    assert len({slots[key] for key in registry}) == 1
    assert len({slots[a.keys.pubsub(channel)] for channel in channels}) == len(channels)


@pytest.mark.parametrize("channel", ["x{y}z", "}x", "\\}x", "\\x", "{}"])
async def test_a_channel_with_braces_in_its_name_is_kept_and_delivered_under_that_name(
    peers: PeerFactory, channel: str
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe(channel)
    await b.publish(channel, pub(1), KEEP)
    await eventually(lambda: len(seen_by_a.publications) == 1, "the publication")
    assert seen_by_a.received(channel) == [(1, 1)]
    publications, top = await a.history(channel, since=None, limit=-1)
    assert (offsets(publications), top.offset) == ([1], 1)


# -- sharded pub/sub -----------------------------------------------------------------------------


async def test_a_publication_goes_to_the_shard_of_its_slot_and_not_to_every_master(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("news")
    name = a.keys.pubsub("news")
    owner = cluster.master_of(name)
    for i in cluster.masters():
        with cluster.client(i) as client:
            listed = client.execute_command("PUBSUB SHARDCHANNELS")
        assert (name.encode() in listed) == (i == owner), f"node {i}, owner {owner}"
    # Classic SUBSCRIBEs on every master: a PUBLISH would reach each (the cluster bus
    # broadcasts it); an SPUBLISH reaches none of them.
    listeners = [aioredis.Redis(port=cluster.ports[i]).pubsub() for i in cluster.masters()]
    try:
        for listener in listeners:
            await listener.subscribe(name)
            assert (await listener.get_message(timeout=WAIT))["type"] == "subscribe"
        await b.publish("news", pub(1), KEEP)
        await b.publish("news", pub(2), None)
        await b.publish_join("news", ClientInfo(user="u", client="c1"))
        await eventually(lambda: len(seen_by_a.joins) == 1, "the publications and the join")
        assert seen_by_a.received("news") == [(1, 1), (0, 2)]
        for listener in listeners:
            assert await listener.get_message(timeout=0.1) is None
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_channels_on_every_master_keep_their_order_across_two_brokers(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await peers(), await peers()
    channels = spread(cluster, a, per_master=3)
    assert len({cluster.master_of(a.keys.pubsub(c)) for c in channels}) == 3
    for channel in channels:
        await a.subscribe(channel)
        await b.subscribe(channel)

    async def publisher(broker: RedisClusterBroker, worker: int) -> None:
        # 45 publications, round robin over the channels, concurrently with 7 other workers.
        for seq in range(45):
            channel = channels[(seq + worker) % len(channels)]
            await broker.publish(channel, pub(seq, worker=worker), KEEP)

    async with asyncio.timeout(WAIT * 2):
        await asyncio.gather(*(publisher(a if w % 2 else b, w) for w in range(8)))
    total = 8 * 45
    await eventually(lambda: len(seen_by_a.publications) == total, "every publication on a")
    await eventually(lambda: len(seen_by_b.publications) == total, "every publication on b")
    for recorder in (seen_by_a, seen_by_b):
        for channel in channels:
            publications = [p for c, p in recorder.publications if c == channel]
            assert offsets(publications) == list(range(1, len(publications) + 1)), channel
            for worker in range(8):
                seqs = [
                    number(p) for p in publications if json.loads(bytes(p.data))["worker"] == worker
                ]
                assert seqs == sorted(seqs)


def _ssubscribe_calls(cluster: RedisCluster) -> int:
    calls = 0
    for i in cluster.masters():
        with cluster.client(i) as client:
            calls += client.info("commandstats").get("cmdstat_ssubscribe", {"calls": 0})["calls"]
    return int(calls)


async def test_a_burst_of_subscribes_goes_out_as_one_ssubscribe_per_slot_all_confirmed(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    channels = [f"burst-{i}" for i in range(200)]
    slots = {cluster.slot_of(a.keys.pubsub(channel)) for channel in channels}
    before = _ssubscribe_calls(cluster)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(a.subscribe(channel) for channel in channels))
    # Redis takes the shard channels of one slot per SSUBSCRIBE: never more than that.
    assert _ssubscribe_calls(cluster) - before == len(slots)
    for n, channel in enumerate(channels):  # right after: every subscribe was confirmed
        await b.publish(channel, pub(n), None)
    await eventually(lambda: len(seen_by_a.publications) == 200, "a publication per channel")
    assert sorted(c for c, _ in seen_by_a.publications) == sorted(channels)


async def test_publications_stop_reaching_the_node_after_unsubscribe(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("ch")
    await b.publish("ch", pub(1), KEEP)
    await eventually(lambda: len(seen_by_a.publications) == 1, "the first publication")
    await a.unsubscribe("ch")
    name = a.keys.pubsub("ch")
    owner = cluster.master_of(name)
    async with asyncio.timeout(WAIT):
        while await shard_subscribers(cluster, owner, name):
            await asyncio.sleep(0.01)
    await b.publish("ch", pub(2), KEEP)
    await a.subscribe("sentinel")
    await b.publish("sentinel", pub(3), KEEP)
    await eventually(lambda: len(seen_by_a.received("sentinel")) == 1, "the sentinel")
    assert seen_by_a.received("ch") == [(1, 1)]


# -- what two nodes share ------------------------------------------------------------------------


async def test_history_epochs_and_recovery_positions_are_the_same_from_both_brokers(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    positions = await fill(a, "ch", 5)
    assert offsets(positions) == [1, 2, 3, 4, 5]
    since, top = await b.history("ch", since=positions[1], limit=-1)
    assert offsets(since) == [3, 4, 5]
    assert [number(p) for p in since] == [3, 4, 5]
    assert top == positions[-1]
    newest, _ = await b.history("ch", since=None, limit=2, reverse=True)
    assert offsets(newest) == [5, 4]
    with pytest.raises(UnrecoverablePosition):
        await b.history("ch", since=StreamPosition(offset=1, epoch="not-it"), limit=-1)
    await b.remove_history("ch")
    nothing, kept = await a.history("ch", since=None, limit=-1)
    assert (nothing, kept) == ([], positions[-1])
    (sixth,) = await fill(b, "ch", 1)
    assert sixth == StreamPosition(offset=6, epoch=positions[0].epoch)


async def test_an_idempotency_key_and_a_delta_work_across_brokers(peers: PeerFactory) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("c")
    first = await a.publish("c", pub(1), KEEP, idempotency_key="k", delta=True)
    again = await b.publish("c", pub(1), KEEP, idempotency_key="k", delta=True)
    second = await b.publish("c", pub(2), KEEP, delta=True, exclude_client="c9")
    assert again == first
    assert offsets([first, second]) == [1, 2]
    await eventually(lambda: len(seen_by_a.publications) == 2, "two publications")
    await asyncio.sleep(0.05)
    assert seen_by_a.received("c") == [(1, 1), (2, 2)]
    assert seen_by_a.excluded == ["", "c9"]
    previous = seen_by_a.previous[1]
    assert previous is not None and (previous.offset, number(previous)) == (1, 1)


async def test_presence_and_joins_reach_the_other_broker(peers: PeerFactory) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    alice = ClientInfo(user="alice", client="c1", conn_info=Raw(b'{"x":1}'))
    bob = ClientInfo(user="bob", client="c2")
    await a.subscribe("room")
    await a.add_presence("room", "c1", alice)
    await b.add_presence("room", "c2", bob)
    await b.publish_join("room", alice)
    await b.publish_leave("room", bob)
    assert await b.presence("room") == {"c1": alice, "c2": bob}
    await a.remove_presence("room", "c2")
    stats = await b.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (1, 1)
    await eventually(lambda: len(seen_by_a.leaves) == 1, "the leave")
    assert seen_by_a.joins == [("room", alice)]
    assert seen_by_a.leaves == [("room", bob)]


async def test_a_heartbeat_lists_the_node_on_the_other_broker_until_it_is_forgotten(
    peers: PeerFactory,
) -> None:
    (a, _), (b, _) = await peers(), await peers()
    assert await b.nodes() == []
    await a.heartbeat("n1", b'{"uid":"n1"}', 10.0)
    await b.heartbeat("n2", b'{"uid":"n2"}', 10.0)
    await b.heartbeat("gone", b'{"uid":"gone"}', 0.05)
    await asyncio.sleep(0.1)
    assert sorted(await a.nodes()) == sorted(await b.nodes()) == [b'{"uid":"n1"}', b'{"uid":"n2"}']
    await a.forget_node("n1")
    assert await b.nodes() == [b'{"uid":"n2"}']


async def test_control_messages_reach_every_node_or_the_one_named(peers: PeerFactory) -> None:
    (a, _), (b, _) = await peers(), await peers()
    to_a: list[bytes] = []
    to_b: list[bytes] = []
    await a.start_control("node-a", to_a.append)
    await b.start_control("node-b", to_b.append)
    await a.publish_control(b"everyone")
    await a.publish_control(b"only b", "node-b")
    await b.publish_control(b"only a", "node-a")
    await eventually(lambda: len(to_a) == 2 and len(to_b) == 2, "the control messages")
    await asyncio.sleep(0.05)
    assert sorted(to_a) == [b"everyone", b"only a"]
    assert sorted(to_b) == [b"everyone", b"only b"]


# -- resharding and failover ---------------------------------------------------------------------


async def test_a_subscribed_channel_whose_slot_moves_is_resubscribed_and_reported_lost(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, seen_by_b) = await peers(), await peers()
    # Two channels on one master: only the one whose slot moves may have lost anything.
    moving, *others = spread(cluster, a, per_master=2)
    source = cluster.master_of(a.keys.pubsub(moving))
    staying = next(c for c in others if cluster.master_of(a.keys.pubsub(c)) == source)
    for broker in (a, b):
        await broker.subscribe(moving)
        await broker.subscribe(staying)
    await fill(a, moving, 3)
    for seen in (seen_by_a, seen_by_b):
        await eventually(lambda seen=seen: len(seen.publications) == 3, "three publications")

    slot = cluster.slot_of(a.keys.pubsub(moving))
    target = next(i for i in cluster.masters() if i != source)
    await asyncio.to_thread(cluster.move_slot, slot, target)

    for seen in (seen_by_a, seen_by_b):
        await eventually(lambda seen=seen: seen.lost_channels == {moving}, "handle_lost")
    # Reported once subscribed again, on the slot's new master.
    assert await shard_subscribers(cluster, target, a.keys.pubsub(moving)) == 2
    assert await shard_subscribers(cluster, source, a.keys.pubsub(moving)) == 0
    # The history moved with the slot: offsets go on.
    assert offsets(await fill(b, moving, 2)) == [4, 5]
    await b.publish(staying, pub(9), KEEP)
    for seen in (seen_by_a, seen_by_b):
        await eventually(lambda seen=seen: len(seen.publications) == 6, "the later publications")
        assert seen.received(moving) == [(1, 1), (2, 2), (3, 3), (4, 1), (5, 2)]
        assert seen.received(staying) == [(1, 9)]
        assert seen.lost_channels == {moving}


async def test_publications_during_a_slot_migration_keep_consecutive_offsets_and_history(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("busy")
    keep = HistoryOptions(size=10_000, ttl=60.0)
    positions: list[StreamPosition] = []
    moved = asyncio.Event()
    moved_at = 0

    async def publish_until_moved() -> None:
        while not moved.is_set() or len(positions) < moved_at + 20:
            positions.append(await b.publish("busy", pub(len(positions) + 1), keep))

    publisher = asyncio.ensure_future(publish_until_moved())
    try:
        await eventually(lambda: len(positions) >= 20, "publications before the move")
        name = a.keys.pubsub("busy")
        target = next(i for i in cluster.masters() if i != cluster.master_of(name))
        # The publisher goes on meanwhile: ASK and TRYAGAIN while the keys move.
        await asyncio.to_thread(cluster.move_slot, cluster.slot_of(name), target)
        moved_at = len(positions)
        moved.set()
        async with asyncio.timeout(WAIT):
            await publisher
    finally:
        publisher.cancel()
    total = len(positions)
    assert offsets(positions) == list(range(1, total + 1))
    assert len({p.epoch for p in positions}) == 1
    stored, top = await a.history("busy", since=None, limit=-1)
    assert [(p.offset, number(p)) for p in stored] == [(n, n) for n in range(1, total + 1)]
    assert top == positions[-1]
    await eventually(lambda: seen_by_a.lost_channels == {"busy"}, "handle_lost")
    await eventually(lambda: seen_by_a.received("busy")[-1][0] == total, "the last publication")
    received = seen_by_a.received("busy")
    assert received == sorted(set(received))  # in order, none twice (a gap is reported)


async def test_a_pubsub_connection_a_master_drops_is_replaced_and_its_channels_reported_lost(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    channels = spread(cluster, a, per_master=2)
    for channel in channels:
        await a.subscribe(channel)
    master = cluster.master_of(a.keys.pubsub(channels[0]))
    on_master = {c for c in channels if cluster.master_of(a.keys.pubsub(c)) == master}
    # As Redis does to a subscriber over its client-output-buffer-limit.
    with cluster.client(master) as client:
        assert client.client_kill_filter(_type="pubsub") == 1
    await eventually(lambda: seen_by_a.lost_channels == on_master, "handle_lost")
    assert a.errors == 1
    for n, channel in enumerate(channels):
        await b.publish(channel, pub(n), KEEP)
    await eventually(lambda: len(seen_by_a.publications) == len(channels), "every channel")
    assert seen_by_a.lost_channels == on_master


@pytest.mark.slow
async def test_a_master_that_stops_answering_is_taken_for_dead_and_its_channels_reported_lost(
    peers: PeerFactory, cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Silence on a connection is only noticed by PINGs (no reset comes from a master
    # cut off the network): every 0.2 s here instead of 5 s.
    monkeypatch.setattr(redis_broker, "_PING_INTERVAL", 0.2)
    (a, seen_by_a), (b, _) = await peers(), await peers()
    await a.subscribe("quiet")
    master = cluster.master_of(a.keys.pubsub("quiet"))
    with cluster.client(master) as client:
        client.execute_command("CLIENT PAUSE", 1500, "ALL")
    await eventually(lambda: a.errors >= 1, "the link given up", timeout=WAIT)
    await eventually(lambda: seen_by_a.lost_channels == {"quiet"}, "handle_lost", timeout=WAIT)
    await b.publish("quiet", pub(1), KEEP)
    await eventually(lambda: seen_by_a.received("quiet") == [(1, 1)], "the publication")


async def test_subscribing_to_a_slot_that_moved_since_the_map_was_read_follows_the_move(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    name = a.keys.pubsub("latecomer")
    source = cluster.master_of(name)
    target = next(i for i in cluster.masters() if i != source)
    await asyncio.to_thread(cluster.move_slot, cluster.slot_of(name), target)
    # a's slot map still names the old master: its SSUBSCRIBE there is answered MOVED.
    await a.subscribe("latecomer")
    assert await shard_subscribers(cluster, target, name) == 1
    await b.publish("latecomer", pub(1), KEEP)
    await eventually(lambda: len(seen_by_a.publications) == 1, "the publication")
    assert seen_by_a.lost == []  # nothing was routed here before: nothing to lose


@pytest.mark.slow
async def test_when_a_master_dies_its_channels_are_resubscribed_on_the_promoted_replica(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    channels = spread(cluster, a, per_master=2)
    for channel in channels:
        await a.subscribe(channel)
    victim = cluster.master_of(a.keys.pubsub(channels[0]))
    on_victim = {c for c in channels if cluster.master_of(a.keys.pubsub(c)) == victim}
    cluster.kill_node(victim)
    started = time.monotonic()
    await eventually(lambda: bool(seen_by_a.lost), "handle_lost", timeout=FAILOVER)
    assert seen_by_a.lost_channels == on_victim
    assert a.errors >= 1
    # Reported after resubscribing: publications flow at once, on every master.
    for n, channel in enumerate(channels):
        await publish_until_accepted(b, channel, n)
    await eventually(lambda: len(seen_by_a.publications) == len(channels), "every channel")
    assert {c for c, _ in seen_by_a.publications} == set(channels)
    assert seen_by_a.lost_channels == on_victim
    assert time.monotonic() - started < FAILOVER
    new_master = cluster.master_of(a.keys.pubsub(channels[0]))
    assert new_master != victim
    assert await shard_subscribers(cluster, new_master, a.keys.pubsub(channels[0])) == 1


@pytest.mark.slow
async def test_subscribe_raises_instead_of_hanging_while_the_slot_has_no_master(
    peers: PeerFactory, cluster: RedisCluster
) -> None:
    (a, _) = await peers(subscribe_timeout=0.3)
    name = a.keys.pubsub("orphan")
    master = cluster.master_of(name)
    cluster.kill_node(master)
    async with asyncio.timeout(WAIT):
        with pytest.raises(RedisError):
            await a.subscribe("orphan")
    # The failed subscribe is not routed behind the node's back once a replica took over.
    await asyncio.to_thread(cluster.wait_healthy)
    await a.subscribe("other")
    await asyncio.sleep(0.3)  # room for a retry (every 0.1 s at most) that should not come
    new_master = cluster.master_of(name)
    assert await shard_subscribers(cluster, new_master, name) == 0


# -- starting, URLs, factory, publishers ---------------------------------------------------------


async def test_a_broker_starts_when_only_some_seed_nodes_answer(cluster: RedisCluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    url = cluster.url.replace("redis+cluster://", f"redis+cluster://{dead},")
    broker = RedisClusterBroker(url)
    recorder = Recorder()
    try:
        await broker.start(recorder)
        await broker.subscribe("ch")
        await broker.publish("ch", pub(1), KEEP)
        await eventually(lambda: len(recorder.publications) == 1, "the publication")
    finally:
        await broker.close()


async def test_closing_a_broker_while_its_links_connect_or_write_does_not_hang(
    cluster: RedisCluster,
) -> None:
    """(A connection left open would fail the test too: an unclosed socket warning.)"""
    for spins in range(6):  # close() at different points of connecting and writing
        broker = RedisClusterBroker(cluster.url)
        await broker.start(Recorder())
        await broker.subscribe("kept")
        await broker.unsubscribe("kept")  # its SUNSUBSCRIBE goes out as close() begins
        subscribing = asyncio.ensure_future(broker.subscribe(f"new-{spins}"))
        for _ in range(spins):
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(2):
                await broker.close()
        except TimeoutError:
            pytest.fail(f"close() hung when called {spins} loop turns after a subscribe")
        finally:
            subscribing.cancel()
            await asyncio.gather(subscribing, return_exceptions=True)


def normal_clients(cluster: RedisCluster) -> list[int]:
    """How many ordinary clients each node has (this probe's own connection included)."""
    counts = []
    for i in range(len(cluster.ports)):
        with cluster.client(i) as client:
            counts.append(len(client.client_list(_type="normal")))
    return counts


async def test_close_shuts_every_connection_even_after_a_command_failed_on_a_node_gone(
    cluster: RedisCluster,
) -> None:
    """A command that failed on a node that no longer answers leaves redis-py's client
    waiting to re-read the slot map, and its aclose() then closes nothing."""
    before = await asyncio.to_thread(normal_clients, cluster)
    broker = RedisClusterBroker(cluster.url)
    await broker.start(Recorder())
    try:
        for n, channel in enumerate(spread(cluster, broker, per_master=1)):
            await broker.publish(channel, pub(n), KEEP)  # a connection to every master
        with pytest.raises(RedisError):
            await broker.redis.ping(target_nodes=ClusterNode("127.0.0.1", free_port()))
    finally:
        await broker.close()
    # The broker is still referenced: a socket left open is not closed by a collection.
    deadline = time.monotonic() + WAIT
    while (after := await asyncio.to_thread(normal_clients, cluster)) != before:
        assert time.monotonic() < deadline, f"clients per node: {before} before, {after} after"
        await asyncio.sleep(0.1)


async def test_start_raises_broker_unavailable_when_no_node_answers() -> None:
    broker = RedisClusterBroker(f"redis+cluster://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        async with asyncio.timeout(WAIT):
            await broker.start(Recorder())
    await broker.close()


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    url = ClusterURL.parse("redis+cluster://user:p%40ss@10.0.0.1:7001,[::1]:7002,host")
    assert url.nodes == [("10.0.0.1", 7001), ("::1", 7002), ("host", 6379)]
    assert (url.username, url.password) == ("user", "p@ss")
    assert ClusterURL.parse("redis+cluster://:secret@h:1/0").password == "secret"
    # Centrifugo's way to name more seeds.
    centrifugo = ClusterURL.parse("redis+cluster://h:1?addr=h:2&addr=h:3")
    assert centrifugo.nodes == [("h", 1), ("h", 2), ("h", 3)]
    for wrong in (
        "redis://h:1",
        "redis+cluster://h:1/2",
        "redis+cluster://h:1?timeout=1",
        "redis+cluster://h:port",
        "redis+cluster://",
    ):
        with pytest.raises(ValueError):
            ClusterURL.parse(wrong)


def test_the_redis_cluster_scheme_makes_a_cluster_broker() -> None:
    broker = make_broker(BrokerOptions(url="redis+cluster://127.0.0.1:7001", prefix="p"))
    assert isinstance(broker, RedisClusterBroker)
    assert broker.keys.stream("ch") == "p.stream.{ch}"
    with pytest.raises(ValueError, match="braces"):
        make_broker(BrokerOptions(url="redis+cluster://127.0.0.1:7001", prefix="{p}"))


async def test_the_publishers_publish_into_the_cluster_with_the_hubs_history(
    peers: PeerFactory, cluster: RedisCluster, tmp_path: Path
) -> None:
    config_file = tmp_path / "tidings.toml"
    config_file.write_text("[namespaces.news]\nhistory_size = 3\nhistory_ttl = 60\n")
    config = load_config(config_file, env={})
    (a, seen_by_a) = await peers()
    channels = spread(cluster, a, per_master=1)
    for channel in channels:
        await a.subscribe(f"news:{channel}")
        await a.subscribe(channel)
    with Publisher(cluster.url, config=config) as publisher:
        for channel in channels:
            assert publisher.publish(f"news:{channel}", {"n": 1}).offset == 1
            assert publisher.publish(channel, {"n": 1}) == StreamPosition()  # no history
    async with AsyncPublisher(cluster.url, config=config) as async_publisher:
        for channel in channels:
            position = await async_publisher.publish(
                f"news:{channel}", {"n": 2}, idempotency_key="k"
            )
            again = await async_publisher.publish(f"news:{channel}", {"n": 2}, idempotency_key="k")
            assert position == again
            assert position.offset == 2
    await eventually(lambda: len(seen_by_a.publications) == 3 * len(channels), "the publications")
    for channel in channels:
        assert seen_by_a.received(f"news:{channel}") == [(1, 1), (2, 2)]
        assert seen_by_a.received(channel) == [(0, 1)]
        stored, _ = await a.history(f"news:{channel}", since=None, limit=-1)
        assert offsets(stored) == [1, 2]
