"""The client endpoints as an ASGI application: a hub inside FastAPI, Starlette or Django.

Theory of operation. An ASGI server (uvicorn, hypercorn, daphne) owns the
sockets and the WebSocket protocol, and calls the application once per
connection with ``receive`` and ``send`` coroutines. :class:`ASGIConnection`
is a client's :class:`~tidings.node.client.Transport` over them. The
application's own coroutine reads: each message goes to the client in order,
in its turn, as on the native port. Writes go through the server's
:class:`~.websocket.Flusher`, as on the native port: at most once per
``client.write_delay``, a writer task starts for each connection with messages
waiting and sends them coalesced (one ``websocket.send`` per batch, cut at
:data:`~.websocket.MAX_FRAME_SIZE`), so under load each send carries several
publications. The hub's
:class:`~.server.Server` keeps the registry, the handshake checks (origin,
connection limits) and the heartbeat, exactly as for its own port: only the
bytes travel through somebody else's server.

The slow-client bound. The ASGI server's buffers are out of sight, but a
``send`` that does not return holds every message behind it here, and those
are counted: a client whose unsent bytes would pass
``client.queue_max_size`` is closed with 3008, and cut if it does not take
its close frame within a second. This needs a server whose ``send`` waits
while its socket's buffer is full, as uvicorn's and hypercorn's do; daphne's
returns at once and buffers without bound, so under daphne a client that stops
reading is not detected. Every close has a deadline too (5 s): a client that
does not take its close frame is cut.

Paths. The endpoints are ``/connection/websocket`` and ``/health`` under
``prefix``, below the scope's ``root_path`` (which Starlette's ``Mount``
sets). Any other request goes to ``fallback`` (a Django application, say) or
is answered 404. As the top-level application, it also starts and stops the
hub on the ASGI lifespan events. Some servers send none (daphne): the hub then
starts with the first request and is not stopped gracefully.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.frames import CloseCode

from ..node.client import Client
from ..protocol.codecs import Codec
from ..protocol.codes import (
    DISCONNECT_MESSAGE_TOO_BIG,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_SLOW,
    Disconnect,
)
from .websocket import (
    CLOSE_TIMEOUT,
    SLOW_CLOSE_TIMEOUT,
    WEBSOCKET_PATH,
    FrameCache,
    coalesce,
    codec_of,
    select_subprotocol,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ASGIApp", "ASGIConnection", "ClientEndpoints"]

logger = logging.getLogger("tidings.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientEndpoints:
    """The ASGI application of :meth:`tidings.Hub.asgi`."""

    def __init__(
        self,
        server: Server,
        lifespan: Callable[[], AbstractAsyncContextManager[None]],
        *,
        prefix: str = "",
        fallback: ASGIApp | None = None,
    ) -> None:
        self.server = server
        self.lifespan = lifespan
        self.prefix = prefix.rstrip("/")
        self.fallback = fallback
        self._starting = asyncio.Lock()
        self._running: AbstractAsyncContextManager[None] | None = None
        """Held, or collecting it would stop the hub."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self.server.started:
            await self._start_without_lifespan()
        path = self._route_path(scope)
        if kind == "websocket" and path == WEBSOCKET_PATH:
            await self._websocket(scope, receive, send)
        elif kind == "http" and path == "/health":
            if self.server.closing:  # as the refused handshakes say
                await _respond(send, http.HTTPStatus.SERVICE_UNAVAILABLE, b"Shutting down\n")
            else:
                await _respond(send, http.HTTPStatus.OK, b'{"status":"ok"}', "application/json")
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})  # the server answers 403
        elif kind == "http":
            await _respond(send, http.HTTPStatus.NOT_FOUND, b"Not Found\n")

    def _route_path(self, scope: Scope) -> str | None:
        """The path below ``root_path`` and ``prefix``, or None when it is not below them."""
        path: str = scope["path"]
        root = scope.get("root_path", "") + self.prefix
        if not root:
            return path
        # Servers disagree on whether a mounted application's path keeps its
        # root_path (the ASGI spec says it does; some routers strip it).
        if path.startswith(root + "/"):
            return path[len(root) :]
        return path if not self.prefix else None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        running = self.lifespan()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await running.__aenter__()
                except Exception as exc:
                    logger.exception("tidings could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await running.__aexit__(None, None, None)
                except Exception as exc:
                    logger.exception("tidings did not stop cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_without_lifespan(self) -> None:
        async with self._starting:
            if not self.server.started:
                logger.warning(
                    "the ASGI server sent no lifespan events: the hub starts now, "
                    "with the first request, and will not be stopped gracefully"
                )
                self._running = self.lifespan()
                await self._running.__aenter__()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        server = self.server
        headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        refusal = (
            (http.HTTPStatus.SERVICE_UNAVAILABLE, "Shutting down\n")
            if server.closing
            else server.refusal(headers.get("Origin"), headers.get("Host"))
        )
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        subprotocol = select_subprotocol(scope.get("subprotocols") or ())
        query = scope.get("query_string", b"").decode("latin-1")
        codec = codec_of(subprotocol, f"?{query}")
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        connection = ASGIConnection(server, send, codec)
        connection.client = Client(server.context, connection, codec=codec, headers=headers)
        server.opened(connection)
        try:
            await connection.run(receive)
        finally:
            server.closed(connection)


class ASGIConnection:
    """One WebSocket connection carried by an ASGI server: a client's transport."""

    __slots__ = (
        "server",
        "client",
        "codec",
        "closing",
        "_send",
        "_pending",
        "_dirty",
        "_unsent",
        "_writer",
        "_task",
        "_deadline",
        "_cutting",
        "_peer_close",
    )

    client: Client

    def __init__(self, server: Server, send: Send, codec: Codec) -> None:
        self.server = server
        self.codec = codec
        self.closing: Disconnect | None = None
        """The disconnect the server chose, once it started closing."""
        self._send = send
        self._pending: list[bytes] = []
        self._dirty = False
        self._unsent = 0
        """Bytes written by the client and not yet sent (pending, or in a stuck send)."""
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._cutting = False
        self._peer_close: tuple[int, str] | None = None

    async def run(self, receive: Receive) -> None:
        """Hand each message received to the client until the connection ends."""
        self._task = asyncio.current_task()
        limit = self.server.config.client.max_message_size
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self._peer_close = (message.get("code", 1005), message.get("reason") or "")
                    return
                if message["type"] != "websocket.receive" or self.closing is not None:
                    continue
                data: str | bytes | None = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                size = len(data.encode()) if isinstance(data, str) else len(data)
                if size > limit:
                    self.close(DISCONNECT_MESSAGE_TOO_BIG)
                    continue
                try:
                    await self.client.receive(data)
                except Exception:
                    logger.exception("client %s: failed handling a message", self.client.id)
                    self.client.disconnect(DISCONNECT_SERVER_ERROR)
        except asyncio.CancelledError:
            assert self._task is not None
            if not self._cutting or self._task.uncancel():
                raise  # not (only) our cut: the server is cancelling us
        finally:
            self._pending.clear()
            if self._deadline is not None:
                self._deadline.cancel()
            if self._writer is not None:
                self._writer.cancel()

    @property
    def close_status(self) -> tuple[int, str]:
        """The code the server chose, else what the peer sent, else 1006."""
        if self.closing is not None:
            return self.closing.code, self.closing.reason
        return self._peer_close or (CloseCode.ABNORMAL_CLOSURE, "")

    # --- writing: the client's Transport ------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self._unsent += len(data)
        if self._unsent > self.server.config.client.queue_max_size:
            self.server.context.metrics.queue_overflows.inc()
            self._pending.clear()
            # The close frame waits behind what the client did not take: a short deadline.
            self._start_close(DISCONNECT_SLOW, SLOW_CLOSE_TIMEOUT)
            return
        self._pending.append(data)
        if not self._dirty:
            self._dirty = True
            self.server.flusher.mark(self)

    def flush(self, framed: FrameCache) -> tuple[int, int]:
        """The flusher's turn: start sending (the writer counts what it sends)."""
        self._dirty = False
        if self._pending:
            self._wake()
        return 0, 0

    def close(self, disconnect: Disconnect) -> None:
        """Close after the pending messages are sent."""
        if self.closing is None:
            self._start_close(disconnect, CLOSE_TIMEOUT)

    def cut(self) -> None:
        """End the connection now: its coroutine returns, and the ASGI server closes it."""
        if self._task is not None and not self._task.done() and not self._cutting:
            self._cutting = True
            self._task.cancel()

    def _start_close(self, disconnect: Disconnect, timeout: float) -> None:
        """No more data from now on: the close frame, and a deadline for the connection
        to end (a client that stopped reading never takes the close frame)."""
        self.closing = disconnect
        self._deadline = asyncio.get_running_loop().call_later(timeout, self.cut)
        self._wake()

    def _wake(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Send what is pending, batch after batch, then the close frame if closing."""
        metrics = self.server.context.metrics
        binary = self.codec.binary
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                payloads = coalesce(pending, self.codec)
                for payload in payloads:
                    if binary:
                        await self._send({"type": "websocket.send", "bytes": payload})
                    else:
                        await self._send({"type": "websocket.send", "text": payload.decode()})
                # Metrics once per batch, as the native flusher counts once per flush.
                metrics.frames_sent.inc(len(payloads))
                metrics.bytes_sent.inc(sum(map(len, payloads)))
                self._unsent -= sum(map(len, pending))
            if self.closing is not None:
                code, reason = self.closing
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as exc:  # each ASGI server has its own "disconnected" error
            logger.debug("client %s: send failed: %s", self.client.id, exc)
            self.cut()
        finally:
            self._writer = None


async def _respond(
    send: Send,
    status: http.HTTPStatus,
    body: bytes,
    content_type: str = "text/plain",
    kind: str = "http.response",
) -> None:
    """An HTTP response (``kind``: ``websocket.http.response`` refuses a handshake)."""
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": f"{kind}.start", "status": status, "headers": headers})
    await send({"type": f"{kind}.body", "body": body})


async def _refuse(scope: Scope, send: Send, status: http.HTTPStatus, text: str) -> None:
    """Refuse a handshake with this status where the server can say it, else 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await _respond(send, status, text.encode(), kind="websocket.http.response")
    else:
        await send({"type": "websocket.close", "code": 1008})
