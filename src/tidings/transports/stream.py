"""HTTP-streaming and SSE: Centrifugo's WebSocket fallbacks and unidirectional transports.

Theory of operation. A stream is one long HTTP response (chunked). Its request
carries the connect command: a ``Command`` for the bidirectional transports
(``http_stream``, ``sse``), whose later commands arrive through ``POST
/emulation`` (:mod:`.emulation`), or a bare ``ConnectRequest`` for the
unidirectional ones (``uni_http_stream``, ``uni_sse``), which only listen.
:func:`open_stream` checks the request, answers the response head and hands the
TCP connection to a :class:`StreamConnection`, the client's transport. From then
on every message is a chunk of the response, in the transport's framing:

===================  ==============================  ==============
transport            a message                       a ping
===================  ==============================  ==============
http_stream, JSON    the reply, then ``\\n``          ``{}\\n``
http_stream, Proto   the varint-delimited reply      ``\\x00``
sse                  ``data: <reply>\\n\\n``           ``data: {}\\n\\n``
uni_http_stream      the bare push, then ``\\n``      ``{}\\n``
uni_sse              ``data: <push>\\n\\n``            ``data: {}\\n\\n``
===================  ==============================  ==============

Unidirectional clients get bare pushes: the connect reply becomes a ``connect``
push, a refused connect a ``disconnect`` push (Centrifugo's codes), and every
other message is already a push (``{"push": P}`` is written as ``P``). They send
no pongs.

Writing is WebSocket's (:mod:`.websocket`): the server's :class:`Flusher`
coalesces a connection's messages into one chunk and one write, a publication
is framed once per framing for all the connections that get it alone, and a
client whose unsent bytes pass ``client.queue_max_size`` is closed with 3008.
Closing writes a ``disconnect`` push and ends the response.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import urllib.parse
import uuid
from typing import TYPE_CHECKING

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

from ..node.client import Client
from ..protocol.codecs import JSON, PROTOBUF, Codec, disconnect_push
from ..protocol.codes import DISCONNECT_SERVER_ERROR, DISCONNECT_SLOW, Disconnect
from ..protocol.unidirectional import bare_push, connect_command, connect_push
from .http import HTTPConnection, HTTPRequest, text_response
from .websocket import CLOSE_TIMEOUT, SLOW_CLOSE_TIMEOUT, Flusher, FrameCache, reset

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "STREAM_PATHS",
    "Framing",
    "StreamConnection",
    "cors_headers",
    "open_stream",
    "preflight",
]

logger = logging.getLogger("tidings.server")


class Framing(enum.Enum):
    """How a transport writes one message (see the module's table)."""

    LINES = "http_stream"
    BINARY = "http_stream (protobuf)"
    SSE = "sse"
    UNI_LINES = "uni_http_stream"
    UNI_SSE = "uni_sse"

    @property
    def unidirectional(self) -> bool:
        return self is Framing.UNI_LINES or self is Framing.UNI_SSE

    @property
    def sse(self) -> bool:
        return self is Framing.SSE or self is Framing.UNI_SSE

    def frame(self, message: bytes) -> bytes:
        if self is Framing.BINARY:
            return message
        if self.unidirectional:
            message = bare_push(message)
        if self.sse:
            return b"data: " + message + b"\n\n"
        return message + b"\n"


STREAM_PATHS = {
    "/connection/http_stream": "http_stream",
    "/connection/sse": "sse",
    "/connection/uni_http_stream": "uni_http_stream",
    "/connection/uni_sse": "uni_sse",
}
"""Path -> the transport (its option table) it serves."""

_STREAM_HEADERS = [
    ("Cache-Control", "private, no-cache, no-store, must-revalidate, max-age=0"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
    # nginx: do not buffer the response (a stream would reach the client in bursts).
    ("X-Accel-Buffering", "no"),
    ("Transfer-Encoding", "chunked"),
]

_LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


# --- HTTP: CORS and the handshake ---------------------------------------------------


def cors_headers(server: Server, request: HTTPRequest) -> list[tuple[str, str]] | None:
    """CORS headers for a request from an allowed origin (none without an Origin);
    None when its origin is not allowed."""
    origin = request.headers.get("Origin")
    if origin is None:
        return []
    if not server.origins.allows(origin, request.headers.get("Host")):
        return None
    headers = [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]
    asked = request.headers.get("Access-Control-Request-Headers")
    if asked:
        headers.append(("Access-Control-Allow-Headers", asked))
    return headers


def preflight(server: Server, request: HTTPRequest, methods: str) -> Response:
    """The answer to a CORS preflight (``OPTIONS``)."""
    cors = cors_headers(server, request)
    if cors is None:
        return text_response(http.HTTPStatus.FORBIDDEN, "Origin not allowed\n")
    headers = Headers(cors)
    headers["Access-Control-Allow-Methods"] = methods
    headers["Access-Control-Max-Age"] = "300"
    headers["Content-Length"] = "0"
    return Response(204, "No Content", headers, b"")


def _refuse(connection: HTTPConnection, status: http.HTTPStatus, text: str) -> None:
    connection.respond(text_response(status, text))


def open_stream(
    server: Server, connection: HTTPConnection, request: HTTPRequest, name: str
) -> None:
    """Answer a request to a streaming transport: refused, or the start of the stream."""
    post_only = name in ("http_stream", "uni_http_stream")
    methods = "POST, OPTIONS" if post_only else "GET, POST, OPTIONS"
    if request.method == "OPTIONS":
        connection.respond(preflight(server, request, methods))
        return
    if request.method != "POST" and (post_only or request.method != "GET"):
        response = text_response(http.HTTPStatus.METHOD_NOT_ALLOWED, "Method not allowed\n")
        response.headers["Allow"] = methods
        connection.respond(response)
        return
    cors = cors_headers(server, request)
    refusal = server.refusal(request.headers.get("Origin"), request.headers.get("Host"))
    if cors is None or refusal is not None:
        connection.respond(text_response(*(refusal or _FORBIDDEN)))
        return
    body = request.body
    if request.method == "GET":
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)
        body = query.get("cf_connect", [""])[0].encode()
    if len(body) > getattr(server.config, name).max_request_body_size:
        # The limit applies to the connect request, in a body or in cf_connect.
        _refuse(connection, http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large\n")
        return
    content_type = request.headers.get("Content-Type", "")
    framing: Framing
    codec: Codec = JSON
    if name == "http_stream":
        binary = content_type.startswith("application/octet-stream")
        framing, codec = (Framing.BINARY, PROTOBUF) if binary else (Framing.LINES, JSON)
    else:
        framing = {
            "sse": Framing.SSE,
            "uni_http_stream": Framing.UNI_LINES,
            "uni_sse": Framing.UNI_SSE,
        }[name]
    first: str | bytes
    if framing.unidirectional:
        try:
            first = connect_command(body)
        except msgspec.DecodeError as exc:
            _refuse(connection, http.HTTPStatus.BAD_REQUEST, f"Bad connect request: {exc}\n")
            return
    else:
        if not body:
            what = "cf_connect" if request.method == "GET" else "a body"
            _refuse(connection, http.HTTPStatus.BAD_REQUEST, f"The connect command needs {what}\n")
            return
        first = body if codec.binary else body.decode("utf-8", "replace")
    head = [("Connection", "keep-alive"), *_STREAM_HEADERS, *cors]
    if framing.sse:
        head.append(("Content-Type", "text/event-stream; charset=utf-8"))
    transport = connection.detach()
    lines = [b"HTTP/1.1 200 OK"] + [f"{k}: {v}".encode("latin-1") for k, v in head]
    start = b"\r\n".join(lines) + b"\r\n\r\n"
    if framing.sse:
        start += chunk(b"\r\n")  # EventSource reports "open" once it has bytes
    stream = StreamConnection(server, transport, codec, framing, name)
    if framing.unidirectional and getattr(server.config, name).connect_code_to_http_response:
        stream.head = start  # written with the connect push; a refusal gets a status
        stream.cors = cors
    else:
        transport.write(start)
    transport.set_protocol(stream)
    server.opened(stream)
    if framing is not Framing.UNI_SSE and framing is not Framing.UNI_LINES:
        server.sessions[stream.client.session_id] = stream
    stream.receive(first)
    if not transport.is_reading():
        transport.resume_reading()


_FORBIDDEN = (http.HTTPStatus.FORBIDDEN, "Origin not allowed\n")

_HTTP_STATUSES: dict[int, http.HTTPStatus] = {
    3005: http.HTTPStatus.UNAUTHORIZED,  # expired
    3500: http.HTTPStatus.UNAUTHORIZED,  # invalid token
    3501: http.HTTPStatus.BAD_REQUEST,
    3504: http.HTTPStatus.SERVICE_UNAVAILABLE,  # connection limit
    3507: http.HTTPStatus.FORBIDDEN,  # permission denied
    3013: http.HTTPStatus.TOO_MANY_REQUESTS,
    3001: http.HTTPStatus.SERVICE_UNAVAILABLE,  # shutdown
}


def http_status(disconnect: Disconnect) -> http.HTTPStatus:
    """The HTTP status that answers a refused unidirectional connect (500 for the rest)."""
    return _HTTP_STATUSES.get(disconnect.code, http.HTTPStatus.INTERNAL_SERVER_ERROR)


class StreamConnection(asyncio.Protocol):
    """One HTTP-streaming or SSE response: the :class:`~tidings.node.client.Transport`
    of a client."""

    __slots__ = (
        "server",
        "transport",
        "codec",
        "framing",
        "client",
        "closing",
        "_pending",
        "_dirty",
        "_connected",
        "head",
        "cors",
        "_cut",
        "_lost",
        "_inbox",
        "_reader",
    )

    def __init__(
        self,
        server: Server,
        transport: asyncio.Transport,
        codec: Codec,
        framing: Framing,
        name: str,
    ) -> None:
        self.server = server
        self.transport = transport
        self.codec = codec
        self.framing = framing
        self.closing: Disconnect | None = None
        self._pending: list[bytes] = []
        self._dirty = False
        self._connected = False
        """Whether the connect reply went out (a unidirectional client's first push)."""
        self.head: bytes | None = None
        """The response's start, when it waits for the connect's outcome
        (``connect_code_to_http_response``)."""
        self.cors: list[tuple[str, str]] = []
        """The CORS headers of the response, for a status answered instead of it."""
        self._cut: asyncio.TimerHandle | None = None
        self._lost = False
        self._inbox: list[tuple[str | bytes, asyncio.Future[None]]] = []
        """Messages for the client, each with what its sender waits on."""
        self._reader: asyncio.Task[None] | None = None
        self.client = Client(
            server.context,
            self,
            codec=codec,
            transport_name=name,
            session_id=str(uuid.uuid4()),
            emulated=not framing.unidirectional,
            unidirectional=framing.unidirectional,
        )

    # --- input: the connect command, then commands from /emulation ----------------------

    def receive(self, message: str | bytes) -> asyncio.Future[None]:
        """Queue a message for the client (the connect command, or an /emulation post's);
        the future is done once it was handled.

        One reader hands them over one at a time, in order, as a WebSocket's frames:
        the session takes a command only once the one before it was answered."""
        done = asyncio.get_running_loop().create_future()
        if self._lost:
            done.set_result(None)
            return done
        self._inbox.append((message, done))
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())
        return done

    async def _read(self) -> None:
        inbox = self._inbox
        try:
            while inbox and not self._lost:
                message, done = inbox.pop(0)
                try:
                    await self.client.receive(message)
                finally:
                    if not done.done():  # its poster may have given up (cancelled)
                        done.set_result(None)
        except Exception:
            logger.exception("client %s: failed handling a message", self.client.id)
            self.client.disconnect(DISCONNECT_SERVER_ERROR)
        finally:
            for _, done in inbox:  # the connection ended: nothing more is handled
                if not done.done():
                    done.set_result(None)
            inbox.clear()
            self._reader = None
            if self._lost:
                self.server.closed(self)

    def data_received(self, data: bytes) -> None:
        """Nothing more is read from a stream's request (commands come through /emulation)."""

    def eof_received(self) -> bool | None:
        return None  # the client went away: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._pending.clear()
        if self._cut is not None:
            self._cut.cancel()
        self.server.sessions.pop(self.client.session_id, None)
        if self._reader is None:  # else the reader reports it when done
            self.server.closed(self)

    @property
    def close_status(self) -> tuple[int, str]:
        """The code the server chose, else 3000: the client ended the stream."""
        if self.closing is not None:
            return self.closing.code, self.closing.reason
        return 3000, "connection closed"

    # --- output: the client's Transport -------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing is not None:
            return
        if self.framing.unidirectional and not self._connected:
            self._connected = True
            data = self._connect_push(data)
            if not data:
                return
        self._pending.append(data)
        if not self._dirty:
            self._dirty = True
            self.server.flusher.mark(self)

    def _connect_push(self, message: bytes) -> bytes:
        """A unidirectional client's first message as a push; b"" for a refused connect,
        which becomes its disconnect (or an HTTP status, if the response has not started)."""
        push = connect_push(message)
        if isinstance(push, Disconnect):
            asyncio.get_running_loop().call_soon(self.client.disconnect, push)
            return b""
        head, self.head = self.head, None
        if head is not None:
            self.transport.write(head)
        return push

    def flush(self, framed: FrameCache) -> tuple[int, int]:
        """Write the pending messages as one chunk; return (1, bytes written) or (0, 0)."""
        self._dirty = False
        pending = self._pending
        if not pending or self.closing is not None or self._lost:
            pending.clear()
            return 0, 0
        if len(pending) == 1:
            payload = pending[0]
            key = (self.framing, id(payload))
            cached = framed.streamed.get(key)
            if cached is not None and cached[0] is payload:
                data = cached[1]
            else:
                data = chunk(self.framing.frame(payload))
                framed.streamed[key] = (payload, data)
        else:
            data = chunk(b"".join([self.framing.frame(m) for m in pending]))
        pending.clear()
        transport = self.transport
        if transport.get_write_buffer_size() + len(data) > self.server.buffer_limit:
            self.server.context.metrics.queue_overflows.inc()
            self._end(DISCONNECT_SLOW, SLOW_CLOSE_TIMEOUT)
            return 0, 0
        transport.write(data)
        return 1, len(data)

    def close(self, disconnect: Disconnect) -> None:
        """End the response after the pending messages and a ``disconnect`` push."""
        if self.closing is None:
            Flusher.flush_now(self)
            self._end(disconnect, CLOSE_TIMEOUT)

    def _end(self, disconnect: Disconnect, timeout: float) -> None:
        self.closing = disconnect
        if self._lost:
            return
        if self.head is not None:  # the response has not started: a status says it all
            response = text_response(http_status(disconnect), f"{disconnect.reason}\n")
            response.headers["Connection"] = "close"
            for name, value in self.cors:  # a page of another origin may read it
                response.headers[name] = value
            self.transport.write(response.serialize())
            self.transport.close()
            self._cut = asyncio.get_running_loop().call_later(timeout, reset, self.transport)
            return
        message = disconnect_push(self.codec, disconnect)
        self.transport.write(chunk(self.framing.frame(message)) + _LAST_CHUNK)
        self.transport.close()
        self._cut = asyncio.get_running_loop().call_later(timeout, reset, self.transport)

    def cut(self) -> None:
        reset(self.transport)
