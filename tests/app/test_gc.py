"""The collector policy: freeze at each tick, collect everything now and then."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tidings import Config, Hub, load_config
from tidings.app import cli
from tidings.app.gc_policy import FreezingCollector

from ..conftest import HubFactory, eventually
from ..wsclient import receive

pytestmark = pytest.mark.slow  # left out of `make check`


@pytest.fixture(autouse=True)
def thawed() -> None:
    """The suite freezes what survives each test (``tests/conftest.py``); these tests
    watch the freeze count, so they start from none."""
    gc.unfreeze()


class Node:
    """A reference cycle, like a closed connection's objects."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector() -> Iterator[FreezingCollector]:
    collector = FreezingCollector(min_closed=4, closed_share=0.25, max_interval=60.0)
    yield collector
    collector.stop()


def frozen_cycle(collector: FreezingCollector, now: float) -> weakref.ref[Node]:
    """A cycle that was alive at a tick (so frozen) and is garbage now."""
    cycle = Node()
    collector.tick(now, connections=0, closed=0)
    return weakref.ref(cycle)


def test_a_tick_freezes_what_exists_and_stop_gives_it_back(
    collector: FreezingCollector,
) -> None:
    collector.tick(0.0, connections=0, closed=0)
    assert gc.get_freeze_count() > 0
    collector.stop()
    assert gc.get_freeze_count() == 0


def test_frozen_cycles_wait_until_enough_connections_closed(
    collector: FreezingCollector,
) -> None:
    cycle = frozen_cycle(collector, 0.0)
    gc.collect()
    assert cycle() is not None, "a frozen cycle is out of reach of full collections"
    collector.tick(1.0, connections=0, closed=3)
    assert cycle() is not None, "3 closed: fewer than min_closed"
    collector.tick(2.0, connections=0, closed=4)
    assert cycle() is None
    assert gc.get_freeze_count() > 0, "freezing resumes after the collection"


def test_the_closed_share_scales_with_the_open_connections(
    collector: FreezingCollector,
) -> None:
    cycle = frozen_cycle(collector, 0.0)
    collector.tick(1.0, connections=100, closed=10)
    assert cycle() is not None, "10 closed of 100 open: under a quarter"
    collector.tick(2.0, connections=100, closed=25)
    assert cycle() is None


def test_frozen_cycles_are_collected_after_max_interval(collector: FreezingCollector) -> None:
    interval = collector.factor * 60.0  # the first: 30-60 s (see below)
    cycle = frozen_cycle(collector, 0.0)
    collector.tick(interval - 1.0, connections=0, closed=0)
    assert cycle() is not None
    collector.tick(interval, connections=0, closed=0)
    assert cycle() is None


def full_collections(collector: FreezingCollector, seconds: int) -> list[int]:
    """The ticks (one a second, as the hub's) at which ``collector`` collected everything."""
    times = []
    previous: weakref.ref[Node] | None = None
    for now in range(seconds + 1):
        cycle = Node()  # alive at this tick, so frozen; garbage from the next
        collector.tick(float(now), connections=0, closed=0)
        if previous is not None and previous() is None:  # only a full collection frees it
            times.append(now)
        previous = weakref.ref(cycle)
        del cycle
    collector.stop()
    return times


def test_processes_started_together_collect_at_different_times() -> None:
    """Workers start together: fixed intervals would stall them all at the same moment."""
    times = [
        full_collections(FreezingCollector(max_interval=20.0, seed=seed), 200) for seed in (1, 2)
    ]
    for each in times:
        intervals = [later - earlier for earlier, later in zip([0, *each], each, strict=False)]
        assert 10 <= intervals[0] <= 20, "the first: from half max_interval to max_interval"
        assert all(18 <= interval <= 23 for interval in intervals[1:]), "then 0.9-1.1 of it"
    assert not set(times[0]) & set(times[1])


def test_the_first_full_collections_spread_over_half_of_max_interval() -> None:
    firsts = [FreezingCollector().factor * 300.0 for _ in range(200)]
    assert all(150.0 <= first <= 300.0 for first in firsts)
    assert min(firsts) < 165.0 and max(firsts) > 285.0, "uniform over the range"


def test_steady_churn_reaches_the_scaled_share_at_different_times() -> None:
    """Workers losing clients at the same rate would reach a fixed share together."""
    firsts = []
    for seed in (1, 2):
        collector = FreezingCollector(min_closed=1, max_interval=1e9, seed=seed)
        closed = 0
        cycle = frozen_cycle(collector, 0.0)
        while cycle() is not None:
            closed += 10
            collector.tick(float(closed), connections=1000, closed=closed)
        collector.stop()
        firsts.append(closed)
    assert firsts[0] != firsts[1]
    assert all(125 <= first <= 260 for first in firsts), "0.5-1.0 of a quarter of 1000"


async def test_a_hub_freezes_and_still_frees_the_connections_that_closed(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(dev=True, gc_freeze=True)
    collector = hub.collector
    assert collector is not None, "on when asked for"
    collector.min_closed = 5
    gone: list[weakref.ref[object]] = []
    for _ in range(5):
        async with connect(hub.url) as ws:
            await ws.send('{"id":1,"connect":{}}')
            await receive(ws)
            (server_side,) = list(hub.server.clients)
            # websockets' protocol object is in a reference cycle (its parser)
            gone.append(weakref.ref(server_side.protocol))
            del server_side
            await asyncio.sleep(1.5)  # a heartbeat tick freezes the connection's objects
            assert gc.get_freeze_count() > 0
        await eventually(lambda: not hub.server.clients, "the connection to be gone")
    # the next tick collects: 5 closed
    await eventually(lambda: all(ref() is None for ref in gone), "the closed connections freed")


async def test_gc_freeze_false_leaves_the_collector_alone(make_hub: HubFactory) -> None:
    hub = await make_hub(dev=True, gc_freeze=False)
    assert hub.collector is None
    await asyncio.sleep(1.5)
    assert gc.get_freeze_count() == 0


async def test_a_hub_leaves_the_collector_alone_by_default(make_hub: HubFactory) -> None:
    """gc_freeze is process-wide: an embedded hub must not change its program's gc."""
    assert Config().gc_freeze is False
    assert load_config(env={}).gc_freeze is False
    hub = await make_hub(dev=True)
    assert hub.collector is None
    assert Hub().collector is None
    await asyncio.sleep(1.5)
    assert gc.get_freeze_count() == 0


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Run ``tidings serve`` up to the point it would start: the configs it would serve."""
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    configs: list[Config] = []

    def serve(config: Config) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(cli, "_serve", serve)
    return configs


def test_tidings_serve_turns_gc_freeze_on(served: list[Config]) -> None:
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--dev", "--port", "8123"]) == 0
    assert [config.gc_freeze for config in served] == [True, True]


def test_tidings_serve_respects_gc_freeze_false_in_the_file(
    served: list[Config], tmp_path: Path
) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text("gc_freeze = false\n", encoding="utf-8")
    assert cli.main(["serve", "--config", str(path)]) == 0
    assert served[0].gc_freeze is False


def test_tidings_serve_respects_gc_freeze_false_in_the_environment(
    served: list[Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_GC_FREEZE", "false")
    assert cli.main(["serve"]) == 0
    assert served[0].gc_freeze is False
