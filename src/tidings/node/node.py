"""The node: channels, subscriptions, fan-out, presence and history of one process.

The node knows clients only as :class:`Subscriber` objects (something that can
take encoded bytes in its codec and be disconnected) and other nodes only through its
:class:`~tidings._broker.Broker`. It never sees a socket.

Subscribing without losing or duplicating a publication
---------------------------------------------------------
A subscription starts *buffering*: live publications for it are kept aside
while the node makes sure the broker routes the channel here and reads the
history position (or the publications to recover). The subscribe reply is then
written, followed by the buffered publications that come after what the reply
covered (those at or below its offset are duplicates and are dropped), and the
subscription goes live. Recovery is never partial: either every missed
publication is returned (``recovered: true``) or none (``recovered: false``).

Encoding once
-------------
A publication is encoded once per *variant* in use among the channel's
subscribers, not once per subscriber: the bytes for a variant are shared by
every subscriber that takes it (:class:`Encodings`). A variant is the
subscriber's codec (JSON or Protobuf) and, for subscriptions with delta
compression, full or patch (:class:`DeltaEncodings`: the patch is computed once
too). A tags filter is evaluated once per distinct filter.

Delta compression
-----------------
A delta subscription remembers the offset of the last publication its client
got (its *base*). A publication goes as a patch only when the broker gave the
previous publication along (``delta`` publishing) and that previous one is the
client's base: a client that missed one (excluded, a gap) gets the next in full,
and so does every client right after subscribing, unless the subscribe reply
recovered publications, which are chained as patches themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from msgspec import Raw

from .._tasks import stop_task
from ..brokers.base import (
    Broker,
    HistoryOptions,
    PresenceManager,
    PresenceStats,
    UnrecoverablePosition,
)
from ..options import ChannelOptions
from ..protocol.codecs import Codec, fit_publication
from ..protocol.codes import (
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_INSUFFICIENT_STATE,
    Disconnect,
    Error,
    ErrorCode,
)
from ..protocol.delta import create_patch, delta_chain, delta_payload
from ..protocol.filters import TagsFilter
from ..protocol.wire import (
    ClientInfo,
    Join,
    Leave,
    Publication,
    Push,
    Reply,
    StreamPosition,
    SubscribeResult,
)
from .metrics import Metrics

__all__ = ["Node", "Subscriber"]

logger = logging.getLogger("tidings.node")


class Subscriber(Protocol):
    """A connected client, as the node sees it."""

    @property
    def id(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def codec(self) -> Codec:
        """How the client's messages are encoded."""
        ...

    @property
    def channels(self) -> Collection[str]:
        """The channels it is subscribed to: its one record of them. The node only reads
        it, to leave them all when the client goes (:meth:`Node.remove_client`); a
        subscription that never made it into the record is the subscriber's to leave."""
        ...

    def deliver(self, data: bytes) -> None:
        """Queue one message (a push) encoded by :attr:`codec`. Must not block."""
        ...

    def disconnect(self, disconnect: Disconnect) -> None:
        """Close the client's connection."""
        ...

    def resubscribe(self, channel: str) -> None:
        """The node dropped this subscription (publications may be missing): tell the
        client now, so that it subscribes again and recovers. Must not block."""
        ...


@dataclass(slots=True)
class _Subscription:
    subscriber: Subscriber
    info: ClientInfo
    options: ChannelOptions
    push_join_leave: bool
    buffer: list[tuple[int, bytes]] | None = field(default_factory=list)
    """(offset or -1, encoded push) received while subscribing; None once live."""
    lost: bool = False
    """The broker may have lost publications while this subscribe was in progress."""
    floor: int = 0
    """Offsets up to this one reached the client in its subscribe reply or buffer: a
    late live copy of one of them (a broker delivering after the history read) is
    dropped."""
    tags_filter: TagsFilter | None = None
    """Publications whose tags do not pass are not sent (their offsets still count)."""
    filter_key: bytes = b""
    """The same for the same filter: each distinct filter is evaluated once per publication."""
    delta: bool = False
    """Delta compression negotiated: publications go as patches where they can."""
    positioned: bool = False
    epoch: str = ""
    """The stream epoch of ``floor`` and ``base``: a publication of another epoch (the
    stream's position expired) ends a positioned subscription (the client resubscribes
    and learns it) and resets a delta base."""
    base: int = 0
    """The offset of the last publication the client got, which a patch may apply to
    (0: none; the next publication goes in full)."""


@dataclass(slots=True)
class _Channel:
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    routed: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """Done once the broker routes this channel's publications here."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the client asked for about stream positions when subscribing."""

    recover: bool = False
    """Recover from ``position`` (the client was subscribed before)."""
    position: StreamPosition = field(default_factory=StreamPosition)
    recoverable: bool = False
    positioned: bool = False
    reject_unrecovered: bool = False
    """Fail with error 112 rather than answer ``recovered: false`` (subscribe ``flag``
    bit 2: centrifuge-js then asks the application for the state, ``getState``)."""


C = TypeVar("C", bound=Subscriber)


class Node(Generic[C]):
    """Channels and subscribers of this process, on top of a broker.

    Generic in the type of its clients, so callers get their own type back from
    :meth:`clients` and :meth:`user_clients`.
    """

    def __init__(
        self,
        broker: Broker,
        presence: PresenceManager,
        *,
        history_max_publication_limit: int = 300,
        metrics: Metrics | None = None,
        presence_update_interval: float = 25.0,
    ) -> None:
        self.broker = broker
        self.uid = str(uuid.uuid4())
        """This node's id: in ``info``, and in emulated connections' connect replies."""
        self.presence_update_interval = presence_update_interval
        self._presence_task: asyncio.Task[None] | None = None
        self.metrics = metrics if metrics is not None else Metrics()
        self.presence_manager = presence
        self.history_max_publication_limit = history_max_publication_limit
        self._channels: dict[str, _Channel] = {}
        self._clients: dict[str, C] = {}
        self._users: dict[str, set[str]] = {}
        self._routing: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.broker.start(self)
        self._presence_task = asyncio.ensure_future(self._refresh_presence())

    async def close(self) -> None:
        await stop_task(self._presence_task)
        for task in list(self._background):
            await stop_task(task)
        await self.broker.close()

    async def _refresh_presence(self) -> None:
        """Re-add the presence of local subscribers, so a shared store keeps them alive.

        Entries of a node that stops refreshing (it crashed) expire in the store.
        """
        while True:
            await asyncio.sleep(self.presence_update_interval)
            for channel, entry in list(self._channels.items()):
                for client_id, subscription in list(entry.subscriptions.items()):
                    if subscription.options.presence and subscription.buffer is None:
                        await self._broker_call(
                            self.presence_manager.add_presence(
                                channel, client_id, subscription.info
                            )
                        )

    # --- clients -----------------------------------------------------------------

    def add_client(self, client: C) -> None:
        self._clients[client.id] = client
        self._users.setdefault(client.user, set()).add(client.id)

    async def remove_client(self, client: C) -> None:
        """Forget a disconnected client: leave all its channels (``client.channels``)."""
        for channel in tuple(client.channels):
            await self.unsubscribe(client, channel)
        if self._clients.pop(client.id, None) is not None:
            ids = self._users.get(client.user)
            if ids is not None:
                ids.discard(client.id)
                if not ids:
                    del self._users[client.user]

    @property
    def num_clients(self) -> int:
        return len(self._clients)

    @property
    def num_users(self) -> int:
        return len(self._users)

    @property
    def num_channels(self) -> int:
        return len(self._channels)

    @property
    def num_subscriptions(self) -> int:
        return sum(len(c.subscriptions) for c in self._channels.values())

    def clients(self) -> list[C]:
        return list(self._clients.values())

    def user_clients(self, user: str) -> list[C]:
        return [self._clients[i] for i in self._users.get(user, ())]

    def client(self, client_id: str) -> C | None:
        return self._clients.get(client_id)

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers, and how many."""
        return {name: len(c.subscriptions) for name, c in self._channels.items()}

    # --- subscriptions -----------------------------------------------------------

    async def subscribe(
        self,
        subscriber: Subscriber,
        channel: str,
        options: ChannelOptions,
        *,
        info: ClientInfo,
        recovery: Recovery | None = None,
        push_join_leave: bool = False,
        tags_filter: tuple[TagsFilter, bytes] | None = None,
        delta: bool = False,
        reply: Callable[[SubscribeResult], None],
    ) -> None:
        """Subscribe ``subscriber`` to ``channel`` (with ``tags_filter``: the filter and
        its key, from :func:`~tidings.protocol.filters.parse_filter`; with ``delta``:
        Fossil delta compression, which the caller negotiated).

        ``reply`` is called with the result and must write it to the client right
        away: publications that arrived meanwhile are written right after it.

        Raises:
            Error: 100 when the broker fails (nothing is left subscribed).
        """
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
            self._reroute(channel, self._route(channel, entry))
        subscription = _Subscription(subscriber, info, options, push_join_leave, delta=delta)
        if tags_filter is not None:
            subscription.tags_filter, subscription.filter_key = tags_filter
        entry.subscriptions[subscriber.id] = subscription
        try:
            await asyncio.shield(entry.routed)
            result, last = await self._position(
                channel, options, recovery or Recovery(), subscription.tags_filter
            )
            if options.presence:
                await self.presence_manager.add_presence(channel, subscriber.id, info)
        except BaseException as exc:
            self._drop(channel, subscriber.id)
            if isinstance(exc, Error):  # the client's answer (112)
                raise
            if isinstance(exc, Exception):
                logger.exception("subscribe to %r failed", channel)
                raise Error(ErrorCode.INTERNAL) from exc
            raise
        if subscription.lost:
            # Its position may predate a gap: fail (temporary), the client retries.
            await self.unsubscribe(subscriber, channel)
            raise Error(ErrorCode.INTERNAL, "publications may be lost, subscribe again")
        if delta:
            result.delta = True
            if result.publications:
                chain = delta_chain(subscriber.codec, result.publications)
                if chain is None:
                    await self.unsubscribe(subscriber, channel)
                    subscriber.disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    return
                result.publications = chain
                subscription.base = chain[-1].offset
        reply(result)
        self._go_live(subscription, result, last)
        if options.join_leave:
            await self._broker_call(self.broker.publish_join(channel, info))

    def _reroute(self, channel: str, operation: Coroutine[Any, Any, None]) -> None:
        """Run a broker (un)subscribe for ``channel`` after the previous one finished.

        Order matters: an unsubscribe that completes after a later subscribe
        would leave a channel with subscribers that the broker no longer routes.
        """
        previous = self._routing.get(channel)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await operation

        task = asyncio.ensure_future(run())
        self._routing[channel] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._routing.get(channel) is done:
                del self._routing[channel]

        task.add_done_callback(forget)

    async def _route(self, channel: str, entry: _Channel) -> None:
        try:
            await self.broker.subscribe(channel)
        except Exception as exc:
            entry.routed.set_exception(exc)
            if self._channels.get(channel) is entry:
                del self._channels[channel]
        else:
            entry.routed.set_result(None)

    async def _position(
        self,
        channel: str,
        options: ChannelOptions,
        recovery: Recovery,
        tags_filter: TagsFilter | None = None,
    ) -> tuple[SubscribeResult, int]:
        """The subscribe result, and the stream's top offset as it was read: the client
        has everything up to it once it took the reply (publications the filter left
        out included)."""
        if not options.history_enabled:
            return SubscribeResult(), 0
        recoverable = options.force_recovery or recovery.recoverable
        positioned = recoverable or options.force_positioning or recovery.positioned
        if not positioned:
            return SubscribeResult(), 0
        if recoverable and options.force_recovery_mode == "cache":
            if recovery.recover or options.auto_cache_recover:
                return await self._recover_latest(channel, recovery.position, tags_filter)
        elif recoverable and recovery.recover:
            since = recovery.position
            try:
                publications, top = await self.broker.history(
                    channel, since=since, limit=options.history_size
                )
            except UnrecoverablePosition:
                publications, top = [], StreamPosition()
            recovered = bool(top.epoch) and _recovered(publications, since, top)
            if not recovered:
                if recovery.reject_unrecovered:
                    raise Error(ErrorCode.UNRECOVERABLE_POSITION)
                publications = []
                _, top = await self.broker.history(channel, since=None, limit=0)
            result = SubscribeResult(
                recoverable=True,
                positioned=True,
                # Recovered: the client's own position, which it advances through
                # the publications. Not recovered: the top, to start from anew.
                epoch=top.epoch,
                offset=since.offset if recovered else top.offset,
                publications=[p for p in publications if _passes(tags_filter, p)],
                recovered=recovered,
                was_recovering=True,
            )
            return result, top.offset
        _, top = await self.broker.history(channel, since=None, limit=0)
        result = SubscribeResult(
            recoverable=recoverable, positioned=True, epoch=top.epoch, offset=top.offset
        )
        return result, top.offset

    async def _recover_latest(
        self, channel: str, position: StreamPosition, tags_filter: TagsFilter | None
    ) -> tuple[SubscribeResult, int]:
        """Cache recovery: the latest publication (passing the filter, among the last
        ``history_max_publication_limit``) alone, unless the client has it."""
        limit = 1 if tags_filter is None else max(1, self.history_max_publication_limit)
        recent, top = await self.broker.history(channel, since=None, limit=limit, reverse=True)
        latest = [p for p in recent if _passes(tags_filter, p)][:1]
        has_it = (
            bool(latest) and position.epoch == top.epoch and position.offset >= latest[0].offset
        )
        result = SubscribeResult(
            recoverable=True,
            positioned=True,
            epoch=top.epoch,
            # The client's position, advanced by the publication it gets (as in stream
            # mode); the top when it gets none.
            offset=position.offset if latest and not has_it else top.offset,
            publications=[] if has_it else list(latest),
            recovered=bool(latest),
            was_recovering=True,
        )
        return result, top.offset

    def _go_live(self, subscription: _Subscription, result: SubscribeResult, last: int) -> None:
        """Write what arrived while subscribing, after the reply, from offset ``last``.

        Buffered publications of a delta subscription are full ones: the last
        written becomes its base."""
        buffered, subscription.buffer = subscription.buffer or [], None
        for offset, data in buffered:
            if offset > 0 and result.positioned:
                if offset <= last:
                    continue  # already in the reply
                if offset > last + 1:
                    # A publication went missing between history and live stream.
                    subscription.subscriber.disconnect(DISCONNECT_INSUFFICIENT_STATE)
                    return
                last = offset
            if data:
                subscription.subscriber.deliver(data)
                if offset > 0:
                    subscription.base = offset
        if result.positioned:
            subscription.floor = last
            subscription.positioned, subscription.epoch = True, result.epoch

    async def unsubscribe(self, subscriber: Subscriber, channel: str) -> None:
        """Remove the subscription (leave, presence) if there is one."""
        subscription = self._drop(channel, subscriber.id)
        if subscription is not None:
            await self._forget(channel, subscription)

    async def _forget(self, channel: str, subscription: _Subscription) -> None:
        """What a dropped subscription leaves behind: its presence, its leave event."""
        options = subscription.options
        if options.presence:
            client_id = subscription.subscriber.id
            await self._broker_call(self.presence_manager.remove_presence(channel, client_id))
        if options.join_leave and subscription.buffer is None:
            await self._broker_call(self.broker.publish_leave(channel, subscription.info))

    def _drop(self, channel: str, client_id: str) -> _Subscription | None:
        entry = self._channels.get(channel)
        if entry is None:
            return None
        subscription = entry.subscriptions.pop(client_id, None)
        if not entry.subscriptions:
            del self._channels[channel]
            self._reroute(channel, self._unroute(channel))
        return subscription

    async def _unroute(self, channel: str) -> None:
        if channel not in self._channels:  # nobody subscribed again meanwhile
            await self._broker_call(self.broker.unsubscribe(channel))

    async def _broker_call(self, call: Awaitable[None]) -> None:
        """Await a broker call whose failure must not fail the client's command."""
        try:
            await call
        except Exception:
            self.metrics.broker_errors.inc()
            logger.exception("broker call failed")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def is_subscribed(self, client_id: str, channel: str) -> bool:
        """Whether the client has a subscription to ``channel`` here (live or starting)."""
        return self.subscription_info(client_id, channel) is not None

    def subscription_info(self, client_id: str, channel: str) -> ClientInfo | None:
        """The info the client subscribed to ``channel`` with, if it has a subscription."""
        entry = self._channels.get(channel)
        subscription = entry.subscriptions.get(client_id) if entry is not None else None
        return subscription.info if subscription is not None else None

    # --- publishing --------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Raw,
        options: ChannelOptions,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        idempotency_key: str = "",
        exclude_client: str = "",
        delta: bool = False,
    ) -> StreamPosition:
        """Publish to every subscriber of ``channel`` on every node; return its position.

        With ``delta`` (or the channel's ``delta_publish``), delta subscribers may get
        it as a patch against the previous publication (needs history).

        Raises:
            Error: 100 when the broker fails.
        """
        history = (
            HistoryOptions(options.history_size, options.history_ttl, options.history_meta_ttl)
            if options.history_enabled and not skip_history
            else None
        )
        publication = Publication(data=data, info=info, tags=tags or None)
        started = time.perf_counter()
        try:
            position = await self.broker.publish(
                channel,
                publication,
                history,
                idempotency_key=idempotency_key,
                exclude_client=exclude_client,
                delta=(delta or options.delta_publish) and history is not None,
            )
        except Exception as exc:
            self.metrics.broker_errors.inc()
            logger.exception("publish to %r failed", channel)
            raise Error(ErrorCode.INTERNAL) from exc
        self.metrics.publish_duration.observe(time.perf_counter() - started)
        return position

    # BrokerEventHandler: called by the broker, synchronously, for routed channels.

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        exclude_client: str = "",
        previous: Publication | None = None,
        epoch: str = "",
    ) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        lost: list[str] = []
        encodings = Encodings(Push(channel=channel, pub=publication))
        deltas: DeltaEncodings | None = None
        offset = publication.offset
        passed: dict[bytes, bool] = {}  # filter key -> verdict: once per distinct filter
        filtered = 0
        for client_id, subscription in entry.subscriptions.items():
            if epoch and subscription.epoch != epoch and subscription.buffer is None:
                if subscription.positioned:
                    lost.append(client_id)  # its offsets are of another epoch
                    continue
                subscription.epoch, subscription.base = epoch, 0
            subscriber = subscription.subscriber
            skip = client_id == exclude_client
            if subscription.tags_filter is not None and not skip:
                verdict = passed.get(subscription.filter_key)
                if verdict is None:
                    verdict = passed[subscription.filter_key] = subscription.tags_filter(
                        publication.tags
                    )
                skip = not verdict
                filtered += skip
            if subscription.delta:
                if deltas is None:
                    deltas = DeltaEncodings(channel, publication, previous)
                patch = subscription.buffer is None and 0 < offset - 1 == subscription.base
                data = deltas.get(subscriber.codec, patch)
            else:
                data = encodings.get(subscriber.codec)
            if subscription.buffer is None:
                if not skip and (offset > subscription.floor or not offset):
                    if data is None:
                        subscriber.disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    else:
                        subscriber.deliver(data)
                        subscription.base = offset
            else:
                # Buffered even when skipped: the offset still counts for gaps.
                if skip:
                    data = b""
                elif data is None:
                    subscriber.disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    continue
                subscription.buffer.append((offset, data))
        recipients = len(entry.subscriptions) - filtered - len(lost)
        if exclude_client in entry.subscriptions and exclude_client not in lost:
            recipients -= 1
        self.metrics.sent_publication.inc(recipients)
        if lost:
            logger.warning("%r: a new epoch, %d subscribers resubscribe", channel, len(lost))
            self._lose(channel, lost)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        sent = self._push_join_leave(channel, Push(channel=channel, join=Join(info=info)))
        self.metrics.sent_join.inc(sent)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        sent = self._push_join_leave(channel, Push(channel=channel, leave=Leave(info=info)))
        self.metrics.sent_leave.inc(sent)

    def handle_lost(self, channels: Sequence[str]) -> None:
        """Make the subscribers of these channels resubscribe, before anything else arrives.

        Live subscriptions are dropped now (synchronously, so not one more
        publication reaches them past the gap) and their clients told (2500);
        subscribes in progress fail and are retried by their clients.
        """
        for channel in channels:
            entry = self._channels.get(channel)
            if entry is None:
                continue
            logger.warning(
                "publications of %r may be lost: %d subscribers resubscribe",
                channel,
                len(entry.subscriptions),
            )
            self._lose(channel, list(entry.subscriptions))

    def _lose(self, channel: str, client_ids: Sequence[str]) -> None:
        """Drop these subscriptions, which may have missed publications, and tell their
        clients; fail those being subscribed (their clients retry)."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        for client_id in client_ids:
            subscription = entry.subscriptions.get(client_id)
            if subscription is None:
                continue
            if subscription.buffer is not None:
                subscription.lost = True
                continue
            self._drop(channel, client_id)
            subscription.subscriber.resubscribe(channel)
            self._spawn(self._forget(channel, subscription))

    def _push_join_leave(self, channel: str, push: Push) -> int:
        entry = self._channels.get(channel)
        if entry is None:
            return 0
        encodings = Encodings(push)
        sent = 0
        for subscription in entry.subscriptions.values():
            if not subscription.push_join_leave:
                continue
            data = encodings.get(subscription.subscriber.codec)
            if data is None:  # info a JSON client cannot take
                continue
            sent += 1
            if subscription.buffer is None:
                subscription.subscriber.deliver(data)
            else:
                subscription.buffer.append((-1, data))
        return sent

    # --- presence and history ----------------------------------------------------

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self.presence_manager.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        return await self.presence_manager.presence_stats(channel)

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        """Read history: ``limit`` 0 gives only the position, -1 up to the maximum.

        Raises:
            Error: 112 when ``since`` is from another epoch.
        """
        cap = self.history_max_publication_limit
        limit = cap if limit < 0 or limit > cap else limit
        try:
            return await self.broker.history(channel, since=since, limit=limit, reverse=reverse)
        except UnrecoverablePosition:
            raise Error(ErrorCode.UNRECOVERABLE_POSITION) from None

    async def remove_history(self, channel: str) -> None:
        await self.broker.remove_history(channel)


class Encodings:
    """One push, encoded at most once per codec (see "Encoding once" above).

    ``get`` returns None when the push cannot be written in that codec at all
    (a payload that is not JSON, for a JSON client).
    """

    __slots__ = ("push", "_encoded", "_codec", "_data")

    def __init__(self, push: Push) -> None:
        self.push = push
        self._encoded: dict[Codec, bytes | None] = {}
        # Most channels have one codec: the last one asked for is answered first.
        self._codec: Codec | None = None
        self._data: bytes | None = None

    def get(self, codec: Codec) -> bytes | None:
        if codec is not self._codec:
            if codec not in self._encoded:
                self._encoded[codec] = encode_push(codec, self.push)
            self._codec, self._data = codec, self._encoded[codec]
        return self._data


class DeltaEncodings:
    """One publication for delta subscribers: in full, or as a patch against
    ``previous`` (the channel's publication before it, when published with delta).

    The patch is computed at most once, and each form encoded at most once per
    codec. ``get`` returns None when the publication cannot be written in that
    codec at all.
    """

    __slots__ = ("channel", "publication", "previous", "_patch", "_encoded")

    def __init__(self, channel: str, publication: Publication, previous: Publication | None):
        self.channel = channel
        self.publication = publication
        self.previous = previous
        self._patch: bytes | None = None
        self._encoded: dict[tuple[Codec, bool], bytes | None] = {}

    def get(self, codec: Codec, patch: bool) -> bytes | None:
        """The push, as a patch when ``patch`` (the client has the previous
        publication) and one pays, else in full."""
        patch = patch and self.previous is not None
        key = (codec, patch)
        if key not in self._encoded:
            if patch:
                # Where a patch does not pay, its subscribers share the full form's bytes.
                data = self._encode(codec, True)
                self._encoded[key] = data if data is not None else self.get(codec, False)
            else:
                self._encoded[key] = self._encode(codec, False)
        return self._encoded[key]

    def _encode(self, codec: Codec, patch: bool) -> bytes | None:
        publication = self.publication
        if patch:
            assert self.previous is not None
            if self._patch is None:
                previous = bytes(self.previous.data)
                self._patch = create_patch(previous, bytes(publication.data)) or b""
            if not self._patch:
                return None
            payload = delta_payload(codec, self._patch)
        else:
            payload = delta_payload(codec, bytes(publication.data))
        if payload is None:
            return None
        pub = msgspec.structs.replace(publication, data=payload, delta=patch)
        return codec.encode(Reply(push=Push(channel=self.channel, pub=pub)))


def encode_push(codec: Codec, push: Push) -> bytes | None:
    """A push in ``codec``, its payloads made fit for it; None if one cannot be."""
    if push.pub is not None:
        pub = fit_publication(codec, push.pub)
        if pub is None:
            return None
        if pub is not push.pub:
            push = msgspec.structs.replace(push, pub=pub)
    return codec.encode(Reply(push=push))


def _passes(tags_filter: TagsFilter | None, publication: Publication) -> bool:
    """Whether the publication passes the filter (every one passes without a filter)."""
    return tags_filter is None or tags_filter(publication.tags)


def _recovered(
    publications: Sequence[Publication], since: StreamPosition, top: StreamPosition
) -> bool:
    if since.epoch and since.epoch != top.epoch:
        return False
    if publications:
        return publications[0].offset == since.offset + 1 and publications[-1].offset == top.offset
    return top.offset == since.offset
