"""The WebSocket server: a thin asyncio shell around clients and the node.

Per connection: a reader (the toolkit's :func:`~tidings.patterns.consume`) feeds
frames to the :class:`~tidings._client.Client`; a writer
(:func:`~tidings.patterns.produce`) drains the connection's outgoing queue; the
two run under :func:`~tidings.patterns.run_both`, so either ending stops the
other and closes the socket. Pings and the stale-connection check are timers,
not tasks.

The outgoing queue holds encoded messages. Everything pending when the writer
wakes up goes out as one text frame, newline-joined, as the protocol allows
(write coalescing). Its size is bounded by ``client.queue_max_size``: a client
that does not read fast enough is disconnected with 3008 at once, without
affecting anyone else.
"""

from __future__ import annotations

import asyncio
import http
import logging
import random
from collections.abc import AsyncIterator, Callable

import msgspec
from websockets.asyncio.server import Server as WebSocketServer, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

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
from ._metrics import Metrics
from ._session import CONNECTING

__all__ = ["Server", "WEBSOCKET_PATH"]

logger = logging.getLogger("tidings.server")

WEBSOCKET_PATH = "/connection/websocket"
MAX_FRAME_SIZE = 64 * 1024
"""Coalesced messages are cut into frames of at most this size."""
SLOW_CLOSE_TIMEOUT = 1.0
"""Seconds a slow client gets to take the close frame before the TCP connection is cut."""


class Connection:
    """The transport of one client: a bounded queue of outgoing messages.

    ``abort`` is called when the queue overflows: the writer may be stuck on a
    peer that stopped reading, so closing cannot wait for it.
    """

    def __init__(
        self, queue_max_size: int, abort: Callable[[Disconnect], None], metrics: Metrics
    ) -> None:
        self.queue_max_size = queue_max_size
        self.abort = abort
        self.metrics = metrics
        self.closing: Disconnect | None = None
        self._pending: list[bytes] = []
        self._size = 0
        self._wakeup = asyncio.Event()

    def write(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self._pending.append(data)
        self._size += len(data)
        if self._size > self.queue_max_size:
            # Slow client: drop what it did not read, close now.
            self._pending.clear()
            self._size = 0
            self.metrics.queue_overflows.inc()
            self.close(DISCONNECT_SLOW)
            self.abort(DISCONNECT_SLOW)
            return
        self._wakeup.set()

    def close(self, disconnect: Disconnect) -> None:
        if self.closing is None:
            self.closing = disconnect
            self._wakeup.set()

    async def frames(self) -> AsyncIterator[bytes]:
        """Yield every pending message, coalesced into frames, until closed.

        A frame holds at most :data:`MAX_FRAME_SIZE` bytes (or one larger
        message), so clients with a message size limit can read it.
        """
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            pending, self._pending, self._size = self._pending, [], 0
            start = 0
            while start < len(pending):
                end, size = start + 1, len(pending[start])
                while end < len(pending) and size + len(pending[end]) < MAX_FRAME_SIZE:
                    size += len(pending[end]) + 1
                    end += 1
                frame = pending[start] if end == start + 1 else b"\n".join(pending[start:end])
                self.metrics.frames_sent.inc()
                self.metrics.bytes_sent.inc(len(frame))
                yield frame
                start = end
            if self.closing is not None:
                return


class Server:
    """Accepts WebSocket connections and serves each as a :class:`Client`."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.config = context.config
        self.clients: patterns.Registry[Client] = patterns.Registry()
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
        )
        self._port = self._server.sockets[0].getsockname()[1]

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
            logger.warning("shutdown timeout: closing the remaining connections")
            self._server.close(close_connections=True)
            await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WEBSOCKET_PATH:
            return None
        if path == "/health":
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")

    async def _handle(self, websocket: ServerConnection) -> None:
        closing: set[asyncio.Task[None]] = set()

        def abort(disconnect: Disconnect) -> None:
            task = asyncio.ensure_future(websocket.close(disconnect.code, disconnect.reason))
            closing.add(task)
            task.add_done_callback(closing.discard)
            # websockets' close() waits, unbounded, for the socket to drain; a
            # peer that stopped reading never drains it, so cut the connection.
            asyncio.get_running_loop().call_later(SLOW_CLOSE_TIMEOUT, websocket.transport.abort)

        connection = Connection(self.config.client.queue_max_size, abort, self.context.metrics)
        request = websocket.request
        client = Client(self.context, connection, headers=request.headers if request else None)
        timers = _Timers(client, self.config)

        async def receive(message: str | bytes) -> None:
            if isinstance(message, str):
                await client.receive_text(message)
            else:
                await client.receive_binary(message)

        async def send() -> None:
            await patterns.produce(websocket, connection.frames(), text=True)
            closing = connection.closing or DISCONNECT_SHUTDOWN
            await websocket.close(closing.code, closing.reason)

        async with self.clients.registered(websocket, client):
            try:
                await patterns.run_both(websocket, patterns.consume(websocket, receive), send())
            finally:
                timers.cancel()
                await client.cleanup(
                    websocket.close_code or CloseCode.ABNORMAL_CLOSURE, websocket.close_reason or ""
                )


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


def _json_response(status: http.HTTPStatus, body: object) -> Response:
    data = msgspec.json.encode(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)
