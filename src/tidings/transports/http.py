"""HTTP/1.1 on the client port: every connection starts here.

An :class:`HTTPConnection` is the ``asyncio.Protocol`` of a new TCP
connection. httptools parses its requests; each complete one goes to the
server's router, which answers it (``/health``, the demo app, 404) or hands the
connection over to another protocol (a WebSocket upgrade: the router calls
``transport.set_protocol()`` and feeds the bytes that followed the request).
Requests on one connection are answered in order (keep-alive, pipelining).
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import httptools
import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

from .static import StaticFile

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "HTTPConnection",
    "HTTPRequest",
    "json_response",
    "static_response",
    "text_response",
]

MAX_HEADER_BYTES = 16 * 1024
"""A request head (request line and headers) longer than this gets 431."""
MAX_BODY_BYTES = 64 * 1024
"""A request body longer than this gets 413, unless a transport's
``max_request_body_size`` allows more (:attr:`Server.max_body_size`)."""


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    method: str
    target: str
    """The request target as sent: path and query."""
    headers: Headers
    body: bytes
    keep_alive: bool
    upgrade: bool
    """An ``Upgrade`` request: the connection belongs to whoever takes it."""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class HTTPConnection(asyncio.Protocol):
    """One TCP connection speaking HTTP/1.1, until a route takes it over."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._target = bytearray()
        self._headers = Headers()
        self._head_size = 0
        self._body = bytearray()
        self._queue: list[tuple[HTTPRequest, bytes]] = []
        """Complete requests not answered yet, each with what followed it if it upgrades."""
        self._busy = False
        self._closed = False
        self._keep_alive = False
        """Whether the request being answered lets the connection stay open."""
        self._head = False
        """Whether the request being answered is a HEAD (its answer has no body)."""
        self._eof = False

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's: the latter is not an asyncio.Transport subclass.
        self.transport = cast(asyncio.Transport, transport)
        self.server.http_connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # handed over; the new protocol reads from now on
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The request is complete (on_message_complete ran); the rest is the
            # new protocol's. Nothing more is read until a route takes it.
            offset = upgrade.args[0]
            request, _ = self._queue[-1]
            self._queue[-1] = (request, data[offset:])
            self._pause()
        except httptools.HttpParserError as exc:
            # A callback's own exception arrives as the parser error's context.
            if isinstance(exc.__context__, _TooLarge):
                self._fail(exc.__context__.status, exc.__context__.text)
            else:
                self._fail(http.HTTPStatus.BAD_REQUEST, f"Bad request: {exc}\n")
        self._next()

    def eof_received(self) -> bool | None:
        self._eof = True
        # Requests waiting for their turn are answered, then the connection closes.
        return True if self._busy or self._queue else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._parser = None
        self._queue.clear()
        self.server.http_connections.discard(self)

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target.clear()
        self._headers = Headers()
        self._head_size = 0
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value))
        self._headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self.server.max_body_size:
            raise _TooLarge(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large\n")
        self._body += body

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        request = HTTPRequest(
            method=parser.get_method().decode("ascii", "replace"),
            target=self._target.decode("latin-1"),
            headers=self._headers,
            body=bytes(self._body),
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        self._queue.append((request, b""))

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEADER_BYTES:
            raise _TooLarge(
                http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header too large\n"
            )

    # --- answering ----------------------------------------------------------------

    def _next(self) -> None:
        """Hand the oldest unanswered request to the router, unless one is being handled."""
        if self._busy or self._closed or not self._queue:
            return
        self._busy = True
        request, rest = self._queue.pop(0)
        # After an upgrade request refused, what follows is not HTTP.
        self._keep_alive = request.keep_alive and not request.upgrade
        self._head = request.method == "HEAD"
        self.server.route(self, request, rest)

    def respond(self, response: Response, *, keep_alive: bool = True) -> None:
        """Answer the current request; then the next one, or close."""
        assert self.transport is not None
        if self._closed:
            return
        keep_alive = keep_alive and self._keep_alive and not self.server.closing
        if not keep_alive:
            response.headers["Connection"] = "close"
        if self._head and response.body:
            # RFC 9110 9.3.2: the headers of a GET, no body (the next response follows).
            response = dataclasses.replace(response, body=b"")
        self.transport.write(response.serialize())
        self._busy = False
        if keep_alive and not (self._eof and not self._queue):
            self._resume()
            self._next()
        else:
            self.close()

    def detach(self) -> asyncio.Transport:
        """Give the connection to another protocol (after a successful upgrade)."""
        assert self.transport is not None
        self._closed = True
        self._parser = None  # it refers back to this object: no cycle left for the collector
        self.server.http_connections.discard(self)
        return self.transport

    def wait(self, callback: Callable[[], object]) -> None:
        """Hold the connection (nothing read) until ``callback`` runs, in its turn."""
        self._pause()
        self.server.context.turns.call(callback)

    def close(self) -> None:
        """Close once written (an idle keep-alive connection at shutdown, or after an answer)."""
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _pause(self) -> None:
        assert self.transport is not None
        if self.transport.is_reading():
            self.transport.pause_reading()

    def _resume(self) -> None:
        assert self.transport is not None
        if not self.transport.is_reading() and not self._closed:
            self.transport.resume_reading()

    def _fail(self, status: http.HTTPStatus, text: str) -> None:
        self._queue.clear()
        self._busy = True  # nothing more is answered
        if self.transport is not None and not self._closed:
            response = text_response(status, text)
            response.headers["Connection"] = "close"
            self.transport.write(response.serialize())
            self.close()


class _TooLarge(Exception):
    def __init__(self, status: http.HTTPStatus, text: str) -> None:
        self.status = status
        self.text = text


def text_response(status: http.HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: http.HTTPStatus, value: object) -> Response:
    body = msgspec.json.encode(value)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


def static_response(static: StaticFile, *, head: bool = False) -> Response:
    headers = Headers(
        [
            ("Content-Type", static.content_type),
            ("Content-Length", str(len(static.body))),
            ("Cache-Control", static.cache_control),
        ]
    )
    return Response(200, "OK", headers, b"" if head else static.body)
