"""The interface between the node and whatever carries publications between nodes.

A :class:`Broker` moves publications (and join/leave events) to every node that
has subscribers in a channel, and keeps each channel's history: an ``epoch`` (an
id of this incarnation of the stream) and a growing ``offset``. A
:class:`PresenceManager` keeps who is in a channel. The in-memory broker
(``tidings._memory``) implements both for a single process; a Redis or NATS
broker implements the same methods, and the node does not change.

Contract the node relies on:

* ``publish`` appends to history (when ``history`` is given) and delivers to
  every node subscribed to the channel, this one included, through
  :meth:`BrokerEventHandler.handle_publication`, in offset order per channel.
* ``subscribe(channel)`` returns once publications of the channel are routed to
  this node, so a history read that follows sees everything the live stream
  does not: the node reads history only after subscribing.
* ``history`` raises :class:`UnrecoverablePosition` when ``since.epoch`` is
  not the current epoch.
* ``publish(..., delta=True)`` hands every node, with the publication, the one
  before it in the stream (read atomically with the append), from which the node
  makes delta patches; None when history no longer has it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..protocol.wire import ClientInfo, Publication, StreamPosition

__all__ = [
    "IDEMPOTENCY_TTL",
    "Broker",
    "BrokerEventHandler",
    "BrokerUnavailable",
    "ControlBus",
    "HistoryOptions",
    "NodeRegistry",
    "PresenceManager",
    "PresenceStats",
    "UnrecoverablePosition",
    "select_history",
]


IDEMPOTENCY_TTL = 300.0
"""Seconds an idempotency key of a publish is remembered (as in Centrifugo)."""


def select_history(
    stream: Sequence[Publication], since: StreamPosition | None, limit: int, reverse: bool
) -> list[Publication]:
    """What ``history`` answers from a stream's kept publications (oldest first): those
    after ``since``, or with ``reverse`` those before it newest first, at most ``limit``
    (-1: all). Brokers that hold their streams (memory, NATS) share this reading."""
    if since is None:
        selected = list(reversed(stream)) if reverse else list(stream)
    elif reverse:
        selected = [p for p in reversed(stream) if p.offset < since.offset]
    else:
        selected = [p for p in stream if p.offset > since.offset]
    return selected if limit < 0 else selected[:limit]


class UnrecoverablePosition(Exception):
    """The requested stream position belongs to another epoch."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached at start (its message names where it was looked for)."""


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much history a publication is kept in: ``size`` items for ``ttl`` seconds,
    and the stream's position (epoch and offset) for ``meta_ttl`` seconds after it
    (0: the broker's ``history_meta_ttl``)."""

    size: int
    ttl: float
    meta_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """How many are present in a channel (the ``presence_stats`` answer)."""

    num_clients: int
    """Connections subscribed to the channel."""
    num_users: int
    """Distinct users among them (anonymous clients count as one user, ``""``)."""

    @classmethod
    def of(cls, clients: Mapping[str, ClientInfo]) -> PresenceStats:
        """The stats of a presence map (client id -> info)."""
        return cls(len(clients), len({info.user for info in clients.values()}))


class BrokerEventHandler(Protocol):
    """What a broker calls when something arrives for a channel this node subscribed to."""

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        exclude_client: str = "",
        previous: Publication | None = None,
        epoch: str = "",
    ) -> None:
        """Deliver to local subscribers, except the client ``exclude_client``;
        ``previous`` is the publication before it (when published with delta), and
        ``epoch`` the stream's epoch its offset belongs to (with history)."""
        ...

    def handle_join(self, channel: str, info: ClientInfo) -> None: ...

    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...

    def handle_lost(self, channels: Sequence[str]) -> None:
        """Publications of these channels may have been lost (the broker reconnected)."""
        ...


class Broker(Protocol):
    """Publish/subscribe between nodes, and channel history."""

    async def start(self, handler: BrokerEventHandler) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(
        self,
        channel: str,
        publication: Publication,
        history: HistoryOptions | None,
        *,
        idempotency_key: str = "",
        exclude_client: str = "",
        delta: bool = False,
    ) -> StreamPosition:
        """Deliver ``publication`` everywhere; return its position (offset 0 without history).

        A publication with an ``idempotency_key`` seen on this channel in the last
        :data:`IDEMPOTENCY_TTL` seconds is not published again: the first one's
        position is returned. ``exclude_client`` travels with the publication to
        every node's :meth:`BrokerEventHandler.handle_publication`, and so does
        the previous publication of the stream with ``delta`` (and ``history``).
        """
        ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        """Return up to ``limit`` publications after ``since`` (all when -1) and the stream top."""
        ...

    async def remove_history(self, channel: str) -> None: ...


@runtime_checkable
class ControlBus(Protocol):
    """Messages from one node to the others, or to one (optional for a broker: a
    broker that serves one process needs none)."""

    async def start_control(self, node: str, handler: Callable[[bytes], None]) -> None:
        """Hand ``handler`` every message to all nodes and every one to ``node``; return
        once they are routed here."""
        ...

    async def publish_control(self, data: bytes, node: str = "") -> None:
        """Send ``data`` to every node (this one included), or to ``node`` alone."""
        ...


@runtime_checkable
class NodeRegistry(Protocol):
    """Where the nodes of a cluster announce themselves (optional for a broker)."""

    async def heartbeat(self, uid: str, info: bytes, ttl: float) -> None:
        """Announce this node (``info`` is its JSON) for ``ttl`` seconds."""
        ...

    async def forget_node(self, uid: str) -> None: ...

    async def nodes(self) -> list[bytes]:
        """The JSON infos of the live nodes."""
        ...


@runtime_checkable
class PresenceManager(Protocol):
    """Who is subscribed to a channel, across nodes."""

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None: ...

    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> PresenceStats: ...
