"""The hub: a node, its broker, its WebSocket server and its HTTP API, as one object.

The hub builds the layers and owns them: the node (:mod:`tidings.node`) over a
broker (:mod:`tidings.brokers`), the client port (:mod:`tidings.transports`),
and the server API (:mod:`tidings.api`), whose methods it inherits and whose
HTTP port it opens when ``http_api.enabled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType

import msgspec

from .._tasks import stop_task
from ..api.http import APIServer
from ..api.server_api import ServerAPI
from ..brokers import make_broker
from ..brokers.base import Broker, NodeRegistry, PresenceManager
from ..node.auth import TokenVerifier
from ..node.client import Client, Context
from ..node.hooks import (
    ConnectHook,
    DisconnectHook,
    Hooks,
    MessageHook,
    PublishHook,
    RefreshHook,
    RPCHook,
    SubRefreshHook,
    SubscribeHook,
    UnsubscribeHook,
)
from ..node.metrics import Metrics
from ..node.node import Node
from ..node.proxy import HTTPProxy
from ..options import Config
from ..transports.asgi import ASGIApp, ClientEndpoints
from ..transports.server import Server
from ..transports.websocket import WEBSOCKET_PATH
from .gc_policy import FreezingCollector

__all__ = ["Hub"]

logger = logging.getLogger("tidings")


class Hub(ServerAPI):
    """A tidings hub to run inside your own asyncio program.

    Example::

        async with Hub(load_config("tidings.toml")) as hub:
            await hub.publish("news", {"text": "hello"})
            await hub.serve_forever()

    Or mounted in an ASGI application, on its port (see :meth:`asgi`)::

        hub = Hub(load_config("tidings.toml"))
        app = FastAPI(lifespan=hub.lifespan)
        app.mount("/realtime", hub.asgi())

    Args:
        config: the configuration (see :func:`tidings.load_config`); defaults deny.
        broker: where publications travel; the in-memory broker by default.
        presence: where presence is kept; the broker by default.
        api: whether to open the server API's port (``http_api.host``/``port``);
            by default as ``http_api.enabled`` says, except for a hub mounted in an
            ASGI application (:meth:`lifespan`), which opens it only when asked.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        presence: PresenceManager | None = None,
        api: bool | None = None,
    ) -> None:
        config = config if config is not None else Config()
        broker = broker if broker is not None else make_broker(config.broker)
        if presence is None:
            if not isinstance(broker, PresenceManager):
                raise TypeError(f"{type(broker).__name__} keeps no presence: pass presence=")
            presence = broker
        metrics = Metrics()
        node: Node[Client] = Node(
            broker,
            presence,
            history_max_publication_limit=config.history_max_publication_limit,
            metrics=metrics,
            presence_update_interval=config.broker.presence_update_interval,
        )
        super().__init__(config, node, broker, metrics, f"{socket.gethostname()}_{os.getpid()}")
        self.proxy = HTTPProxy(self.config.proxy)
        # Hooks answered by HTTP endpoints, where configured; on_* replaces them.
        self.hooks: Hooks = self.proxy.hooks()
        self.metrics.track(
            connections=lambda: self.node.num_clients,
            subscriptions=lambda: self.node.num_subscriptions,
            channels=lambda: self.node.num_channels,
            users=lambda: self.node.num_users,
        )
        context = Context(
            self.node,
            self.config,
            TokenVerifier.from_config(self.config),
            self.hooks,
            self.metrics,
            control=self.control,
        )
        self.server = Server(context)
        self.api: APIServer | None = None
        self._open_api = api
        self._heartbeat: asyncio.Task[None] | None = None
        self.collector = FreezingCollector() if self.config.gc_freeze else None
        self._collecting: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._started = False

    # --- lifecycle ---------------------------------------------------------------

    async def start(self, *, listen: bool = True) -> None:
        """Start the node, listen on ``config.host``/``config.port``, start the HTTP API.

        With ``listen=False`` the hub opens no client port: an ASGI server carries
        its connections (:meth:`asgi`), and the API port opens only if ``api=True``.
        """
        await self.node.start()
        try:
            await self.control.start()
        except BaseException:
            await self.node.close()
            raise
        # Worker processes share the ports (SO_REUSEPORT): the kernel spreads connections.
        reuse_port = self.config.workers > 1
        if listen:
            try:
                await self.server.start(self.config.host, self.config.port, reuse_port=reuse_port)
            except BaseException:  # the port is taken, say: leave nothing running
                await self.node.close()
                raise
        else:
            self.server.open()
        open_api = self._open_api
        if open_api is None:
            open_api = listen and self.config.http_api.enabled
        if open_api:
            self.api = APIServer(self, reuse_port=reuse_port)
            try:
                await self.api.start()
            except BaseException:  # the API port is taken, say: leave nothing open
                await self.server.shutdown(0)
                await self.node.close()
                raise
        if isinstance(self.broker, NodeRegistry):
            self._heartbeat = asyncio.ensure_future(self._announce(self.broker))
        if self.collector is not None:
            self._collect()
        self._started = True
        self._started_at = time.monotonic()
        if listen:
            logger.info("tidings listening on %s", self.url)
        else:
            logger.info("tidings started, serving clients through the ASGI application")

    async def stop(self) -> None:
        """Stop accepting, close clients with 3001 (flushing their queues), stop the node."""
        if not self._started:
            return
        self._started = False
        await self.server.shutdown(self.config.shutdown_timeout)
        if self._collecting is not None:
            self._collecting.cancel()
        if self.collector is not None:
            self.collector.stop()
        if self._heartbeat is not None:
            await stop_task(self._heartbeat)
            if isinstance(self.broker, NodeRegistry):
                await self._quietly(self.broker.forget_node(self.uid))
        if self.api is not None:
            await self.api.stop()
        await self.control.close()
        await self.proxy.close()
        await self.node.close()
        self._stopped.set()

    def _collect(self) -> None:
        """Tick the garbage-collector policy every second (``gc_freeze``)."""
        assert self.collector is not None
        loop = asyncio.get_running_loop()
        self.collector.tick(loop.time(), len(self.server.clients), self.server.connections_closed)
        self._collecting = loop.call_later(1.0, self._collect)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The hub running for an ASGI application's lifetime, without its own client port.

        Pass it as FastAPI's or Starlette's ``lifespan=``; ``app`` is ignored.
        """
        await self.start(listen=False)
        try:
            yield
        finally:
            await self.stop()

    def asgi(self, *, prefix: str = "", fallback: ASGIApp | None = None) -> ASGIApp:
        """The client endpoints as an ASGI application.

        It serves ``/connection/websocket`` (and ``/health``) below where it is
        mounted: with ``app.mount("/realtime", hub.asgi())`` SDKs connect to
        ``ws://HOST:PORT/realtime/connection/websocket``. The same protocol,
        limits, hooks and metrics apply as on the hub's own port.

        Args:
            prefix: the path the endpoints live under when no router sets the
                scope's ``root_path`` (``"/realtime"`` in front of Django, say).
            fallback: the application for every other request (Django's).
                Run as the top-level application, it also starts and stops the
                hub on ASGI lifespan events (the fallback gets none).
        """
        return ClientEndpoints(self.server, self.lifespan, prefix=prefix, fallback=fallback)

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
        """The client port listened on (the one the system picked when 0 was asked)."""
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
        return self._started and await super().ready()

    # --- hooks -------------------------------------------------------------------

    def on_connect(self, hook: ConnectHook) -> ConnectHook:
        """Register the connect hook (see :mod:`tidings` hooks); usable as a decorator."""
        self.hooks.connect = hook
        return hook

    def on_refresh(self, hook: RefreshHook) -> RefreshHook:
        """Register the refresh hook: extends a connection whose token expires."""
        self.hooks.refresh = hook
        return hook

    def on_subscribe(self, hook: SubscribeHook) -> SubscribeHook:
        """Register the subscribe hook: allows, refuses or amends a subscription."""
        self.hooks.subscribe = hook
        return hook

    def on_sub_refresh(self, hook: SubRefreshHook) -> SubRefreshHook:
        """Register the sub_refresh hook: extends a subscription whose subscribe hook
        reply had ``expire_at``, when it expires (or ends it: 2501)."""
        self.hooks.sub_refresh = hook
        return hook

    def on_publish(self, hook: PublishHook) -> PublishHook:
        """Register the publish hook: allows, refuses or rewrites a client's publication."""
        self.hooks.publish = hook
        return hook

    def on_rpc(self, hook: RPCHook) -> RPCHook:
        """Register the RPC hook: answers a client's ``rpc`` command."""
        self.hooks.rpc = hook
        return hook

    def on_message(self, hook: MessageHook) -> MessageHook:
        """Register the message hook: gets what clients ``send`` (without it, a client
        that sends is closed with 3508, as by Centrifugo)."""
        self.hooks.message = hook
        return hook

    def on_unsubscribe(self, hook: UnsubscribeHook) -> UnsubscribeHook:
        """Register the unsubscribe hook: told when a client leaves a channel."""
        self.hooks.unsubscribe = hook
        return hook

    def on_disconnect(self, hook: DisconnectHook) -> DisconnectHook:
        """Register the disconnect hook: told when a client's connection ends."""
        self.hooks.disconnect = hook
        return hook

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
