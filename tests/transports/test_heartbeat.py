"""The server's heartbeat tick: each ping goes out at its own deadline, not in bursts.

A thousand clients are opened on a real :class:`~tidings.transports.server.Server`
(its tick running, no socket): each connection writes to a list with the loop time.
"""

from __future__ import annotations

import asyncio
import json

from tidings import Disconnect, MemoryBroker, load_config
from tidings.node.auth import TokenVerifier
from tidings.node.client import Client, Context
from tidings.node.node import Node
from tidings.transports.server import Server

from ..conftest import eventually

PING_INTERVAL = 2.0


class Recorded:
    """A connection (and its client's transport) that keeps the times of its pings."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = Client(server.context, self)
        self.pings: list[float] = []
        self.closed: Disconnect | None = None
        self.closed_at = 0.0

    def write(self, data: bytes) -> None:
        if json.loads(data) == {}:
            self.pings.append(asyncio.get_running_loop().time())

    def close(self, disconnect: Disconnect) -> None:
        self.closed = disconnect
        self.closed_at = asyncio.get_running_loop().time()
        self.server.closed(self)

    @property
    def close_status(self) -> tuple[int, str]:
        assert self.closed is not None
        return self.closed.code, self.closed.reason

    def cut(self) -> None:
        pass


def make_server() -> Server:
    config = load_config(
        env={},
        overrides={
            "client.allow_anonymous_connect_without_token": True,
            "client.ping_interval": PING_INTERVAL,
            "client.pong_timeout": 1.0,  # a tick every 0.25 s
        },
    )
    broker = MemoryBroker()
    return Server(Context(Node(broker, broker), config, TokenVerifier.from_config(config)))


async def test_the_first_pings_of_clients_opened_together_go_out_one_by_one() -> None:
    server = make_server()
    server.open()
    loop = asyncio.get_running_loop()
    connections = [Recorded(server) for _ in range(1000)]
    opened = loop.time()
    for connection in connections:
        server.opened(connection)
        await connection.client.receive('{"id":1,"connect":{}}')
    deadlines = [connection.client._ping_at for connection in connections]
    try:
        await eventually(
            lambda: all(connection.pings for connection in connections),
            "every client pinged",
            timeout=PING_INTERVAL + 2,
        )
        firsts = sorted(connection.pings[0] - opened for connection in connections)
        assert firsts[0] >= PING_INTERVAL / 2, "from half the interval"
        assert firsts[-1] <= PING_INTERVAL + 0.2, "never later than the interval (the client waits)"
        # Each at its own deadline, so spread as the deadlines are. The tick alone
        # (every 0.25 s) sent them in bursts, late by 125 ms in the median. Lateness,
        # not a count per 10 ms: a loop stalled by other work (two test workers on two
        # cores) fires the timers that came due meanwhile together.
        late = sorted(c.pings[0] - d for c, d in zip(connections, deadlines, strict=True))
        assert late[0] >= 0, "never before its deadline"
        assert late[len(late) // 2] <= 0.01, f"median {late[len(late) // 2] * 1000:.0f} ms late"
    finally:
        await server.shutdown(1.0)
    assert all(connection.closed is not None for connection in connections)


async def test_later_pings_keep_the_interval_and_pong_deadlines_still_close() -> None:
    server = make_server()
    server.open()
    silent, answering = Recorded(server), Recorded(server)
    for connection in (silent, answering):
        server.opened(connection)
        await connection.client.receive('{"id":1,"connect":{}}')
    try:
        await eventually(lambda: len(answering.pings) == 1, "a first ping", timeout=3)
        await answering.client.receive("{}")  # the pong
        await eventually(lambda: silent.closed is not None, "no pong: closed", timeout=3)
        assert silent.closed is not None and silent.closed.code == 3012
        assert 1.0 <= silent.closed_at - silent.pings[0] <= 1.0 + 0.2, "pong_timeout after"
        await eventually(lambda: len(answering.pings) == 2, "a second ping", timeout=3)
        gap = answering.pings[1] - answering.pings[0]
        assert PING_INTERVAL <= gap <= PING_INTERVAL + 0.2
        assert answering.closed is None
    finally:
        await server.shutdown(1.0)
