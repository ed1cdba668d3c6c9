"""Tests for tidings.patterns, using real websockets servers and clients (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.typing import Data

from tidings.patterns import Registry, broadcast, consume, produce, run_both

TIMEOUT = 2.0

ServerHandler = Callable[[ServerConnection], Awaitable[None]]


# -- helpers -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(handler: ServerHandler) -> AsyncIterator[str]:
    """Run a real websockets server on an ephemeral port; yield its URI."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


class Outcome:
    """Records how a server-side coroutine ended, without letting it crash the handler."""

    def __init__(self) -> None:
        self.finished = asyncio.Event()
        self.error: BaseException | None = None
        self.connection: ServerConnection | None = None

    async def capture(self, connection: ServerConnection, awaitable: Awaitable[None]) -> None:
        self.connection = connection
        try:
            await awaitable
        except Exception as exc:
            self.error = exc
        finally:
            self.finished.set()

    async def wait(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.finished.wait()


async def settle() -> None:
    """Let the event loop run pending callbacks and finishing tasks."""
    for _ in range(3):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def live_tasks() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if not task.done()}


async def assert_no_new_tasks(before: set[asyncio.Task[object]]) -> None:
    await settle()
    leaked = live_tasks() - before
    assert not leaked, leaked


async def wait_forever(cancelled: asyncio.Event, started: asyncio.Event | None = None) -> None:
    """Block until cancelled; record the cancellation."""
    if started is not None:
        started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def ignore(message: Data) -> None:
    pass


async def from_list(items: list[Data]) -> AsyncIterator[Data]:
    for item in items:
        yield item


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.001)


# -- consume / produce / run_both: echo server ----------------------------------------------------


async def test_echo_server_built_from_consume_produce_run_both() -> None:
    before = live_tasks()
    outcome = Outcome()

    async def handler(ws: ServerConnection) -> None:
        queue: asyncio.Queue[Data] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[Data]:
            while True:
                yield await queue.get()

        await outcome.capture(ws, run_both(ws, consume(ws, queue.put), produce(ws, outgoing())))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("hello")
            await client.send(b"\x00\x01")
            assert await client.recv() == "hello"
            assert await client.recv() == b"\x00\x01"
        await outcome.wait()

    assert outcome.error is None
    assert outcome.connection is not None and outcome.connection.state is State.CLOSED
    await assert_no_new_tasks(before)


# -- consume -----------------------------------------------------------------------------------


async def test_consume_returns_when_client_closes_normally() -> None:
    received: list[Data] = []
    outcome = Outcome()

    async def on_message(message: Data) -> None:
        received.append(message)

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(ws, consume(ws, on_message))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("a")
            await client.send(b"b")
        await outcome.wait()

    assert outcome.error is None
    assert received == ["a", b"b"]  # messages sent before the close are all delivered


async def test_consume_returns_quietly_on_abnormal_close() -> None:
    got_one = asyncio.Event()
    outcome = Outcome()

    async def on_message(message: Data) -> None:
        got_one.set()

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(ws, consume(ws, on_message))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("a")
            await got_one.wait()
            client.transport.abort()  # drop TCP without a closing handshake
            await outcome.wait()

    assert outcome.error is None
    assert outcome.connection is not None
    assert outcome.connection.close_code == CloseCode.ABNORMAL_CLOSURE


async def test_consume_propagates_handler_exception() -> None:
    outcome = Outcome()

    async def on_message(message: Data) -> None:
        raise ValueError(f"bad message {message!r}")

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(ws, consume(ws, on_message))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("x")
            await outcome.wait()

    assert isinstance(outcome.error, ValueError)


async def test_consume_ends_quietly_when_handler_replies_on_closed_connection() -> None:
    outcome = Outcome()

    async def handler(ws: ServerConnection) -> None:
        async def reply_late(message: Data) -> None:
            await ws.wait_closed()
            await ws.send(message)  # raises ConnectionClosedOK: our own connection is gone

        await outcome.capture(ws, consume(ws, reply_late))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("x")
        await outcome.wait()

    assert outcome.error is None


async def test_consume_propagates_connection_closed_of_another_connection() -> None:
    outcome = Outcome()

    async def on_message(message: Data) -> None:
        # e.g. forwarding to some other peer that went away: not our peer's disconnection
        raise ConnectionClosedError(None, None)

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(ws, consume(ws, on_message))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("x")
            await outcome.wait()

    assert isinstance(outcome.error, ConnectionClosed)


# -- produce -----------------------------------------------------------------------------------


class Countdown:
    """An async iterator that isn't a generator."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> Countdown:
        return self

    async def __anext__(self) -> str:
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        return str(self.n)


async def test_produce_sends_everything_then_returns_without_closing() -> None:
    outcome = Outcome()
    state_after: list[State] = []

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(ws, produce(ws, from_list(["one", b"two"])))
        await outcome.capture(ws, produce(ws, Countdown(2)))
        state_after.append(ws.state)

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            assert [await client.recv() for _ in range(4)] == ["one", b"two", "1", "0"]
            with pytest.raises(ConnectionClosedOK):  # server handler returned: normal close
                await client.recv()

    assert outcome.error is None
    assert state_after == [State.OPEN]


async def test_produce_text_option_forces_frame_type() -> None:
    async def handler(ws: ServerConnection) -> None:
        await produce(ws, from_list([b'{"json": 1}']), text=True)
        await produce(ws, from_list(["raw"]), text=False)

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            assert await client.recv() == '{"json": 1}'  # UTF-8 bytes sent as a text frame
            assert await client.recv() == b"raw"  # str sent as a binary frame


async def test_produce_stops_quietly_when_connection_closes() -> None:
    outcome = Outcome()
    finalized = asyncio.Event()

    async def ticks() -> AsyncIterator[str]:
        try:
            while True:
                yield "tick"
                await asyncio.sleep(0.002)
        finally:
            finalized.set()

    finalized_on_return: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        generator = ticks()  # keep a reference so garbage collection can't finalize it
        await outcome.capture(ws, produce(ws, generator))
        finalized_on_return.append(finalized.is_set())

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            assert await client.recv() == "tick"
        await outcome.wait()

    assert outcome.error is None
    # produce() closed the async generator itself, instead of leaving it suspended
    assert finalized_on_return == [True]


async def test_produce_propagates_connection_closed_not_about_its_connection() -> None:
    outcome = Outcome()

    async def relay() -> AsyncIterator[str]:
        yield "first"
        raise ConnectionClosedError(None, None)  # e.g. the upstream we relay from went away

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(ws, produce(ws, relay()))

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            assert await client.recv() == "first"
            await outcome.wait()

    assert isinstance(outcome.error, ConnectionClosedError)


# -- run_both ----------------------------------------------------------------------------------


async def test_run_both_cancels_producer_when_consumer_ends() -> None:
    before = live_tasks()
    outcome = Outcome()
    producer_cancelled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(
            ws, run_both(ws, consume(ws, ignore), wait_forever(producer_cancelled))
        )

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("x")
        await outcome.wait()

    assert outcome.error is None
    assert producer_cancelled.is_set()
    assert outcome.connection is not None and outcome.connection.state is State.CLOSED
    await assert_no_new_tasks(before)


async def test_run_both_cancels_consumer_when_producer_ends_and_closes_connection() -> None:
    before = live_tasks()
    outcome = Outcome()
    consumer_cancelled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async def consumer() -> None:
            try:
                await consume(ws, ignore)
            except asyncio.CancelledError:
                consumer_cancelled.set()
                raise

        async def producer() -> None:
            await produce(ws, from_list(["a", "b"]))

        await outcome.capture(ws, run_both(ws, consumer(), producer()))
        # run_both closed the connection itself, before the handler returned
        assert ws.state is State.CLOSED

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            assert await client.recv() == "a"
            assert await client.recv() == "b"
            with pytest.raises(ConnectionClosedOK) as closed:
                await client.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.NORMAL_CLOSURE
        await outcome.wait()

    assert outcome.error is None
    assert consumer_cancelled.is_set()
    await assert_no_new_tasks(before)


async def test_run_both_propagates_handler_exception_and_closes_with_1011() -> None:
    before = live_tasks()
    outcome = Outcome()
    producer_cancelled = asyncio.Event()

    async def explode(message: Data) -> None:
        raise ValueError("boom")

    async def handler(ws: ServerConnection) -> None:
        await outcome.capture(
            ws, run_both(ws, consume(ws, explode), wait_forever(producer_cancelled))
        )

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await client.send("x")
            with pytest.raises(ConnectionClosedError) as closed:
                await client.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.INTERNAL_ERROR
        await outcome.wait()

    assert isinstance(outcome.error, ValueError)
    assert str(outcome.error) == "boom"
    assert producer_cancelled.is_set()
    await assert_no_new_tasks(before)


async def test_run_both_on_client_connection_propagates_producer_exception() -> None:
    before = live_tasks()
    consumer_cancelled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await consume(ws, ignore)

    async def failing_producer() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("producer failed")

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            with pytest.raises(RuntimeError, match="producer failed"):
                await run_both(client, wait_forever(consumer_cancelled), failing_producer())
            assert client.state is State.CLOSED
            assert client.close_code == CloseCode.INTERNAL_ERROR

    assert consumer_cancelled.is_set()
    await assert_no_new_tasks(before)


async def test_run_both_swallows_connection_closed_from_children() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close()

    async def raw_sender(client: ClientConnection) -> None:
        await client.wait_closed()
        await client.send("too late")  # raises ConnectionClosedOK

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            await run_both(client, raw_sender(client), asyncio.Event().wait())
            assert client.state is State.CLOSED


async def test_client_echo_roundtrip_leaves_no_tasks() -> None:
    before = live_tasks()

    async def echo_handler(ws: ServerConnection) -> None:
        queue: asyncio.Queue[Data] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[Data]:
            while True:
                yield await queue.get()

        await run_both(ws, consume(ws, queue.put), produce(ws, outgoing()))

    got: list[Data] = []

    async with asyncio.timeout(TIMEOUT), running(echo_handler) as uri:
        async with connect(uri) as client:

            async def consumer() -> None:
                async for message in client:
                    got.append(message)
                    if len(got) == 3:
                        return

            async def sends() -> AsyncIterator[str]:
                for n in range(3):
                    yield f"m{n}"
                await asyncio.Event().wait()  # then idle until cancelled

            await run_both(client, consumer(), produce(client, sends()))
            assert client.state is State.CLOSED

    assert got == ["m0", "m1", "m2"]
    await assert_no_new_tasks(before)


async def test_cancelling_run_both_cancels_and_awaits_both_children() -> None:
    before = live_tasks()
    started = [asyncio.Event(), asyncio.Event()]
    cancelled = [asyncio.Event(), asyncio.Event()]

    async def handler(ws: ServerConnection) -> None:
        await consume(ws, ignore)

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            task = asyncio.create_task(
                run_both(
                    client,
                    wait_forever(cancelled[0], started[0]),
                    wait_forever(cancelled[1], started[1]),
                )
            )
            await started[0].wait()
            await started[1].wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
            assert all(event.is_set() for event in cancelled)
            assert client.state is State.CLOSED

    await assert_no_new_tasks(before)


async def test_cancelling_run_both_twice_still_waits_for_slow_children() -> None:
    before = live_tasks()
    started = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            for _ in range(5):  # slow cleanup that shrugs off further cancellations
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)
            cleaned_up.set()
            raise

    async def handler(ws: ServerConnection) -> None:
        await consume(ws, ignore)

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as client:
            task = asyncio.create_task(run_both(client, stubborn(), asyncio.Event().wait()))
            await started.wait()
            task.cancel()
            await asyncio.sleep(0.005)
            task.cancel()  # cancelled again while it waits for the children
            with pytest.raises(asyncio.CancelledError):
                await task
            assert cleaned_up.is_set()  # run_both didn't return before the child finished
            assert client.state is State.CLOSED

    await assert_no_new_tasks(before)


# -- Registry ----------------------------------------------------------------------------------


async def idle(ws: ServerConnection) -> None:
    await ws.wait_closed()


async def test_registry_add_get_remove_and_views() -> None:
    registry: Registry[str] = Registry()
    async with (
        asyncio.timeout(TIMEOUT),
        running(idle) as uri,
        connect(uri) as alice,
        connect(uri) as bob,
    ):
        view = registry.connections
        assert len(registry) == 0 and alice not in registry

        registry.add(alice, "alice")
        registry.add(bob, "bob")
        assert len(registry) == 2
        assert alice in registry and bob in registry
        assert registry.get(alice) == "alice"
        assert set(registry) == {alice, bob}
        assert dict(registry.items()) == {alice: "alice", bob: "bob"}
        assert view == {alice, bob}  # set-like and live
        assert view - {alice} == {bob}

        with pytest.raises(ValueError):
            registry.add(alice, "impostor")
        assert registry.get(alice) == "alice"

        assert registry.remove(alice) == "alice"
        assert alice not in registry and alice not in view
        with pytest.raises(KeyError):
            registry.remove(alice)
        with pytest.raises(KeyError):
            registry.get(alice)
        assert registry.discard(alice) is None
        assert registry.discard(bob) == "bob"
        assert len(registry) == 0


async def test_registered_always_removes() -> None:
    registry: Registry[dict[str, int]] = Registry()
    async with asyncio.timeout(TIMEOUT), running(idle) as uri, connect(uri) as client:
        async with registry.registered(client, {"id": 1}) as metadata:
            assert metadata == {"id": 1}
            assert registry.get(client) == {"id": 1}
        assert client not in registry

        with pytest.raises(ValueError, match="oops"):
            async with registry.registered(client, {"id": 2}):
                assert client in registry
                raise ValueError("oops")
        assert client not in registry

        entered = asyncio.Event()

        async def hold() -> None:
            async with registry.registered(client, {"id": 3}):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(hold())
        await entered.wait()
        assert client in registry
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client not in registry

        # A duplicate registration fails on enter and leaves the first one alone.
        async with registry.registered(client, {"id": 4}):
            with pytest.raises(ValueError):
                async with registry.registered(client, {"id": 5}):
                    pass  # pragma: no cover
            assert registry.get(client) == {"id": 4}
        assert len(registry) == 0


# -- broadcast ---------------------------------------------------------------------------------


async def test_broadcast_reaches_registered_clients_and_skips_closed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry: Registry[int] = Registry()
    release = asyncio.Event()
    counter = iter(range(100))

    async def handler(ws: ServerConnection) -> None:
        async with registry.registered(ws, next(counter)):
            await ws.wait_closed()
            await release.wait()  # stay registered after closing, to exercise skipping

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as c1, connect(uri) as c2, connect(uri) as c3:
            await until(lambda: len(registry) == 3)
            await c3.close()
            await until(lambda: any(ws.state is State.CLOSED for ws in registry))
            assert len(registry) == 3  # the closed connection is still registered

            with caplog.at_level(logging.WARNING):
                broadcast(registry.connections, "news")
                broadcast(registry.connections, b"\x01\x02")
            assert not caplog.records  # closed connection skipped silently

            for client in (c1, c2):
                assert await client.recv() == "news"
                assert await client.recv() == b"\x01\x02"
            release.set()

    assert len(registry) == 0


async def test_broadcast_works_with_client_connections() -> None:
    received: asyncio.Queue[Data] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await consume(ws, received.put)

    async with asyncio.timeout(TIMEOUT), running(handler) as uri:
        async with connect(uri) as c1, connect(uri) as c2:
            broadcast({c1, c2}, "hi")
            assert [await received.get(), await received.get()] == ["hi", "hi"]
            broadcast([c1], b"as text", text=True)
            assert await received.get() == "as text"
