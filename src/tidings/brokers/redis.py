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
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

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

__all__ = ["RedisBroker", "RedisKeys", "PUBLISH_SCRIPT"]

logger = logging.getLogger("tidings.redis")

# KEYS: stream, meta, idempotency result.
# ARGV: publication JSON (no offset), history size (0: no history), history ttl ms,
#       pub/sub channel, meta ttl ms, epoch for a new stream, excluded client,
#       idempotency ttl ms (0: none), delta (1: send the previous publication along).
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
  redis.call('publish', ARGV[4], 'd' .. offset .. ':' .. epoch .. ' ' .. ARGV[7] .. ' '
    .. #previous .. ' ' .. previous .. ARGV[1])
else
  redis.call('publish', ARGV[4], 'p' .. offset .. ':' .. epoch .. ' ' .. ARGV[7] .. ' ' .. ARGV[1])
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


class RedisKeys:
    """Names of everything tidings keeps in Redis, under one prefix."""

    def __init__(self, prefix: str = "tidings") -> None:
        self.prefix = prefix

    def pubsub(self, channel: str) -> str:
        return f"{self.prefix}.client.{channel}"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{channel}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.meta.{channel}"

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.prefix}.idempotency.{channel}.{key}"

    def presence_data(self, channel: str) -> str:
        return f"{self.prefix}.presence.data.{channel}"

    def presence_expiry(self, channel: str) -> str:
        return f"{self.prefix}.presence.expire.{channel}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}.nodes"

    def control(self, node: str = "") -> str:
        """The pub/sub channel of control messages to every node, or to ``node``."""
        return f"{self.prefix}.control.{node}" if node else f"{self.prefix}.control"

    def node(self, uid: str) -> str:
        return f"{self.prefix}.node.{uid}"


_publication_decoder = msgspec.json.Decoder(Publication)
_info_decoder = msgspec.json.Decoder(ClientInfo)
_encode = msgspec.json.encode


def publication_payload(publication: Publication) -> bytes:
    """The publication as stored and published (its offset is added by the script)."""
    return _encode(msgspec.structs.replace(publication, offset=0))


class _Shard:
    """One pub/sub connection and the channels routed through it."""

    def __init__(self, broker: RedisBroker, index: int) -> None:
        self.broker = broker
        self.index = index
        self.channels: set[str] = set()
        """Redis channel names this node wants on this connection."""
        self._pubsub: Any = None
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._batch: set[str] = set()
        self._unbatch: set[str] = set()
        self._flush_scheduled = False
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
        self._unbatch.discard(name)
        self._waiting.setdefault(name, []).append(future)
        self._batch.add(name)
        self._schedule_flush()
        return future

    def unsubscribe(self, name: str) -> None:
        self.channels.discard(name)
        self._batch.discard(name)
        self._unbatch.add(name)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Commands of one loop iteration go out together: one SUBSCRIBE for a burst.
        if not self._flush_scheduled and self._connected.is_set():
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._flush_scheduled = False
        task = asyncio.ensure_future(self._flush())
        self.broker._background.add(task)
        task.add_done_callback(self.broker._background.discard)

    async def _flush(self) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        subscribe, self._batch = self._batch, set()
        unsubscribe, self._unbatch = self._unbatch, set()
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


class RedisBroker:
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
        self.url = url
        self.keys = RedisKeys(prefix)
        self.presence_ttl = presence_ttl
        self.history_meta_ttl = history_meta_ttl
        self.max_retry_delay = max_retry_delay
        self.subscribe_timeout = subscribe_timeout
        self.errors = 0
        # health_check_interval: a pooled connection idle for a second is checked
        # (PING) before use, so the first command after Redis restarted does not
        # fail on a stale connection. Commands are not retried: a publish must not
        # risk going out twice.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_keepalive=True, health_check_interval=1
        )
        self._publish = self.redis.register_script(PUBLISH_SCRIPT)
        self._history = self.redis.register_script(HISTORY_SCRIPT)
        self._add_presence = self.redis.register_script(ADD_PRESENCE_SCRIPT)
        self._presence = self.redis.register_script(PRESENCE_SCRIPT)
        self._shards = [_Shard(self, index) for index in range(max(1, shards))]
        self._handler: BrokerEventHandler | None = None
        self._control: Callable[[bytes], None] | None = None
        self._client_prefix = self.keys.pubsub("")
        self._control_prefix = self.keys.control()
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<RedisBroker {self.url}>"

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        try:
            await self.redis.ping()  # fail fast on a wrong URL
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {_redacted(self.url)}: {exc}") from exc
        for shard in self._shards:
            shard.start()

    async def close(self) -> None:
        self._handler = self._control = None
        for shard in self._shards:
            await shard.stop()
        for task in list(self._background):
            await stop_task(task)
        await self.redis.aclose()

    def _shard(self, name: str) -> _Shard:
        return self._shards[zlib.crc32(name.encode()) % len(self._shards)]

    # --- pub/sub -----------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        name = self.keys.pubsub(channel)
        confirmed = self._shard(name).subscribe(name)
        try:
            await asyncio.wait_for(confirmed, self.subscribe_timeout)
        except TimeoutError:
            self._shard(name).unsubscribe(name)  # not routed: the node gives up on it
            raise RedisError(f"no SUBSCRIBE confirmation for {name} (Redis down?)") from None

    async def unsubscribe(self, channel: str) -> None:
        name = self.keys.pubsub(channel)
        self._shard(name).unsubscribe(name)

    # --- control messages --------------------------------------------------------

    async def start_control(self, node: str, handler: Callable[[bytes], None]) -> None:
        self._control = handler
        for name in (self.keys.control(), self.keys.control(node)):
            confirmed = self._shard(name).subscribe(name)
            try:
                await asyncio.wait_for(confirmed, self.subscribe_timeout)
            except TimeoutError:
                raise RedisError(f"no SUBSCRIBE confirmation for {name} (Redis down?)") from None

    async def publish_control(self, data: bytes, node: str = "") -> None:
        await self.redis.publish(self.keys.control(node), data)

    def _dispatch(self, name: str, data: bytes) -> None:
        if not name.startswith(self._client_prefix):
            if self._control is not None and name.startswith(self._control_prefix):
                self._control(data)
            return
        handler = self._handler
        if handler is None:
            return
        channel = name[len(self._client_prefix) :]
        kind = data[:1]
        try:
            if kind == b"p" or kind == b"d":
                head, exclude, payload = data[1:].split(b" ", 2)
                previous = None
                position, _, epoch = head.partition(b":")
                offset = int(position)
                if kind == b"d":
                    size, payload = payload.split(b" ", 1)
                    split = int(size)
                    previous = _publication_decoder.decode(payload[:split])
                    previous = msgspec.structs.replace(previous, offset=offset - 1)
                    payload = payload[split:]
                publication = _publication_decoder.decode(payload)
                if offset:
                    publication = msgspec.structs.replace(publication, offset=offset)
                handler.handle_publication(
                    channel, publication, exclude.decode(), previous, epoch.decode()
                )
            elif kind == b"j":
                handler.handle_join(channel, _info_decoder.decode(data[2:]))
            elif kind == b"l":
                handler.handle_leave(channel, _info_decoder.decode(data[2:]))
        except (ValueError, msgspec.DecodeError):
            logger.error("undecodable message on %r: %r", name, data[:100])

    def _lost(self, names: set[str]) -> None:
        """A pub/sub connection came back: its channels may have missed publications."""
        prefix = self._client_prefix
        channels = [name[len(prefix) :] for name in names if name.startswith(prefix)]
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
        reply = await self._publish(
            keys=[
                self.keys.stream(channel),
                self.keys.meta(channel),
                self.keys.idempotency(channel, idempotency_key) if idempotency_key else "",
            ],
            args=publish_args(
                self.keys,
                channel,
                publication,
                history,
                self.history_meta_ttl,
                exclude_client,
                IDEMPOTENCY_TTL if idempotency_key else 0,
                delta,
            ),
        )
        return parse_position(reply)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self.redis.publish(self.keys.pubsub(channel), b"j " + _encode(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self.redis.publish(self.keys.pubsub(channel), b"l " + _encode(info))

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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.presence_data(channel), client_id)
            pipe.zrem(self.keys.presence_expiry(channel), client_id)
            await pipe.execute()

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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.node(uid), info, px=_ms(ttl))
            pipe.zadd(self.keys.nodes, {uid: time.time() + ttl})
            await pipe.execute()

    async def forget_node(self, uid: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.node(uid))
            pipe.zrem(self.keys.nodes, uid)
            await pipe.execute()

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


def publish_args(
    keys: RedisKeys,
    channel: str,
    publication: Publication,
    history: HistoryOptions | None,
    meta_ttl: float,
    exclude_client: str,
    idempotency_ttl: float,
    delta: bool = False,
) -> list[Any]:
    """Arguments of :data:`PUBLISH_SCRIPT` (shared with the external publisher)."""
    return [
        publication_payload(publication),
        history.size if history is not None else 0,
        _ms(history.ttl) if history is not None else 0,
        keys.pubsub(channel),
        _ms(history.meta_ttl if history is not None and history.meta_ttl else meta_ttl),
        _new_epoch(),
        exclude_client,
        _ms(idempotency_ttl),
        1 if delta else 0,
    ]


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
