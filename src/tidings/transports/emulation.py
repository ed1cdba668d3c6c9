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
request; 404: a node that is not this one; 413: a body over
``emulation.max_request_body_size``.
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


class EmulationRequest(msgspec.Struct, frozen=True):
    """One ``/emulation`` post, decoded."""

    session: str
    node: str
    data: str | bytes
    """The commands: text (JSON) or bytes (Protobuf), as a WebSocket frame would be."""


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
        request = EmulationRequest(message.session, message.node, bytes(message.data))
    else:
        try:
            decoded = _decode_json(body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not an emulation request: {exc}") from None
        request = EmulationRequest(decoded.session, decoded.node, decoded.data)
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
    if post.node != server.context.node.uid:
        connection.respond(text_response(http.HTTPStatus.NOT_FOUND, "Unknown node\n"))
        return
    stream = server.sessions.get(post.session)
    done = Response(204, "No Content", Headers([*cors, ("Content-Length", "0")]), b"")
    if stream is None:
        connection.respond(done)
        return

    async def handle() -> None:
        try:
            await stream.client.receive(post.data)
        finally:
            connection.respond(done)

    task = asyncio.ensure_future(handle())
    server.keep(task)
