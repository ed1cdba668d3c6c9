"""Error, unsubscribe and disconnect codes of the Centrifugo client protocol.

The numbers and messages are the protocol's (see ``docs/server/codes.md`` of
Centrifugo): SDKs decide whether to retry, resubscribe or reconnect from them,
so they must not change.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "Disconnect",
    "DisconnectRequest",
    "Error",
    "ErrorCode",
    "Unsubscribe",
    "DISCONNECT_BAD_REQUEST",
    "DISCONNECT_CONNECTION_LIMIT",
    "DISCONNECT_EXPIRED",
    "DISCONNECT_FORCE_NO_RECONNECT",
    "DISCONNECT_FORCE_RECONNECT",
    "DISCONNECT_INAPPROPRIATE_PROTOCOL",
    "DISCONNECT_INSUFFICIENT_STATE",
    "DISCONNECT_INVALID_TOKEN",
    "DISCONNECT_MESSAGE_TOO_BIG",
    "DISCONNECT_NO_PONG",
    "DISCONNECT_SERVER_ERROR",
    "DISCONNECT_SHUTDOWN",
    "DISCONNECT_SLOW",
    "DISCONNECT_STALE",
    "DISCONNECT_SUBSCRIPTION_EXPIRED",
    "DISCONNECT_TOO_MANY_REQUESTS",
    "DISCONNECT_WRITE_ERROR",
    "UNSUBSCRIBE_INSUFFICIENT_STATE",
    "UNSUBSCRIBE_SERVER",
    "UNSUBSCRIBE_SUBSCRIPTION_EXPIRED",
]


class ErrorCode:
    """Codes of ``Reply.error``: the command failed, the connection stays."""

    INTERNAL = 100
    """Something went wrong in the server, not the client's fault; temporary: the
    client may retry."""
    UNAUTHORIZED = 101
    """The request is not authorized."""
    UNKNOWN_CHANNEL = 102
    """The channel does not exist: usually its namespace is not configured."""
    PERMISSION_DENIED = 103
    """Access to the resource is not allowed."""
    METHOD_NOT_FOUND = 104
    """The command's method does not exist (or, for ``rpc``, nothing answers it)."""
    ALREADY_SUBSCRIBED = 105
    """The client is already subscribed to the channel."""
    LIMIT_EXCEEDED = 106
    """A limit was exceeded, such as ``client.channel_limit``."""
    BAD_REQUEST = 107
    """The request is malformed: say, an invalid or too long channel name."""
    NOT_AVAILABLE = 108
    """The feature is not enabled, such as history or presence in a channel
    without it."""
    TOKEN_EXPIRED = 109
    """The connection or subscription token has expired; SDKs fetch a new one and
    retry."""
    EXPIRED = 110
    """The connection has expired (no token involved)."""
    TOO_MANY_REQUESTS = 111
    """Rate limited (``client.command_rate_limit``); temporary: the client may retry."""
    UNRECOVERABLE_POSITION = 112
    """The stream no longer holds the publications since the position asked for
    (history evicted, or a new epoch): recovery is not possible."""


_MESSAGES = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}

_TEMPORARY = frozenset({ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS})


class Error(Exception):
    """A command error sent to the client as ``{"id": N, "error": {...}}``.

    Raise it from hooks (or anywhere in command handling) to answer a command
    with a protocol error instead of a result. Application codes are 400-1999.
    """

    def __init__(self, code: int, message: str | None = None, temporary: bool | None = None):
        self.code = code
        self.message = message if message is not None else _MESSAGES.get(code, "error")
        self.temporary = temporary if temporary is not None else code in _TEMPORARY
        super().__init__(f"{self.code}: {self.message}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Error) and (self.code, self.message, self.temporary) == (
            other.code,
            other.message,
            other.temporary,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.temporary))


class Disconnect(NamedTuple):
    """Why the server closes a connection: the WebSocket close code and reason.

    Codes 3000-3499 (and 4000-4499) tell SDKs to reconnect, 3500-3999 (and
    4500-4999) not to. Keep reasons short: a close frame carries at most 123
    bytes of reason.
    """

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        return not (3500 <= self.code < 4000 or 4500 <= self.code < 5000)


class DisconnectRequest(Exception):
    """Raise while handling a client (in a hook, say) to close its connection.

    Args:
        disconnect: the close code and reason, e.g. ``Disconnect(4001, "banned")``.
        detail: what went wrong, for the log only.
    """

    def __init__(self, disconnect: Disconnect, detail: str = "") -> None:
        super().__init__(detail or disconnect.reason)
        self.disconnect = disconnect
        self.detail = detail or disconnect.reason


class Unsubscribe(NamedTuple):
    """A server-side unsubscribe push. Codes >= 2500 make the client resubscribe."""

    code: int
    reason: str


DISCONNECT_SHUTDOWN = Disconnect(3001, "shutdown")
DISCONNECT_SERVER_ERROR = Disconnect(3004, "internal server error")
DISCONNECT_EXPIRED = Disconnect(3005, "connection expired")
DISCONNECT_SUBSCRIPTION_EXPIRED = Disconnect(3006, "subscription expired")
DISCONNECT_SLOW = Disconnect(3008, "slow")
DISCONNECT_WRITE_ERROR = Disconnect(3009, "write error")
DISCONNECT_INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
DISCONNECT_FORCE_RECONNECT = Disconnect(3011, "force reconnect")
DISCONNECT_NO_PONG = Disconnect(3012, "no pong")
DISCONNECT_TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
DISCONNECT_INVALID_TOKEN = Disconnect(3500, "invalid token")
DISCONNECT_BAD_REQUEST = Disconnect(3501, "bad request")
DISCONNECT_STALE = Disconnect(3502, "stale")
DISCONNECT_FORCE_NO_RECONNECT = Disconnect(3503, "force disconnect")
DISCONNECT_CONNECTION_LIMIT = Disconnect(3504, "connection limit")
DISCONNECT_INAPPROPRIATE_PROTOCOL = Disconnect(3506, "inappropriate protocol")
DISCONNECT_NOT_AVAILABLE = Disconnect(3508, "not available")
"""A ``send`` without a message hook: the client would never learn it goes nowhere."""
# Not a Centrifugo code but the WebSocket one; SDKs map it to "message size limit".
DISCONNECT_MESSAGE_TOO_BIG = Disconnect(1009, "message too big")

UNSUBSCRIBE_SERVER = Unsubscribe(2000, "server unsubscribe")
UNSUBSCRIBE_INSUFFICIENT_STATE = Unsubscribe(2500, "insufficient state")
UNSUBSCRIBE_SUBSCRIPTION_EXPIRED = Unsubscribe(2501, "subscription expired")
