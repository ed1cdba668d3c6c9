"""The NATS broker: pub/sub on core NATS, history and presence on JetStream.

* **Pub/sub**: one subject per channel, ``<prefix>.c.<token>`` (the token is the
  channel with every byte outside ``[A-Za-z0-9_-]`` written ``=XX``, so any channel
  name is one valid subject token and key-value key). A node subscribes only while
  it has local subscribers; ``subscribe`` returns once the server confirmed (flush).
  Each subscription is read in order, so each channel keeps its order.
* **History**: one JetStream stream for every channel (subject ``<prefix>.h.<token>``).
  A publication with history is appended with ``Nats-Expected-Last-Subject-Sequence``
  set to the last message of its channel that the node read: its offset (one more
  than that message's) is taken only if nobody appended in between, else the node
  reads again and retries, so offsets stay contiguous across nodes. The stream
  *republishes* every stored message to the channel's live subject, in stored order:
  subscribers see offsets in order, and a refused attempt is never seen. The
  last message also holds the channel's epoch; a *marker* message keeps the
  position when there is no publication (a new epoch, removed history).
  ``history_size`` is applied when reading (and the stream is trimmed in the
  background), ``history_ttl`` and the position's meta TTL from the last message's
  time; idempotency keys are JetStream's own deduplication (``Nats-Msg-Id``).
* **Presence, nodes**: key-value buckets whose entries expire (``presence_ttl``,
  the heartbeat's TTL); nodes refresh what they own, so a killed node's entries go.
* **Control**: ``<prefix>.control`` (every node) and ``<prefix>.control.<node>``.

Messages on a live subject are those of the Redis broker (``p``/``d`` publications,
``j``/``l`` join and leave, see :mod:`tidings.brokers.redis`); a stored message is
the publication message itself, so what is republished needs no other decoding.

When the connection breaks, nats-py reconnects (and subscribes again); commands fail
meanwhile, and once back the broker reports every channel to the node
(``handle_lost``), whose clients resubscribe and recover from history. A NATS
restarted without its JetStream storage comes back without history: the next read
or publication starts a new epoch, and clients get ``recovered: false``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import api
from nats.js.errors import (
    APIError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)

from .._tasks import stop_task
from ..protocol.wire import ClientInfo, Publication, StreamPosition
from .base import (
    IDEMPOTENCY_TTL,
    BrokerEventHandler,
    BrokerUnavailable,
    HistoryOptions,
    PresenceStats,
    UnrecoverablePosition,
    select_history,
)
from .messages import decode_message, encode_publication, publication_payload

__all__ = ["NatsBroker", "channel_token"]

logger = logging.getLogger("tidings.nats")

_WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code: another message was appended to the subject first."""
_STREAM_NOT_FOUND = 10059
_STREAM_NAME_IN_USE = 10058
"""Creating a stream (or bucket) that exists with another configuration."""
_SUBJECTS_OVERLAP = 10065
"""Creating a stream whose subjects another one takes (one created at the same time)."""
_HISTORY_HEADER = "Tidings-History"
"""``<size> <ttl ms> <meta ttl ms>`` of the channel, on every stored message."""
_KV_OPERATION = "KV-Operation"
_NODES_KEPT = 3600.0
"""Seconds the node registry keeps the entry of a node that stopped announcing itself."""
_TOPS_KEPT = 1_000
"""Channels whose last append a node remembers (to skip reading it before the next),
besides those it is subscribed to."""

_REORDER_WAIT = 0.2
"""Seconds a publication that arrived before its predecessor waits for it."""

T = TypeVar("T")
_info_decoder = msgspec.json.Decoder(ClientInfo)
_publication_decoder = msgspec.json.Decoder(Publication)
_encode = msgspec.json.encode
_PLAIN = re.compile(rb"[A-Za-z0-9_-]*")


def channel_token(name: str) -> str:
    """``name`` as one subject token and key-value key: bytes outside
    ``[A-Za-z0-9_-]`` become ``=XX`` (so ``=`` itself too), and the empty name ``=``
    (a subject has no empty token); reversible."""
    raw = name.encode()
    if not raw:
        return "="
    if _PLAIN.fullmatch(raw):
        return name
    return "".join(
        chr(byte) if _PLAIN.fullmatch(bytes((byte,))) else f"={byte:02X}" for byte in raw
    )


def _name_token(prefix: str) -> str:
    """``prefix`` as part of a stream or bucket name (``[A-Za-z0-9_-]``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix)


def _new_epoch() -> str:
    return secrets.token_urlsafe(6)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


@dataclass(frozen=True, slots=True)
class _Top:
    """The last stored message of a channel: where its stream stands."""

    seq: int
    """Its JetStream sequence (what the next append expects)."""
    offset: int
    epoch: str
    stored_at: float
    """When it was stored (seconds since the epoch, server clock)."""
    size: int
    ttl: float
    meta_ttl: float
    publication: bytes | None
    """Its publication (without offset), None for a marker."""

    def forgotten(self, now: float) -> bool:
        """The position outlived its meta TTL: the channel starts a new epoch."""
        return self.meta_ttl > 0 and now > self.stored_at + self.meta_ttl

    def history_expired(self, now: float) -> bool:
        return now > self.stored_at + self.ttl


def _position_of(data: bytes) -> tuple[int, str]:
    """(offset, epoch) of a publication message; offset 0 for anything else."""
    if data[:1] not in (b"p", b"d"):
        return 0, ""
    offset, _, epoch = data[1 : data.find(b" ")].partition(b":")
    try:
        return int(offset), epoch.decode()
    except ValueError:
        return 0, ""


def _parse_stored(data: bytes) -> tuple[int, str, bytes | None]:
    """(offset, epoch, publication or None for a marker) of a stored message."""
    kind = data[:1]
    if kind == b"m":
        offset, _, epoch = data[1:].partition(b":")
        return int(offset), epoch.decode(), None
    head, _, rest = data[1:].partition(b" ")
    offset, _, epoch = head.partition(b":")
    _, _, payload = rest.partition(b" ")
    if kind == b"d":
        size, _, payload = payload.partition(b" ")
        payload = payload[int(size) :]
    return int(offset), epoch.decode(), payload


def _history_header(headers: dict[str, str] | None) -> tuple[int, float, float]:
    value = (headers or {}).get(_HISTORY_HEADER, "")
    try:
        size, ttl, meta = value.split(" ")
        return int(size), int(ttl) / 1000, int(meta) / 1000
    except ValueError:
        return 0, 0.0, 0.0


class _ChannelLocks:
    """One lock per channel while someone holds or awaits it (then forgotten)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    async def run(self, channel: str, work: Callable[[], Any]) -> Any:
        lock, users = self._locks.get(channel, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[channel] = (lock, users + 1)
        try:
            async with lock:
                return await work()
        finally:
            lock, users = self._locks[channel]
            if users == 1:
                del self._locks[channel]
            else:
                self._locks[channel] = (lock, users - 1)


class _Sequencer:
    """Hands a channel's publications to the node in offset order.

    The stream republishes what it stored, but appends that come from two connections
    at once may be republished swapped (seen with nats-server 2.9): a publication ahead
    of the next one expected waits, briefly, for those before it. If they do not come,
    or one comes after its successors went out, the subscribers are told to recover.
    """

    def __init__(self, broker: NatsBroker, channel: str, epoch: str, first: int) -> None:
        self.broker = broker
        self.channel = channel
        self.epoch = epoch
        self.next = first
        self.held: dict[int, bytes] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, offset: int, data: bytes) -> None:
        if offset < self.next:
            self.broker._gap(self.channel)  # late: its successors went out already
        elif offset > self.next:
            self.held[offset] = data
            if self.timer is None:
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(_REORDER_WAIT, self._give_up)
        else:
            self.broker._deliver(self.channel, data)
            self.next += 1
            while self.next in self.held:
                self.broker._deliver(self.channel, self.held.pop(self.next))
                self.next += 1
            if not self.held:
                self.cancel()

    def _give_up(self) -> None:
        self.timer = None
        for offset in sorted(self.held):
            self.broker._deliver(self.channel, self.held[offset])
            self.next = offset + 1
        self.held.clear()
        self.broker._gap(self.channel)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class NatsUnavailable(ConnectionError):
    """The broker is not connected to NATS right now (it is reconnecting)."""


class NatsBroker:
    """Broker, presence manager, node registry and control bus on NATS with JetStream.

    Args:
        url: ``nats://host:4222``; several servers of a cluster comma-separated.
        prefix: prepended to every subject, stream and bucket, to share one NATS.
        presence_ttl: seconds a presence entry lives without a refresh.
        history_meta_ttl: seconds a channel's epoch and offset are kept idle.
        max_retry_delay: seconds between reconnection attempts.
        subscribe_timeout: seconds to wait for the server to confirm a subscribe
            (and for any JetStream request).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        presence_ttl: float = 60.0,
        history_meta_ttl: float = 30 * 24 * 3600.0,
        max_retry_delay: float = 2.0,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.servers = [
            server if "://" in server else f"nats://{server}"
            for server in (part.strip() for part in url.split(","))
            if server
        ]
        self.prefix = prefix
        self.presence_ttl = presence_ttl
        self.history_meta_ttl = history_meta_ttl
        self.max_retry_delay = max_retry_delay
        self.timeout = subscribe_timeout
        self.errors = 0
        name = _name_token(prefix)
        self.history_stream = f"{name}_history"
        self.presence_bucket = f"{name}_presence"
        self.nodes_bucket = f"{name}_nodes"
        self.idempotency_bucket = f"{name}_idempotency"
        self._nc: Any = None
        self._js: Any = None
        self._handler: BrokerEventHandler | None = None
        self._control: Callable[[bytes], None] | None = None
        self._subscriptions: dict[str, Any] = {}
        """Live subscriptions by channel."""
        self._channels: dict[str, str] = {}
        """Channel of each subscribed live subject."""
        self._locks = _ChannelLocks()
        self._tops: OrderedDict[str, _Top] = OrderedDict()
        """The last append of this node in each channel it published to lately."""
        self._ready: set[str] = set()
        """Streams and buckets known to exist (created again after a NATS restart)."""
        self._connected = False
        self._down: asyncio.Future[None] | None = None
        """Done when the connection drops (a new one once it is back)."""
        self._sequencers: dict[str, _Sequencer] = {}
        self._last_error: Exception | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._flush: asyncio.Task[None] | None = None
        """The PING the subscribes of this loop turn wait for, not sent yet."""

    def __repr__(self) -> str:
        return f"<NatsBroker {self.url}>"

    # --- connection --------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        # nats-py retries the first connection forever (as it reconnects later): bound it.
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    name="tidings",
                    connect_timeout=2,
                    reconnect_time_wait=min(self.max_retry_delay, 0.5),
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                ),
                self.timeout,
            )
        except Exception as exc:
            reason = self._last_error or exc or "timed out"
            raise BrokerUnavailable(f"cannot reach NATS at {self.url}: {reason}") from exc
        self._js = self._nc.jetstream(timeout=self.timeout)
        self._connected = True
        self._down = asyncio.get_running_loop().create_future()

    async def close(self) -> None:
        self._handler = self._control = None
        self._connected = False
        if self._down is not None and not self._down.done():
            self._down.set_result(None)
        for task in list(self._background):
            await stop_task(task)
        self._flush = None
        if self._nc is not None:
            await self._nc.close()
        self._subscriptions.clear()
        self._channels.clear()

    async def _disconnected(self) -> None:
        if self._connected:
            logger.warning("lost NATS at %s", self._nc.connected_url or self.url)
            self.errors += 1
        self._connected = False
        if self._down is not None and not self._down.done():
            self._down.set_result(None)  # what waits for an answer fails now

    async def _reconnected(self) -> None:
        # nats-py subscribed again before this: every channel may have missed
        # publications meanwhile, and JetStream may have come back empty.
        # Live messages are dropped until the node heard of the gap (else a client could
        # get one from after the gap, move its position past it, and recover nothing).
        logger.info("NATS back at %s", self.url)
        self._ready.clear()
        self._sequencers.clear()
        self._tops.clear()  # of a stream that may be gone
        if self._handler is not None and self._subscriptions:
            self._handler.handle_lost(list(self._subscriptions))
        self._down = asyncio.get_running_loop().create_future()
        self._connected = True

    async def _error(self, exc: Exception) -> None:
        self._last_error = exc
        logger.debug("NATS: %s", exc)

    def _client(self) -> Any:
        if not self._connected or self._nc is None or not self._nc.is_connected:
            raise NatsUnavailable(f"not connected to NATS at {self.url}")
        return self._nc

    async def _guard(self, work: Awaitable[T]) -> T:
        """Await ``work`` (a request to NATS), failing at once if the connection drops:
        nats-py would leave it waiting for its timeout."""
        down = self._down
        if down is None or down.done():
            if asyncio.iscoroutine(work):
                work.close()
            raise NatsUnavailable(f"not connected to NATS at {self.url}")
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise NatsUnavailable(f"lost NATS at {self.url} while waiting for an answer")

    def _live(self, channel: str) -> str:
        return f"{self.prefix}.c.{channel_token(channel)}"

    def _stored(self, channel: str) -> str:
        return f"{self.prefix}.h.{channel_token(channel)}"

    # --- pub/sub -----------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        client = self._client()
        if channel in self._subscriptions:
            return
        subject = self._live(channel)
        self._channels[subject] = channel
        try:
            self._subscriptions[channel] = await client.subscribe(subject, cb=self._on_message)
        except Exception:
            del self._channels[subject]
            raise
        try:
            await self._confirmed()
        except Exception:
            await self.unsubscribe(channel)  # not routed: the node gives up on it
            raise

    async def _confirmed(self) -> None:
        """Return once the server answered a PING sent after every subscription made so
        far: the subscribes of one loop turn (a reconnect storm) share a round trip."""
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._ping())
            self._background.add(self._flush)
            self._flush.add_done_callback(self._background.discard)
        flush = self._flush
        try:
            await asyncio.shield(flush)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if flush.cancelled() and (task is None or not task.cancelling()):
                # The shared PING was stopped (the broker closing), not this caller.
                raise NatsUnavailable(f"closed before NATS at {self.url} answered") from None
            raise

    async def _ping(self) -> None:
        self._flush = None  # subscriptions made from now on wait for the next PING
        await self._guard(self._client().flush(timeout=self.timeout))

    async def unsubscribe(self, channel: str) -> None:
        self._tops.pop(channel, None)
        sequencer = self._sequencers.pop(channel, None)
        if sequencer is not None:
            sequencer.cancel()
        subscription = self._subscriptions.pop(channel, None)
        self._channels.pop(self._live(channel), None)
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception:  # connection closed or broken: nothing left to undo
                pass

    async def _on_message(self, msg: Msg) -> None:
        handler = self._handler
        channel = self._channels.get(msg.subject)
        if handler is None or channel is None or not self._connected:
            return
        data = msg.data
        offset, epoch = _position_of(data)
        if not offset:  # no history: no order to restore
            decode_message(handler, channel, data)
            return
        sequencer = self._sequencers.get(channel)
        if sequencer is None or sequencer.epoch != epoch:
            if sequencer is not None:
                sequencer.cancel()
            sequencer = self._sequencers[channel] = _Sequencer(self, channel, epoch, offset)
        sequencer.add(offset, data)

    def _deliver(self, channel: str, data: bytes) -> None:
        if self._handler is not None:
            decode_message(self._handler, channel, data)

    def _gap(self, channel: str) -> None:
        """Publications of ``channel`` reached this node out of order beyond repair."""
        logger.warning("%r: publications arrived out of order: its subscribers recover", channel)
        if self._handler is not None:
            self._handler.handle_lost([channel])

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
        client = self._client()
        if history is None:
            if idempotency_key and not await self._first_time(channel, idempotency_key):
                return StreamPosition()
            try:
                await client.publish(
                    self._live(channel), encode_publication(0, "", exclude_client, publication)
                )
            except Exception:
                if idempotency_key:  # not published: a retry must go out
                    await self._forget_key(channel, idempotency_key)
                raise
            return StreamPosition()

        async def append() -> StreamPosition:
            return await self._append(
                channel, publication, history, idempotency_key, exclude_client, delta
            )

        position: StreamPosition = await self._locks.run(channel, append)
        return position

    async def _append(
        self,
        channel: str,
        publication: Publication,
        history: HistoryOptions,
        idempotency_key: str,
        exclude_client: str,
        delta: bool,
    ) -> StreamPosition:
        subject = self._stored(channel)
        meta_ttl = history.meta_ttl or self.history_meta_ttl
        headers = {_HISTORY_HEADER: f"{history.size} {_ms(history.ttl)} {_ms(meta_ttl)}"}
        if idempotency_key:
            headers["Nats-Msg-Id"] = f"{channel_token(channel)}:{idempotency_key}"
        payload = publication_payload(publication)
        # Several nodes may append at once: the loser of each race reads again. The top
        # this node left is tried first (one round trip when it publishes alone).
        top = self._tops.pop(channel, None)
        for _ in range(100):
            if top is None:
                top = await self._top(channel)
            now = time.time()
            previous = None
            if top is None or top.forgotten(now):
                offset, epoch = 1, _new_epoch()
            else:
                offset, epoch = top.offset + 1, top.epoch
                if delta and top.publication is not None and not top.history_expired(now):
                    previous = top.publication
            headers["Nats-Expected-Last-Subject-Sequence"] = str(top.seq if top else 0)
            body = encode_publication(offset, epoch, exclude_client, payload, previous)
            try:
                ack = await self._stream_call(self._js.publish, subject, body, headers=headers)
            except APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    top = None
                    continue
                raise
            if ack.duplicate:
                return await self._original(channel, ack.seq)
            if top is not None and (top.epoch != epoch or top.history_expired(now)):
                self._trim(subject, before=ack.seq)  # what is left of the old epoch or ttl
            elif offset > history.size and offset % max(1, history.size // 2) == 0:
                self._trim(subject, keep=history.size)
            self._tops[channel] = _Top(
                ack.seq, offset, epoch, now, history.size, history.ttl, meta_ttl, payload
            )
            if len(self._tops) > _TOPS_KEPT:
                self._tops.popitem(last=False)
            return StreamPosition(offset=offset, epoch=epoch)
        raise NatsUnavailable(f"could not append to {channel!r}: too many concurrent appends")

    async def _original(self, channel: str, seq: int) -> StreamPosition:
        """The position of the publication an idempotency key first published (stored
        at ``seq``); the channel's top when trimming took it already."""
        try:
            stored = await self._guard(self._js.get_msg(self.history_stream, seq=seq, direct=True))
            offset, epoch, _ = _parse_stored(stored.data or b"")
        except NotFoundError:
            top = await self._position(channel)
            offset, epoch = top.offset, top.epoch
        return StreamPosition(offset=offset, epoch=epoch)

    async def _first_time(self, channel: str, key: str) -> bool:
        """Whether the idempotency key of a publication without history is new."""
        bucket = await self._bucket(self.idempotency_bucket, IDEMPOTENCY_TTL)
        try:
            await self._guard(bucket.create(f"{channel_token(channel)}.{channel_token(key)}", b""))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _forget_key(self, channel: str, key: str) -> None:
        try:
            bucket = await self._bucket(self.idempotency_bucket, IDEMPOTENCY_TTL)
            await self._guard(bucket.delete(f"{channel_token(channel)}.{channel_token(key)}"))
        except Exception as exc:  # NATS gone: the key expires in five minutes
            logger.warning("could not forget idempotency key %r of %r: %s", key, channel, exc)

    def _trim(self, subject: str, *, keep: int = 0, before: int = 0) -> None:
        """Purge, in the background, what is older than the last ``keep`` messages of
        ``subject``, or than its message ``before`` (racing appends after it stay)."""

        async def purge() -> None:
            try:
                await self._js.purge_stream(
                    self.history_stream, subject=subject, keep=keep or None, seq=before or None
                )
            except Exception as exc:  # the next trim catches up
                logger.debug("trimming %s failed: %s", subject, exc)

        task = asyncio.ensure_future(purge())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._client().publish(self._live(channel), b"j " + _encode(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._client().publish(self._live(channel), b"l " + _encode(info))

    # --- history -----------------------------------------------------------------

    async def _ensure_stream(self) -> None:
        if self.history_stream in self._ready:
            return
        live = f"{self.prefix}.c.>"
        stored = f"{self.prefix}.h.>"
        config = api.StreamConfig(
            name=self.history_stream,
            subjects=[stored],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=self.history_meta_ttl,
            duplicate_window=min(IDEMPOTENCY_TTL, self.history_meta_ttl),
            allow_direct=True,
            republish=api.RePublish(src=stored, dest=live),
        )
        try:
            await self._guard(self._js.add_stream(config))
        except APIError as exc:
            # Created by another node meanwhile, or before with other limits (NATS may
            # say either): use it as it is, if it is there.
            if exc.err_code not in (_STREAM_NAME_IN_USE, _SUBJECTS_OVERLAP):
                raise
            await self._guard(self._js.stream_info(self.history_stream))
        self._ready.add(self.history_stream)

    async def _stream_call(self, call: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """Run a JetStream call, creating the history stream first if it is missing."""
        self._client()
        await self._ensure_stream()
        try:
            return await self._guard(call(*args, **kw))
        except (NoRespondersError, NoStreamResponseError):
            pass  # a NATS restarted without storage: no stream takes the subject
        except APIError as exc:
            if exc.err_code != _STREAM_NOT_FOUND and exc.code != 503:
                raise
        self._ready.discard(self.history_stream)
        await self._ensure_stream()
        return await self._guard(call(*args, **kw))

    async def _top(self, channel: str) -> _Top | None:
        subject = self._stored(channel)
        try:
            msg = await self._stream_call(
                self._js.get_last_msg, self.history_stream, subject, direct=True
            )
        except NotFoundError:
            return None
        offset, epoch, publication = _parse_stored(msg.data or b"")
        size, ttl, meta_ttl = _history_header(msg.headers)
        stored_at = msg.time.timestamp() if msg.time is not None else time.time()
        return _Top(msg.seq, offset, epoch, stored_at, size, ttl, meta_ttl, publication)

    async def _position(self, channel: str) -> _Top:
        """The channel's top, a new epoch's marker written if it has none (or forgot it)."""
        for _ in range(100):
            top = await self._top(channel)
            if top is not None and not top.forgotten(time.time()):
                return top
            marker = await self._mark(channel, 0, _new_epoch(), top.seq if top else 0)
            if marker is not None:
                if top is not None:
                    self._trim(self._stored(channel), before=marker.seq)
                return marker
        raise NatsUnavailable(f"could not read the position of {channel!r}")

    async def _mark(self, channel: str, offset: int, epoch: str, expected: int) -> _Top | None:
        """Append a marker (a position without publication); None if another was first."""
        self._tops.pop(channel, None)
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(expected),
            _HISTORY_HEADER: f"0 0 {_ms(self.history_meta_ttl)}",
        }
        subject = self._stored(channel)
        body = f"m{offset}:{epoch}".encode()
        try:
            ack = await self._stream_call(self._js.publish, subject, body, headers=headers)
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return None
            raise
        return _Top(ack.seq, offset, epoch, time.time(), 0, 0.0, self.history_meta_ttl, None)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        top = await self._position(channel)
        position = StreamPosition(offset=top.offset, epoch=top.epoch)
        if since is not None and since.epoch and since.epoch != top.epoch:
            raise UnrecoverablePosition(channel)
        if limit == 0 or top.publication is None or top.history_expired(time.time()):
            return [], position
        oldest = top.offset - top.size
        kept: list[tuple[int, bytes]] = []
        expires = 0.0
        stored = await self._read(self.history_stream, self._stored(channel), top.seq)
        for data, stored_at, headers in stored:
            offset, epoch, payload = _parse_stored(data)
            if stored_at > expires or payload is None:
                kept.clear()  # the history had expired, or was removed, before this one
            _, ttl, _ = _history_header(headers)
            expires = stored_at + ttl
            if payload is not None and epoch == top.epoch and oldest < offset <= top.offset:
                kept.append((offset, payload))
        stream = [
            msgspec.structs.replace(_publication_decoder.decode(payload), offset=offset)
            for offset, payload in kept
        ]
        return select_history(stream, since, limit, reverse), position

    async def _read(
        self, stream: str, subject: str, last_seq: int = 0, *, last_per_subject: bool = False
    ) -> list[tuple[bytes, float, dict[str, str] | None]]:
        """The stored messages of ``subject`` (a wildcard for presence), oldest first,
        up to ``last_seq``, with when they were stored and their headers; deleted
        key-value entries left out."""
        return await self._guard(self._read_consumer(stream, subject, last_seq, last_per_subject))

    async def _read_consumer(
        self, stream: str, subject: str, last_seq: int, last_per_subject: bool
    ) -> list[tuple[bytes, float, dict[str, str] | None]]:
        consumer = await self._js.add_consumer(
            stream,
            api.ConsumerConfig(
                filter_subject=subject,
                deliver_policy=(
                    api.DeliverPolicy.LAST_PER_SUBJECT
                    if last_per_subject
                    else api.DeliverPolicy.ALL
                ),
                ack_policy=api.AckPolicy.NONE,
                mem_storage=True,
                inactive_threshold=self.timeout * 2,
            ),
        )
        name = consumer.name
        found: list[tuple[bytes, float, dict[str, str] | None]] = []
        try:
            if not consumer.num_pending:
                return found
            pull = await self._js.pull_subscribe_bind(consumer=name, stream=stream)
            try:
                async with asyncio.timeout(self.timeout):
                    while True:
                        try:
                            # Short: when what was pending expired meanwhile, nats-py
                            # waits the whole timeout for messages that never come.
                            batch = await pull.fetch(batch=1000, timeout=0.25)
                        except nats.errors.TimeoutError:
                            if (await pull.consumer_info()).num_pending == 0:
                                return found
                            continue
                        for msg in batch:
                            if last_seq and msg.metadata.sequence.stream > last_seq:
                                return found
                            if (msg.headers or {}).get(_KV_OPERATION) not in ("DEL", "PURGE"):
                                stored_at = msg.metadata.timestamp.timestamp()
                                found.append((msg.data, stored_at, msg.headers))
                        if batch[-1].metadata.num_pending == 0:
                            return found
            finally:
                await pull.unsubscribe()
        finally:
            try:
                await self._js.delete_consumer(stream, name)
            except Exception:  # it goes by itself once inactive
                pass

    async def remove_history(self, channel: str) -> None:
        async def remove() -> None:
            top = await self._position(channel)
            # A marker keeps the position; what is before it goes.
            marker = await self._mark(channel, top.offset, top.epoch, top.seq)
            if marker is not None:
                self._trim(self._stored(channel), before=marker.seq)

        await self._locks.run(channel, remove)

    # --- key-value buckets -------------------------------------------------------

    async def _bucket(self, name: str, ttl: float) -> Any:
        self._client()
        if name not in self._ready:
            try:
                await self._guard(
                    self._js.create_key_value(
                        api.KeyValueConfig(
                            bucket=name, history=1, ttl=ttl, storage=api.StorageType.MEMORY
                        )
                    )
                )
            except APIError as exc:
                if exc.err_code not in (_STREAM_NAME_IN_USE, _SUBJECTS_OVERLAP):
                    raise
                logger.debug("bucket %s: %s", name, exc)  # made meanwhile, or other limits
            self._ready.add(name)
        return await self._guard(self._js.key_value(name))

    # --- presence ----------------------------------------------------------------

    def _presence_key(self, channel: str, client_id: str) -> str:
        return f"{channel_token(channel)}.{channel_token(client_id)}"

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        bucket = await self._bucket(self.presence_bucket, self.presence_ttl)
        await self._guard(bucket.put(self._presence_key(channel, client_id), _encode(info)))

    async def remove_presence(self, channel: str, client_id: str) -> None:
        bucket = await self._bucket(self.presence_bucket, self.presence_ttl)
        await self._guard(bucket.delete(self._presence_key(channel, client_id)))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        await self._bucket(self.presence_bucket, self.presence_ttl)
        subject = f"$KV.{self.presence_bucket}.{channel_token(channel)}.*"
        stream = f"KV_{self.presence_bucket}"
        infos = [
            _info_decoder.decode(data)
            for data, _, _ in await self._read(stream, subject, last_per_subject=True)
        ]
        return {info.client: info for info in infos}

    async def presence_stats(self, channel: str) -> PresenceStats:
        return PresenceStats.of(await self.presence(channel))

    # --- nodes -------------------------------------------------------------------

    async def heartbeat(self, uid: str, info: bytes, ttl: float) -> None:
        """Announce this node (``info`` is its JSON) for ``ttl`` seconds."""
        # Nodes may announce themselves for different ttls: each entry says until when
        # it holds, and the bucket only forgets the entries of nodes long gone.
        bucket = await self._bucket(self.nodes_bucket, _NODES_KEPT)
        entry = f"{time.time() + ttl:.3f} ".encode() + info
        await self._guard(bucket.put(channel_token(uid), entry))

    async def forget_node(self, uid: str) -> None:
        bucket = await self._bucket(self.nodes_bucket, _NODES_KEPT)
        await self._guard(bucket.delete(channel_token(uid)))

    async def nodes(self) -> list[bytes]:
        """The JSON infos of the live nodes."""
        await self._bucket(self.nodes_bucket, _NODES_KEPT)
        subject = f"$KV.{self.nodes_bucket}.>"
        now, infos = time.time(), []
        entries = await self._read(f"KV_{self.nodes_bucket}", subject, last_per_subject=True)
        for entry, _, _ in entries:
            until, _, info = entry.partition(b" ")
            if float(until) > now:
                infos.append(info)
        return infos

    # --- control messages --------------------------------------------------------

    def _control_subject(self, node: str = "") -> str:
        base = f"{self.prefix}.control"
        return f"{base}.{channel_token(node)}" if node else base

    async def start_control(self, node: str, handler: Callable[[bytes], None]) -> None:
        self._control = handler
        client = self._client()
        for subject in (self._control_subject(), self._control_subject(node)):
            await client.subscribe(subject, cb=self._on_control)
        await self._guard(client.flush(timeout=self.timeout))

    async def _on_control(self, msg: Msg) -> None:
        if self._control is not None:
            self._control(msg.data)

    async def publish_control(self, data: bytes, node: str = "") -> None:
        await self._client().publish(self._control_subject(node), data)
