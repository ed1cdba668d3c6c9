"""The in-memory broker: publish/subscribe, history and presence inside one process.

The default. Nothing leaves the process, so it serves one node only; use a
shared broker (Redis) to run several.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from ..protocol.wire import ClientInfo, Publication, StreamPosition
from .base import (
    IDEMPOTENCY_TTL,
    BrokerEventHandler,
    HistoryOptions,
    PresenceStats,
    UnrecoverablePosition,
    select_history,
)

__all__ = ["MemoryBroker"]

SWEEP_INTERVAL = 60.0
"""Seconds between two sweeps of the streams no one needs any more."""
UNPUBLISHED_TTL = 300.0
"""Seconds the position of a channel never published to outlives its last read once
nobody here subscribes to it: a client that comes back within it recovers."""


@dataclass(slots=True)
class _Stream:
    meta_expires_at: float
    """When its position (epoch and top) is forgotten: a later one starts anew."""
    read_at: float = 0.0
    """When it was last read or published to."""
    epoch: str = field(default_factory=lambda: secrets.token_urlsafe(6))
    top: int = 0
    items: deque[Publication] = field(default_factory=deque)
    expires_at: float = 0.0

    def expire(self, now: float) -> None:
        # The whole stream expires ``ttl`` after its last publication (as in
        # Centrifugo); epoch and top stay, so positions remain comparable.
        if self.items and now >= self.expires_at:
            self.items.clear()


class MemoryBroker:
    """Broker and presence manager for a single process.

    Args:
        history_meta_ttl: seconds a channel's epoch and offset outlive its last
            publication, unless its publications say otherwise.
    """

    def __init__(self, *, history_meta_ttl: float = 30 * 24 * 3600.0) -> None:
        self.history_meta_ttl = history_meta_ttl
        self._handler: BrokerEventHandler | None = None
        self._channels: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._next_sweep = 0.0
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._idempotent: dict[tuple[str, str], tuple[float, StreamPosition]] = {}

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

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
        now = time.monotonic()
        if idempotency_key:
            self._forget_idempotency_keys(now)
            seen = self._idempotent.get((channel, idempotency_key))
            if seen is not None:
                return seen[1]
        position = StreamPosition()
        previous = None
        if history is not None:
            stream = self._stream(channel, now, history.meta_ttl)
            if delta and stream.items and stream.items[-1].offset == stream.top:
                previous = stream.items[-1]
            stream.top += 1
            publication = msgspec.structs.replace(publication, offset=stream.top)
            stream.items.append(publication)
            while len(stream.items) > history.size:
                stream.items.popleft()
            stream.expires_at = now + history.ttl
            position = StreamPosition(offset=stream.top, epoch=stream.epoch)
        if idempotency_key:
            self._idempotent[(channel, idempotency_key)] = (now + IDEMPOTENCY_TTL, position)
        if self._handler is not None and channel in self._channels:
            self._handler.handle_publication(
                channel, publication, exclude_client, previous, position.epoch
            )
        return position

    def _forget_idempotency_keys(self, now: float) -> None:
        # Keys are inserted in time order, so expired ones are at the front.
        while self._idempotent:
            key, (expires_at, _) = next(iter(self._idempotent.items()))
            if expires_at > now:
                break
            del self._idempotent[key]

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._channels:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._channels:
            self._handler.handle_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        now = time.monotonic()
        stream = self._stream(channel, now)
        stream.expire(now)
        top = StreamPosition(offset=stream.top, epoch=stream.epoch)
        if since is not None and since.epoch and since.epoch != stream.epoch:
            raise UnrecoverablePosition(channel)
        if limit == 0:
            return [], top
        return select_history(stream.items, since, limit, reverse), top

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.items.clear()

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        self._presence.setdefault(channel, {})[client_id] = info

    async def remove_presence(self, channel: str, client_id: str) -> None:
        clients = self._presence.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._presence.get(channel, {}))

    async def presence_stats(self, channel: str) -> PresenceStats:
        clients = self._presence.get(channel, {})
        return PresenceStats.of(clients)

    def _stream(self, channel: str, now: float, meta_ttl: float | None = None) -> _Stream:
        """The channel's stream, a new one (a new epoch) if its position expired.

        A publication (``meta_ttl`` given, 0: ``history_meta_ttl``) keeps the position
        that long from now; a read does not extend it, as in Redis."""
        if now >= self._next_sweep:
            self._sweep(now)
        stream = self._streams.get(channel)
        if stream is None or now >= stream.meta_expires_at:
            stream = self._streams[channel] = _Stream(now + self.history_meta_ttl)
        stream.read_at = now
        if meta_ttl is not None:
            stream.meta_expires_at = now + (meta_ttl or self.history_meta_ttl)
        return stream

    def _sweep(self, now: float) -> None:
        """Forget the streams whose position expired, and those of channels never
        published to that nobody here subscribes to (a subscribe reads the position:
        per-user or per-document channels would pile up). At most once a minute."""
        self._next_sweep = now + SWEEP_INTERVAL
        expired = [
            name
            for name, stream in self._streams.items()
            if now >= stream.meta_expires_at
            or (
                stream.top == 0
                and name not in self._channels
                and now - stream.read_at > UNPUBLISHED_TTL
            )
        ]
        for name in expired:
            del self._streams[name]
