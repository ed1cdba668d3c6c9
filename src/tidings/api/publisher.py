"""Publish into a hub's broker from any Python program: no hub, no HTTP call.

For Django views, Celery tasks and scripts. On Redis, a publication goes through the
same Lua script the hub's Redis broker uses; on NATS, through the NATS broker itself:
either way it gets its offset in the channel's history and reaches every node's
subscribers.

Give it the hub's configuration so that channels keep history exactly as the
hub does (``history_size``/``history_ttl`` of their namespace)::

    publisher = Publisher("redis://localhost:6379/0", config=load_config("tidings.toml"))
    publisher.publish("chat:lobby", {"text": "hello"})

A ``redis+cluster://host:port,host:port`` URL publishes into a Redis Cluster (the
keys and SPUBLISH of :class:`~tidings.brokers.redis.RedisClusterBroker`), a
``nats://host:4222`` URL into NATS (:class:`~tidings.brokers.nats.NatsBroker`; the
synchronous publisher runs it on an event loop of its own, in a thread).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from ..brokers.base import HistoryOptions
from ..brokers.nats import NatsBroker
from ..brokers.redis import (
    CLUSTER_SCHEME,
    PUBLISH_SCRIPT,
    UNBOUNDED,
    ClusterURL,
    RedisClusterKeys,
    RedisKeys,
    parse_position,
    publish_script_input,
)
from ..node.channels import channel_options
from ..options import Config
from ..protocol.codes import Error, ErrorCode
from ..protocol.wire import ClientInfo, Publication, StreamPosition, to_raw

__all__ = ["AsyncPublisher", "Publisher"]


def _cluster(url: str) -> ClusterURL | None:
    """The cluster a ``redis+cluster://`` URL names; None for one Redis."""
    return ClusterURL.parse(url) if url.startswith(f"{CLUSTER_SCHEME}://") else None


T = TypeVar("T")

_NATS_TIMEOUT = 30.0
"""Seconds the synchronous publisher waits for its loop (connect and publish)."""


def _nats(url: str) -> bool:
    return url.startswith("nats://")


class _Deaf:
    """The broker event handler of a publisher, which subscribes to nothing."""

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        exclude_client: str = "",
        previous: Publication | None = None,
        epoch: str = "",
    ) -> None:
        pass

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        pass

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        pass

    def handle_lost(self, channels: Sequence[str]) -> None:
        pass


class _LoopThread:
    """An event loop in a daemon thread, for the synchronous publisher over NATS."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="tidings-publisher", daemon=True
        )
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _sync_node(host: str, port: int) -> redis.cluster.ClusterNode:
    return redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]  # unannotated


class _Base:
    def __init__(self, config: Config | None, cluster: bool) -> None:
        self.config = config if config is not None else Config()
        prefix = self.config.broker.prefix
        self.keys = RedisClusterKeys(prefix) if cluster else RedisKeys(prefix)

    def _prepare(
        self, channel: str, data: Any, tags: dict[str, str] | None, delta: bool
    ) -> tuple[Publication, HistoryOptions | None, bool]:
        """The publication, the history it goes in (its namespace's), and whether it
        goes with delta."""
        if not channel:
            raise Error(ErrorCode.BAD_REQUEST, "channel required")
        options = channel_options(self.config, channel)
        history = (
            HistoryOptions(options.history_size, options.history_ttl, options.history_meta_ttl)
            if options.history_enabled
            else None
        )
        publication = Publication(data=to_raw(data), tags=tags or None)
        return publication, history, (delta or options.delta_publish) and history is not None

    def _script_call(
        self,
        channel: str,
        data: Any,
        tags: dict[str, str] | None,
        idempotency_key: str,
        delta: bool,
    ) -> tuple[list[str], list[Any]]:
        publication, history, delta = self._prepare(channel, data, tags, delta)
        return publish_script_input(
            self.keys,
            channel,
            publication,
            history,
            meta_ttl=self.config.broker.history_meta_ttl,
            exclude_client="",
            idempotency_key=idempotency_key,
            delta=delta,
        )


class Publisher(_Base):
    """A synchronous publisher (redis-py, or the NATS broker on a thread of its own).
    Thread-safe; keep one per process."""

    def __init__(self, url: str, *, config: Config | None = None) -> None:
        cluster = _cluster(url)
        super().__init__(config, cluster is not None)
        self.url = url
        self.redis: redis.Redis | redis.cluster.RedisCluster | None = None
        self._nats: tuple[AsyncPublisher, _LoopThread] | None = None
        self._pid = os.getpid()
        if _nats(url):
            self._nats = AsyncPublisher(url, config=config), _LoopThread()
            return
        # No retries: a publish whose answer was lost must not go out twice.
        if cluster is None:
            self.redis = redis.Redis.from_url(url, retry=SyncRetry(NoBackoff(), 0))
        else:
            self.redis = redis.cluster.RedisCluster(
                startup_nodes=[_sync_node(host, port) for host, port in cluster.nodes],
                username=cluster.username,
                password=cluster.password,
                retry=SyncRetry(NoBackoff(), 0),
            )
        self._script = self.redis.register_script(PUBLISH_SCRIPT)

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        delta: bool = False,
    ) -> StreamPosition:
        """Publish ``data`` (JSON-serialisable) to ``channel``; return its position.

        ``tags`` travel with the publication (subscription filters match on them); a
        publication repeating the ``idempotency_key`` of one in the last five minutes is
        not published again (the first one's position is returned). With ``delta``
        (or the channel's ``delta_publish``), delta subscribers may get a patch.
        """
        if self._nats is not None:
            if os.getpid() != self._pid:
                # Forked (Celery's prefork pool, gunicorn --preload): the loop's thread
                # stayed in the parent; this process needs its own, and a connection.
                self._nats, self._pid = (
                    (AsyncPublisher(self.url, config=self.config), _LoopThread()),
                    os.getpid(),
                )
            publisher, thread = self._nats
            work = publisher.publish(
                channel, data, tags=tags, idempotency_key=idempotency_key, delta=delta
            )
            return thread.run(work, _NATS_TIMEOUT)
        keys, args = self._script_call(channel, data, tags, idempotency_key, delta)
        reply: bytes = self._script(keys=keys, args=args)
        return parse_position(reply)

    def close(self) -> None:
        """Close the connections (also done by leaving a ``with`` block)."""
        if self._nats is not None:
            publisher, thread = self._nats
            if thread.thread.is_alive():
                thread.run(publisher.close(), _NATS_TIMEOUT)
                thread.stop()
        elif self.redis is not None:
            self.redis.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPublisher(_Base):
    """The asyncio publisher (redis-py's asyncio client, or the NATS broker)."""

    def __init__(self, url: str, *, config: Config | None = None) -> None:
        cluster = _cluster(url)
        super().__init__(config, cluster is not None)
        self.redis: aioredis.Redis | aioredis.RedisCluster | None = None
        self._nats: NatsBroker | None = None
        self._connected: asyncio.Task[None] | None = None
        if _nats(url):
            self._nats = NatsBroker(
                url,
                prefix=self.config.broker.prefix,
                history_meta_ttl=self.config.broker.history_meta_ttl,
            )
            return
        if cluster is None:
            self.redis = aioredis.Redis.from_url(
                url, max_connections=UNBOUNDED, retry=Retry(NoBackoff(), 0)
            )
        else:
            self.redis = aioredis.RedisCluster(
                startup_nodes=[AsyncClusterNode(host, port) for host, port in cluster.nodes],
                username=cluster.username,
                password=cluster.password,
                max_connections=UNBOUNDED,
                retry=Retry(NoBackoff(), 0),
            )
        self._script = self.redis.register_script(PUBLISH_SCRIPT)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        delta: bool = False,
    ) -> StreamPosition:
        """Publish ``data`` (JSON-serialisable) to ``channel``; return its position.

        ``tags`` travel with the publication (subscription filters match on them); a
        publication repeating the ``idempotency_key`` of one in the last five minutes is
        not published again (the first one's position is returned). With ``delta``
        (or the channel's ``delta_publish``), delta subscribers may get a patch.
        """
        if self._nats is not None:
            publication, history, delta = self._prepare(channel, data, tags, delta)
            broker = self._nats
            if self._connected is None:  # connect once, on first use (publishes may race)
                self._connected = asyncio.ensure_future(broker.start(_Deaf()))
            connecting = self._connected
            try:
                await asyncio.shield(connecting)
            except Exception:
                if connecting.done():
                    self._connected = None  # NATS unreachable: the next publish tries again
                raise
            return await broker.publish(
                channel, publication, history, idempotency_key=idempotency_key, delta=delta
            )
        keys, args = self._script_call(channel, data, tags, idempotency_key, delta)
        reply: bytes = await self._script(keys=keys, args=args)
        return parse_position(reply)

    async def close(self) -> None:
        """Close the connections (also done by leaving an ``async with`` block)."""
        if self._nats is not None:
            if self._connected is not None:
                if not self._connected.done():
                    await asyncio.wait([self._connected])
                self._connected = None
                await self._nats.close()
        elif self.redis is not None:
            await self.redis.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
