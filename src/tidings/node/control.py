"""Control messages between nodes: what a node asks the others to do.

Publications reach every node through the broker's channels; commands about a
user's connections (the server API's ``disconnect``, ``send``, ``subscribe``,
...) and ``/emulation`` posts for a session held by another node need a node's
own mailbox instead. :class:`Control` sends them over a broker's
:class:`~tidings.brokers.base.ControlBus` (Redis has one; the memory broker
serves one process and needs none) as an :class:`Envelope` naming an ``op``,
and runs the handler registered for that op when one arrives. A request to one
node is answered with a ``done`` envelope once its handler returned, which is
what :meth:`Control.request` waits for.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

import msgspec
from msgspec import Raw

from ..brokers.base import ControlBus, NodeRegistry

__all__ = ["Control", "Envelope"]

logger = logging.getLogger("tidings.node")

Handler = Callable[[Raw], Awaitable[None]]

DONE = "done"


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """One control message: ``op`` with its arguments (``args``, JSON), from ``origin``."""

    op: str
    origin: str
    args: Raw = Raw(b"null")
    id: int = 0
    """Set on a request: the node answers ``done`` with the same id."""


_decode = msgspec.json.Decoder(Envelope).decode


class _Announced(msgspec.Struct):
    uid: str


_decode_announced = msgspec.json.Decoder(_Announced).decode


class Control:
    """This node's end of the control messages (a no-op without a bus: one node)."""

    def __init__(
        self, uid: str, bus: ControlBus | None, registry: NodeRegistry | None = None
    ) -> None:
        self.uid = uid
        self.bus = bus
        self.registry = registry
        self._handlers: dict[str, Handler] = {}
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        self._known: set[str] = set()
        """Nodes seen announced (read again for a node not among them)."""
        self._tasks: set[asyncio.Task[None]] = set()

    def on(self, op: str, handler: Handler) -> None:
        """Run ``handler`` with the arguments of every ``op`` message from another node."""
        self._handlers[op] = handler

    async def start(self) -> None:
        if self.bus is not None:
            await self.bus.start_control(self.uid, self._receive)

    async def knows(self, node: str) -> bool:
        """Whether ``node`` is a live node of the hub (this one, or one announced)."""
        if node == self.uid:
            return True
        if self.registry is None or self.bus is None:
            return False
        if node not in self._known:
            self._known = {_decode_announced(info).uid for info in await self.registry.nodes()}
        return node in self._known

    async def broadcast(self, op: str, args: msgspec.Struct) -> None:
        """Ask every other node to run ``op`` (nothing waits for them)."""
        if self.bus is not None:
            envelope = Envelope(op, self.uid, Raw(msgspec.json.encode(args)))
            await self.bus.publish_control(msgspec.json.encode(envelope))

    async def request(self, node: str, op: str, args: msgspec.Struct, timeout: float) -> None:
        """Ask ``node`` to run ``op``; return once it has.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds (or no bus).
        """
        if self.bus is None:
            raise TimeoutError(f"no node {node} without a broker that carries control messages")
        request_id = next(self._ids)
        future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        envelope = Envelope(op, self.uid, Raw(msgspec.json.encode(args)), request_id)
        try:
            await self.bus.publish_control(msgspec.json.encode(envelope), node)
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._known.discard(node)  # gone, maybe: the registry says next time
            raise
        finally:
            self._waiting.pop(request_id, None)

    def _receive(self, data: bytes) -> None:
        try:
            envelope = _decode(data)
        except msgspec.DecodeError:
            logger.error("undecodable control message: %r", data[:100])
            return
        if envelope.origin == self.uid:
            return  # its own broadcast
        if envelope.op == DONE:
            future = self._waiting.get(envelope.id)
            if future is not None and not future.done():
                future.set_result(None)
            return
        handler = self._handlers.get(envelope.op)
        if handler is None:
            logger.warning("control message %r: no handler", envelope.op)
            return
        task = asyncio.ensure_future(self._run(handler, envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, envelope: Envelope) -> None:
        try:
            await handler(envelope.args)
        except Exception:
            logger.exception("control message %r failed", envelope.op)
        if envelope.id and self.bus is not None:
            done = Envelope(DONE, self.uid, id=envelope.id)
            try:
                await self.bus.publish_control(msgspec.json.encode(done), envelope.origin)
            except Exception:
                logger.exception("control answer to %s failed", envelope.origin)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
