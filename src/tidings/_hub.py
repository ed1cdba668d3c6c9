"""The hub: a node, its broker and its WebSocket server, as one embeddable object."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec

from ._auth import TokenVerifier
from ._broker import Broker, PresenceManager, PresenceStats
from ._channels import channel_options
from ._config import Config
from ._memory import MemoryBroker
from ._node import Node
from ._protocol import ClientInfo, Publication, StreamPosition
from ._server import WEBSOCKET_PATH, Server

__all__ = ["Hub"]

logger = logging.getLogger("tidings")


class Hub:
    """A tidings hub to run inside your own asyncio program.

    Example::

        async with Hub(Config(dev=True, port=8000)) as hub:
            await hub.publish("news", {"text": "hello"})
            await hub.serve_forever()

    Args:
        config: the configuration (see :func:`tidings.load_config`); defaults deny.
        broker: where publications travel; the in-memory broker by default.
        presence: where presence is kept; the broker by default.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        presence: PresenceManager | None = None,
    ) -> None:
        self.config = config if config is not None else Config()
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        if presence is None:
            if not isinstance(self.broker, PresenceManager):
                raise TypeError(f"{type(self.broker).__name__} keeps no presence: pass presence=")
            presence = self.broker
        self.node = Node(
            self.broker,
            presence,
            history_max_publication_limit=self.config.history_max_publication_limit,
        )
        self.verifier = TokenVerifier.from_config(self.config)
        self.server = Server(self.node, self.config, self.verifier)
        self._stopped = asyncio.Event()
        self._started = False

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the node and listen on ``config.host``/``config.port``."""
        await self.node.start()
        await self.server.start(self.config.host, self.config.port)
        self._started = True
        logger.info("tidings listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, close clients with 3001 (flushing their queues), stop the node."""
        if not self._started:
            return
        self._started = False
        await self.server.shutdown(self.config.shutdown_timeout)
        await self.node.close()
        self._stopped.set()

    async def serve_forever(self) -> None:
        """Wait until :meth:`stop` is called."""
        await self._stopped.wait()

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """The WebSocket endpoint for SDKs."""
        return f"ws://{self.config.host}:{self.port}{WEBSOCKET_PATH}"

    # --- server-side operations --------------------------------------------------

    async def publish(self, channel: str, data: Any) -> StreamPosition:
        """Publish ``data`` (any JSON-serialisable value) to ``channel``.

        Returns the publication's position (offset 0 when the channel keeps no
        history).

        Raises:
            tidings.Error: 102 when the channel's namespace is unknown.
        """
        options = channel_options(self.config, channel)
        return await self.node.publish(channel, _raw(data), options)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self.node.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        return await self.node.presence_stats(channel)

    async def history(
        self,
        channel: str,
        *,
        limit: int = -1,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        return await self.node.history(channel, limit=limit, since=since, reverse=reverse)


def _raw(data: Any) -> msgspec.Raw:
    return data if isinstance(data, msgspec.Raw) else msgspec.Raw(msgspec.json.encode(data))
