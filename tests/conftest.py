from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from tidings import Config, Hub, load_config

if TYPE_CHECKING:
    from .nats_server import NatsServer
    from .redis_cluster import RedisCluster

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


def _required(what: str) -> NoReturn:
    """Skip a test that needs ``what``, except under CI=true (fail there)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"no {what} here")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """The tests' own ``nats-server -js``. Skips where there is none, except under CI=true."""
    from .nats_server import NatsServer

    binary = shutil.which("nats-server")
    if binary is None and os.access("/usr/sbin/nats-server", os.X_OK):
        binary = "/usr/sbin/nats-server"
    if binary is None:
        _required("nats-server")
    server = NatsServer(binary)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """A clean NATS (every JetStream stream deleted before the test) and its URL."""
    if nats_server.process is None:
        nats_server.start()
    # flush() runs its own event loop: in a thread, so that it neither finds the test's
    # loop running nor leaves this thread without one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(nats_server.flush).result()
    return nats_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """The tests' own Redis Cluster (three masters, a replica each). Skips where
    redis-server or redis-cli is missing, except under CI=true."""
    from .redis_cluster import RedisCluster

    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _required("redis-server and redis-cli (for a Redis Cluster)")
    cluster = RedisCluster(server, cli)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """A clean, healthy Redis Cluster (killed nodes restarted, flushed) and its URL."""
    _ensure_cluster(redis_cluster)
    redis_cluster.flush()
    return redis_cluster.url


def _ensure_cluster(cluster: RedisCluster) -> None:
    """Start a cluster a test stopped; restart the nodes it killed."""
    alive = [cluster.alive(i) for i in range(len(cluster.ports))]
    if not any(alive):
        cluster.start()
    elif not all(alive):
        cluster.heal()


# --- a broker server for several hubs: Redis, Redis Cluster or NATS ---


class BrokerServer:
    """A broker server of the tests' own that hubs share (``broker_server``): its
    ``url``, and the faults a test inflicts on it."""

    kind = ""
    url = ""
    keeps_storage = False
    """Whether it can come back with what it stored (``start(keep_storage=True)``)."""

    def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to its clients)."""
        raise NotImplementedError

    def start(self, *, keep_storage: bool = False) -> None:
        """Start it again on the same address: empty, or with what it stored."""
        raise NotImplementedError

    def ensure_running(self) -> None:
        """Start it again (empty) if a test left it stopped."""
        raise NotImplementedError


class _Redis(BrokerServer):
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self, *, keep_storage: bool = False) -> None:
        if keep_storage:
            raise ValueError("the tests' Redis runs without persistence")
        self.server.start()

    def ensure_running(self) -> None:
        if self.server.process is None:
            self.server.start()


class _RedisCluster(BrokerServer):
    kind = "redis_cluster"

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.url = cluster.url

    def stop(self) -> None:
        self.cluster.stop()

    def start(self, *, keep_storage: bool = False) -> None:
        # Without persistence a whole cluster comes back as a new, empty one.
        if keep_storage:
            raise ValueError("the tests' Redis Cluster runs without persistence")
        self.cluster.start()

    def ensure_running(self) -> None:
        _ensure_cluster(self.cluster)


class _Nats(BrokerServer):
    kind = "nats"
    keeps_storage = True

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.url = server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self, *, keep_storage: bool = False) -> None:
        self.server.restart(keep_storage=keep_storage)

    def ensure_running(self) -> None:
        if self.server.process is None:
            self.server.start()


@pytest.fixture(params=["redis", "redis_cluster", "nats"])
def broker_server(request: pytest.FixtureRequest) -> Iterator[BrokerServer]:
    """Each broker server that several hubs can share, clean; running again after the
    test (empty) if the test left it stopped."""
    kind: str = request.param
    request.getfixturevalue(f"{kind}_url")  # started and clean
    server: BrokerServer
    if kind == "redis":
        server = _Redis(request.getfixturevalue("redis_server"))
    elif kind == "redis_cluster":
        server = _RedisCluster(request.getfixturevalue("redis_cluster"))
    else:
        server = _Nats(request.getfixturevalue("nats_server"))
    yield server
    server.ensure_running()


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
