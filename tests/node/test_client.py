"""Tests for tidings.node.client.Client without a socket: its heartbeat deadlines.

The client is driven with frames and loop times; what it writes goes to a list
(the simplest :class:`~tidings.node.client.Transport`), so each deadline is checked
to the second without waiting for it.
"""

from __future__ import annotations

import json

from tidings import Disconnect, MemoryBroker, load_config
from tidings.node.auth import TokenVerifier
from tidings.node.client import Client, Context
from tidings.node.node import Node

T0 = 1000.0  # loop time at which the connection was accepted


class Written:
    """A transport that keeps what the client writes, and its close."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []
        self.closed: Disconnect | None = None

    def write(self, data: bytes) -> None:
        self.messages.append(json.loads(data))

    def close(self, disconnect: Disconnect) -> None:
        self.closed = disconnect


def make_client(**client_options: float) -> tuple[Client, Written]:
    overrides: dict[str, object] = {"client.allow_anonymous_connect_without_token": True}
    overrides |= {f"client.{k}": v for k, v in client_options.items()}
    config = load_config(env={}, overrides=overrides)
    broker = MemoryBroker()
    context = Context(Node(broker, broker), config, TokenVerifier.from_config(config))
    written = Written()
    client = Client(context, written)
    client.start_heartbeat(T0)
    return client, written


async def connect(client: Client) -> None:
    await client.receive('{"id":1,"connect":{}}')


def pings(written: Written) -> int:
    return sum(1 for m in written.messages if m == {})


async def test_a_client_that_never_connects_is_closed_stale_at_its_deadline() -> None:
    client, written = make_client(stale_close_delay=10, ping_interval=25, pong_timeout=8)
    assert client.due == T0 + 10  # the first ping comes later (12.5-25 s)
    client.heartbeat(T0 + 9.9)
    assert written.closed is None
    client.heartbeat(T0 + 10)
    assert written.closed is not None and written.closed.code == 3502
    assert pings(written) == 0


async def test_a_connected_client_is_pinged_every_interval_and_the_first_ping_is_spread() -> None:
    firsts = set()
    for _ in range(20):
        client, _ = make_client(ping_interval=4, pong_timeout=2)
        firsts.add(client.due)
        assert T0 + 2 <= client.due <= T0 + 4  # between half the interval and the interval
    assert len(firsts) > 1

    client, written = make_client(ping_interval=4, pong_timeout=2, stale_close_delay=10)
    await connect(client)
    first = client.due
    client.heartbeat(first)
    assert pings(written) == 1 and client.due == first + 2  # the pong deadline comes first
    await client.receive("{}")  # the pong
    client.heartbeat(first + 2)
    assert written.closed is None and client.due == first + 4
    client.heartbeat(first + 4)
    assert pings(written) == 2
    client.heartbeat(first + 5)  # nothing due: nothing happens
    assert pings(written) == 2 and written.closed is None


async def test_a_ping_without_a_pong_by_the_deadline_closes_the_client_with_3012() -> None:
    client, written = make_client(ping_interval=4, pong_timeout=2, stale_close_delay=10)
    await connect(client)
    ping_at = client.due
    client.heartbeat(ping_at)
    client.heartbeat(ping_at + 1.9)
    assert written.closed is None
    client.heartbeat(ping_at + 2)
    assert written.closed is not None and written.closed.code == 3012


async def test_a_closed_client_has_no_deadline_left() -> None:
    client, written = make_client(ping_interval=4, pong_timeout=2)
    await connect(client)
    client.disconnect(Disconnect(3000, "test"))
    client.heartbeat(T0 + 100)
    assert client.due == float("inf") and pings(written) == 0
