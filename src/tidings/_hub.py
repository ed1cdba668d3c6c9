"""The hub: a node, its broker and its WebSocket server, as one embeddable object.

Its methods are the server API: the HTTP API (``tidings._api``) only decodes
requests, calls them and encodes what they return.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .__about__ import __version__
from ._auth import TokenVerifier
from ._broker import Broker, NodeRegistry, PresenceManager, PresenceStats
from ._channels import channel_options
from ._client import Client, Context
from ._codes import DISCONNECT_FORCE_NO_RECONNECT, Disconnect, Error, ErrorCode
from ._config import Config
from ._hooks import (
    ConnectHook,
    DisconnectHook,
    Hooks,
    PublishHook,
    RefreshHook,
    RPCHook,
    SubscribeHook,
    UnsubscribeHook,
)
from ._memory import MemoryBroker
from ._metrics import Metrics
from ._node import Node
from ._protocol import NO_DATA, ClientInfo, Publication, StreamPosition, strip_newlines
from ._proxy import HTTPProxy
from ._redis import RedisBroker
from ._server import WEBSOCKET_PATH, Server
from ._tasks import stop_task

if TYPE_CHECKING:
    from ._api import APIServer

__all__ = ["Hub", "NodeInfo"]

logger = logging.getLogger("tidings")
_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])


class NodeInfo(msgspec.Struct, frozen=True):
    """One node of the hub, as the ``info`` API reports it."""

    uid: str
    name: str
    version: str
    num_clients: int
    num_users: int
    num_channels: int
    num_subs: int
    uptime: int


class Hub:
    """A tidings hub to run inside your own asyncio program.

    Example::

        async with Hub(load_config("tidings.toml")) as hub:
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
        self.broker: Broker = broker if broker is not None else make_broker(self.config)
        if presence is None:
            if not isinstance(self.broker, PresenceManager):
                raise TypeError(f"{type(self.broker).__name__} keeps no presence: pass presence=")
            presence = self.broker
        self.metrics = Metrics()
        self.proxy = HTTPProxy(self.config.proxy)
        # Hooks answered by HTTP endpoints, where configured; on_* replaces them.
        self.hooks: Hooks = self.proxy.hooks()
        self.node: Node[Client] = Node(
            self.broker,
            presence,
            history_max_publication_limit=self.config.history_max_publication_limit,
            metrics=self.metrics,
            presence_update_interval=self.config.broker.presence_update_interval,
        )
        self.metrics.track(
            connections=lambda: self.node.num_clients,
            subscriptions=lambda: self.node.num_subscriptions,
            channels=lambda: self.node.num_channels,
            users=lambda: self.node.num_users,
        )
        context = Context(
            self.node, self.config, TokenVerifier.from_config(self.config), self.hooks, self.metrics
        )
        self.server = Server(context)
        self.uid = str(uuid.uuid4())
        self.name = f"{socket.gethostname()}_{os.getpid()}"
        self._started_at = time.monotonic()
        self.api: APIServer | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._started = False

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the node, listen on ``config.host``/``config.port``, start the HTTP API."""
        await self.node.start()
        # Worker processes share the ports (SO_REUSEPORT): the kernel spreads connections.
        reuse_port = self.config.workers > 1
        await self.server.start(self.config.host, self.config.port, reuse_port=reuse_port)
        if isinstance(self.broker, NodeRegistry):
            self._heartbeat = asyncio.ensure_future(self._announce(self.broker))
        if self.config.http_api.enabled:
            # Imported here: the API is a layer over the hub and imports it.
            from ._api import APIServer

            self.api = APIServer(self, reuse_port=reuse_port)
            await self.api.start()
        self._started = True
        self._started_at = time.monotonic()
        logger.info("tidings listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, close clients with 3001 (flushing their queues), stop the node."""
        if not self._started:
            return
        self._started = False
        await self.server.shutdown(self.config.shutdown_timeout)
        if self._heartbeat is not None:
            await stop_task(self._heartbeat)
            if isinstance(self.broker, NodeRegistry):
                await self._quietly(self.broker.forget_node(self.uid))
        if self.api is not None:
            await self.api.stop()
        await self.proxy.close()
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
        scheme = "wss" if self.config.tls_cert else "ws"
        return f"{scheme}://{self.config.host}:{self.port}{WEBSOCKET_PATH}"

    @property
    def api_url(self) -> str:
        """The server API base URL (as ``cent`` wants it), when the API runs."""
        assert self.api is not None, "the HTTP API is not running"
        return f"http://{self.config.http_api.host}:{self.api.port}/api"

    async def ready(self) -> bool:
        """Whether the hub can serve: started and its broker answers."""
        if not self._started:
            return False
        try:
            await asyncio.wait_for(self.node.history("__ready__", limit=0), 2.0)
        except Exception:
            return False
        return True

    # --- hooks -------------------------------------------------------------------

    def on_connect(self, hook: ConnectHook) -> ConnectHook:
        """Register the connect hook (see :mod:`tidings` hooks); usable as a decorator."""
        self.hooks.connect = hook
        return hook

    def on_refresh(self, hook: RefreshHook) -> RefreshHook:
        self.hooks.refresh = hook
        return hook

    def on_subscribe(self, hook: SubscribeHook) -> SubscribeHook:
        self.hooks.subscribe = hook
        return hook

    def on_publish(self, hook: PublishHook) -> PublishHook:
        self.hooks.publish = hook
        return hook

    def on_rpc(self, hook: RPCHook) -> RPCHook:
        self.hooks.rpc = hook
        return hook

    def on_unsubscribe(self, hook: UnsubscribeHook) -> UnsubscribeHook:
        self.hooks.unsubscribe = hook
        return hook

    def on_disconnect(self, hook: DisconnectHook) -> DisconnectHook:
        self.hooks.disconnect = hook
        return hook

    # --- server API --------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        skip_history: bool = False,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        exclude_client: str = "",
    ) -> StreamPosition:
        """Publish ``data`` (any JSON-serialisable value, or :class:`msgspec.Raw`).

        Returns the publication's position (offset 0 when the channel keeps no
        history). The same ``idempotency_key`` within 5 minutes publishes once;
        ``exclude_client`` is a client id that does not receive this publication.

        Raises:
            tidings.Error: 102 for an unknown namespace, 107 for an empty channel.
        """
        _check_channel(channel)
        options = channel_options(self.config, channel)
        return await self.node.publish(
            channel,
            _raw(data),
            options,
            tags=tags,
            skip_history=skip_history,
            idempotency_key=idempotency_key,
            exclude_client=exclude_client,
        )

    async def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        skip_history: bool = False,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        exclude_client: str = "",
    ) -> list[StreamPosition | Error]:
        """Publish the same data to several channels; each gets a position or its error."""
        raw = _raw(data)

        async def one(channel: str) -> StreamPosition | Error:
            try:
                return await self.publish(
                    channel,
                    raw,
                    skip_history=skip_history,
                    tags=tags,
                    idempotency_key=idempotency_key,
                    exclude_client=exclude_client,
                )
            except Error as error:
                return error

        return list(await asyncio.gather(*(one(channel) for channel in channels)))

    async def subscribe(
        self,
        user: str,
        channel: str,
        *,
        client: str = "",
        info: Any = None,
        data: Any = None,
        recover_since: StreamPosition | None = None,
    ) -> None:
        """Subscribe the user's connections (or one, ``client``) to ``channel``."""
        _check_channel(channel)
        channel_options(self.config, channel)  # 102 before touching anyone
        for target in self._targets(user, client):
            await target.subscribe_by_server(
                channel,
                info=_raw_or_absent(info),
                data=_raw_or_absent(data),
                recover_since=recover_since,
            )

    async def unsubscribe(self, user: str, channel: str, *, client: str = "") -> None:
        """Unsubscribe the user's connections (or one) from ``channel`` (push code 2000)."""
        _check_channel(channel)
        for target in self._targets(user, client):
            await target.unsubscribe_by_server(channel)

    async def disconnect(
        self,
        user: str,
        *,
        client: str = "",
        whitelist: Iterable[str] = (),
        disconnect: Disconnect = DISCONNECT_FORCE_NO_RECONNECT,
    ) -> None:
        """Close the user's connections (or one), except the ``whitelist`` client ids."""
        keep = set(whitelist)
        for target in self._targets(user, client):
            if target.id not in keep:
                target.disconnect(disconnect)

    async def refresh(
        self,
        user: str,
        *,
        client: str = "",
        expired: bool = False,
        expire_at: int | None = None,
        info: Any = None,
    ) -> None:
        """Extend the user's connections to ``expire_at``, or end them (3005) if ``expired``."""
        for target in self._targets(user, client):
            target.refresh_by_server(
                expired=expired,
                expire_at=expire_at,
                info=_raw(info) if info is not None else None,
            )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        self._check_feature(channel, "presence")
        return await self.node.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        self._check_feature(channel, "presence")
        return await self.node.presence_stats(channel)

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        """Read history: ``limit`` 0 gives only the stream position, -1 up to the maximum."""
        self._check_feature(channel, "history")
        if reverse and since is not None and since.offset == 0:
            raise Error(ErrorCode.BAD_REQUEST, "reverse history needs since.offset")
        return await self.node.history(channel, limit=limit, since=since, reverse=reverse)

    async def history_remove(self, channel: str) -> None:
        self._check_feature(channel, "history")
        await self.node.remove_history(channel)

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Active channels and their subscriber counts, filtered by a glob ``pattern``."""
        channels = self.node.channels()
        if not pattern:
            return channels
        matcher = _glob(pattern)
        return {name: count for name, count in channels.items() if matcher(name)}

    async def info(self) -> list[NodeInfo]:
        """Every live node: this one, and the others announced through the broker."""
        local = self._node_info()
        if not isinstance(self.broker, NodeRegistry):
            return [local]
        others = [
            info
            for info in (
                msgspec.json.decode(raw, type=NodeInfo) for raw in await self.broker.nodes()
            )
            if info.uid != self.uid
        ]
        return [local, *sorted(others, key=lambda info: info.name)]

    def _node_info(self) -> NodeInfo:
        node = self.node
        return NodeInfo(
            uid=self.uid,
            name=self.name,
            version=__version__,
            num_clients=node.num_clients,
            num_users=node.num_users,
            num_channels=node.num_channels,
            num_subs=node.num_subscriptions,
            uptime=int(time.monotonic() - self._started_at),
        )

    async def _announce(self, registry: NodeRegistry) -> None:
        """Heartbeat this node's info; it expires if the node stops (or dies)."""
        interval = self.config.broker.node_info_interval
        while True:
            info = msgspec.json.encode(self._node_info())
            await self._quietly(registry.heartbeat(self.uid, info, interval * 3))
            await asyncio.sleep(interval)

    @staticmethod
    async def _quietly(call: Awaitable[None]) -> None:
        try:
            await call
        except Exception as exc:
            logger.warning("broker unavailable: %s", exc)

    def _targets(self, user: str, client: str) -> list[Client]:
        clients = self.node.user_clients(user)
        return [c for c in clients if c.id == client] if client else clients

    def _check_feature(self, channel: str, feature: str) -> None:
        _check_channel(channel)
        options = channel_options(self.config, channel)
        enabled = options.presence if feature == "presence" else options.history_enabled
        if not enabled:
            raise Error(ErrorCode.NOT_AVAILABLE)


def make_broker(config: Config) -> Broker:
    """The broker ``config.broker.url`` names."""
    options = config.broker
    if options.url == "memory":
        return MemoryBroker()
    return RedisBroker(
        options.url,
        prefix=options.prefix,
        shards=options.pubsub_shards,
        presence_ttl=options.presence_ttl,
        history_meta_ttl=options.history_meta_ttl,
    )


def _check_channel(channel: str) -> None:
    if not channel:
        raise Error(ErrorCode.BAD_REQUEST, "channel required")


def _raw(data: Any) -> msgspec.Raw:
    if isinstance(data, msgspec.Raw):
        return strip_newlines(data)
    return msgspec.Raw(msgspec.json.encode(data))


def _raw_or_absent(data: Any) -> msgspec.Raw:
    return NO_DATA if data is None else _raw(data)


def _glob(pattern: str) -> Callable[[str], bool]:
    """A matcher for a gobwas-style glob: ``*``, ``?``, ``[...]`` and ``{a,b}``."""
    alternatives = re.split(r"(\{[^{}]*\})", pattern)
    regex = "".join(
        "(?:" + "|".join(fnmatch.translate(a)[4:-3] for a in part[1:-1].split(",")) + ")"
        if part.startswith("{") and part.endswith("}")
        else fnmatch.translate(part)[4:-3]
        for part in alternatives
        if part
    )
    compiled = re.compile(f"(?s:{regex})\\Z")
    return lambda name: compiled.match(name) is not None
