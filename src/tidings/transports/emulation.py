"""``POST /emulation``: the commands of HTTP-streaming and SSE clients.

A client on an emulated transport (:mod:`.stream`) reads its replies from its
stream and sends every command after ``connect`` (subscribes, publishes, pongs)
as a POST naming its ``session`` and the ``node`` that holds it:

* JSON: ``{"session": S, "node": N, "data": D}`` where ``D`` is a string holding
  the commands, one JSON object per line;
* Protobuf (``Content-Type: application/octet-stream``): an ``EmulationRequest``
  whose ``data`` holds varint-delimited commands.

The commands take the same path as a WebSocket frame's (the client's session
decodes them); the POST is answered 204 once they are handled, and so is one
for a session that is not (or no longer) here: the session id is a secret, and
saying which ones exist would help guessing them. 400: a body that is not a
request; 404: a node that is not a live node of the hub; 413: a body over
``emulation.max_request_body_size``.

No sticky sessions are needed: a post for a session of another node goes to
that node as a control message (:mod:`tidings.node.control`), and is answered
once that node handled it (500 if it does not answer within
:data:`ROUTE_TIMEOUT` seconds).
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import TYPE_CHECKING

import msgspec
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from websockets.datastructures import Headers
from websockets.http11 import Response

from ..protocol import client_pb2 as pb
from .http import HTTPConnection, HTTPRequest, text_response
from .stream import cors_headers, preflight

if TYPE_CHECKING:
    from .server import Server

__all__ = ["EMULATION_PATH", "EmulationRequest", "emulate", "parse_emulation"]

logger = logging.getLogger("tidings.server")

EMULATION_PATH = "/emulation"
ROUTE_TIMEOUT = 5.0
"""Seconds another node has to handle a post routed to it."""


class EmulationRequest(msgspec.Struct, frozen=True):
    """One ``/emulation`` post, decoded (and as it travels to another node)."""

    session: str
    node: str
    text: str = ""
    """The commands of a JSON client, one per line."""
    binary: bytes = b""
    """The varint-delimited commands of a Protobuf client."""

    @property
    def data(self) -> str | bytes:
        """The commands, as a WebSocket frame would carry them."""
        return self.binary or self.text


async def feed(server: Server, post: EmulationRequest) -> None:
    """Hand the post's commands to its session, if it is held here."""
    stream = server.sessions.get(post.session)
    if stream is not None:
        await stream.receive(post.data)


async def route(server: Server, post: EmulationRequest) -> http.HTTPStatus:
    """Feed the post here or on its node; the status to answer."""
    control = server.context.control
    if post.node == server.context.node.uid:
        await feed(server, post)
        return http.HTTPStatus.NO_CONTENT
    if control is None or not await control.knows(post.node):
        return http.HTTPStatus.NOT_FOUND
    try:
        await control.request(post.node, "emulation", post, ROUTE_TIMEOUT)
    except TimeoutError:
        logger.warning("emulation: node %s did not answer in %ss", post.node, ROUTE_TIMEOUT)
        return http.HTTPStatus.INTERNAL_SERVER_ERROR
    return http.HTTPStatus.NO_CONTENT


class _JSONEmulation(msgspec.Struct):
    session: str = ""
    node: str = ""
    data: str = ""


_decode_json = msgspec.json.Decoder(_JSONEmulation).decode


def parse_emulation(body: bytes, content_type: str) -> EmulationRequest:
    """Decode a post's body.

    Raises:
        ValueError: the body is not an emulation request (its message says why).
    """
    if content_type.startswith("application/octet-stream"):
        message = pb.EmulationRequest()
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise ValueError(f"not an EmulationRequest: {exc}") from None
        request = EmulationRequest(message.session, message.node, binary=bytes(message.data))
    else:
        try:
            decoded = _decode_json(body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not an emulation request: {exc}") from None
        request = EmulationRequest(decoded.session, decoded.node, text=decoded.data)
    if not request.session or not request.node or not request.data:
        raise ValueError("session, node and data are required")
    return request


def emulate(server: Server, connection: HTTPConnection, request: HTTPRequest) -> None:
    """Answer ``/emulation``: feed the commands to their session, then 204."""
    if request.method == "OPTIONS":
        connection.respond(preflight(server, request, "POST, OPTIONS"))
        return
    if request.method != "POST":
        response = text_response(http.HTTPStatus.METHOD_NOT_ALLOWED, "Use POST\n")
        response.headers["Allow"] = "POST, OPTIONS"
        connection.respond(response)
        return
    cors = cors_headers(server, request)
    if cors is None:
        connection.respond(text_response(http.HTTPStatus.FORBIDDEN, "Origin not allowed\n"))
        return
    if len(request.body) > server.config.emulation.max_request_body_size:
        status = http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        connection.respond(text_response(status, "Request body too large\n"))
        return
    try:
        post = parse_emulation(request.body, request.headers.get("Content-Type", ""))
    except ValueError as exc:
        connection.respond(text_response(http.HTTPStatus.BAD_REQUEST, f"{exc}\n"))
        return

    async def handle() -> None:
        status = http.HTTPStatus.INTERNAL_SERVER_ERROR
        try:
            status = await route(server, post)
        finally:
            if status == http.HTTPStatus.NO_CONTENT:
                headers = Headers([*cors, ("Content-Length", "0")])
                connection.respond(Response(204, "No Content", headers, b""))
            else:
                response = text_response(status, f"{status.phrase}\n")
                for name, value in cors:
                    response.headers[name] = value
                connection.respond(response)

    server.keep(asyncio.ensure_future(handle()))
