"""The Hub's lifecycle: what it opens, and what it leaves when it cannot start."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tidings import Hub, load_config

from ..conftest import free_port


async def test_a_hub_whose_api_port_is_taken_fails_and_leaves_its_client_port_closed() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api_port = taken.getsockname()[1]
        config = load_config(
            env={},
            overrides={"host": "127.0.0.1", "port": port, "http_api.port": api_port},
        )
        hub = Hub(config)
        with pytest.raises(OSError):
            await hub.start()
    # The client port was opened first; it is free again.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


async def test_a_hub_whose_client_port_is_taken_fails_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = load_config(
            env={}, overrides={"host": "127.0.0.1", "port": taken.getsockname()[1]}
        )
        hub = Hub(config)
        with pytest.raises(OSError):
            await hub.start()
    # No heartbeat tick was left behind, nor a task of the node's.
    assert not hub.server.started
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}
