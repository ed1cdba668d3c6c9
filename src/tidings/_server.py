"""The WebSocket server: a thin asyncio shell around clients and the node.

Per connection, two coroutines run under :func:`~tidings.patterns.run_both`, so
either ending stops the other and closes the socket: a reader (the toolkit's
:func:`~tidings.patterns.consume`) feeds frames to the
:class:`~tidings._client.Client`, and a closer waits for the client to be
closed and performs the closing handshake. Pings and the stale-connection
check are timers, not tasks.

Writing has no task and no ``await`` per message: a :class:`Connection` keeps
its pending messages, and one :class:`Flusher` per server writes those of every
connection at the end of the event-loop iteration (write coalescing: one frame
and one write per connection however many messages, newline-joined as the
protocol allows). A client whose unsent bytes exceed ``client.queue_max_size``
is disconnected with 3008 at once, without affecting anyone else.
"""

from __future__ import annotations

import asyncio
import http
import logging
import random
import ssl
import struct

import msgspec
from websockets.asyncio.server import Server as WebSocketServer, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN

from . import patterns
from ._client import Client, Context
from ._codes import (
    DISCONNECT_NO_PONG,
    DISCONNECT_SHUTDOWN,
    DISCONNECT_SLOW,
    DISCONNECT_STALE,
    Disconnect,
)
from ._config import Config
from ._limits import OriginCheck, TokenBucket
from ._metrics import Metrics
from ._session import CONNECTING
from ._static import StaticFile, StaticFiles

__all__ = ["Server", "WEBSOCKET_PATH"]

logger = logging.getLogger("tidings.server")

WEBSOCKET_PATH = "/connection/websocket"
MAX_FRAME_SIZE = 64 * 1024
"""Coalesced messages are cut into frames of at most this size."""
SLOW_CLOSE_TIMEOUT = 1.0
CLOSE_TIMEOUT = 5.0
"""Seconds a closing handshake may take before the TCP connection is cut."""
"""Seconds a slow client gets to take the close frame before the TCP connection is cut."""


def frame_text(payload: bytes) -> bytes:
    """A complete unmasked server text frame (FIN set) carrying ``payload``."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


class Flusher:
    """Writes the pending messages of every connection, coalesced.

    A flush runs at the end of the event-loop iteration, but at most once per
    ``write_delay`` seconds: when publications come faster than that, each
    connection gets several of them per frame and per write (one system call),
    which is what keeps fan-out cheap under load; when they come slower, a
    flush is not delayed at all.
    """

    def __init__(self, write_delay: float = 0.0) -> None:
        self.write_delay = write_delay
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._last = 0.0

    def mark(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._last + self.write_delay - loop.time()
            if wait > 0:
                loop.call_later(wait, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._last = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, []
        # One publication is the same bytes for all its subscribers: frame it once.
        framed: dict[int, tuple[bytes, bytes]] = {}
        frames = written = 0
        for connection in dirty:
            count, size = connection.flush(framed)
            frames += count
            written += size
        if frames:  # metrics once per flush, not per connection
            metrics = dirty[0].metrics
            metrics.frames_sent.inc(frames)
            metrics.bytes_sent.inc(written)


class Connection:
    """The transport of one client: its pending messages, and their bound.

    Messages are framed here and written straight to the socket's transport:
    one frame per flush, newline-joined, shared by all subscribers when it is
    a single publication. Data frames never go through ``websockets``' ``send()``
    (an ``await`` per message); its protocol still handles control frames and
    the closing handshake, and no data is written once it is closing.

    A client whose unsent bytes (in the transport's buffer) exceed
    ``queue_max_size`` is slow: it is closed with 3008 at once, and its TCP
    connection cut if it does not take the close frame in time.
    """

    def __init__(
        self,
        websocket: ServerConnection,
        flusher: Flusher,
        queue_max_size: int,
        metrics: Metrics,
    ) -> None:
        self.websocket = websocket
        self.flusher = flusher
        self.queue_max_size = queue_max_size
        self.metrics = metrics
        self.closing: Disconnect | None = None
        self.closed = asyncio.Event()
        """Set once a close was asked for; the handler then performs it."""
        self._pending: list[bytes] = []
        self._dirty = False

    def write(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self._pending.append(data)
        if not self._dirty:
            self._dirty = True
            self.flusher.mark(self)

    def close(self, disconnect: Disconnect) -> None:
        """Close after the pending messages are written."""
        if self.closing is None:
            frames, size = self.flush({})
            self.metrics.frames_sent.inc(frames)
            self.metrics.bytes_sent.inc(size)
            self.closing = disconnect
            self.closed.set()

    def flush(self, framed: dict[int, tuple[bytes, bytes]]) -> tuple[int, int]:
        """Write the pending messages; return how many frames and bytes were written."""
        self._dirty = False
        pending, self._pending = self._pending, []
        if not pending or self.closing is not None:
            return 0, 0
        websocket = self.websocket
        if websocket.protocol.state is not OPEN:
            return 0, 0
        if len(pending) == 1:
            payload = pending[0]
            cached = framed.get(id(payload))
            if cached is not None and cached[0] is payload:
                data = cached[1]
            else:
                data = frame_text(payload)
                framed[id(payload)] = (payload, data)  # keeps payload alive: ids stay unique
            frames = 1
        else:
            data, frames = _frames(pending)
        transport = websocket.transport
        transport.write(data)
        if transport.get_write_buffer_size() > self.queue_max_size:
            self._slow()
        return frames, len(data)

    def _slow(self) -> None:
        self.metrics.queue_overflows.inc()
        self.closing = DISCONNECT_SLOW
        self.closed.set()
        # The close frame waits behind what the client did not read: give it
        # a moment, then cut the connection.
        transport = self.websocket.transport
        asyncio.get_running_loop().call_later(SLOW_CLOSE_TIMEOUT, transport.abort)


def _frames(pending: list[bytes]) -> tuple[bytes, int]:
    """Coalesce messages into frames of at most :data:`MAX_FRAME_SIZE` bytes."""
    out: list[bytes] = []
    start = 0
    while start < len(pending):
        end, size = start + 1, len(pending[start])
        while end < len(pending) and size + len(pending[end]) < MAX_FRAME_SIZE:
            size += len(pending[end]) + 1
            end += 1
        out.append(frame_text(b"\n".join(pending[start:end])))
        start = end
    return b"".join(out), len(out)


class Server:
    """Accepts WebSocket connections and serves each as a :class:`Client`."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.config = context.config
        self.clients: patterns.Registry[Client] = patterns.Registry()
        self.flusher = Flusher(self.config.client.write_delay)
        self.origins = OriginCheck(self.config.allowed_origins)
        rate = self.config.client.connection_rate_limit
        self.connection_rate = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None
        self.demo = StaticFiles("demo") if self.config.demo else None
        """The demo app, served on this port's other paths (``demo``, on with ``--dev``)."""
        self._server: WebSocketServer | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the system when 0 was asked)."""
        assert self._port, "not started"
        return self._port

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            compression=None,  # deflate costs ~50 KiB per connection and encode-once
            ping_interval=None,  # the protocol has its own pings (client.ping_interval)
            max_size=self.config.client.max_message_size,
            server_header=None,
            reuse_port=reuse_port,
            ssl=self._tls(),
            backlog=4096,  # a reconnect storm overflows the default 100 (SYN retries, seconds)
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, close every client with 3001 once its queue is written."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        for connection in list(self.clients):
            self.clients.get(connection).disconnect(DISCONNECT_SHUTDOWN)
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        except TimeoutError:
            logger.warning("shutdown timeout: cutting the remaining connections")
            for websocket in list(self.clients):
                websocket.transport.abort()
            await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WEBSOCKET_PATH:
            return self._admit(connection, request)
        if path == "/health":
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        if self.demo is not None:
            static = self.demo.get(path)
            if static is not None:
                return _static_response(static)
        return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Check a WebSocket handshake against the origin and connection limits."""
        headers = request.headers
        if not self.origins.allows(headers.get("Origin"), headers.get("Host")):
            logger.warning("handshake refused: origin %r not allowed", headers.get("Origin"))
            return connection.respond(http.HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        limit = self.config.client.connection_limit
        if limit and len(self.clients) >= limit:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        if self.connection_rate is not None and not self.connection_rate.take():
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many new connections\n"
            )
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = Connection(
            websocket, self.flusher, self.config.client.queue_max_size, self.context.metrics
        )
        request = websocket.request
        client = Client(self.context, connection, headers=request.headers if request else None)
        timers = _Timers(client, self.config)

        async def receive(message: str | bytes) -> None:
            if isinstance(message, str):
                await client.receive_text(message)
            else:
                await client.receive_binary(message)

        async def close_when_asked() -> None:
            await connection.closed.wait()
            closing = connection.closing or DISCONNECT_SHUTDOWN
            try:
                # websockets' close() waits, without a deadline, for a socket that
                # does not drain: a peer that stopped reading would hold it forever.
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await websocket.close(closing.code, closing.reason)
            except TimeoutError:
                websocket.transport.abort()

        async with self.clients.registered(websocket, client):
            try:
                await patterns.run_both(
                    websocket, patterns.consume(websocket, receive), close_when_asked()
                )
            finally:
                timers.cancel()
                # The code the server chose (3008 for a slow client whose close frame
                # never went out), else what the peer sent, else 1006.
                code, reason = connection.closing or (
                    websocket.close_code or CloseCode.ABNORMAL_CLOSURE,
                    websocket.close_reason or "",
                )
                await client.cleanup(code, reason)


class _Timers:
    """Ping, pong and stale checks of one client, as loop timers."""

    def __init__(self, client: Client, config: Config) -> None:
        self.client = client
        self.interval = config.client.ping_interval
        self.pong_timeout = config.client.pong_timeout
        self._loop = asyncio.get_running_loop()
        # The first ping is randomized to spread the pings of clients that
        # connected together (say, after a restart).
        first = random.uniform(self.interval / 2, self.interval)
        self._ping_handle = self._loop.call_later(first, self._ping)
        self._pong_handle: asyncio.TimerHandle | None = None
        self._stale_handle = self._loop.call_later(
            config.client.stale_close_delay, self._check_stale
        )

    def cancel(self) -> None:
        self._ping_handle.cancel()
        self._stale_handle.cancel()
        if self._pong_handle is not None:
            self._pong_handle.cancel()

    def _ping(self) -> None:
        if self.client.closed:
            return
        if self.client.send_ping():
            self._pong_handle = self._loop.call_later(self.pong_timeout, self._check_pong)
        self._ping_handle = self._loop.call_later(self.interval, self._ping)

    def _check_pong(self) -> None:
        if self.client.session.awaiting_pong:
            self.client.disconnect(DISCONNECT_NO_PONG)

    def _check_stale(self) -> None:
        if self.client.session.state is CONNECTING:
            self.client.disconnect(DISCONNECT_STALE)


def _static_response(static: StaticFile) -> Response:
    cache = "public, max-age=31536000, immutable" if static.immutable else "no-cache"
    headers = Headers(
        [
            ("Content-Type", static.content_type),
            ("Content-Length", str(len(static.body))),
            ("Cache-Control", cache),
        ]
    )
    return Response(200, "OK", headers, static.body)


def _json_response(status: http.HTTPStatus, body: object) -> Response:
    data = msgspec.json.encode(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)
