"""The WebSocket server: a thin asyncio shell around clients and the node.

Per connection, the handler task that ``websockets`` runs is the only task: it
reads with the toolkit's :func:`~tidings.patterns.consume` and feeds frames to
the :class:`~tidings._client.Client`. A closing handshake the server starts
gets a task of its own, only while it lasts. Pings, pong deadlines and the
stale-connection check are deadlines on each client, checked by one periodic
tick for all of them. An idle connection thus costs little memory: no timer,
no second task, no handshake kept, lists where websockets has deques
(:class:`LeanServerConnection`; see ``bench/results/REPORT.md``).

Writing has no task and no ``await`` per message: a :class:`Connection` keeps
its pending messages, and one :class:`Flusher` per server writes those of every
connection at the end of the event-loop iteration (write coalescing: one frame
and one write per connection however many messages, joined as the codec
allows). A client whose unsent bytes exceed ``client.queue_max_size``
is disconnected with 3008 at once, without affecting anyone else.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import ssl
import struct
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from websockets.asyncio.server import Server as WebSocketServer, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.typing import Subprotocol

from .. import patterns
from ..node.client import Client, Context
from ..node.limits import OriginCheck, TokenBucket
from ..node.metrics import Metrics
from ..protocol.codecs import JSON, PROTOBUF, Codec
from ..protocol.codes import DISCONNECT_SHUTDOWN, DISCONNECT_SLOW, Disconnect
from .static import StaticFile, StaticFiles

__all__ = ["Server", "WEBSOCKET_PATH"]

logger = logging.getLogger("tidings.server")

WEBSOCKET_PATH = "/connection/websocket"
MAX_FRAME_SIZE = 64 * 1024
"""Coalesced messages are cut into frames of at most this size."""
SLOW_CLOSE_TIMEOUT = 1.0
"""Seconds a slow client gets to take the close frame before the TCP connection is cut."""
CLOSE_TIMEOUT = 5.0
"""Seconds a closing handshake may take before the TCP connection is cut."""


SUBPROTOCOLS: dict[Subprotocol, Codec] = {
    Subprotocol("centrifuge-protobuf"): PROTOBUF,
    Subprotocol("centrifuge-json"): JSON,
}
"""The subprotocols offered, and the codec each selects. SDKs that speak JSON
usually offer none: a connection without a subprotocol is JSON, unless its URL
asks for Protobuf the legacy way (``?format=protobuf`` or ``?cf_protocol=protobuf``)."""


def frame(payload: bytes, binary: bool) -> bytes:
    """A complete unmasked server data frame (FIN set) carrying ``payload``."""
    opcode = 0x82 if binary else 0x81
    length = len(payload)
    if length < 126:
        return bytes((opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", opcode, 126, length) + payload
    return struct.pack("!BBQ", opcode, 127, length) + payload


def select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Protobuf if offered, else JSON if offered, else none (JSON) rather than 400."""
    return next((name for name in SUBPROTOCOLS if name in subprotocols), None)


def codec_of(websocket: ServerConnection) -> Codec:
    """The codec a connection's handshake chose."""
    if websocket.subprotocol is not None:
        return SUBPROTOCOLS[websocket.subprotocol]
    request = websocket.request
    if request is not None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        if "protobuf" in (*query.get("format", ()), *query.get("cf_protocol", ())):
            return PROTOBUF
    return JSON


class LeanServerConnection(ServerConnection):
    """websockets' server connection, holding less memory while idle.

    Two of its queues are ``deque`` objects, 760 bytes each even when empty
    (a deque allocates a block of 64 slots up front): the futures waiting for
    the socket to drain, and the frames received and not yet read. Both are
    empty nearly all the time; lists do the same job in 56 bytes. With 15,000
    connections that is 20 MiB. The attributes are websockets' internals, so
    each is replaced only if it is still the empty deque expected
    (``tests/test_server.py`` checks that they are, with the pinned version).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _is_empty_deque(self.drain_waiters):
            # Only appended to, iterated and removed from: a list does.
            self.drain_waiters = []  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        frames = getattr(self.recv_messages, "frames", None)
        if _is_empty_deque(getattr(frames, "queue", None)):
            frames.queue = _FrameList()  # type: ignore[union-attr]


def _is_empty_deque(value: object) -> bool:
    return isinstance(value, collections.deque) and not value


class _FrameList(list[Any]):
    """The part of ``deque``'s interface websockets' frame queue uses, on a list.

    It rarely holds more than a frame or two (the reader keeps up, and reading
    pauses at ``max_queue`` frames), so ``pop(0)`` costs nothing that matters.
    """

    def popleft(self) -> Any:
        return self.pop(0)

    def extendleft(self, items: Iterable[Any]) -> None:
        self[:0] = reversed(list(items))


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
    one frame per flush, joined by the codec, shared by all subscribers when it is
    a single publication. Data frames never go through ``websockets``' ``send()``
    (an ``await`` per message); its protocol still handles control frames and
    the closing handshake, and no data is written once it is closing.

    A client whose unsent bytes (in the transport's buffer) exceed
    ``queue_max_size`` is slow: it is closed with 3008 at once, and its TCP
    connection cut if it does not take the close frame in time.
    """

    __slots__ = (
        "websocket",
        "codec",
        "flusher",
        "queue_max_size",
        "metrics",
        "closing",
        "_pending",
        "_dirty",
        "_closer",
    )

    def __init__(
        self,
        websocket: ServerConnection,
        codec: Codec,
        flusher: Flusher,
        queue_max_size: int,
        metrics: Metrics,
    ) -> None:
        self.websocket = websocket
        self.codec = codec
        self.flusher = flusher
        self.queue_max_size = queue_max_size
        self.metrics = metrics
        self.closing: Disconnect | None = None
        self._pending: list[bytes] = []
        self._dirty = False
        self._closer: asyncio.Task[None] | None = None

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
            self._start_close(disconnect)

    def _start_close(self, disconnect: Disconnect) -> None:
        """No more data from now on; the closing handshake runs in a task of its own."""
        self.closing = disconnect
        self._closer = asyncio.get_running_loop().create_task(self._close(disconnect))

    async def _close(self, disconnect: Disconnect) -> None:
        try:
            # websockets' close() waits, without a deadline, for a socket that
            # does not drain: a peer that stopped reading would hold it forever.
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.websocket.close(disconnect.code, disconnect.reason)
        except TimeoutError:
            self.websocket.transport.abort()

    async def closed(self) -> None:
        """Wait for a closing handshake the server started, if any."""
        if self._closer is not None:
            await self._closer

    def flush(self, framed: dict[int, tuple[bytes, bytes]]) -> tuple[int, int]:
        """Write the pending messages; return how many frames and bytes were written."""
        self._dirty = False
        pending = self._pending
        if not pending or self.closing is not None or self.websocket.protocol.state is not OPEN:
            pending.clear()
            return 0, 0
        if len(pending) == 1:
            payload = pending[0]
            cached = framed.get(id(payload))
            if cached is not None and cached[0] is payload:
                data = cached[1]
            else:
                data = frame(payload, self.codec.binary)
                framed[id(payload)] = (payload, data)  # keeps payload alive: ids stay unique
            frames = 1
        else:
            data, frames = _frames(pending, self.codec)
        # The same list again, emptied: a new one per flush would outlive
        # young-generation collections and make the full ones frequent.
        pending.clear()
        transport = self.websocket.transport
        transport.write(data)
        if transport.get_write_buffer_size() > self.queue_max_size:
            self._slow()
        return frames, len(data)

    def _slow(self) -> None:
        self.metrics.queue_overflows.inc()
        self._start_close(DISCONNECT_SLOW)
        # The close frame waits behind what the client did not read: give it
        # a moment, then cut the connection.
        transport = self.websocket.transport
        asyncio.get_running_loop().call_later(SLOW_CLOSE_TIMEOUT, transport.abort)


def _frames(pending: list[bytes], codec: Codec) -> tuple[bytes, int]:
    """Coalesce messages into frames of at most :data:`MAX_FRAME_SIZE` bytes."""
    out: list[bytes] = []
    start = 0
    while start < len(pending):
        end, size = start + 1, len(pending[start])
        while end < len(pending) and size + len(pending[end]) < MAX_FRAME_SIZE:
            size += len(pending[end]) + 1
            end += 1
        out.append(frame(codec.join(pending[start:end]), codec.binary))
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
        self._heartbeat: asyncio.TimerHandle | None = None
        self.connections_closed = 0
        """Connections closed since the start (the garbage-collector policy reads it)."""

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
            subprotocols=list(SUBPROTOCOLS),
            select_subprotocol=select_subprotocol,
            compression=None,  # deflate costs ~50 KiB per connection and encode-once
            ping_interval=None,  # the protocol has its own pings (client.ping_interval)
            max_size=self.config.client.max_message_size,
            server_header=None,
            reuse_port=reuse_port,
            ssl=self._tls(),
            backlog=4096,  # a reconnect storm overflows the default 100 (SYN retries, seconds)
            create_connection=LeanServerConnection,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        options = self.config.client
        # Deadlines are checked this often: late by at most this much.
        period = min(
            1.0, options.ping_interval / 4, options.pong_timeout / 4, options.stale_close_delay / 4
        )
        self._heartbeat = asyncio.get_running_loop().call_later(period, self._beat, period)

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
        if self._heartbeat is not None:
            self._heartbeat.cancel()
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

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/health":  # answered at once, whatever waits for its turn
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        await self.context.turns.take()
        if path == WEBSOCKET_PATH:
            return self._admit(connection, request)
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
        codec = codec_of(websocket)
        connection = Connection(
            websocket, codec, self.flusher, self.config.client.queue_max_size, self.context.metrics
        )
        client = Client(self.context, connection, codec=codec, headers=_take_headers(websocket))
        client.start_heartbeat(asyncio.get_running_loop().time())
        self.clients.add(websocket, client)
        try:
            await patterns.consume(websocket, client.receive)
        finally:
            await connection.closed()
            # The code the server chose (3008 for a slow client whose close frame
            # never went out), else what the peer sent, else 1006.
            code, reason = connection.closing or (
                websocket.close_code or CloseCode.ABNORMAL_CLOSURE,
                websocket.close_reason or "",
            )
            try:
                await client.cleanup(code, reason)
            finally:
                self.clients.remove(websocket)
                self.connections_closed += 1

    def _beat(self, period: float) -> None:
        """Call the heartbeat of every client whose deadline passed."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for _, client in list(self.clients.items()):
            if client.due <= now:
                client.heartbeat(now)
        self._heartbeat = loop.call_later(period, self._beat, period)


def _take_headers(websocket: ServerConnection) -> Headers | None:
    """The handshake request's headers, removed from the connection.

    websockets keeps the handshake for the connection's lifetime: its headers
    would be ~3 KiB of every idle connection. The client keeps them (no local
    variable of the handler may) until its connect command is handled. The
    response is not needed at all once sent; the request itself must stay
    (websockets takes ``request is None`` to mean "handshake not received").
    """
    websocket.response = None
    if websocket.request is None:
        return None
    headers = websocket.request.headers.copy()
    websocket.request.headers.clear()
    return headers


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
