"""What only the in-memory broker does: deliver at once, and sweep the streams no one
needs. The contract every broker meets is ``tests/brokers/test_contract.py``."""

from __future__ import annotations

import asyncio
import time

import pytest

from tidings import ClientInfo, MemoryBroker
from tidings.brokers.memory import UNPUBLISHED_TTL

from .recording import KEEP, Recorder, fill, offsets, pub


@pytest.fixture
async def broker() -> MemoryBroker:
    return MemoryBroker()


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


async def test_an_idempotency_key_is_forgotten_after_its_ttl(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("tidings.brokers.memory.IDEMPOTENCY_TTL", 0.01)
    await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    await asyncio.sleep(0.02)
    again = await broker.publish("c", pub(1), KEEP, idempotency_key="k")
    assert again.offset == 2


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
