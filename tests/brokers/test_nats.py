"""What only the NATS broker has, against a real ``nats-server -js`` of the tests' own.

The contract every broker meets is ``tests/brokers/test_contract.py``; here: channel
names as subject tokens, appends racing from several nodes, the stream's trimming,
and a NATS that goes away and comes back with or without its JetStream storage.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tidings import HistoryOptions, NatsBroker, StreamPosition
from tidings.brokers.base import BrokerUnavailable, UnrecoverablePosition
from tidings.brokers.nats import NatsUnavailable, channel_token

from ..conftest import eventually, free_port
from ..nats_server import NatsServer
from .recording import Recorder, number, offsets, pub

HISTORY = HistoryOptions(size=10, ttl=60)

Peer = tuple[NatsBroker, Recorder]
PeerFactory = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def peers(nats_url: str) -> AsyncIterator[PeerFactory]:
    """Start brokers (each with its recorder) on the test's NATS; close them afterwards."""
    started: list[NatsBroker] = []

    async def make(**options: Any) -> Peer:
        broker = NatsBroker(
            nats_url, **{"max_retry_delay": 0.1, "subscribe_timeout": 2.0, **options}
        )
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield make
    for broker in started:
        await broker.close()


@pytest.fixture
def restore_nats(nats_server: NatsServer) -> AsyncIterator[NatsServer] | Any:
    """The test's NATS, started again afterwards if the test left it stopped."""
    yield nats_server
    if nats_server.process is None:
        nats_server.start()


# --- channel names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "token"),
    [
        ("lobby", "lobby"),
        ("chat:lobby", "chat=3Alobby"),
        ("a.b", "a=2Eb"),
        ("*>", "=2A=3E"),
        ("=3A", "=3D3A"),
        ("é", "=C3=A9"),
        ("", "="),
    ],
)
def test_a_channel_name_becomes_one_subject_token_and_key(channel: str, token: str) -> None:
    assert channel_token(channel) == token
    assert re.fullmatch(r"[A-Za-z0-9_=-]+", token)


async def test_channels_that_are_not_subject_tokens_are_published_kept_and_present(
    peers: PeerFactory,
) -> None:
    from tidings import ClientInfo

    (a, _), (b, recorder) = await peers(), await peers()
    names = ["rooms.1", "news *", "a>b", "chat:lobby", "=3A", ""]
    for name in names:
        await b.subscribe(name)
    for n, name in enumerate(names):
        await a.publish(name, pub(n), HISTORY)
        await a.add_presence(name, "client.1", ClientInfo(client="client.1", user="u"))
    await eventually(lambda: len(recorder.publications) == len(names), "every publication")
    assert [(channel, number(p)) for channel, p in recorder.publications] == [
        (name, n) for n, name in enumerate(names)
    ]
    for n, name in enumerate(names):
        publications, _ = await b.history(name, since=None, limit=-1)
        assert [number(p) for p in publications] == [n]
        assert list(await b.presence(name)) == ["client.1"]


# --- appends racing from several nodes -------------------------------------------------


async def test_appends_racing_from_three_nodes_get_every_offset_once_and_arrive_in_order(
    peers: PeerFactory,
) -> None:
    nodes = [await peers() for _ in range(3)]
    for broker, _ in nodes:
        await broker.subscribe("race")
    positions = await asyncio.gather(
        *(nodes[n % 3][0].publish("race", pub(n), HISTORY) for n in range(150))
    )
    assert sorted(p.offset for p in positions) == list(range(1, 151))
    assert len({p.epoch for p in positions}) == 1
    for _, recorder in nodes:
        await eventually(lambda r=recorder: len(r.publications) == 150, "150 publications")
        # Refused attempts are never republished: each offset arrives once, in order.
        assert [offset for offset, _ in recorder.received("race")] == list(range(1, 151))


async def test_a_burst_of_200_subscribes_shares_one_ping_and_every_one_is_confirmed(
    peers: PeerFactory,
) -> None:
    (a, seen_by_a), (b, _) = await peers(), await peers()
    flushes = 0
    flush = a._nc.flush

    async def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal flushes
        flushes += 1
        await flush(*args, **kwargs)

    a._nc.flush = counted  # a spy on the client's public flush(): it still flushes
    channels = [f"burst-{i}" for i in range(200)]
    async with asyncio.timeout(5):
        await asyncio.gather(*(a.subscribe(channel) for channel in channels))
    assert 1 <= flushes <= 2, f"{flushes} PINGs for a burst of 200 subscribes"
    # Every subscribe returned once confirmed: publications right after are all received.
    for n, channel in enumerate(channels):
        await b.publish(channel, pub(n), None)
    await eventually(lambda: len(seen_by_a.publications) == 200, "a publication per channel")
    assert sorted(c for c, _ in seen_by_a.publications) == sorted(channels)


async def test_the_stream_keeps_about_history_size_messages_of_a_channel(
    peers: PeerFactory,
) -> None:
    broker, _ = await peers()
    for n in range(100):
        await broker.publish("trimmed", pub(n), HISTORY)
    await asyncio.sleep(0.2)  # trimming runs in the background
    info = await broker._js.stream_info(broker.history_stream, subjects_filter=">")
    stored = info.state.subjects[broker._stored("trimmed")]
    assert HISTORY.size <= stored <= HISTORY.size * 3 // 2 + 1
    publications, top = await broker.history("trimmed", since=None, limit=-1)
    assert offsets(publications) == list(range(91, 101))
    assert top.offset == 100


# --- NATS going away -------------------------------------------------------------------


async def test_a_broker_that_cannot_reach_nats_at_start_says_where_it_looked() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    broker = NatsBroker(url, subscribe_timeout=1.0)  # how long it tries
    with pytest.raises(BrokerUnavailable, match=re.escape(url)):
        await broker.start(Recorder())


async def test_calls_fail_at_once_while_nats_is_down_and_work_once_it_is_back(
    peers: PeerFactory, restore_nats: NatsServer
) -> None:
    broker, recorder = await peers()
    await broker.subscribe("kept")
    restore_nats.stop()
    await eventually(lambda: not broker._connected, "the broker to notice")
    started = time.monotonic()
    for call in (
        broker.publish("kept", pub(1), HISTORY),
        broker.subscribe("other"),
        broker.history("kept", since=None, limit=0),
    ):
        with pytest.raises(NatsUnavailable):
            await call
    assert time.monotonic() - started < 1.0
    restore_nats.start()
    await eventually(lambda: recorder.lost_channels == {"kept"}, "kept reported lost", 10)
    await broker.publish("kept", pub(2), HISTORY)
    await eventually(lambda: [number(p) for _, p in recorder.publications] == [2], "pub 2")


async def test_history_survives_a_nats_restart_that_keeps_its_storage(
    peers: PeerFactory, restore_nats: NatsServer
) -> None:
    broker, recorder = await peers()
    await broker.subscribe("durable")
    first = [await broker.publish("durable", pub(n), HISTORY) for n in range(3)]
    restore_nats.restart(keep_storage=True)
    await eventually(lambda: recorder.lost_channels == {"durable"}, "durable reported lost", 10)
    publications, top = await broker.history("durable", since=first[0], limit=-1)
    assert (offsets(publications), top) == ([2, 3], first[-1])
    assert (await broker.publish("durable", pub(3), HISTORY)).offset == 4


async def test_a_nats_restarted_without_storage_starts_a_new_epoch_never_a_silent_gap(
    peers: PeerFactory, restore_nats: NatsServer
) -> None:
    broker, recorder = await peers()
    await broker.subscribe("volatile")
    before = [await broker.publish("volatile", pub(n), HISTORY) for n in range(3)]
    restore_nats.restart(keep_storage=False)
    await eventually(lambda: recorder.lost_channels == {"volatile"}, "volatile reported lost", 10)
    with pytest.raises(UnrecoverablePosition):
        await broker.history("volatile", since=before[-1], limit=-1)
    after = await broker.publish("volatile", pub(3), HISTORY)
    assert after.offset == 1 and after.epoch != before[-1].epoch
    publications, top = await broker.history("volatile", since=StreamPosition(), limit=-1)
    assert (offsets(publications), top) == ([1], after)


# --- order ----------------------------------------------------------------------------


async def raw_client(url: str) -> Any:
    import nats

    return await nats.connect(url, connect_timeout=2, allow_reconnect=False)


def publication_message(offset: int, epoch: str = "E") -> bytes:
    return f'p{offset}:{epoch}  {{"data":{{"n":{offset}}}}}'.encode()


async def test_publications_republished_out_of_order_reach_the_node_in_order(
    peers: PeerFactory, nats_url: str
) -> None:
    # JetStream may republish two racing appends swapped: the broker puts them back.
    broker, recorder = await peers()
    await broker.subscribe("swapped")
    raw = await raw_client(nats_url)
    try:
        for offset in (1, 3, 2, 5, 4, 6):
            await raw.publish(broker._live("swapped"), publication_message(offset))
        await raw.flush()
        await eventually(lambda: len(recorder.publications) == 6, "6 publications")
    finally:
        await raw.close()
    assert [offset for offset, _ in recorder.received("swapped")] == [1, 2, 3, 4, 5, 6]
    assert recorder.lost == []


async def test_a_publication_that_never_comes_or_comes_too_late_makes_the_node_recover(
    peers: PeerFactory, nats_url: str
) -> None:
    broker, recorder = await peers()
    await broker.subscribe("holed")
    raw = await raw_client(nats_url)
    try:
        for offset in (1, 3, 4):  # 2 never comes: 3 and 4 go after a short wait
            await raw.publish(broker._live("holed"), publication_message(offset))
        await raw.flush()
        await eventually(lambda: recorder.lost_channels == {"holed"}, "holed reported lost")
        assert [offset for offset, _ in recorder.received("holed")] == [1, 3, 4]
        recorder.lost.clear()
        await raw.publish(broker._live("holed"), publication_message(2))  # too late
        await raw.flush()
        await eventually(lambda: recorder.lost_channels == {"holed"}, "holed reported again")
    finally:
        await raw.close()
    assert [offset for offset, _ in recorder.received("holed")] == [1, 3, 4]


async def test_calls_waiting_for_nats_when_it_dies_fail_at_once(
    peers: PeerFactory, restore_nats: NatsServer
) -> None:
    broker, _ = await peers(subscribe_timeout=5.0)
    calls = [broker.publish(f"c{n}", pub(n), HISTORY) for n in range(50)]
    calls += [broker.history(f"c{n}", since=None, limit=-1) for n in range(50)]
    pending = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(0)
    restore_nats.stop()
    started = time.monotonic()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert time.monotonic() - started < 2.0  # not the 5 s request timeout
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures and all(isinstance(f, NatsUnavailable) for f in failures), failures[:3]


async def test_a_repeated_idempotency_key_whose_publication_was_trimmed_gets_a_position(
    peers: PeerFactory,
) -> None:
    broker, _ = await peers()
    small = HistoryOptions(size=2, ttl=60)
    first = await broker.publish("trimmed-key", pub(0), small, idempotency_key="k")
    for n in range(1, 6):
        await broker.publish("trimmed-key", pub(n), small)
    await asyncio.sleep(0.2)  # the trims
    again = await broker.publish("trimmed-key", pub(0), small, idempotency_key="k")
    # Not published again; the original's offset is gone with it: the top stands in.
    assert again.epoch == first.epoch and again.offset == 6
    publications, _ = await broker.history("trimmed-key", since=None, limit=-1)
    assert offsets(publications) == [5, 6]


def _publish_in_child(publisher: Any, results: Any) -> None:
    results.put(publisher.publish("forked", {"n": 2}) == StreamPosition())


def test_the_synchronous_publisher_still_publishes_in_a_forked_child(nats_url: str) -> None:
    # Celery's prefork pool and gunicorn --preload fork after the publisher was made:
    # the child has no loop thread of its own until the publisher makes one.
    import multiprocessing

    from tidings import Publisher

    context = multiprocessing.get_context("fork")
    with Publisher(nats_url) as publisher:
        assert publisher.publish("forked", {"n": 1}) == StreamPosition()
        results = context.Queue()
        child = context.Process(target=_publish_in_child, args=(publisher, results))
        child.start()
        child.join(15)
        assert child.exitcode == 0, "the child hung or failed"
        assert results.get(timeout=1) is True
