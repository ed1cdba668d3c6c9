"""Reusable patterns for websockets asyncio applications.

These helpers implement the standard patterns from the websockets documentation
(consumer, producer, consumer + producer, registry of connected clients,
broadcast) in a form that works with *any* :mod:`websockets.asyncio` connection:
the server side :class:`~websockets.asyncio.server.ServerConnection` as well as
the client side :class:`~websockets.asyncio.client.ClientConnection`. Both are
subclasses of :class:`websockets.asyncio.connection.Connection`, which is the
type used throughout this module.

Example::

    import asyncio
    from collections.abc import AsyncIterator

    from websockets.asyncio.server import ServerConnection, serve
    from tidings.patterns import Registry, broadcast, consume, produce, run_both

    clients: Registry[str] = Registry()

    async def handler(websocket: ServerConnection) -> None:
        outbox: asyncio.Queue[str] = asyncio.Queue()

        async def on_message(message: str | bytes) -> None:
            await outbox.put(f"echo: {message!r}")

        async def messages() -> AsyncIterator[str]:
            while True:
                yield await outbox.get()

        async with clients.registered(websocket, "anonymous"):
            await run_both(
                websocket,
                consume(websocket, on_message),
                produce(websocket, messages()),
            )

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 8765) as server:
            broadcast(clients.connections, "hello, everyone")
            await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
)
from typing import Generic, TypeVar

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import broadcast as _ws_broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.typing import Data, DataLike

__all__ = [
    "Handler",
    "Registry",
    "broadcast",
    "consume",
    "produce",
    "run_both",
]

T = TypeVar("T")

Handler = Callable[[Data], Awaitable[object]]
"""Type of the message handler accepted by :func:`consume`."""


def _is_closed(connection: Connection) -> bool:
    """Return whether ``connection`` has left the OPEN state (closing or closed)."""
    return connection.state is State.CLOSING or connection.state is State.CLOSED


async def consume(connection: Connection, handler: Handler) -> None:
    """Receive messages from ``connection`` and pass each one to ``handler``.

    Messages are handled one at a time, in order: the next message is only
    received once ``await handler(message)`` has returned. ``message`` is a
    :class:`str` for text frames and :class:`bytes` for binary frames.

    :func:`consume` returns quietly when the connection is closed, whether the
    closure was normal (``ConnectionClosedOK``) or abnormal
    (``ConnectionClosedError``, e.g. the network dropped). Messages received
    before the closure are still delivered to ``handler`` first.

    Exceptions raised by ``handler`` propagate, except a
    :exc:`~websockets.exceptions.ConnectionClosed` raised while ``connection``
    itself is closing or closed (for example when the handler replies on a
    connection that the peer just closed): that also ends consumption quietly.

    Example::

        async def handler(websocket: ServerConnection) -> None:
            async def echo(message: str | bytes) -> None:
                await websocket.send(message)

            await consume(websocket, echo)  # returns once the client leaves
    """
    try:
        while True:
            # No local variable: an idle connection would keep its last message.
            await handler(await connection.recv())
    except ConnectionClosed:
        if _is_closed(connection):
            return
        raise


async def produce(
    connection: Connection,
    messages: AsyncIterable[DataLike],
    *,
    text: bool | None = None,
) -> None:
    """Send every message from ``messages`` on ``connection``.

    ``messages`` is any async iterable (or async iterator) of :class:`str`
    (sent as text frames) or bytes-like data (sent as binary frames). Pass
    ``text=True`` to send UTF-8 encoded bytes as text frames (handy for JSON
    encoders that produce bytes) or ``text=False`` to send strings as binary
    frames. Each ``send`` is awaited, so a slow peer applies backpressure to
    the producer.

    :func:`produce` returns when ``messages`` is exhausted, or quietly when the
    connection is closed (:exc:`~websockets.exceptions.ConnectionClosed` while
    ``connection`` is closing or closed). It doesn't close the connection.

    If iterating ``messages`` yields an async generator and :func:`produce`
    stops before it is exhausted (connection closed, error, cancellation), the
    generator is closed with ``aclose()`` so that its ``finally`` blocks run
    promptly.

    Example::

        async def ticks() -> AsyncIterator[str]:
            for n in range(3):
                yield f"tick {n}"
                await asyncio.sleep(1)

        async with connect("ws://127.0.0.1:8765") as websocket:
            await produce(websocket, ticks())

        # bytes from a JSON encoder, sent as text frames:
        await produce(websocket, encoded_events(), text=True)
    """
    iterator = aiter(messages)
    try:
        async for message in iterator:
            await connection.send(message, text=text)
    except ConnectionClosed:
        if _is_closed(connection):
            return
        raise
    finally:
        if isinstance(iterator, AsyncGenerator):
            await iterator.aclose()


async def _cancel_and_wait(tasks: Iterable[asyncio.Future[object]]) -> None:
    """Cancel ``tasks`` and wait until all of them are done.

    Waiting continues even if the caller is cancelled meanwhile (each new
    cancellation is forwarded to the tasks still running); the caller's
    cancellation is re-raised once every task is done.
    """
    pending = set(tasks)
    for task in pending:
        task.cancel()
    cancelled = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
            for task in pending:
                task.cancel()
    if cancelled:
        raise asyncio.CancelledError


def _first_error(tasks: Iterable[asyncio.Future[object]]) -> BaseException | None:
    """Return the first relevant exception raised by one of ``tasks`` (all done).

    Every task's exception is retrieved, so that asyncio never logs "exception
    was never retrieved". Cancellations and ``ConnectionClosed`` are ignored.
    """
    error: BaseException | None = None
    for task in tasks:
        if task.cancelled():
            continue
        exception = task.exception()
        if exception is None or isinstance(exception, ConnectionClosed):
            continue
        if error is None:
            error = exception
    return error


async def _shutdown(
    connection: Connection, tasks: list[asyncio.Future[object]]
) -> BaseException | None:
    """Cancel and await ``tasks``, close ``connection``, return the first error."""
    try:
        await _cancel_and_wait(tasks)
    finally:
        error = _first_error(tasks)
        if connection.state is not State.CLOSED:
            if error is None:
                await connection.close()
            else:
                await connection.close(CloseCode.INTERNAL_ERROR)
    return error


async def run_both(
    connection: Connection,
    consumer: Awaitable[object],
    producer: Awaitable[object],
) -> None:
    """Run ``consumer`` and ``producer`` concurrently on ``connection``.

    Both awaitables (typically :func:`consume` and :func:`produce` coroutines)
    are wrapped in tasks. As soon as either one finishes, normally or with an
    exception:

    1. the other one is cancelled, and both are awaited, so no task leaks;
    2. ``connection`` is closed unless it is already closed (close code 1000,
       or 1011 "internal error" if one of them failed);
    3. an exception raised by either one is re-raised, unless it is a
       cancellation or :exc:`~websockets.exceptions.ConnectionClosed` (if both
       failed, the exception of the one that finished first wins).

    If :func:`run_both` itself is cancelled, both tasks are cancelled and
    awaited, the connection is closed, and :exc:`asyncio.CancelledError`
    propagates. Cancelling it again while it is cleaning up doesn't leave
    tasks behind either.

    Example::

        async def handler(websocket: ServerConnection) -> None:
            await run_both(
                websocket,
                consume(websocket, on_message),
                produce(websocket, outgoing_messages()),
            )
    """
    tasks: list[asyncio.Future[object]] = []
    try:
        tasks.append(asyncio.ensure_future(consumer))
        tasks.append(asyncio.ensure_future(producer))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # run_both itself was cancelled (or an argument isn't awaitable).
        await _shutdown(connection, tasks)
        raise
    # Put the task(s) that finished first in front, so their error wins.
    ordered = [task for task in tasks if task in done]
    ordered += [task for task in tasks if task not in done]
    error = await _shutdown(connection, ordered)
    if error is not None:
        raise error


class Registry(Generic[T]):
    """Registry of connected clients, each carrying metadata of type ``T``.

    Connections are the keys, so any :mod:`websockets.asyncio` connection
    (server or client side) can be registered, at most once at a time. The
    registry is a plain in-memory mapping; it doesn't watch connections, so
    pair :meth:`add` with :meth:`remove`, or better, use :meth:`registered`.

    Example::

        users: Registry[str] = Registry()

        async def handler(websocket: ServerConnection) -> None:
            async with users.registered(websocket, "alice"):
                await consume(websocket, on_message)

        # elsewhere:
        broadcast(users.connections, "server restarting soon")
        for websocket, name in users.items():
            print(name, websocket.remote_address)
    """

    def __init__(self) -> None:
        self._clients: dict[Connection, T] = {}

    def add(self, connection: Connection, metadata: T) -> None:
        """Register ``connection`` with its ``metadata``.

        Raises:
            ValueError: If ``connection`` is already registered.

        Example::

            registry.add(websocket, {"user": "alice"})
        """
        if connection in self._clients:
            raise ValueError("connection is already registered")
        self._clients[connection] = metadata

    def remove(self, connection: Connection) -> T:
        """Unregister ``connection`` and return its metadata.

        Raises:
            KeyError: If ``connection`` isn't registered.

        Example::

            metadata = registry.remove(websocket)
        """
        return self._clients.pop(connection)

    def discard(self, connection: Connection) -> T | None:
        """Unregister ``connection`` if registered; return its metadata or ``None``.

        Example::

            registry.discard(websocket)  # no error if it wasn't registered
        """
        return self._clients.pop(connection, None)

    def get(self, connection: Connection) -> T:
        """Return the metadata of ``connection``.

        Raises:
            KeyError: If ``connection`` isn't registered.

        Example::

            user = registry.get(websocket)
        """
        return self._clients[connection]

    @property
    def connections(self) -> KeysView[Connection]:
        """Live, set-like view of the registered connections.

        It reflects later additions and removals and can be passed directly to
        :func:`broadcast`.

        Example::

            broadcast(registry.connections, "hello")
            others = registry.connections - {websocket}
        """
        return self._clients.keys()

    def items(self) -> ItemsView[Connection, T]:
        """Live view of ``(connection, metadata)`` pairs.

        Example::

            admins = {ws for ws, user in registry.items() if user.is_admin}
        """
        return self._clients.items()

    def __contains__(self, connection: object) -> bool:
        """Return whether ``connection`` is registered.

        Example::

            if websocket in registry: ...
        """
        return connection in self._clients

    def __len__(self) -> int:
        """Return the number of registered connections.

        Example::

            print(f"{len(registry)} clients online")
        """
        return len(self._clients)

    def __iter__(self) -> Iterator[Connection]:
        """Iterate over registered connections.

        Don't add or remove connections (e.g. don't ``await``) while iterating;
        iterate over ``list(registry)`` if you need to.

        Example::

            for websocket in list(registry):
                await websocket.send("hi")
        """
        return iter(self._clients)

    @contextlib.asynccontextmanager
    async def registered(self, connection: Connection, metadata: T) -> AsyncIterator[T]:
        """Register ``connection`` for the duration of an ``async with`` block.

        The connection is added on enter and always removed on exit, even when
        the block raises or is cancelled. The block receives ``metadata``.

        Raises:
            ValueError: On enter, if ``connection`` is already registered.

        Example::

            async def handler(websocket: ServerConnection) -> None:
                async with registry.registered(websocket, "alice") as user:
                    await consume(websocket, on_message)
        """
        self.add(connection, metadata)
        try:
            yield metadata
        finally:
            self.discard(connection)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} with {len(self)} connection(s)>"


def broadcast(
    connections: Iterable[Connection],
    message: DataLike,
    *,
    text: bool | None = None,
    raise_exceptions: bool = False,
) -> None:
    """Send ``message`` to every connection in ``connections``.

    A thin wrapper over :func:`websockets.asyncio.server.broadcast`; it is
    synchronous (not a coroutine) and works with server and client connections:

    * A :class:`str` is sent as a text frame, bytes-like data as a binary
      frame; ``text=True``/``text=False`` forces the frame type.
    * Connections that aren't open (still connecting, closing or closed) are
      **skipped silently**, so it is safe to pass a registry that contains
      clients that are leaving.
    * There is **no backpressure**: the message is written to each connection's
      buffer immediately, without waiting for slow clients. Broadcasting faster
      than a client reads makes its buffer grow until the connection times out
      (keep ``ping_interval``/``ping_timeout`` low). Use per-client queues and
      :func:`produce` if you need backpressure.
    * Write failures on individual connections are logged and skipped, or
      collected into an :exc:`ExceptionGroup` with ``raise_exceptions=True``.

    Example::

        broadcast(registry.connections, '{"event": "update"}')
        broadcast([ws1, ws2], b"\\x00\\x01")  # binary frame
    """
    _ws_broadcast(connections, message, text=text, raise_exceptions=raise_exceptions)
