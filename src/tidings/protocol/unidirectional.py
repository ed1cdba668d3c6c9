"""The unidirectional client protocol: a bare ConnectRequest in, bare pushes out.

A unidirectional client (``uni_websocket``, ``uni_sse``, ``uni_http_stream``) sends
one ``ConnectRequest`` and then only listens. tidings runs it through the same
session as any client: the request becomes a connect command
(:func:`connect_command`), and what the session writes becomes what such a client
reads: the connect reply a ``connect`` push (:func:`connect_push`), a refused
connect a ``disconnect`` with Centrifugo's codes (:func:`uni_disconnect`), and
every other message the push it carries (:func:`bare_push`). JSON only, as in
Centrifugo. Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from .codes import (
    DISCONNECT_EXPIRED,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_TOO_MANY_REQUESTS,
    Disconnect,
    ErrorCode,
)
from .wire import Command, ConnectRequest, Push, Reply, encode

__all__ = ["bare_push", "connect_command", "connect_push", "uni_disconnect"]

_PUSH_PREFIX: Final = b'{"push":'


def bare_push(message: bytes) -> bytes:
    """A JSON message as a unidirectional client gets it: the push alone."""
    if message.startswith(_PUSH_PREFIX):
        return message[len(_PUSH_PREFIX) : -1]
    return message  # the ping, {}


def connect_command(body: bytes) -> str:
    """A unidirectional client's bare ConnectRequest (empty: ``{}``) as the connect
    command the session takes.

    Raises:
        msgspec.DecodeError: it is not a ConnectRequest.
    """
    request = msgspec.json.decode(body or b"{}", type=ConnectRequest | None)
    return encode(Command(id=1, connect=request or ConnectRequest())).decode()


def connect_push(reply: bytes) -> bytes | Disconnect:
    """The reply to a unidirectional client's connect as the bare push it gets, or the
    disconnect that replaces a refusal (it cannot read error replies)."""
    decoded = msgspec.json.decode(reply, type=Reply)
    if decoded.connect is None:
        code = decoded.error.code if decoded.error is not None else ErrorCode.INTERNAL
        return uni_disconnect(code)
    return encode(Push(connect=decoded.connect))


_UNI_CODES: Final[dict[int, Disconnect]] = {
    ErrorCode.TOKEN_EXPIRED: DISCONNECT_EXPIRED,
    110: DISCONNECT_EXPIRED,  # Centrifugo's "expired"
    ErrorCode.TOO_MANY_REQUESTS: DISCONNECT_TOO_MANY_REQUESTS,
    ErrorCode.PERMISSION_DENIED: Disconnect(3507, "permission denied"),
}


def uni_disconnect(code: int) -> Disconnect:
    """The disconnect a unidirectional client gets for a connect refused with error
    ``code``, as Centrifugo maps them (3004 for the rest)."""
    return _UNI_CODES.get(code, DISCONNECT_SERVER_ERROR)
