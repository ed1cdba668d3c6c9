from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings import Config, Hub, load_config

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
API_KEY = "test-api-key"

HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """Collect cycles after each test, so that a resource it leaked (an unclosed transport,
    reported as an unraisable ResourceWarning) fails that test and not a later one. A hub
    that stopped left nothing frozen out of the collector (``_gc.py``)."""
    frozen = gc.get_freeze_count()
    yield
    assert gc.get_freeze_count() <= frozen, "objects left frozen after the hubs stopped"
    gc.collect()
    # What survived is old: out of later collections (a full one per test scanned the
    # whole heap the suite builds up, a tenth of a second each). Cycles that become
    # garbage later are collected once, at the end of the session (collect_at_exit).
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def collect_at_exit() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.collect()


@pytest.fixture
async def make_hub() -> AsyncIterator[HubFactory]:
    """Start hubs on free ports (config from dotted ``overrides``); stop them after the test."""
    hubs: list[Hub] = []

    async def make(config: Config | None = None, **overrides: Any) -> Hub:
        if config is None:
            overrides = {
                "port": 0,
                "http_api.port": 0,
                "http_api.key": API_KEY,
                "token_hmac_secret_key": SECRET,
                **overrides,
            }
            config = load_config(env={}, overrides=overrides)
        hub = Hub(config)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], bool], what: str = "the condition", timeout: float = 5.0
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


def clean_environment() -> dict[str, str]:
    """The environment without TIDINGS_* variables (they would override the test's options)."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}


class RedisServer:
    """A redis-server of the tests' own, on a free port (restartable, killable)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> None:
        import subprocess
        import time

        import redis

        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()


class ExternalRedis(RedisServer):
    """A Redis given by REDIS_URL: usable, but the tests cannot stop or restart it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.process = "external"

    def start(self) -> None:
        pytest.skip("needs the tests' own redis-server")

    stop = start


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The tests' own Redis. Skips where none can be had, except under CI=true."""
    import os
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI=true")
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("no redis-server on PATH and no REDIS_URL")
        yield ExternalRedis(url)  # type: ignore[misc]
        return
    server = RedisServer(binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean Redis (flushed before the test) and its URL."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


# --- markers (registered in pyproject.toml): `make check` runs the tests that have none ---
# Slow tests (half a second or more on 2 cores) say so themselves (`pytest.mark.slow`);
# these are marked by where they are.

_MARKS_BY_PLACE = {"browser/": "browser", "e2e/": "e2e", "test_faults.py": "soak"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        place = item.path.relative_to(here).as_posix()
        for prefix, mark in _MARKS_BY_PLACE.items():
            if place.startswith(prefix):
                item.add_marker(mark)
