"""WebSocket connections: websockets' sans-I/O protocol inside an ``asyncio.Protocol``.

Theory of operation. The HTTP layer (:mod:`.http`) parses the upgrade request;
:func:`upgrade` checks it (origin, limits), lets websockets' sans-I/O
``ServerProtocol`` validate it and build the 101 response, and gives the TCP
connection to a :class:`WebSocketConnection`. From then on bytes go into the
sans-I/O protocol and frames come out; websockets answers pings and close
frames itself, and this module writes what it queued.

Reading. Complete messages (fragments joined, text checked as UTF-8) go to an
inbox. A task runs only while the inbox has messages: it hands them one by
one to the :class:`~tidings.node.client.Client`, in order, then ends. An idle
connection has no task and no timer: its pings and deadlines are checked by
the server's periodic tick. Reading pauses while the inbox is full.

Writing. The client's messages are not sent through websockets (a frame object
and a copy per message): a :class:`WebSocketConnection` keeps its pending
messages and one :class:`Flusher` per server writes those of every
connection at the end of the event-loop iteration (write coalescing: one frame
and one write per connection however many messages, joined as the codec
allows; one publication framed once for all its subscribers).

The slow-client bound. A client whose unsent bytes would pass
``client.queue_max_size`` is closed with 3008 at once. Unsent bytes are in two
places: the transport's buffer, which asyncio counts, and the kernel's send
buffer, which it does not (here up to 4 MiB by autotuning). So the kernel's
buffer is capped at an eighth of the bound (Linux doubles the value set, for
its bookkeeping: a quarter), and a flush that would take the transport's buffer
past the other three quarters is not written: the client is slow. The bound is
the real one. A connection cut (a slow client that does not take its close
frame, a closing handshake that does not finish) is reset, with ``SO_LINGER``
0, so the kernel drops what the peer never read instead of keeping it as an
orphan.

Compression. With ``websocket.compression``, permessage-deflate is negotiated
by websockets, without context takeover in either direction, so no deflate
state outlives a message: an idle compressed connection costs what an
uncompressed one does. websockets inflates what clients send (bounded by
``decompressed_message_size_limit``: 1009 past it). Outgoing frames are
compressed here, by a :class:`Deflater`, and like plain frames once per flush
for every connection that gets the same messages: a publication flushed alone
is deflated once for all its subscribers, not once per connection.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import socket
import struct
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ..node.client import Client
from ..protocol.codecs import JSON, PROTOBUF, Codec, disconnect_push
from ..protocol.codes import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_SLOW,
    Disconnect,
)
from ..protocol.unidirectional import bare_push, connect_command, connect_push
from .http import HTTPConnection, HTTPRequest, text_response

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "UNI_WEBSOCKET_PATH",
    "WEBSOCKET_PATH",
    "Deflater",
    "FrameCache",
    "Flushable",
    "Flusher",
    "WebSocketConnection",
    "codec_of",
    "coalesce",
    "frame",
    "reset",
    "select_subprotocol",
    "send_buffer_size",
    "upgrade",
]

logger = logging.getLogger("tidings.server")

WEBSOCKET_PATH = "/connection/websocket"
UNI_WEBSOCKET_PATH = "/connection/uni_websocket"
MAX_FRAME_SIZE = 64 * 1024
"""Coalesced messages are cut into frames of at most this size."""
SLOW_CLOSE_TIMEOUT = 1.0
"""Seconds a slow client gets to take the close frame before the TCP connection is reset."""
CLOSE_TIMEOUT = 5.0
"""Seconds a closing handshake may take before the TCP connection is reset."""
UNI_OFF, UNI_AWAITING_CONNECT, UNI_CONNECTING, UNI_CONNECTED = range(4)
"""The states of a ``uni_websocket`` connection (``OFF``: a bidirectional one)."""
INBOX_LIMIT = 16
"""Messages received and not yet handled, at most, before reading pauses."""

SUBPROTOCOLS: dict[Subprotocol, Codec] = {
    Subprotocol("centrifuge-protobuf"): PROTOBUF,
    Subprotocol("centrifuge-json"): JSON,
}
"""The subprotocols offered, and the codec each selects. SDKs that speak JSON
usually offer none: a connection without a subprotocol is JSON, unless its URL
asks for Protobuf the legacy way (``?format=protobuf`` or ``?cf_protocol=protobuf``)."""


def frame(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """A complete unmasked server data frame (FIN set) carrying ``payload``
    (deflated: RSV1 set, as permessage-deflate marks a compressed message)."""
    opcode = (0x82 if binary else 0x81) | (0x40 if compressed else 0)
    length = len(payload)
    if length < 126:
        return bytes((opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", opcode, 126, length) + payload
    return struct.pack("!BBQ", opcode, 127, length) + payload


class Deflater:
    """Compresses outgoing frames for permessage-deflate without context takeover.

    One per server, shared by its compressed connections: each message is deflated
    from a fresh state, so nothing is kept per connection between messages.
    """

    __slots__ = ("level", "min_size", "shared")

    def __init__(self, level: int, min_size: int, shared: bool) -> None:
        self.level = level
        self.min_size = min_size
        self.shared = shared
        """Whether connections that get the same messages share one compressed frame."""

    def frame(self, payload: bytes, binary: bool) -> bytes:
        """``payload`` as one frame, deflated unless it is at most ``min_size`` bytes."""
        if len(payload) <= self.min_size:
            return frame(payload, binary)
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        # RFC 7692 7.2.1: the sync flush's empty block (00 00 ff ff) is left out.
        return frame(data[:-4], binary, compressed=True)

    def frames(self, pending: list[bytes], codec: Codec) -> tuple[bytes, int]:
        """Coalesce messages into deflated frames: the bytes to write and how many frames."""
        payloads = coalesce(pending, codec)
        return b"".join([self.frame(p, codec.binary) for p in payloads]), len(payloads)


class FrameCache:
    """The frames made during one flush, by the messages they carry: the same
    messages are framed (and deflated) once for every connection that gets them.

    Each entry keeps its messages alive, so that their ids stay unique meanwhile.
    """

    __slots__ = ("plain", "coalesced", "deflated", "streamed")

    def __init__(self) -> None:
        self.plain: dict[int, tuple[bytes, bytes]] = {}
        """id of a lone message -> (the message, its frame)."""
        self.coalesced: dict[tuple[object, ...], tuple[list[bytes], bytes, int]] = {}
        """(codec, ids of the messages...) -> (the messages, their frames, how many)."""
        self.streamed: dict[tuple[object, int], tuple[bytes, bytes]] = {}
        """(framing, id of a lone message) -> (the message, its chunk): HTTP streams."""
        self.deflated: dict[tuple[int, ...], tuple[list[bytes], bytes, int]] = {}
        """ids of the messages -> (the messages, their deflated frames, how many)."""


class _ServerProtocol(ServerProtocol):
    """websockets' server protocol, choosing among :data:`SUBPROTOCOLS`.

    An override rather than the ``select_subprotocol`` argument, which would keep
    a bound method on every connection.
    """

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        return select_subprotocol(subprotocols)


def select_subprotocol(offered: Sequence[str]) -> Subprotocol | None:
    """Protobuf if offered, else JSON if offered, else none (JSON) rather than 400."""
    return next((name for name in SUBPROTOCOLS if name in offered), None)


_OFFERED = list(SUBPROTOCOLS)  # one list for every connection's protocol


def codec_of(subprotocol: Subprotocol | None, target: str) -> Codec:
    """The codec a handshake chose: by subprotocol, else by query, else JSON."""
    if subprotocol is not None:
        return SUBPROTOCOLS[subprotocol]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if "protobuf" in (*query.get("format", ()), *query.get("cf_protocol", ())):
        return PROTOBUF
    return JSON


def upgrade(
    server: Server,
    connection: HTTPConnection,
    request: HTTPRequest,
    rest: bytes,
    *,
    unidirectional: bool = False,
) -> None:
    """Answer a WebSocket handshake; on success the connection becomes a WebSocket.

    ``unidirectional``: Centrifugo's ``uni_websocket``: a bare ConnectRequest as the
    first message (or ``?cf_connect=``), then one bare push per message (JSON)."""
    headers = request.headers
    refusal = server.refusal(headers.get("Origin"), headers.get("Host"))
    if refusal is not None:
        connection.respond(text_response(*refusal))
        return
    options = server.config.client
    compression = server.config.websocket
    offer = _deflate_offer(compression.compression_level) if compression.compression else None
    response, protocol = _accept(request, offer, options.max_message_size, unidirectional)
    if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
        if headers.get("Sec-WebSocket-Version") not in (None, "13"):
            # RFC 6455 4.2.2: name the version this server speaks.
            response = text_response(http.HTTPStatus.UPGRADE_REQUIRED, "Unsupported version\n")
            response.headers["Sec-WebSocket-Version"] = "13"
        connection.respond(response, keep_alive=False)
        return
    deflater = None
    if any(isinstance(extension, PerMessageDeflate) for extension in protocol.extensions):
        deflater = server.deflater
        # websockets bounds a message once inflated by its max_size, which is set
        # when the protocol is made: the same answer again, with the inflated bound.
        inflated = compression.decompressed_message_size_limit or 10 * options.max_message_size
        response, protocol = _accept(request, offer, inflated, unidirectional)
    transport = connection.detach()
    transport.write(response.serialize())
    codec = JSON if unidirectional else codec_of(protocol.subprotocol, request.target)
    websocket = WebSocketConnection(server, transport, protocol, codec, deflater)
    if unidirectional:
        websocket.uni = UNI_AWAITING_CONNECT
        websocket.client = Client(
            server.context,
            websocket,
            headers=headers,
            transport_name="uni_websocket",
            session_id=str(uuid.uuid4()),
            unidirectional=True,
        )
    else:
        websocket.client = Client(server.context, websocket, codec=codec, headers=headers)
    transport.set_protocol(websocket)
    server.opened(websocket)
    if unidirectional:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)
        if "cf_connect" in query:
            websocket.uni_connect(query["cf_connect"][0].encode())
    if rest:
        websocket.data_received(rest)
    if not transport.is_reading():
        transport.resume_reading()


def _accept(
    request: HTTPRequest,
    offer: list[ServerPerMessageDeflateFactory] | None,
    max_size: int,
    unidirectional: bool,
) -> tuple[Response, ServerProtocol]:
    """websockets' answer to the handshake, and the protocol that reads what follows.

    A unidirectional connection speaks JSON only: it takes no subprotocol."""
    # state=OPEN: the request was parsed already; the protocol reads frames from the start.
    protocol = (ServerProtocol if unidirectional else _ServerProtocol)(
        subprotocols=None if unidirectional else _OFFERED,
        extensions=offer,
        state=OPEN,
        max_size=max_size,
    )
    return protocol.accept(Request(request.target, request.headers)), protocol


@functools.cache
def _deflate_offer(level: int) -> list[ServerPerMessageDeflateFactory]:
    """What the server accepts of a client's permessage-deflate offer: no context
    takeover either way, so that no deflate state is kept per connection."""
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        compress_settings={"level": level},
    )
    return [factory]


def send_buffer_size(queue_max_size: int) -> int:
    """``SO_SNDBUF`` for a client's socket: Linux doubles it, so the kernel holds at
    most a quarter of the bound."""
    return max(4096, queue_max_size // 8)


def reset(transport: asyncio.Transport) -> None:
    """Cut a connection with a reset: the kernel drops what the peer did not read."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already closed
            pass
    transport.abort()


class Flushable(Protocol):
    """A connection whose pending messages the :class:`Flusher` writes."""

    server: Server

    def flush(self, framed: FrameCache) -> tuple[int, int]:
        """Write (or start writing) the pending messages; return frames and bytes written."""
        ...


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
        self._dirty: list[Flushable] = []
        self._scheduled = False
        self._last = 0.0

    def mark(self, connection: Flushable) -> None:
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
        dirty, self._dirty = self._dirty, []
        # One publication is the same bytes for all its subscribers: frame it once.
        framed = FrameCache()
        frames = written = 0
        for connection in dirty:
            count, size = connection.flush(framed)
            frames += count
            written += size
        if frames:  # metrics once per flush, not per connection
            _count(dirty[0], frames, written)
        # The delay counts from the end: a flush that took long (a large fan-out on a
        # busy core) leaves the loop time to read and queue more before the next one.
        self._last = asyncio.get_running_loop().time()

    @staticmethod
    def flush_now(connection: Flushable) -> None:
        """Write one connection's pending messages at once (it is closing)."""
        _count(connection, *connection.flush(FrameCache()))


def _count(connection: Flushable, frames: int, written: int) -> None:
    metrics = connection.server.context.metrics
    metrics.frames_sent.inc(frames)
    metrics.bytes_sent.inc(written)


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket connection: the :class:`~tidings.node.client.Transport` of a client."""

    __slots__ = (
        "server",
        "transport",
        "protocol",
        "codec",
        "deflater",
        "uni",
        "client",
        "closing",
        "_pending",
        "_dirty",
        "_fragments",
        "_fragmented_text",
        "_inbox",
        "_reader",
        "_cut",
        "_lost",
    )

    client: Client

    def __init__(
        self,
        server: Server,
        transport: asyncio.Transport,
        protocol: ServerProtocol,
        codec: Codec,
        deflater: Deflater | None = None,
    ) -> None:
        self.server = server
        self.transport = transport
        self.protocol = protocol
        self.codec = codec
        self.deflater = deflater
        """Compresses what this connection is sent (permessage-deflate negotiated)."""
        self.uni = UNI_OFF
        """Where a ``uni_websocket`` connection is: its connect request and reply."""
        self.closing: Disconnect | None = None
        """The disconnect the server chose, once it started closing."""
        self._pending: list[bytes] = []
        self._dirty = False
        self._fragments: list[bytes] | None = None
        """The parts of a fragmented message so far."""
        self._fragmented_text = False
        self._inbox: list[str | bytes] | None = None
        """Messages waiting for the client (made on demand: most connections are idle)."""
        self._reader: asyncio.Task[None] | None = None
        self._cut: asyncio.TimerHandle | None = None
        self._lost = False

    # --- reading ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if not isinstance(event, Frame):
                continue
            opcode, data = event.opcode, bytes(event.data)  # bytes already: no copy
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if event.fin:
                    self._message(opcode is Opcode.TEXT, data)
                else:
                    self._fragments = [data]
                    self._fragmented_text = opcode is Opcode.TEXT
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(data)
                if event.fin:
                    data = b"".join(self._fragments)
                    self._fragments = None
                    self._message(self._fragmented_text, data)
            elif opcode is Opcode.CLOSE and self._inbox:
                self._inbox.clear()  # after a close frame, nothing more is handled
        self._send_protocol_data()
        inbox = self._inbox
        if inbox:
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(self._read(inbox))
            if len(inbox) >= INBOX_LIMIT and self.transport.is_reading():
                self.transport.pause_reading()

    def _message(self, text: bool, data: bytes) -> None:
        if self.protocol.state is not OPEN:
            return
        if self.uni:
            if self.uni == UNI_AWAITING_CONNECT:
                self.uni_connect(data)
            return  # a unidirectional client has nothing more to say
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        if self._inbox is None:
            self._inbox = [message]
        else:
            self._inbox.append(message)

    def uni_connect(self, request: bytes) -> None:
        """Take a unidirectional client's ConnectRequest (3501 if it is not one)."""
        self.uni = UNI_CONNECTING
        try:
            command = connect_command(request)
        except msgspec.DecodeError as exc:
            self.client.disconnect(DISCONNECT_BAD_REQUEST)
            logger.warning("uni_websocket: bad connect request: %s", exc)
            return
        self._inbox = [command]
        self._reader = asyncio.get_running_loop().create_task(self._read(self._inbox))

    async def _read(self, inbox: list[str | bytes]) -> None:
        """Hand the inbox to the client, one message at a time, then end."""
        try:
            while inbox and not self._lost:
                await self.client.receive(inbox.pop(0))
                if len(inbox) < INBOX_LIMIT // 2 and not self.transport.is_reading():
                    if not self._lost and self.protocol.state is OPEN:
                        self.transport.resume_reading()
        except Exception:
            logger.exception("client %s: failed handling a message", self.client.id)
            self.client.disconnect(DISCONNECT_SERVER_ERROR)
        finally:
            self._reader = None
            self._inbox = None
            if self._lost:
                self.server.closed(self)

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._send_protocol_data()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.protocol.receive_eof()  # idempotent; the protocol now knows the peer's code
        if self._inbox:
            self._inbox.clear()
        self._pending.clear()
        if self._cut is not None:
            self._cut.cancel()
        if self._reader is None:  # else the reader reports it when done
            self.server.closed(self)

    @property
    def close_status(self) -> tuple[int, str]:
        """The code the server chose (3008 for a slow client whose close frame never
        went out), else what the peer sent, else 1006."""
        if self.closing is not None:
            return self.closing.code, self.closing.reason
        return (
            self.protocol.close_code or CloseCode.ABNORMAL_CLOSURE,
            self.protocol.close_reason or "",
        )

    # --- writing: the client's Transport ------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing is not None:
            return
        if self.uni:
            if self.uni == UNI_CONNECTING:
                self.uni = UNI_CONNECTED
                push = connect_push(data)
                if isinstance(push, Disconnect):
                    asyncio.get_running_loop().call_soon(self.client.disconnect, push)
                    return
                data = push
            else:
                data = bare_push(data)
        self._pending.append(data)
        if not self._dirty:
            self._dirty = True
            self.server.flusher.mark(self)

    def close(self, disconnect: Disconnect) -> None:
        """Close after the pending messages are written."""
        if self.closing is None:
            Flusher.flush_now(self)
            self._start_close(disconnect, CLOSE_TIMEOUT)

    def cut(self) -> None:
        reset(self.transport)

    def _start_close(self, disconnect: Disconnect, timeout: float) -> None:
        """No more data from now on: a close frame, and a deadline for the peer's."""
        self.closing = disconnect
        if self._lost:
            return
        if self.protocol.state is OPEN:
            if self.uni:  # a unidirectional client reads the reason in a push first
                self.transport.write(frame(bare_push(disconnect_push(JSON, disconnect)), False))
            self.protocol.send_close(disconnect.code, disconnect.reason)
            self._send_protocol_data()
        self._cut = asyncio.get_running_loop().call_later(timeout, reset, self.transport)

    def flush(self, framed: FrameCache) -> tuple[int, int]:
        """Write the pending messages; return how many frames and bytes were written."""
        self._dirty = False
        pending = self._pending
        if not pending or self.closing is not None or self.protocol.state is not OPEN:
            pending.clear()
            return 0, 0
        if self.uni:  # a push per message, as its clients read them
            frame_one = self.deflater.frame if self.deflater is not None else frame
            data, frames = b"".join([frame_one(m, False) for m in pending]), len(pending)
        elif self.deflater is not None:
            data, frames = self._deflated(pending, framed.deflated, self.deflater)
        elif len(pending) == 1:
            payload = pending[0]
            cached = framed.plain.get(id(payload))
            if cached is not None and cached[0] is payload:
                data = cached[1]
            else:
                data = frame(payload, self.codec.binary)
                framed.plain[id(payload)] = (payload, data)
            frames = 1
        else:
            # Subscribers of one channel have the same messages: coalesced once.
            codec = self.codec
            key = (codec, *map(id, pending))
            data, frames = _once(framed.coalesced, key, pending, lambda: _frames(pending, codec))
        # The same list again, emptied: a new one per flush would outlive
        # young-generation collections and make the full ones frequent.
        pending.clear()
        transport = self.transport
        if transport.get_write_buffer_size() + len(data) > self.server.buffer_limit:
            self._slow()
            return 0, 0
        transport.write(data)
        return frames, len(data)

    def _deflated(
        self,
        pending: list[bytes],
        framed: dict[tuple[int, ...], tuple[list[bytes], bytes, int]],
        deflater: Deflater,
    ) -> tuple[bytes, int]:
        """The pending messages as deflated frames, made once per flush for every
        connection with the same messages (unless the deflater is not ``shared``)."""
        if not deflater.shared:
            return deflater.frames(pending, self.codec)
        codec = self.codec
        return _once(
            framed, tuple(map(id, pending)), pending, lambda: deflater.frames(pending, codec)
        )

    def _slow(self) -> None:
        self.server.context.metrics.queue_overflows.inc()
        # The close frame waits behind what the client did not read: it gets
        # a moment, then the connection is reset.
        self._start_close(DISCONNECT_SLOW, SLOW_CLOSE_TIMEOUT)

    def _send_protocol_data(self) -> None:
        """Write what websockets queued: pongs, close frames; close at its end of stream."""
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            else:
                # A server closes the TCP connection once the closing handshake
                # is done (or failed): after what is buffered is written.
                self.transport.close()


def coalesce(pending: list[bytes], codec: Codec) -> list[bytes]:
    """Join messages into as few payloads as the codec allows, each of at most
    :data:`MAX_FRAME_SIZE` bytes (a longer message stays alone)."""
    out: list[bytes] = []
    start = 0
    while start < len(pending):
        end, size = start + 1, len(pending[start])
        while end < len(pending) and size + len(pending[end]) < MAX_FRAME_SIZE:
            size += len(pending[end]) + 1
            end += 1
        out.append(codec.join(pending[start:end]))
        start = end
    return out


_Key = TypeVar("_Key", bound=tuple[object, ...])


def _once(
    cache: dict[_Key, tuple[list[bytes], bytes, int]],
    key: _Key,
    pending: list[bytes],
    make: Callable[[], tuple[bytes, int]],
) -> tuple[bytes, int]:
    """The frames of ``pending`` made once per flush for every connection with the same
    messages: ``make()`` the first time; the entry keeps the messages (their ids) alive."""
    cached = cache.get(key)
    if cached is not None:
        return cached[1], cached[2]
    data, frames = make()
    cache[key] = (pending.copy(), data, frames)
    return data, frames


def _frames(pending: list[bytes], codec: Codec) -> tuple[bytes, int]:
    """Coalesce messages into frames: the bytes to write and how many frames."""
    payloads = coalesce(pending, codec)
    return b"".join([frame(payload, codec.binary) for payload in payloads]), len(payloads)
