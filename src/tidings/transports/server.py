"""The client port: one listening socket for every transport and page.

Every TCP connection starts as HTTP (:mod:`.http`); :meth:`Server.route`
answers ``/health`` at once, and everything else in its turn
(:class:`~tidings.node.limits.Turns`: a reconnect storm is handled in slices):
the WebSocket endpoint upgrades (:mod:`.websocket`), the demo app's files are
served when it is on, and the rest is 404.

The server owns what its connections share: the flusher that coalesces
writes, the deflater that compresses them, the handshake checks, the registry
of connected clients, and one periodic tick that reads every client's heartbeat
deadline (pings, pong and stale deadlines are times, not timers: an idle
connection has none) and gives those due before the next tick a loop timer at
that deadline, so that each ping goes out at its own time.
"""

from __future__ import annotations

import asyncio
import http
import logging
import socket
import ssl
from typing import Protocol

import msgspec
from msgspec import Raw

from ..node.client import Client, Context
from ..node.limits import OriginCheck, TokenBucket
from ..options import ConfigError
from ..protocol.codes import DISCONNECT_SHUTDOWN
from .emulation import EMULATION_PATH, EmulationRequest, emulate, feed
from .http import (
    MAX_BODY_BYTES,
    HTTPConnection,
    HTTPRequest,
    json_response,
    static_response,
    text_response,
)
from .static import StaticFiles
from .stream import STREAM_PATHS, StreamConnection, open_stream
from .websocket import (
    UNI_WEBSOCKET_PATH,
    WEBSOCKET_PATH,
    Deflater,
    Flusher,
    send_buffer_size,
    upgrade,
)

__all__ = ["Connection", "Server"]

logger = logging.getLogger("tidings.server")

BACKLOG = 4096
"""A reconnect storm overflows the default 100 (SYN retries: seconds of delay)."""


class Connection(Protocol):
    """An open connection of a client, whichever server shell carries it."""

    client: Client

    @property
    def close_status(self) -> tuple[int, str]:
        """The close code and reason, once closed (the client's cleanup reports them)."""
        ...

    def cut(self) -> None:
        """End the connection now, without waiting for the peer (shutdown timeout)."""
        ...


class Server:
    """Accepts connections on the client port and serves each WebSocket as a client.

    The registry and the heartbeat also serve connections that another server
    accepted (an ASGI server, :mod:`.asgi`): :meth:`open` starts them without a
    listening socket.
    """

    def __init__(self, context: Context) -> None:
        self.context = context
        self.config = context.config
        self.clients: set[Connection] = set()
        """Open connections (``connection.client`` is each one's client)."""
        self.http_connections: set[HTTPConnection] = set()
        """Connections still speaking HTTP (idle keep-alive ones are closed at shutdown)."""
        self.flusher = Flusher(self.config.client.write_delay)
        compression = self.config.websocket
        self.deflater = Deflater(
            compression.compression_level,
            compression.compression_min_size,
            compression.compression_shared,
        )
        """Compresses for every connection that negotiated permessage-deflate."""
        self.buffer_limit = self.config.client.queue_max_size * 3 // 4
        """Bytes a connection's transport may hold; the kernel holds the other quarter."""
        self.origins = OriginCheck(self.config.allowed_origins)
        rate = self.config.client.connection_rate_limit
        self.connection_rate = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None
        config = self.config
        self.streams = {
            path: name for path, name in STREAM_PATHS.items() if getattr(config, name).enabled
        }
        """The streaming transports served: path -> name."""
        self.emulation = config.http_stream.enabled or config.sse.enabled
        """Whether ``/emulation`` is served (for HTTP-streaming and SSE clients)."""
        self.sessions: dict[str, StreamConnection] = {}
        """Emulated connections (HTTP-streaming, SSE) by session id, for ``/emulation``."""
        self.max_body_size = max(
            MAX_BODY_BYTES,
            config.emulation.max_request_body_size,
            *(getattr(config, name).max_request_body_size for name in self.streams.values()),
        )
        """The largest request body read (a route may allow less)."""
        if context.control is not None:
            context.control.on("emulation", self._remote_emulation)
        self.demo = StaticFiles("demo") if self.config.demo else None
        """The demo app, served on this port's other paths (``demo``, on with ``--dev``)."""
        self.closing = False
        self.connections_closed = 0
        """Connections closed since the start (the garbage-collector policy reads it)."""
        self._listener: asyncio.Server | None = None
        self._port = 0
        self._heartbeat: asyncio.TimerHandle | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._requests: set[asyncio.Task[None]] = set()
        self._all_closed: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the system when 0 was asked)."""
        assert self._port, "not started"
        return self._port

    @property
    def started(self) -> bool:
        """Whether :meth:`open` was called (even if the server shut down since)."""
        return self._heartbeat is not None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host``/``port`` and serve the connections."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: HTTPConnection(self),
            host,
            port,
            reuse_port=reuse_port,
            ssl=self._tls(),
            backlog=BACKLOG,
        )
        self._port = self._listener.sockets[0].getsockname()[1]
        # Accepted sockets inherit the listener's send buffer size: one system
        # call here rather than one per connection.
        sndbuf = send_buffer_size(self.config.client.queue_max_size)
        for sock in self._listener.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.open()  # once listening: a port that cannot be had leaves no tick behind

    def open(self) -> None:
        """Start the heartbeat tick: connections may come from now on."""
        options = self.config.client
        # The tick looks this far ahead: only the clients due within it hold a
        # timer (about period / ping_interval of them, for pings).
        period = min(
            1.0, options.ping_interval / 4, options.pong_timeout / 4, options.stale_close_delay / 4
        )
        self._heartbeat = asyncio.get_running_loop().call_later(period, self._beat, period)

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as exc:  # ssl names neither file
            raise ConfigError(
                f"tls_cert / tls_key: cannot load {self.config.tls_cert} and "
                f"{self.config.tls_key}: {exc.strerror or exc}"
            ) from exc
        return context

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, close every client with 3001 once its queue is written."""
        if self._heartbeat is None or self.closing:
            return
        self.closing = True
        self._heartbeat.cancel()
        if self._listener is not None:
            self._listener.close()
        for idle in list(self.http_connections):
            idle.close()
        self._all_closed = asyncio.Event()
        for connection in list(self.clients):
            connection.client.disconnect(DISCONNECT_SHUTDOWN)
        try:
            async with asyncio.timeout(timeout):
                await self._wait_closed()
        except TimeoutError:
            logger.warning("shutdown timeout: cutting the remaining connections")
            for connection in list(self.clients):
                connection.cut()
            await self._wait_closed()
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _wait_closed(self) -> None:
        assert self._all_closed is not None
        if self.clients or self._cleanups:
            await self._all_closed.wait()

    # --- connections ------------------------------------------------------------------

    def refusal(self, origin: str | None, host: str | None) -> tuple[http.HTTPStatus, str] | None:
        """Why a handshake is refused (a status and its text), or None to accept it."""
        if not self.origins.allows(origin, host):
            logger.warning("handshake refused: origin %r not allowed", origin)
            return http.HTTPStatus.FORBIDDEN, "Origin not allowed\n"
        limit = self.config.client.connection_limit
        if limit and len(self.clients) >= limit:
            return http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n"
        if self.connection_rate is not None and not self.connection_rate.take():
            return http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many new connections\n"
        return None

    def route(self, connection: HTTPConnection, request: HTTPRequest, rest: bytes) -> None:
        """Answer one HTTP request, or hand its connection over to another protocol."""
        if request.path == "/health":  # answered at once, whatever waits for its turn
            connection.respond(json_response(http.HTTPStatus.OK, {"status": "ok"}))
        else:
            connection.wait(lambda: self._route_in_turn(connection, request, rest))

    def _route_in_turn(self, connection: HTTPConnection, request: HTTPRequest, rest: bytes) -> None:
        if connection.transport is None or connection.transport.is_closing():
            return
        path = request.path
        uni = path == UNI_WEBSOCKET_PATH and self.config.uni_websocket.enabled
        if path == WEBSOCKET_PATH or uni:
            if request.method == "GET":
                upgrade(self, connection, request, rest, unidirectional=uni)
            else:
                response = text_response(http.HTTPStatus.METHOD_NOT_ALLOWED, "Use GET\n")
                response.headers["Allow"] = "GET"
                connection.respond(response)
            return
        stream = self.streams.get(path)
        if stream is not None:
            open_stream(self, connection, request, stream)
            return
        if path == EMULATION_PATH and self.emulation:
            emulate(self, connection, request)
            return
        if self.demo is not None and request.method in ("GET", "HEAD"):
            static = self.demo.get(path)
            if static is not None:
                connection.respond(static_response(static, head=request.method == "HEAD"))
                return
        connection.respond(text_response(http.HTTPStatus.NOT_FOUND, "Not Found\n"))

    async def _remote_emulation(self, args: Raw) -> None:
        """Another node routed an ``/emulation`` post for a session of this one."""
        await feed(self, msgspec.json.decode(args, type=EmulationRequest))

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a request's task until it is done; log its failure."""
        self._requests.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("request failed", exc_info=task.exception())

    def opened(self, connection: Connection) -> None:
        """A handshake succeeded: its client starts."""
        self.clients.add(connection)
        connection.client.start_heartbeat(asyncio.get_running_loop().time())

    def closed(self, connection: Connection) -> None:
        """A connection is gone: its client cleans up (hooks, broker)."""
        task = asyncio.get_running_loop().create_task(self._cleanup(connection))
        self._cleanups.add(task)
        task.add_done_callback(self._cleaned)

    async def _cleanup(self, connection: Connection) -> None:
        code, reason = connection.close_status
        try:
            await connection.client.cleanup(code, reason)
        finally:
            self.clients.discard(connection)
            self.connections_closed += 1

    def _cleaned(self, task: asyncio.Task[None]) -> None:
        self._cleanups.discard(task)
        if self._all_closed is not None and not self.clients and not self._cleanups:
            self._all_closed.set()

    def _beat(self, period: float) -> None:
        """Give every client due before the next tick a timer at its deadline.

        Calling the heartbeats from the tick itself would send a period's worth of
        pings in one burst (hundreds, with 10,000 clients a worker), delaying
        whatever the loop had to send next. The deadlines themselves are spread
        (:meth:`Client.start_heartbeat`): a ping sent at its own deadline is too.
        """
        loop = asyncio.get_running_loop()
        horizon = loop.time() + period
        for connection in list(self.clients):
            client = connection.client
            if client.due <= horizon:  # past deadlines too: their timers run at once
                loop.call_at(client.due, _heartbeat, client, loop)
        self._heartbeat = loop.call_later(period, self._beat, period)


def _heartbeat(client: Client, loop: asyncio.AbstractEventLoop) -> None:
    # The time it runs, not the deadline: a pong deadline counts from the ping.
    # A second timer for the same deadline (a tick as late as it) finds nothing due.
    client.heartbeat(loop.time())
