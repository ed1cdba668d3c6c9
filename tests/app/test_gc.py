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
    cycle = frozen_cycle(collector, 0.0)
    collector.tick(59.0, connections=0, closed=0)
    assert cycle() is not None
    collector.tick(60.0, connections=0, closed=0)
    assert cycle() is None


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
