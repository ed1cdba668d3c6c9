"""Publish into a Redis-backed hub from any Python program: no hub, no HTTP call.

For Django views, Celery tasks and scripts. A publication goes through the same
Lua script the hub's Redis broker uses, so it gets its offset in the channel's
history and reaches every node's subscribers.

Give it the hub's configuration so that channels keep history exactly as the
hub does (``history_size``/``history_ttl`` of their namespace)::

    publisher = Publisher("redis://localhost:6379/0", config=load_config("tidings.toml"))
    publisher.publish("chat:lobby", {"text": "hello"})
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aioredis

from ..brokers.base import IDEMPOTENCY_TTL, HistoryOptions
from ..brokers.redis import PUBLISH_SCRIPT, RedisKeys, parse_position, publish_args
from ..node.channels import channel_options
from ..options import Config
from ..protocol.codes import Error, ErrorCode
from ..protocol.wire import Publication, StreamPosition, to_raw

__all__ = ["AsyncPublisher", "Publisher"]


class _Base:
    def __init__(self, config: Config | None) -> None:
        self.config = config if config is not None else Config()
        self.keys = RedisKeys(self.config.broker.prefix)

    def _script_call(
        self,
        channel: str,
        data: Any,
        tags: dict[str, str] | None,
        idempotency_key: str,
        delta: bool,
    ) -> tuple[list[str], list[Any]]:
        if not channel:
            raise Error(ErrorCode.BAD_REQUEST, "channel required")
        options = channel_options(self.config, channel)
        history = (
            HistoryOptions(options.history_size, options.history_ttl, options.history_meta_ttl)
            if options.history_enabled
            else None
        )
        raw = to_raw(data)
        keys = [
            self.keys.stream(channel),
            self.keys.meta(channel),
            self.keys.idempotency(channel, idempotency_key) if idempotency_key else "",
        ]
        args = publish_args(
            self.keys,
            channel,
            Publication(data=raw, tags=tags or None),
            history,
            self.config.broker.history_meta_ttl,
            "",
            IDEMPOTENCY_TTL if idempotency_key else 0,
            (delta or options.delta_publish) and history is not None,
        )
        return keys, args


class Publisher(_Base):
    """A synchronous publisher (redis-py). Thread-safe; keep one per process."""

    def __init__(self, url: str, *, config: Config | None = None) -> None:
        super().__init__(config)
        self.redis: redis.Redis = redis.Redis.from_url(url)
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
        keys, args = self._script_call(channel, data, tags, idempotency_key, delta)
        reply: bytes = self._script(keys=keys, args=args)
        return parse_position(reply)

    def close(self) -> None:
        """Close the Redis connections (also done by leaving a ``with`` block)."""
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
    """The asyncio publisher (redis-py's asyncio client)."""

    def __init__(self, url: str, *, config: Config | None = None) -> None:
        super().__init__(config)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url)
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
        keys, args = self._script_call(channel, data, tags, idempotency_key, delta)
        reply: bytes = await self._script(keys=keys, args=args)
        return parse_position(reply)

    async def close(self) -> None:
        """Close the Redis connections (also done by leaving an ``async with`` block)."""
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
