"""Several hubs on one broker server: one cluster, seen through raw WebSocket clients.

Each test runs on every server hubs can share (``broker_server``: Redis, Redis
Cluster, NATS) unless it acts on Redis itself, or is slow and goes through code both
Redis brokers share (``one_redis_and_nats``). Hubs run in-process (``make_hub``) or
as ``python -m tidings serve`` subprocesses (to be killed with SIGKILL, or forked into
workers). Clients are raw websockets connections speaking the JSON protocol, so every
frame the hubs send is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tidings import Error, Hub, RedisBroker, load_config, make_token

from ..conftest import SECRET, BrokerServer, HubFactory, clean_environment, free_port

pytestmark = pytest.mark.slow  # left out of `make check`

WAIT = 5.0
"""Bound of every single wait."""
STARTUP = 20.0
"""Bound of a ``tidings serve`` subprocess getting ready."""

CLUSTER = {
    "broker.presence_ttl": 2,
    "broker.presence_update_interval": 0.5,
    "broker.node_info_interval": 0.5,
}
SERVE_CONFIG = """\
dev = true

[broker]
presence_ttl = 2
presence_update_interval = 0.5
node_info_interval = 0.5
"""


# -- a raw client --------------------------------------------------------------------------------


class WsClient:
    """A raw WebSocket client: every message the hub sends is kept, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.id = ""
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._next_id = 1
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                for line in str(frame).split("\n"):
                    message = json.loads(line)
                    if message == {}:  # a ping
                        await self.ws.send("{}")
                        continue
                    self.messages.append(message)
                self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            self._arrived.set()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def until(self, check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Wait until ``check()`` holds, re-checking as messages arrive."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._arrived.clear()
                    if check():
                        return
                    if self.closed:
                        pytest.fail(f"connection closed ({self.ws.close_code}) before {what}")
                    await self._arrived.wait()
        except TimeoutError:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; got {self.messages}")

    async def command(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one command; return its reply (a result or an error)."""
        command_id = self._next_id
        self._next_id += 1
        await self.ws.send(json.dumps({"id": command_id, method: body}))
        replies: list[dict[str, Any]] = []

        def replied() -> bool:
            replies.extend(m for m in self.messages if m.get("id") == command_id)
            return bool(replies)

        await self.until(replied, f"the reply to {method} {body}")
        return replies[0]

    async def subscribe(self, channel: str, **options: Any) -> dict[str, Any]:
        """Subscribe; return the subscribe result (fails on an error reply)."""
        reply = await self.command("subscribe", {"channel": channel, **options})
        assert "subscribe" in reply, reply
        result: dict[str, Any] = reply["subscribe"]
        return result

    def publications(self, channel: str) -> list[tuple[int, int]]:
        """(offset, n) of every publication pushed in ``channel``, in order."""
        return [
            (m["push"]["pub"].get("offset", 0), m["push"]["pub"]["data"]["n"])
            for m in self.messages
            if "pub" in m.get("push", {}) and m["push"]["channel"] == channel
        ]

    def unsubscribe_codes(self, channel: str) -> list[int]:
        return [
            m["push"]["unsubscribe"].get("code", 0)
            for m in self.messages
            if "unsubscribe" in m.get("push", {}) and m["push"]["channel"] == channel
        ]

    async def close(self) -> None:
        await self.ws.close()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(self._reader, return_exceptions=True)


ClientFactory = Callable[..., Awaitable[WsClient]]


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/connection/websocket"


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop_all()


@pytest.fixture
async def open_client(make_hub: HubFactory, servers: Servers) -> AsyncIterator[ClientFactory]:
    """Connect raw clients (``connect`` options as keywords); closed before the hubs stop."""
    opened: list[WsClient] = []

    async def open(url: str, **connect_request: Any) -> WsClient:
        ws = await connect(url, open_timeout=WAIT, max_size=None)
        client = WsClient(ws)
        opened.append(client)
        reply = await client.command("connect", connect_request)
        assert "connect" in reply, reply
        client.id = reply["connect"]["client"]
        return client

    yield open
    for client in opened:
        await client.close()


redis_only = pytest.mark.parametrize("broker_server", ["redis"], indirect=True)
"""For the tests that act on Redis itself (its pub/sub connections, its keys)."""

one_redis_and_nats = pytest.mark.parametrize(
    "broker_server", ["redis_cluster", "nats"], indirect=True
)
"""For slow tests about the hubs (a process killed, forked workers) whose broker side both
Redis brokers share (``_RedisCommon``: presence, node heartbeats, starting the client):
Redis Cluster stands for both (its keys spread over masters, the more demanding layout).
What differs between the two (pub/sub, restarts, the external publisher) runs on both."""


@pytest.fixture
def cluster(make_hub: HubFactory, broker_server: BrokerServer) -> Callable[..., Awaitable[Hub]]:
    """Start an open (dev) hub on the test's broker server; its options as dotted keywords."""

    async def start(**overrides: Any) -> Hub:
        return await make_hub(dev=True, **{"broker.url": broker_server.url, **CLUSTER, **overrides})

    return start


ClusterFactory = Callable[..., Awaitable[Hub]]


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> float:
    """Poll the async ``check`` until it holds; return how long it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")
    return time.monotonic() - started


# -- hub subprocesses ----------------------------------------------------------------------------


class Server:
    """A ``python -m tidings serve`` subprocess (in its own process group)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return ws_url(self.port)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self) -> None:
        """Wait until the WebSocket port accepts connections."""
        try:
            async with asyncio.timeout(STARTUP):
                while True:
                    if self.process.poll() is not None:
                        pytest.fail(
                            f"tidings serve exited {self.process.returncode}:\n{self.output()}"
                        )
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError:
                        await asyncio.sleep(0.05)
                        continue
                    writer.close()
                    await writer.wait_closed()
                    return
        except TimeoutError:
            pytest.fail(f"tidings serve did not listen within {STARTUP}s:\n{self.output()}")

    async def exited(self, timeout: float = WAIT) -> int:
        """Wait for the process to exit; return its exit code."""
        try:
            async with asyncio.timeout(timeout):
                while self.process.poll() is None:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"tidings serve still running after {timeout}s:\n{self.output()}")
        return self.process.returncode


class Servers:
    """Starts servers; kills whatever is left of them (their process groups) afterwards."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    async def start(self, tmp_path: Path, *args: str, config: str = SERVE_CONFIG) -> Server:
        port = free_port()
        index = len(self.started)
        config_file = tmp_path / f"serve-{index}.toml"
        config_file.write_text(config, encoding="utf-8")
        log = tmp_path / f"serve-{index}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tidings", "serve", "--port", str(port)]
                + ["--api-port", str(free_port()), "--config", str(config_file), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=clean_environment(),
                start_new_session=True,
            )
        server = Server(process, port, log)
        self.started.append(server)
        await server.ready()
        return server

    def stop_all(self) -> None:
        for server in self.started:
            process = server.process
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            # Workers may outlive their parent: end the whole group, then reap.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


# -- delivery ------------------------------------------------------------------------------------


async def test_a_publication_on_one_hub_reaches_subscribers_on_every_hub_in_order(
    cluster: ClusterFactory, open_client: ClientFactory
) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    subscribers = [await open_client(hub.url) for hub in (a, b, c)]
    for subscriber in subscribers:
        result = await subscriber.subscribe("news")
        assert result.get("offset", 0) == 0
        assert result["epoch"]
    publisher = await open_client(c.url)
    for n in range(20):
        await a.publish("news", {"n": n})
    for n in range(20, 25):  # a client's own publish, on yet another hub
        assert "publish" in await publisher.command(
            "publish", {"channel": "news", "data": {"n": n}}
        )
    expected = [(n + 1, n) for n in range(25)]
    for subscriber in subscribers:
        await subscriber.until(lambda s=subscriber: len(s.publications("news")) >= 25, "25 pubs")
    for subscriber in subscribers:
        assert subscriber.publications("news") == expected
    assert publisher.publications("news") == []  # not subscribed


async def test_presence_lists_the_clients_of_every_hub(
    cluster: ClusterFactory, open_client: ClientFactory
) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    users = {a: "alice", b: "bob", c: "alice"}
    clients = {
        hub: await open_client(hub.url, token=make_token(SECRET, user))
        for hub, user in users.items()
    }
    for client in clients.values():
        await client.subscribe("room")
    expected = {client.id: users[hub] for hub, client in clients.items()}
    for hub in (a, b, c):
        presence = await hub.presence("room")
        assert {client_id: info.user for client_id, info in presence.items()} == expected
        stats = await hub.presence_stats("room")
        assert (stats.num_clients, stats.num_users) == (3, 2)
    reply = await clients[b].command("presence", {"channel": "room"})
    assert set(reply["presence"]["presence"]) == set(expected)
    reply = await clients[a].command("presence_stats", {"channel": "room"})
    assert reply["presence_stats"] == {"num_clients": 3, "num_users": 2}
    await clients[c].close()  # a client leaving one hub leaves the presence of all

    async def gone() -> bool:
        return clients[c].id not in await a.presence("room")

    await eventually(gone, "the closed client to leave presence")


async def test_info_lists_every_hub_of_the_cluster(
    cluster: ClusterFactory, open_client: ClientFactory
) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    uids = {a.uid, b.uid, c.uid}

    async def all_listed() -> bool:
        for hub in (a, b, c):
            if {info.uid for info in await hub.info()} != uids:
                return False
        return True

    await eventually(all_listed, "three nodes in every hub's info")
    assert (await a.info())[0].uid == a.uid  # this node first
    client = await open_client(b.url)
    await client.subscribe("x")

    async def b_counts_its_client() -> bool:
        infos = {info.uid: info for info in await a.info()}
        return (infos[b.uid].num_clients, infos[b.uid].num_subs) == (1, 1)

    await eventually(b_counts_its_client, "b's heartbeat to count its client")
    await c.stop()

    async def c_forgotten() -> bool:
        return {info.uid for info in await a.info()} == {a.uid, b.uid}

    await eventually(c_forgotten, "the stopped hub to leave info", timeout=1.0)


# -- recovery ------------------------------------------------------------------------------------


async def test_a_client_that_reconnects_to_another_hub_recovers_exactly_what_it_missed(
    cluster: ClusterFactory, open_client: ClientFactory
) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    client = await open_client(a.url)
    result = await client.subscribe("chat", recover=True)
    epoch = result["epoch"]
    for n in range(3):
        await b.publish("chat", {"n": n})
    await client.until(lambda: len(client.publications("chat")) == 3, "3 publications")
    assert client.publications("chat") == [(1, 0), (2, 1), (3, 2)]
    last = client.publications("chat")[-1][0]
    await client.close()
    for n in range(3, 8):  # missed, published on a third hub
        await c.publish("chat", {"n": n})
    again = await open_client(b.url)
    result = await again.subscribe("chat", recover=True, offset=last, epoch=epoch)
    assert result["recovered"] is True
    assert result["epoch"] == epoch
    recovered = [(p["offset"], p["data"]["n"]) for p in result["publications"]]
    assert recovered == [(4, 3), (5, 4), (6, 5), (7, 6), (8, 7)]
    await a.publish("chat", {"n": 8})  # and the live stream continues after them
    await again.until(lambda: again.publications("chat") == [(9, 8)], "the next publication")


@redis_only
async def test_a_client_of_a_hub_whose_pubsub_connections_broke_is_told_and_recovers(
    cluster: ClusterFactory, open_client: ClientFactory, redis_url: str
) -> None:
    a, b = await cluster(), await cluster()
    client = await open_client(b.url)
    result = await client.subscribe("feed", recover=True)
    epoch = result["epoch"]
    for n in range(3):
        await a.publish("feed", {"n": n})
    await client.until(lambda: len(client.publications("feed")) == 3, "3 publications")
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.client_kill_filter(_type="pubsub")
    for n in range(3, 5):  # published while every node's pub/sub connection is down
        await a.publish("feed", {"n": n})
    await client.until(lambda: 2500 in client.unsubscribe_codes("feed"), "a 2500 push")
    received = client.publications("feed")
    assert received == [(1, 0), (2, 1), (3, 2)], "nothing after the break, and no gap"
    result = await client.subscribe("feed", recover=True, offset=3, epoch=epoch)
    assert result["recovered"] is True
    recovered = [(p["offset"], p["data"]["n"]) for p in result["publications"]]
    assert recovered == [(4, 3), (5, 4)]
    await a.publish("feed", {"n": 5})
    await client.until(lambda: client.publications("feed")[3:] == [(6, 5)], "the live stream")


@redis_only
async def test_a_subscribe_in_progress_when_the_pubsub_connection_breaks_is_not_left_with_a_gap(
    cluster: ClusterFactory,
    open_client: ClientFactory,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = await cluster(), await cluster()
    for n in range(3):
        await a.publish("room", {"n": n})
    # Hold b's subscribe between its history read and its reply (at the presence update).
    entered, release = asyncio.Event(), asyncio.Event()
    broker = b.broker
    assert isinstance(broker, RedisBroker)
    add_presence = broker.add_presence

    async def held_add_presence(*args: Any) -> None:
        entered.set()
        await release.wait()
        await add_presence(*args)

    monkeypatch.setattr(broker, "add_presence", held_add_presence)
    client = await open_client(b.url)
    await client.ws.send(json.dumps({"id": 99, "subscribe": {"channel": "room"}}))
    async with asyncio.timeout(WAIT):
        await entered.wait()
    errors = broker.errors
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.client_kill_filter(_type="pubsub")
    for n in range(3, 5):  # offsets 4 and 5, never delivered live to b
        await a.publish("room", {"n": n})

    async def reconnected() -> bool:
        lost = broker.errors >= errors + len(broker._shards)
        return lost and all(shard._connected.is_set() for shard in broker._shards)

    await eventually(reconnected, "b's pub/sub shards to reconnect")
    await asyncio.sleep(0.1)  # b has handled the loss (handle_lost) by now
    release.set()
    await client.until(lambda: any(m.get("id") == 99 for m in client.messages), "the reply")
    (reply,) = [m for m in client.messages if m.get("id") == 99]
    if "error" in reply:
        # Told: the subscribe fails as temporary, and the SDK subscribes again.
        assert reply["error"]["code"] == 100 and reply["error"]["temporary"] is True
        return
    assert reply["subscribe"]["offset"] == 3
    await a.publish("room", {"n": 5})  # offset 6

    def told_or_published() -> list[dict[str, Any]]:
        return [
            m["push"]
            for m in client.messages
            if m.get("push", {}).get("channel") == "room"
            and ("pub" in m["push"] or "unsubscribe" in m["push"])
        ]

    await client.until(lambda: bool(told_or_published()), "a publication or a 2500 push")
    # Told (2500) before any publication after the gap, or no gap at all.
    first = told_or_published()[0]
    assert "unsubscribe" in first or first["pub"]["offset"] == 4, (
        f"offsets 4 and 5 silently missed: the first push after the reply is {first}"
    )


async def test_an_external_publisher_script_publishes_with_the_hubs_history(
    make_hub: HubFactory, open_client: ClientFactory, broker_server: BrokerServer, tmp_path: Path
) -> None:
    broker_url = broker_server.url
    config_file = tmp_path / "tidings.toml"
    config_file.write_text(
        "dev = true\n\n[namespaces.news]\nhistory_size = 3\nhistory_ttl = 60\n", encoding="utf-8"
    )
    config = load_config(
        config_file, env={}, overrides={"port": 0, "http_api.port": 0, "broker.url": broker_url}
    )
    hub = await make_hub(config)
    client = await open_client(hub.url)
    result = await client.subscribe("news:today", recover=True)
    for n in range(1, 3):
        await hub.publish("news:today", {"n": n})
    script = tmp_path / "publish.py"
    script.write_text(
        "import json, sys\n"
        "from tidings import Publisher, load_config\n"
        "url, config_path = sys.argv[1:3]\n"
        "with Publisher(url, config=load_config(config_path, env={})) as publisher:\n"
        '    positions = [publisher.publish("news:today", {"n": n}) for n in (3, 4, 5, 6)]\n'
        "print(json.dumps([[p.offset, p.epoch] for p in positions]))\n",
        encoding="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        broker_url,
        str(config_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_environment(),
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    positions = json.loads(out)
    assert positions == [[n, result["epoch"]] for n in (3, 4, 5, 6)]
    await client.until(lambda: len(client.publications("news:today")) == 6, "6 publications")
    assert client.publications("news:today") == [(n, n) for n in range(1, 7)]
    publications, top = await hub.history("news:today", limit=-1)
    assert [(p.offset, json.loads(bytes(p.data))["n"]) for p in publications] == [
        (4, 4),
        (5, 5),
        (6, 6),
    ]  # history_size = 3, as the hub keeps it
    assert (top.offset, top.epoch) == (6, result["epoch"])


# -- nodes dying ---------------------------------------------------------------------------------


# Presence expiry and heartbeat expiry are _RedisCommon's on both Redis brokers (and ttl
# tested on each in test_contract.py); the subject here is a hub killed with SIGKILL, and
# each run waits out the ttls (6 s): one Redis representative.
@one_redis_and_nats
async def test_the_clients_and_node_of_a_killed_hub_vanish_from_presence_and_info(
    cluster: ClusterFactory,
    open_client: ClientFactory,
    servers: Servers,
    tmp_path: Path,
    broker_server: BrokerServer,
) -> None:
    observer = await cluster()
    server = await servers.start(tmp_path, "--broker", broker_server.url)
    client = await open_client(server.url)
    await client.subscribe("room")

    async def listed() -> bool:
        others = [info for info in await observer.info() if info.uid != observer.uid]
        counted = len(others) == 1 and others[0].num_clients == 1
        return counted and client.id in await observer.presence("room")

    await eventually(listed, "the client in presence and its node in info")
    (killed_node,) = [info for info in await observer.info() if info.uid != observer.uid]
    await asyncio.sleep(2.5)  # longer than presence_ttl: its node keeps the entry alive
    assert client.id in await observer.presence("room")
    os.kill(server.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert await server.exited() == -signal.SIGKILL

    vanished: dict[str, float] = {}  # seconds after the kill

    async def both_vanished() -> bool:
        elapsed = time.monotonic() - killed_at
        if "client" not in vanished and client.id not in await observer.presence("room"):
            vanished["client"] = elapsed
        if "node" not in vanished and killed_node.uid not in {i.uid for i in await observer.info()}:
            vanished["node"] = elapsed
        return len(vanished) == 2

    try:
        await eventually(both_vanished, "the killed hub's client and node to vanish", timeout=2 + 1)
    except pytest.fail.Exception:
        pytest.fail(f"3 s after the kill, only these vanished (at s after it): {vanished}")
    assert vanished["client"] <= 2 + 1  # presence_ttl + 1 s
    assert vanished["node"] <= 3 * 0.5 + 0.5  # its heartbeat lives 3 x node_info_interval
    stats = await observer.presence_stats("room")
    assert (stats.num_clients, stats.num_users) == (0, 0)


Resubscribed = list[tuple[dict[str, Any], int]]
"""Each subscriber's resubscribe result, and the index of its first message after it."""


async def restart_mid_stream(
    cluster: ClusterFactory,
    open_client: ClientFactory,
    broker_server: BrokerServer,
    *,
    keep_storage: bool,
) -> tuple[list[WsClient], Resubscribed, list[tuple[str, int, int]], str]:
    """Kill the broker server while a hub publishes to subscribers of two hubs, start it
    again; once each subscriber is told (2500), resubscribe it from its last offset.

    Returns the subscribers, their resubscriptions, the (epoch, offset, n) of every
    publication that succeeded, and the epoch before the restart."""
    a, b = await cluster(), await cluster()
    subscribers = [await open_client(a.url), await open_client(b.url)]
    results = [await s.subscribe("stream", recover=True) for s in subscribers]
    first_epoch: str = results[0]["epoch"]
    assert results[1]["epoch"] == first_epoch
    published: list[tuple[str, int, int]] = []  # (epoch, offset, n) of each success
    errors = 0
    stop = asyncio.Event()

    async def publish_in_a_loop() -> None:
        nonlocal errors
        n = 0
        while not stop.is_set():
            try:
                position = await a.publish("stream", {"n": n})
            except Error:
                errors += 1
            else:
                published.append((position.epoch, position.offset, n))
            n += 1
            await asyncio.sleep(0.01)

    publishing = asyncio.create_task(publish_in_a_loop())
    try:
        await asyncio.sleep(0.5)
        # In threads: starting a server (a whole Redis Cluster) takes a while, and the
        # hubs keep running meanwhile.
        await asyncio.to_thread(broker_server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(broker_server.start, keep_storage=keep_storage)
        for subscriber in subscribers:
            await subscriber.until(
                lambda s=subscriber: 2500 in s.unsubscribe_codes("stream"), "a 2500 push"
            )
        # Told: each resubscribes from where it stopped, as SDKs do.
        resubscribed = []
        for subscriber in subscribers:
            received = subscriber.publications("stream")
            last = received[-1][0] if received else 0
            async with asyncio.timeout(WAIT):
                while True:  # error 100 (the broker still settling) is retried, as SDKs do
                    reply = await subscriber.command(
                        "subscribe",
                        {
                            "channel": "stream",
                            "recover": True,
                            "offset": last,
                            "epoch": first_epoch,
                        },
                    )
                    if "subscribe" in reply:
                        break
                    assert reply["error"]["code"] == 100, reply
                    await asyncio.sleep(0.05)
            index = next(i for i, m in enumerate(subscriber.messages) if m is reply)
            resubscribed.append((reply["subscribe"], index + 1))
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await publishing
    assert errors > 0, "the broker was down for 0.5 s: some publications must have failed"
    return subscribers, resubscribed, published, first_epoch


async def test_subscribers_never_silently_miss_publications_when_the_broker_restarts_empty(
    cluster: ClusterFactory, open_client: ClientFactory, broker_server: BrokerServer
) -> None:
    subscribers, resubscribed, published, first_epoch = await restart_mid_stream(
        cluster, open_client, broker_server, keep_storage=False
    )
    for subscriber, (result, index) in zip(subscribers, resubscribed, strict=True):
        await check_told_and_resumed(subscriber, result, index, published, first_epoch)


@pytest.mark.parametrize("broker_server", ["nats"], indirect=True)  # Redis: no persistence
async def test_subscribers_recover_every_publication_when_the_broker_restarts_with_its_storage(
    cluster: ClusterFactory, open_client: ClientFactory, broker_server: BrokerServer
) -> None:
    subscribers, resubscribed, published, first_epoch = await restart_mid_stream(
        cluster, open_client, broker_server, keep_storage=True
    )
    assert {epoch for epoch, _, _ in published} == {first_epoch}
    for subscriber, (result, index) in zip(subscribers, resubscribed, strict=True):
        await check_told_and_recovered(subscriber, result, index, published, first_epoch)


async def check_told_and_recovered(
    subscriber: WsClient,
    result: dict[str, Any],
    index: int,
    published: list[tuple[str, int, int]],
    first_epoch: str,
) -> None:
    """Check one subscriber of a restart that kept the history: told with 2500, then
    every publication once, in order, from live pushes and the recovered ones."""
    pushes = [m["push"] for m in subscriber.messages[: index - 1] if "push" in m]
    told = next(i for i, p in enumerate(pushes) if "unsubscribe" in p)
    assert pushes[told]["unsubscribe"]["code"] == 2500
    before = [(p["pub"]["offset"], p["pub"]["data"]["n"]) for p in pushes[:told] if "pub" in p]
    assert (result.get("recovered", False), result["epoch"]) == (True, first_epoch), result
    recovered = [(p["offset"], p["data"]["n"]) for p in result.get("publications", [])]

    def seen() -> list[tuple[int, int]]:
        after = [
            (m["push"]["pub"]["offset"], m["push"]["pub"]["data"]["n"])
            for m in subscriber.messages[index:]
            if "pub" in m.get("push", {})
        ]
        return before + recovered + after

    last = published[-1][1]
    await subscriber.until(lambda: bool(seen()) and seen()[-1][0] >= last, "the last publication")
    assert [offset for offset, _ in seen()] == list(range(1, len(seen()) + 1)), seen()
    missing = {(offset, n) for _, offset, n in published} - set(seen())
    assert not missing, f"published but never seen: {sorted(missing)}"
    assert subscriber.unsubscribe_codes("stream") == [2500]


async def check_told_and_resumed(
    subscriber: WsClient,
    result: dict[str, Any],
    index: int,
    published: list[tuple[str, int, int]],
    first_epoch: str,
) -> None:
    """Check one subscriber of a restart that lost the history: no gap, told with 2500,
    resumed in a new epoch with no gap.

    ``result`` is its resubscribe result, ``index`` where messages after it start.
    """
    old = [(offset, n) for epoch, offset, n in published if epoch == first_epoch]
    pushes = [m["push"] for m in subscriber.messages if "push" in m]
    told = next(i for i, p in enumerate(pushes) if "unsubscribe" in p)
    assert pushes[told]["unsubscribe"]["code"] == 2500
    before = [(p["pub"]["offset"], p["pub"]["data"]["n"]) for p in pushes[:told] if "pub" in p]
    epoch_of = {n: epoch for epoch, _, n in published}
    from_old = [(offset, n) for offset, n in before if epoch_of.get(n) == first_epoch]
    assert from_old == old[: len(from_old)], f"a gap before the 2500 push: {before} {old}"
    # The restarted server lost the stream: a new epoch, and the client is told so.
    assert result.get("recovered", False) is False
    assert result["was_recovering"] is True
    assert result["epoch"] != first_epoch
    # Nothing of the new stream comes before the 2500 push.
    assert before == from_old, before
    new = [
        (offset, n)
        for epoch, offset, n in published
        if epoch == result["epoch"] and offset > result.get("offset", 0)
    ]
    assert new, f"nothing was published after the resubscribe ({result}): ...{published[-5:]}"

    def after() -> list[tuple[int, int]]:
        return [
            (m["push"]["pub"]["offset"], m["push"]["pub"]["data"]["n"])
            for m in subscriber.messages[index:]
            if "pub" in m.get("push", {})
        ]

    await subscriber.until(lambda: len(after()) >= len(new), "the last publication")
    assert after() == new, "publications after the resubscribe have a gap"
    assert subscriber.unsubscribe_codes("stream") == [2500]


# -- workers -------------------------------------------------------------------------------------


# Forked workers each start their own broker, by the code both Redis brokers share; the
# delivery between hubs that differs between them (pub/sub) runs on both in the first
# tests here: one Redis representative.
@one_redis_and_nats
async def test_two_workers_share_a_port_and_their_clients_get_each_others_publications(
    cluster: ClusterFactory,
    open_client: ClientFactory,
    servers: Servers,
    tmp_path: Path,
    broker_server: BrokerServer,
) -> None:
    observer = await cluster()
    server = await servers.start(tmp_path, "--workers", "2", "--broker", broker_server.url)

    async def workers() -> dict[str, Any]:
        return {info.uid: info for info in await observer.info() if info.uid != observer.uid}

    async def two_workers() -> bool:
        return len(await workers()) == 2

    await eventually(two_workers, "both workers in info", timeout=STARTUP)
    names = {info.name for info in (await workers()).values()}
    assert len(names) == 2  # hostname_pid: two processes
    assert all(not name.endswith(f"_{server.process.pid}") for name in names)
    clients: list[WsClient] = []
    for _ in range(4):  # the kernel spreads connections; rarely all on one worker
        clients += [await open_client(server.url) for _ in range(10)]

        async def counted(count: int = len(clients)) -> bool:
            return sum(i.num_clients for i in (await workers()).values()) == count

        await eventually(counted, "the workers' heartbeats to count the clients")
        if all(info.num_clients for info in (await workers()).values()):
            break
    assert all(info.num_clients for info in (await workers()).values())
    for client in clients:
        await client.subscribe("chat")
    for n, client in enumerate(clients):
        reply = await client.command("publish", {"channel": "chat", "data": {"n": n}})
        assert "publish" in reply, reply
    everything = set(range(len(clients)))
    for client in clients:
        await client.until(
            lambda c=client: {n for _, n in c.publications("chat")} == everything,
            "every client's publication",
        )
        offsets = [offset for offset, _ in client.publications("chat")]
        assert offsets == list(range(1, len(clients) + 1))
    for client in clients:
        await client.close()
    os.kill(server.process.pid, signal.SIGTERM)  # the parent stops its workers
    assert await server.exited(timeout=15) == 0, server.output()

    async def forgotten() -> bool:
        return not await workers()

    await eventually(forgotten, "the stopped workers to leave info", timeout=1.0)


def test_two_workers_with_the_memory_broker_exit_2_naming_the_broker() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--workers", "2", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_environment(),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "memory broker" in result.stderr
    assert "workers" in result.stderr


@redis_only
async def test_no_publication_after_a_gap_reaches_a_client_before_its_2500_push(
    cluster: ClusterFactory, open_client: ClientFactory, redis_url: str
) -> None:
    """SDKs move their position to every publication's offset: one that arrives after a
    gap, even just before the 2500 push, makes the resubscribe recover from past the gap."""
    a, b = await cluster(history_size=10000), await cluster(history_size=10000)
    clients = [await open_client(b.url) for _ in range(3)]
    epoch = ""
    for client in clients:
        epoch = (await client.subscribe("busy", recover=True))["epoch"]
    stop = asyncio.Event()

    async def publish_in_a_loop() -> None:
        n = 0
        while not stop.is_set():
            await a.publish("busy", {"n": n})  # as fast as Redis answers
            n += 1

    publishing = asyncio.create_task(publish_in_a_loop())
    try:
        async with aioredis.Redis.from_url(redis_url) as admin:
            for round in range(1, 9):
                await asyncio.sleep(0.05)
                await admin.client_kill_filter(_type="pubsub")
                for client in clients:
                    await client.until(
                        lambda c=client, r=round: c.unsubscribe_codes("busy").count(2500) == r,
                        "a 2500 push",
                    )
                    offsets = sdk_positions(client, "busy")
                    assert offsets == list(range(1, len(offsets) + 1)), (
                        f"round {round}: a gap before the 2500 push: ...{offsets[-5:]}"
                    )
                    # Resubscribe from the last offset, as SDKs do: everything is recovered.
                    result = await client.subscribe(
                        "busy", recover=True, offset=offsets[-1], epoch=epoch
                    )
                    assert result["recovered"] is True
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await publishing


def sdk_positions(client: WsClient, channel: str) -> list[int]:
    """The offsets an SDK goes through: live publications and those recovered in replies."""
    offsets = []
    for message in client.messages:
        if "subscribe" in message and "id" in message:
            offsets += [p["offset"] for p in message["subscribe"].get("publications", [])]
        push = message.get("push", {})
        if push.get("channel") == channel and "pub" in push:
            offsets.append(push["pub"]["offset"])
    return offsets
