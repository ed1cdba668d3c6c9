"""The Redis broker: many processes and machines, one hub.

* **Pub/sub**: a node SUBSCRIBEs only to channels with local subscribers, over a
  small pool of pub/sub connections; a channel always uses the same connection
  (chosen by hash), so its publications arrive in order. Subscribes that come
  together (a reconnect storm) go out as one SUBSCRIBE per connection.
* **History**: a Redis Stream per channel (entry id ``<offset>-0``), bounded by
  ``history_size`` and expiring ``history_ttl`` after the last publication,
  plus a meta hash with the ``epoch`` and the top offset. Appending, numbering
  and PUBLISHing happen in one Lua script, so every node sees the same offsets.
* **Presence**: a hash of client infos and a sorted set of expiry times per
  channel; nodes refresh their clients' entries, so those of a crashed node
  expire after ``presence_ttl``.
* **Nodes**: each node heartbeats its info with a TTL; ``nodes()`` lists the live ones.

When a pub/sub connection breaks, the node keeps serving; publications sent
meanwhile may be lost, so after reconnecting (with backoff) and resubscribing,
the broker reports the channels to the node (``handle_lost``), which tells their
subscribers to resubscribe (unsubscribe code 2500) and recover from history.

On a Redis Cluster (``redis+cluster://host:port,host:port``, Redis >= 7) the
:class:`RedisClusterBroker` does the same with the same scripts: a channel's keys
and pub/sub channel share a hash slot (a ``{channel}`` hash tag), publications go
out with SPUBLISH to the slot's shard only, and pub/sub runs over one connection
per master; a slot that moves or a master that fails over is followed, and its
channels are reported lost once subscribed again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS, key_slot
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    MovedError,
    RedisClusterException,
    RedisError,
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
)
from .messages import decode_message, encode_publication, publication_payload

__all__ = [
    "PUBLISH_SCRIPT",
    "ClusterURL",
    "RedisBroker",
    "RedisClusterBroker",
    "RedisClusterKeys",
    "RedisKeys",
]

logger = logging.getLogger("tidings.redis")

OUTBOX_LIMIT = 10_000
"""Commands queued for Redis past which publishers wait for their pipeline."""

UNBOUNDED = 2**31
"""Connections a client may open to a Redis node: one per concurrent command. redis-py
8 caps them at 100 and fails the next command (MaxConnectionsError) instead of waiting."""

# KEYS: stream, meta, idempotency result.
# ARGV: publication JSON (no offset), history size (0: no history), history ttl ms,
#       pub/sub channel, meta ttl ms, epoch for a new stream, excluded client,
#       idempotency ttl ms (0: none), delta (1: send the previous publication along),
#       the command that sends it (PUBLISH; SPUBLISH on a cluster).
# Published: "p<offset>:<epoch> <excluded> <publication>", or with delta and a previous
# publication "d<offset>:<epoch> <excluded> <length of previous> <previous><publication>".
PUBLISH_SCRIPT = """
if ARGV[8] ~= '0' then
  local seen = redis.call('get', KEYS[3])
  if seen then return seen end
end
local offset = 0
local epoch = ''
local previous = nil
if ARGV[2] ~= '0' then
  epoch = redis.call('hget', KEYS[2], 'e')
  if not epoch then
    -- A new epoch: what is left of the old stream is not of it.
    epoch = ARGV[6]
    redis.call('hset', KEYS[2], 'e', epoch)
    redis.call('del', KEYS[1])
  end
  offset = redis.call('hincrby', KEYS[2], 's', 1)
  if ARGV[5] ~= '0' then redis.call('pexpire', KEYS[2], ARGV[5]) end
  if ARGV[9] == '1' and offset > 1 then
    local id = (offset - 1) .. '-0'
    local entries = redis.call('xrange', KEYS[1], id, id)
    if #entries > 0 then previous = entries[1][2][2] end
  end
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[3])
end
if previous then
  redis.call(ARGV[10], ARGV[4], 'd' .. offset .. ':' .. epoch .. ' ' .. ARGV[7] .. ' '
    .. #previous .. ' ' .. previous .. ARGV[1])
else
  redis.call(ARGV[10], ARGV[4], 'p' .. offset .. ':' .. epoch .. ' ' .. ARGV[7] .. ' ' .. ARGV[1])
end
local result = offset .. ' ' .. epoch
if ARGV[8] ~= '0' then redis.call('set', KEYS[3], result, 'PX', ARGV[8]) end
return result
"""

# KEYS: stream, meta. ARGV: epoch for a new stream, meta ttl ms, range start,
# range end, count (-1: all; 0: position only), reverse (0/1).
HISTORY_SCRIPT = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
  if ARGV[2] ~= '0' then redis.call('pexpire', KEYS[2], ARGV[2]) end
end
local top = redis.call('hget', KEYS[2], 's') or '0'
local items = {}
if ARGV[5] ~= '0' then
  local command = 'xrange'
  if ARGV[6] == '1' then command = 'xrevrange' end
  if ARGV[5] == '-1' then
    items = redis.call(command, KEYS[1], ARGV[3], ARGV[4])
  else
    items = redis.call(command, KEYS[1], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
  end
end
return {top, epoch, items}
"""

# KEYS: presence data hash, expiry zset. ARGV: client, expire at (s), info, key ttl ms.
ADD_PRESENCE_SCRIPT = """
redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
redis.call('pexpire', KEYS[1], ARGV[4])
redis.call('pexpire', KEYS[2], ARGV[4])
"""

# KEYS: presence data hash, expiry zset. ARGV: now (s).
PRESENCE_SCRIPT = """
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
for _, client in ipairs(expired) do redis.call('hdel', KEYS[1], client) end
if #expired > 0 then redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1]) end
return redis.call('hgetall', KEYS[1])
"""

# Two keys of one slot changed together. Scripts rather than MULTI: redis-py's cluster
# client runs a transaction in a thread of its own, blocking the event loop meanwhile.
# KEYS: presence data hash, expiry zset. ARGV: client.
REMOVE_PRESENCE_SCRIPT = """
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
"""

# KEYS: node info, nodes zset. ARGV: uid, info, ttl ms (0: forget the node), expire at (s).
HEARTBEAT_SCRIPT = """
if ARGV[3] == '0' then
  redis.call('del', KEYS[1])
  redis.call('zrem', KEYS[2], ARGV[1])
else
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('zadd', KEYS[2], ARGV[4], ARGV[1])
end
"""


class RedisKeys:
    """Names of everything tidings keeps in Redis, under one prefix."""

    publish_command = "PUBLISH"
    """The command publications go out with."""

    def __init__(self, prefix: str = "tidings") -> None:
        self.prefix = prefix
        self._client_head = f"{prefix}.client."

    def _tag(self, channel: str) -> str:
        """``channel`` as it appears in its keys' names."""
        return channel

    def pubsub(self, channel: str) -> str:
        return f"{self._client_head}{self._tag(channel)}"

    def channel_of(self, name: str) -> str | None:
        """The channel whose pub/sub channel is ``name``; None for a control channel."""
        if not name.startswith(self._client_head):
            return None
        return name[len(self._client_head) :]

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{self._tag(channel)}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.meta.{self._tag(channel)}"

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.prefix}.idempotency.{self._tag(channel)}.{key}"

    def presence_data(self, channel: str) -> str:
        return f"{self.prefix}.presence.data.{self._tag(channel)}"

    def presence_expiry(self, channel: str) -> str:
        return f"{self.prefix}.presence.expire.{self._tag(channel)}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}.nodes"

    def control(self, node: str = "") -> str:
        """The pub/sub channel of control messages to every node, or to ``node``."""
        return f"{self.prefix}.control.{node}" if node else f"{self.prefix}.control"

    def node(self, uid: str) -> str:
        return f"{self.prefix}.node.{uid}"


class RedisClusterKeys(RedisKeys):
    """Names on a Redis Cluster, where a script or transaction touches one hash slot.

    Every key of a channel, and its pub/sub channel, carry the channel as hash tag
    (``tidings.stream.{chat:lobby}``): they share a slot, so the scripts stay atomic
    and the script's SPUBLISH goes out on the master that holds the history. The node
    registry's keys share the tag ``{nodes}``; control channels need no common slot.
    """

    publish_command = "SPUBLISH"

    def __init__(self, prefix: str = "tidings") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"broker.prefix {prefix!r}: no braces on a Redis Cluster (hash tags)")
        super().__init__(prefix)

    def _tag(self, channel: str) -> str:
        # A leading "}" would make the tag empty (each key then hashed whole, in its
        # own slot): such names, and those starting with the escape, get a "\\" first.
        if channel.startswith(("}", "\\")):
            channel = "\\" + channel
        return f"{{{channel}}}"

    def channel_of(self, name: str) -> str | None:
        tagged = super().channel_of(name)
        if tagged is None:
            return None
        channel = tagged[1:-1]
        return channel[1:] if channel.startswith("\\") else channel

    @property
    def nodes(self) -> str:
        return f"{self.prefix}.{{nodes}}"

    def node(self, uid: str) -> str:
        return f"{self.prefix}.{{nodes}}.{uid}"


_publication_decoder = msgspec.json.Decoder(Publication)
_info_decoder = msgspec.json.Decoder(ClientInfo)
_encode = msgspec.json.encode


class _Batches:
    """The subscribes and unsubscribes of a pub/sub connection that one loop turn
    asked for, sent together by ``_flush``: one command each for a burst."""

    def __init__(self, broker: _RedisCommon[Any]) -> None:
        self.broker = broker
        self._batch: set[str] = set()
        self._unbatch: set[str] = set()
        self._flush_scheduled = False

    def _can_flush(self) -> bool:
        raise NotImplementedError

    async def _flush(self) -> None:
        raise NotImplementedError

    def _add(self, name: str) -> None:
        self._unbatch.discard(name)
        self._batch.add(name)
        self._schedule_flush()

    def _remove(self, name: str) -> None:
        self._batch.discard(name)
        self._unbatch.add(name)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._can_flush():
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._flush_scheduled = False
        task = asyncio.ensure_future(self._flush())
        self.broker._background.add(task)
        task.add_done_callback(self.broker._background.discard)

    def _take_batches(self) -> tuple[set[str], set[str]]:
        batches = self._batch, self._unbatch
        self._batch, self._unbatch = set(), set()
        return batches


class _Shard(_Batches):
    """One pub/sub connection and the channels routed through it."""

    def __init__(self, broker: RedisBroker, index: int) -> None:
        super().__init__(broker)
        self.index = index
        self.channels: set[str] = set()
        """Redis channel names this node wants on this connection."""
        self._pubsub: Any = None
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await stop_task(self.task)
        await self._close()

    def subscribe(self, name: str) -> asyncio.Future[None]:
        """Route ``name`` here; the future is done once Redis confirmed it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channels.add(name)
        self._waiting.setdefault(name, []).append(future)
        self._add(name)
        return future

    def unsubscribe(self, name: str) -> None:
        self.channels.discard(name)
        self._waiting.pop(name, None)  # of a subscribe given up on
        self._remove(name)

    def _can_flush(self) -> bool:
        return self._connected.is_set()

    async def _flush(self) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        subscribe, unsubscribe = self._take_batches()
        try:
            if subscribe:
                await pubsub.subscribe(*subscribe)
            if unsubscribe:
                await pubsub.unsubscribe(*unsubscribe)
        except (RedisError, OSError) as exc:
            # The reader notices the broken connection and resubscribes everything.
            logger.warning("pub/sub shard %d: subscribe failed: %s", self.index, exc)

    async def _run(self) -> None:
        delay = 0.05
        lost = False
        while True:
            try:
                await self._connect()
                if lost:
                    # Redis came back (maybe restarted): idle pooled connections are
                    # stale, drop them before a command trips on one.
                    async with self.broker.pool_lock:  # not under a pipeline taking one
                        await self.broker.redis.connection_pool.disconnect(inuse_connections=False)
                    self.broker._lost(self.channels)
                    lost = False
                delay = 0.05
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken connection, Redis down
                if not lost:
                    logger.warning("pub/sub shard %d lost Redis: %s", self.index, exc)
                    self.broker.errors += 1
                lost = True
                self._connected.clear()
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.broker.max_retry_delay)

    async def _connect(self) -> None:
        pubsub = self.broker.redis.pubsub()
        self._pubsub = pubsub
        channels = set(self.channels)
        # A placeholder channel keeps the connection in pub/sub mode even with no
        # channel, so get_message() blocks instead of returning at once.
        await pubsub.subscribe(self.broker.keys.pubsub(f"__shard{self.index}__"), *channels)
        self._batch -= channels
        self._connected.set()
        if self._batch or self._unbatch:
            self._schedule_flush()

    async def _read(self) -> None:
        pubsub = self._pubsub
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            name = message["channel"].decode()
            if kind == b"message" or kind == "message":
                self.broker._dispatch(name, message["data"])
            elif kind in (b"subscribe", "subscribe"):
                for future in self._waiting.pop(name, ()):
                    if not future.done():
                        future.set_result(None)

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # closing a broken connection may fail: nothing to do
                pass


_Client = TypeVar("_Client", aioredis.Redis, aioredis.RedisCluster)


class _RedisCommon(Generic[_Client]):
    """What the brokers on one Redis and on a Redis Cluster share: the scripts,
    history, presence, the node registry and the reading of pub/sub messages. How
    pub/sub connections are kept is each one's own (``_subscribe_name``...)."""

    def __init__(
        self,
        url: str,
        client: _Client,
        keys: RedisKeys,
        *,
        presence_ttl: float,
        history_meta_ttl: float,
        max_retry_delay: float,
        subscribe_timeout: float,
    ) -> None:
        self.url = url
        self.keys = keys
        self.presence_ttl = presence_ttl
        self.history_meta_ttl = history_meta_ttl
        self.max_retry_delay = max_retry_delay
        self.subscribe_timeout = subscribe_timeout
        self.errors = 0
        self.redis: _Client = client
        self._history = client.register_script(HISTORY_SCRIPT)
        self._add_presence = client.register_script(ADD_PRESENCE_SCRIPT)
        self._presence = client.register_script(PRESENCE_SCRIPT)
        self._remove_presence = client.register_script(REMOVE_PRESENCE_SCRIPT)
        self._heartbeat = client.register_script(HEARTBEAT_SCRIPT)
        self._handler: BrokerEventHandler | None = None
        self._control: Callable[[bytes], None] | None = None
        self._control_prefix = keys.control()
        self._background: set[asyncio.Task[None]] = set()
        self._outbox: list[tuple[tuple[Any, ...], asyncio.Future[Any] | None]] = []
        """What the node publishes, for the next pipeline: a command, and the future
        of its caller (None: nobody waits for it)."""
        self._sender: asyncio.Task[None] | None = None
        self._outbox_failed = False
        """A pipeline failed: every publish waits for Redis until one succeeds."""
        self.pool_lock = asyncio.Lock()
        """Held by the outbox's pipeline and by a shard dropping the pooled connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_redacted(self.url)}>"

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        try:
            await self.redis.ping()  # fail fast on a wrong URL
            await self._start_pubsub()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {_redacted(self.url)}: {exc}") from exc

    async def close(self) -> None:
        if self._sender is not None:  # what was published goes out first
            await asyncio.wait([self._sender], timeout=self.subscribe_timeout)
            await stop_task(self._sender)
        if self._outbox:
            logger.warning("closing: %d publications not sent", len(self._outbox))
        self._handler = self._control = None
        await self._stop_pubsub()
        for task in list(self._background):
            await stop_task(task)
        await self.redis.aclose()

    # --- what each kind of broker does its own way ---------------------------------

    async def _start_pubsub(self) -> None:
        raise NotImplementedError

    async def _stop_pubsub(self) -> None:
        raise NotImplementedError

    def _subscribe_name(self, name: str) -> asyncio.Future[None]:
        """Route the pub/sub channel ``name`` here; done once Redis confirmed it."""
        raise NotImplementedError

    def _unsubscribe_name(self, name: str) -> None:
        raise NotImplementedError

    # --- pub/sub -----------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        name = self.keys.pubsub(channel)
        try:
            await self._confirmed(name)
        except RedisError:
            self._unsubscribe_name(name)  # not routed: the node gives up on it
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._unsubscribe_name(self.keys.pubsub(channel))

    async def _confirmed(self, name: str) -> None:
        try:
            await asyncio.wait_for(self._subscribe_name(name), self.subscribe_timeout)
        except TimeoutError:
            raise RedisError(f"no SUBSCRIBE confirmation for {name} (Redis down?)") from None

    async def _send(self, name: str, data: bytes) -> None:
        await self._call(self.keys.publish_command, name, data)

    # --- control messages --------------------------------------------------------

    async def start_control(self, node: str, handler: Callable[[bytes], None]) -> None:
        self._control = handler
        for name in (self.keys.control(), self.keys.control(node)):
            await self._confirmed(name)

    async def publish_control(self, data: bytes, node: str = "") -> None:
        await self._send(self.keys.control(node), data)

    def _dispatch(self, name: str, data: bytes) -> None:
        channel = self.keys.channel_of(name)
        if channel is None:
            if self._control is not None and name.startswith(self._control_prefix):
                self._control(data)
            return
        if self._handler is not None:
            decode_message(self._handler, channel, data)

    def _lost(self, names: set[str]) -> None:
        """Pub/sub channels routed here again after a gap: they may have missed publications."""
        channels = [c for c in map(self.keys.channel_of, names) if c is not None]
        if self._handler is not None and channels:
            self._handler.handle_lost(channels)

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
        if history is None and not idempotency_key:
            data = encode_publication(0, "", exclude_client, publication)
            command = (self.keys.publish_command, self.keys.pubsub(channel), data)
            if self._outbox_failed or len(self._outbox) >= OUTBOX_LIMIT:
                await self._call(*command)
                self._outbox_failed = False
            else:  # no position to wait for: the caller goes on (see _send_outbox)
                self._enqueue(command, None)
            return StreamPosition(offset=0, epoch="")
        keys, args = publish_script_input(
            self.keys,
            channel,
            publication,
            history,
            meta_ttl=self.history_meta_ttl,
            exclude_client=exclude_client,
            idempotency_key=idempotency_key,
            delta=delta,
        )
        # EVAL rather than EVALSHA: a pipeline cannot load a script Redis lost (a
        # restart) on the way; Redis keeps the compiled script by its digest all the same.
        reply = await self._call("EVAL", PUBLISH_SCRIPT, len(keys), *keys, *args)
        self._outbox_failed = False
        return parse_position(reply)

    # --- the outbox: what the node publishes, in order, one pipeline at a time -------
    #
    # Everything this node sends on pub/sub channels goes through one queue: publication
    # scripts, publications without history, joins, leaves and control messages. Those
    # of a loop turn go out in one pipeline, and the next pipeline only once the last
    # one was answered, so Redis runs them in the order the node made them (a join
    # after a publication stays after it), also on a cluster (a pipeline keeps the
    # order of each node's commands).
    #
    # A publication without history or idempotency key has no position to give its
    # publisher, and nothing could recover it if it were lost on its way: waiting for
    # Redis would only hold the publisher (a client connection's commands run in turn:
    # a round trip each). So its caller goes on, as a NATS publish does; if Redis fails
    # its pipeline, it is lost with a log line, and every publish waits for Redis (and
    # fails with the error) until one succeeds. Past OUTBOX_LIMIT queued commands,
    # publishers wait too: a Redis slower than the node holds them back instead of
    # letting the queue grow.

    async def _pipeline_failed(self, exc: Exception) -> None:
        """What the client needs after a pipeline failed (each kind its own)."""

    def _enqueue(self, command: tuple[Any, ...], future: asyncio.Future[Any] | None) -> None:
        self._outbox.append((command, future))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_outbox())

    async def _call(self, *command: Any) -> Any:
        """Send ``command`` in its turn; its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(command, future)
        return await future

    async def _send_outbox(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                pipeline = self.redis.pipeline(transaction=False)
                for command, _ in batch:
                    pipeline.execute_command(*command)
                failed = False
                try:
                    # Bounded: a Redis that stopped answering without closing the
                    # connection must not hold every publisher forever.
                    async with self.pool_lock, asyncio.timeout(self.subscribe_timeout):
                        replies = await pipeline.execute(raise_on_error=False)
                except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                    failed = True
                    await self._pipeline_failed(exc)
                    self._outbox_failed = True
                    error = RedisError(f"Redis did not take {len(batch)} commands: {exc!r}")
                    replies = [error] * len(batch)
                    unawaited = sum(future is None for _, future in batch)
                    if unawaited:
                        logger.warning("%d publications lost: %s", unawaited, error)
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future is None:
                        if isinstance(reply, Exception) and not failed:  # else logged
                            logger.warning("a publication was refused: %s", reply)
                    elif future.done():
                        pass  # its caller gave up
                    elif isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._send(self.keys.pubsub(channel), b"j " + _encode(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._send(self.keys.pubsub(channel), b"l " + _encode(info))

    # --- history -----------------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        if reverse:
            start = f"({since.offset}-0" if since is not None else "+"
            end = "-"
        else:
            start = f"({since.offset}-0" if since is not None else "-"
            end = "+"
        top, epoch, items = await self._history(
            keys=[self.keys.stream(channel), self.keys.meta(channel)],
            args=[
                _new_epoch(),
                _ms(self.history_meta_ttl),
                start,
                end,
                limit,
                1 if reverse else 0,
            ],
        )
        position = StreamPosition(offset=int(top), epoch=epoch.decode())
        if since is not None and since.epoch and since.epoch != position.epoch:
            raise UnrecoverablePosition(channel)
        publications = [
            msgspec.structs.replace(
                _publication_decoder.decode(fields[1]), offset=int(entry_id.split(b"-")[0])
            )
            for entry_id, fields in items
        ]
        return publications, position

    async def remove_history(self, channel: str) -> None:
        await self.redis.delete(self.keys.stream(channel))

    # --- presence ----------------------------------------------------------------

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        await self._add_presence(
            keys=[self.keys.presence_data(channel), self.keys.presence_expiry(channel)],
            args=[
                client_id,
                time.time() + self.presence_ttl,
                _encode(info),
                _ms(self.presence_ttl),
            ],
        )

    async def remove_presence(self, channel: str, client_id: str) -> None:
        await self._remove_presence(
            keys=[self.keys.presence_data(channel), self.keys.presence_expiry(channel)],
            args=[client_id],
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._presence(
            keys=[self.keys.presence_data(channel), self.keys.presence_expiry(channel)],
            args=[time.time()],
        )
        return {flat[i].decode(): _info_decoder.decode(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> PresenceStats:
        clients = await self.presence(channel)
        return PresenceStats.of(clients)

    # --- nodes -------------------------------------------------------------------

    async def heartbeat(self, uid: str, info: bytes, ttl: float) -> None:
        """Announce this node (``info`` is its JSON) for ``ttl`` seconds."""
        await self._heartbeat(
            keys=[self.keys.node(uid), self.keys.nodes],
            args=[uid, info, max(1, _ms(ttl)), time.time() + ttl],
        )

    async def forget_node(self, uid: str) -> None:
        await self._heartbeat(keys=[self.keys.node(uid), self.keys.nodes], args=[uid, "", 0, 0])

    async def nodes(self) -> list[bytes]:
        """JSON infos of the live nodes."""
        now = time.time()
        await self.redis.zremrangebyscore(self.keys.nodes, "-inf", now)
        uids = [
            uid.decode() if isinstance(uid, bytes) else str(uid)
            for uid in await self.redis.zrange(self.keys.nodes, 0, -1)
        ]
        if not uids:
            return []
        infos = await self.redis.mget([self.keys.node(uid) for uid in uids])
        return [info for info in infos if isinstance(info, bytes)]


class RedisBroker(_RedisCommon[aioredis.Redis]):
    """Broker, presence manager and node registry on Redis.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        prefix: prepended to every key and channel, to share one Redis.
        shards: pub/sub connections to spread channels over.
        presence_ttl: seconds a presence entry lives without a refresh.
        history_meta_ttl: seconds a channel's epoch and offset are kept idle.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        shards: int = 4,
        presence_ttl: float = 60.0,
        history_meta_ttl: float = 30 * 24 * 3600.0,
        max_retry_delay: float = 2.0,
        subscribe_timeout: float = 5.0,
    ) -> None:
        # health_check_interval: a pooled connection idle for a second is checked
        # (PING) before use, so the first command after Redis restarted does not
        # fail on a stale connection. Commands are not retried (redis-py >= 6 retries
        # by default): a publish must not risk going out twice.
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            health_check_interval=1,
            max_connections=UNBOUNDED,
            retry=Retry(NoBackoff(), 0),
        )
        super().__init__(
            url,
            client,
            RedisKeys(prefix),
            presence_ttl=presence_ttl,
            history_meta_ttl=history_meta_ttl,
            max_retry_delay=max_retry_delay,
            subscribe_timeout=subscribe_timeout,
        )
        self._shards = [_Shard(self, index) for index in range(max(1, shards))]

    def _shard(self, name: str) -> _Shard:
        return self._shards[zlib.crc32(name.encode()) % len(self._shards)]

    async def _start_pubsub(self) -> None:
        for shard in self._shards:
            shard.start()

    async def _stop_pubsub(self) -> None:
        for shard in self._shards:
            await shard.stop()

    def _subscribe_name(self, name: str) -> asyncio.Future[None]:
        return self._shard(name).subscribe(name)

    def _unsubscribe_name(self, name: str) -> None:
        self._shard(name).unsubscribe(name)


# --- Redis Cluster -----------------------------------------------------------------

CLUSTER_SCHEME = "redis+cluster"

Address = tuple[str, int]
"""A Redis node's host and port."""

_PING_INTERVAL = 5.0
"""Seconds of silence after which a pub/sub link PINGs its master; as long again
without an answer and the link is taken for dead (a master cut off without a reset)."""


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """What ``redis+cluster://[user:password@]host:port[,host:port...][?addr=host:port]``
    says: the seed nodes (any of them tells where the others are; ``addr`` adds one, as
    in Centrifugo's URLs) and the credentials."""

    nodes: list[Address]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        """The seeds and credentials of ``url``.

        Raises:
            ValueError: for another scheme, a database other than 0, an option other
                than ``addr``, or a seed that is not ``host[:port]``.
        """
        scheme, found, rest = url.partition("://")
        if not found or scheme != CLUSTER_SCHEME:
            raise ValueError(f"{_redacted(url)}: not a {CLUSTER_SCHEME}:// URL")
        rest, _, query = rest.partition("?")
        rest, _, database = rest.partition("/")
        if database not in ("", "0"):
            raise ValueError(f"{_redacted(url)}: a Redis Cluster has database 0 only")
        options = urllib.parse.parse_qs(query, keep_blank_values=True)
        seeds = options.pop("addr", [])
        if options:
            unknown = ", ".join(sorted(options))
            raise ValueError(f"{_redacted(url)}: unknown options {unknown} (addr= adds a seed)")
        userinfo, _, hosts = rest.rpartition("@")
        username = password = None
        if userinfo:
            user, colon, secret = userinfo.partition(":")
            username = urllib.parse.unquote(user) or None
            password = urllib.parse.unquote(secret) if colon else None
        nodes = []
        for part in [*hosts.split(","), *seeds]:
            host, colon, port = part.rpartition(":")
            if not colon or host.endswith("["):
                host, port = part, "6379"  # no port (or the inside of an IPv6 address)
            host = host.removeprefix("[").removesuffix("]")
            if not host or not port.isdigit():
                raise ValueError(f"{_redacted(url)}: {part!r} is not host:port")
            nodes.append((host, int(port)))
        return cls(nodes, username, password)


class _NodeLink(_Batches):
    """One pub/sub connection to a cluster master, SSUBSCRIBEd to the channels of its
    slots that this node wants. It lives as long as its connection: when that breaks,
    the broker finds the channels' masters anew (another link, maybe to a promoted
    replica). Redis itself unsubscribes it from the channels of a slot that moves away."""

    def __init__(self, broker: RedisClusterBroker, address: Address) -> None:
        super().__init__(broker)
        self.broker: RedisClusterBroker = broker
        self.address = address
        self.channels: set[str] = set()
        """Channel names routed here."""
        self.confirmed: set[str] = set()
        """Those Redis confirmed: their publications flow here."""
        self._unsubscribing: dict[str, int] = {}
        self._connection: aioredis.Connection | None = None
        self._connected = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._connected = False
        await stop_task(self.task)
        await self._close()

    def subscribe(self, name: str) -> None:
        self.channels.add(name)
        self._add(name)

    def unsubscribe(self, name: str) -> None:
        self.channels.discard(name)
        self.confirmed.discard(name)
        self._remove(name)

    def _can_flush(self) -> bool:
        return self._connected

    async def _flush(self) -> None:
        connection = self._connection
        # A closed connection stays closed (redis-py would reopen it to send): the
        # reader notices, and a new link sends all its channels.
        if connection is None or not self._connected or not connection.is_connected:
            return
        subscribe, unsubscribe = self._take_batches()
        # One command per slot: Redis refuses shard channels of several slots in one.
        commands = [("SSUBSCRIBE", *names) for names in _by_slot(subscribe)]
        commands += [("SUNSUBSCRIBE", *names) for names in _by_slot(unsubscribe)]
        for name in unsubscribe:
            self._unsubscribing[name] = self._unsubscribing.get(name, 0) + 1
        if not commands:
            return
        try:
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
        except (RedisError, OSError) as exc:
            # The connection is closed: the reader fails and the broker routes again.
            logger.warning("pub/sub link to %s:%d: subscribe failed: %s", *self.address, exc)

    async def _run(self) -> None:
        try:
            connection = self.broker._pubsub_connection(self.address)
            self._connection = connection
            await _open(connection)
            self.broker._link_up(self)
            # Everything routed here so far goes out in the first write.
            self._batch, self._unbatch = set(self.channels), set()
            self._connected = True
            await self._flush()
            await self._read(connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the master went away, or refused the subscriptions
            # Before any await: no flush may write to (and so reopen) this connection.
            self._connected = False
            await self._close()
            self.broker._link_down(self, exc)

    async def _read(self, connection: aioredis.Connection) -> None:
        pinged = False
        while True:
            try:
                reply = await connection.read_response(timeout=_PING_INTERVAL)
            except MovedError as moved:
                self._moved(moved)
                continue
            if reply is None:  # silence
                if pinged:
                    raise RedisConnectionError(f"no answer to PING in {_PING_INTERVAL} s")
                if not connection.is_connected:  # closed meanwhile: not to be reopened
                    raise RedisConnectionError("pub/sub connection closed")
                await connection.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            if not isinstance(reply, list) or len(reply) < 3:
                continue  # the answer to a PING
            kind, name = reply[0], reply[1].decode()
            if kind == b"smessage":
                if name in self.channels:
                    self.broker._dispatch(name, reply[2])
            elif kind == b"ssubscribe":
                self._subscribed(name)
            elif kind == b"sunsubscribe":
                self._unsubscribed(name)

    def _subscribed(self, name: str) -> None:
        if name not in self.channels:
            # Routed elsewhere meanwhile (a MOVED for its slot): not wanted here.
            self.unsubscribe(name)
            return
        self.confirmed.add(name)
        self.broker._confirm(name)

    def _unsubscribed(self, name: str) -> None:
        count = self._unsubscribing.pop(name, 0)
        if count > 1:
            self._unsubscribing[name] = count - 1
        if count or name not in self.confirmed:
            return  # the answer to our SUNSUBSCRIBE
        # Redis dropped the subscription: its slot moved to another master.
        self.channels.discard(name)
        self.confirmed.discard(name)
        self.broker._reroute(self, [name], gap=True)

    def _moved(self, moved: MovedError) -> None:
        """An SSUBSCRIBE or SUNSUBSCRIBE of the slot was refused: another master has it."""
        slot = moved.slot_id
        for name in [n for n in self._unsubscribing if _slot(n) == slot]:
            del self._unsubscribing[name]  # not subscribed here anyway
        names = [n for n in self.channels - self.confirmed if _slot(n) == slot]
        for name in names:
            self.channels.discard(name)
            self._batch.discard(name)
        self.broker._moved(self, names, slot, (moved.host, int(moved.port)))

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        self._connected = False
        if connection is not None:
            await _shut(connection)


async def _open(connection: aioredis.Connection) -> None:
    await connection.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py


async def _shut(connection: aioredis.Connection) -> None:
    """Close ``connection`` and wait until its socket is (a broken one may fail to)."""
    try:
        await connection.disconnect()
    except (RedisError, OSError):
        pass


def _slot(name: str) -> int:
    return key_slot(name.encode())


def _by_slot(names: set[str]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(_slot(name), []).append(name)
    return list(groups.values())


class RedisClusterBroker(_RedisCommon[aioredis.RedisCluster]):
    """Broker, presence manager and node registry on a Redis Cluster (Redis >= 7).

    Keys are named by :class:`RedisClusterKeys`: a channel's keys and pub/sub channel
    share a hash slot, so the scripts are those of :class:`RedisBroker`, sending with
    SPUBLISH: a publication reaches only the nodes of its slot's shard. Commands go
    through redis-py's cluster client (MOVED and ASK followed). Pub/sub goes over one
    connection per master (``_NodeLink``), SSUBSCRIBEd to the wanted channels of the
    slots it serves, after the cluster's slot map (CLUSTER SLOTS). A channel whose slot
    moves (resharding) or whose master fails is subscribed again on its new master;
    then the node hears of it (``handle_lost``): publications in between may be lost.

    Args:
        url: ``redis+cluster://[user:password@]host:port[,host:port...]`` (seed nodes).
        prefix: prepended to every key and channel, to share one cluster.
        presence_ttl: seconds a presence entry lives without a refresh.
        history_meta_ttl: seconds a channel's epoch and offset are kept idle.
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
        self._cluster_url = ClusterURL.parse(url)
        client = aioredis.RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._cluster_url.nodes],
            username=self._cluster_url.username,
            password=self._cluster_url.password,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            health_check_interval=1,
            max_connections=UNBOUNDED,
            # Not retried after a connection error (redis-py retries 10 times, and a
            # pipeline's retry sends again what a healthy master already published);
            # MOVED and ASK are still followed.
            retry=Retry(NoBackoff(), 0),
        )
        super().__init__(
            url,
            client,
            RedisClusterKeys(prefix),
            presence_ttl=presence_ttl,
            history_meta_ttl=history_meta_ttl,
            max_retry_delay=max_retry_delay,
            subscribe_timeout=subscribe_timeout,
        )
        self._owners: list[Address | None] = [None] * SLOTS
        """The master of each slot, as the cluster last told (or a MOVED since)."""
        self._known: list[Address] = list(self._cluster_url.nodes)
        """Nodes to ask for the slot map: the last map's, then the seeds."""
        self._unreachable: set[Address] = set()
        """Nodes whose connection just failed: asked last (a dead host costs a timeout)."""
        self._links: dict[Address, _NodeLink] = {}
        self._where: dict[str, _NodeLink] = {}
        self._wanted: set[str] = set()
        self._homeless: set[str] = set()
        """Wanted channel names on no link: waiting for the slot map."""
        self._gap: set[str] = set()
        """Names that were routed here, then not: reported lost once routed again."""
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._retry_delay = 0.0
        self._rerouting: asyncio.Task[None] | None = None
        self._closed = False

    async def _start_pubsub(self) -> None:
        await self._refresh_slots()

    async def _pipeline_failed(self, exc: Exception) -> None:
        # redis-py re-reads the slot map after a failed command, but after a failed
        # pipeline only when it retries it (which would publish twice): ask for it.
        if isinstance(exc, aioredis.RedisCluster.ERRORS_ALLOW_RETRY):
            await self.redis.aclose()

    async def close(self) -> None:
        await super().close()
        # redis-py's aclose() can leave sockets open: it does nothing while the client
        # waits to re-read the slot map (after a connection error), and disconnects in
        # tasks it does not await the connections of nodes a slot-map refresh dropped
        # and those marked for reconnect when released.
        manager = self.redis.nodes_manager
        # A list: a seed and the node of the slot map at its address are two objects,
        # each with its connections, that compare equal.
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        tasks = [*manager._background_tasks, *(t for n in nodes for t in n._background_tasks)]
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in nodes:
            for connection in list(node._connections):
                await _shut(connection)

    async def _stop_pubsub(self) -> None:
        self._closed = True  # a link failing meanwhile must not start another
        await stop_task(self._rerouting)
        for link in list(self._links.values()):
            await link.stop()
        self._links.clear()

    def _subscribe_name(self, name: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, []).append(future)
        self._wanted.add(name)
        link = self._where.get(name)
        if link is not None:
            link.subscribe(name)  # confirmed again: the future is done then
        elif name not in self._homeless:
            self._place(name)
        return future

    def _unsubscribe_name(self, name: str) -> None:
        self._waiting.pop(name, None)  # of a subscribe given up on
        self._wanted.discard(name)
        self._homeless.discard(name)
        self._gap.discard(name)
        link = self._where.pop(name, None)
        if link is not None:
            link.unsubscribe(name)

    def _place(self, name: str) -> None:
        """Route ``name`` to the link of its slot's master (waits for a map without one)."""
        if self._closed:
            return
        owner = self._owners[_slot(name)]
        if owner is None:
            self._homeless.add(name)
            self._reroute_soon()
            return
        link = self._links.get(owner)
        if link is None:
            link = self._links[owner] = _NodeLink(self, owner)
            link.start()
        self._where[name] = link
        link.subscribe(name)

    def _confirm(self, name: str) -> None:
        """A link's SSUBSCRIBE of ``name`` is confirmed: publications flow."""
        for future in self._waiting.pop(name, ()):
            if not future.done():
                future.set_result(None)
        if name in self._gap:
            # Now, not later: a publication read with this confirmation goes to the node
            # next, and must find it told of the gap (else a client moves past it).
            self._gap.discard(name)
            self._lost({name})

    def _reroute(self, link: _NodeLink, names: Iterable[str], *, gap: bool) -> None:
        """``names`` left ``link``: find their masters anew (``gap``: publications may
        have been missed since the link confirmed them)."""
        for name in names:
            if self._where.get(name) is link:
                del self._where[name]
            if name not in self._wanted:
                continue
            if gap:
                self._gap.add(name)
            self._homeless.add(name)
        self._reroute_soon()

    def _moved(self, link: _NodeLink, names: Iterable[str], slot: int, owner: Address) -> None:
        """A master answered that ``slot`` is ``owner``'s: route its ``names`` there."""
        self._owners[slot] = owner
        for name in names:
            if self._where.get(name) is link:
                del self._where[name]
            if name in self._wanted:
                self._place(name)

    def _reroute_soon(self) -> None:
        if (
            self._homeless
            and not self._closed
            and (self._rerouting is None or self._rerouting.done())
        ):
            self._rerouting = asyncio.ensure_future(self._rerouted())

    async def _rerouted(self) -> None:
        while self._homeless:
            await asyncio.sleep(self._retry_delay)
            try:
                await self._refresh_slots()
            except (RedisError, OSError) as exc:
                logger.warning("Redis Cluster: no slot map: %s", exc)
                self._backoff()
                continue
            names, self._homeless = self._homeless, set()
            for name in names:
                if name in self._wanted and name not in self._where:
                    self._place(name)
            if self._homeless:
                self._backoff()  # slots without a master: wait for a failover

    def _backoff(self) -> None:
        self._retry_delay = min(max(self._retry_delay * 2, 0.05), self.max_retry_delay)

    def _link_up(self, link: _NodeLink) -> None:
        self._retry_delay = 0.0
        self._unreachable.discard(link.address)

    def _link_down(self, link: _NodeLink, exc: Exception) -> None:
        logger.warning("pub/sub link to %s:%d lost: %s", *link.address, exc)
        self.errors += 1
        self._unreachable.add(link.address)
        if self._links.get(link.address) is link:
            del self._links[link.address]
        self._backoff()
        self._reroute(link, link.channels & link.confirmed, gap=True)
        self._reroute(link, link.channels - link.confirmed, gap=False)

    def _pubsub_connection(self, address: Address) -> aioredis.Connection:
        """A connection of its own for a link: RESP2 (pushes as plain replies), reads
        that wait for ever, no retries (a broken one is replaced by the broker)."""
        return aioredis.Connection(
            host=address[0],
            port=address[1],
            username=self._cluster_url.username,
            password=self._cluster_url.password,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )

    async def _refresh_slots(self) -> None:
        """Read the slot map (CLUSTER SLOTS) from the first node that answers."""
        failure: Exception | None = None
        candidates = list(dict.fromkeys([*self._known, *self._cluster_url.nodes]))
        for address in sorted(candidates, key=lambda address: address in self._unreachable):
            connection = self._pubsub_connection(address)
            try:
                await _open(connection)
                await connection.send_command("CLUSTER", "SLOTS")
                reply = await connection.read_response(timeout=2.0)
            except (RedisError, OSError) as exc:
                failure = exc
                self._unreachable.add(address)
                continue
            finally:
                await _shut(connection)
            if not isinstance(reply, list):
                failure = RedisError(f"no CLUSTER SLOTS answer from {address[0]}:{address[1]}")
                continue
            self._unreachable.discard(address)
            self._apply_slots(reply, address)
            return
        raise RedisConnectionError(f"no cluster node gave its slot map: {failure}")

    def _apply_slots(self, reply: list[Any], asked: Address) -> None:
        owners: list[Address | None] = [None] * SLOTS
        masters: list[Address] = []
        replicas: list[Address] = []
        for start, end, master, *others in reply:
            nodes = [_node_address(node, asked) for node in (master, *others)]
            owner = nodes[0]
            if owner is not None:
                owners[start : end + 1] = [owner] * (end - start + 1)
                masters.append(owner)
            replicas += [node for node in nodes[1:] if node is not None]
        self._owners = owners
        self._known = list(dict.fromkeys([*masters, *replicas]))


def _node_address(node: list[Any], asked: Address) -> Address | None:
    """A node of a CLUSTER SLOTS reply: an empty host is the one asked; ``?`` unknown."""
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    if host == "?":
        return None
    return (host or asked[0], int(node[1]))


def publish_script_input(
    keys: RedisKeys,
    channel: str,
    publication: Publication,
    history: HistoryOptions | None,
    *,
    meta_ttl: float,
    exclude_client: str,
    idempotency_key: str,
    delta: bool,
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of :data:`PUBLISH_SCRIPT` (shared with the external
    publisher). Without an idempotency key its key is not touched, but named all the
    same: on a cluster every key of a script must be in the channel's slot."""
    script_keys = [
        keys.stream(channel),
        keys.meta(channel),
        keys.idempotency(channel, idempotency_key),
    ]
    args = [
        publication_payload(publication),
        history.size if history is not None else 0,
        _ms(history.ttl) if history is not None else 0,
        keys.pubsub(channel),
        _ms(history.meta_ttl if history is not None and history.meta_ttl else meta_ttl),
        _new_epoch(),
        exclude_client,
        _ms(IDEMPOTENCY_TTL) if idempotency_key else 0,
        1 if delta else 0,
        keys.publish_command,
    ]
    return script_keys, args


def parse_position(reply: bytes) -> StreamPosition:
    offset, _, epoch = reply.decode().partition(" ")
    return StreamPosition(offset=int(offset), epoch=epoch)


def _new_epoch() -> str:
    return secrets.token_urlsafe(6)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
