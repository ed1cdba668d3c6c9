"""Wire types of the Centrifugo client protocol (JSON) and their codec.

Commands arrive as newline-separated JSON objects, ``{"id": N, "<method>": {...}}``;
replies and pushes leave the same way. ``data``/``info`` fields carry the
application's JSON as is (:class:`msgspec.Raw`): the hub never parses payloads.

Field omission follows the reference implementation: empty fields are left out
(``omit_defaults``) except those the SDKs require, which have no default here
(``ClientInfo.user``/``client``, ``PresenceResult.presence``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Raw, Struct

__all__ = [
    "METHODS",
    "NO_DATA",
    "ClientInfo",
    "Command",
    "Publication",
    "StreamPosition",
    "decode_frame",
    "encode",
    "optional_raw",
    "strip_newlines",
    "to_raw",
]

Uint32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Uint64 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
NO_DATA = Raw()
"""The absent payload. Always use this instance: ``omit_defaults`` compares by identity."""


class _Wire(Struct, omit_defaults=True, gc=False):
    """Base of every wire type: empty fields are left out when encoding."""


# --- Commands (client -> server) -------------------------------------------------


class SubscribeRecovery(_Wire):
    """An entry of ``connect.subs``: where a server-side subscription stopped."""

    recover: bool = False
    epoch: str = ""
    offset: Uint64 = 0


class ConnectRequest(_Wire):
    token: str = ""
    data: Raw = NO_DATA
    subs: dict[str, SubscribeRecovery] = {}
    name: str = ""
    version: str = ""
    headers: dict[str, str] = {}
    flag: int = 0


class FilterNode(_Wire):
    """A subscription's tags filter (``tf``).

    A leaf (``op`` empty) compares the publication tag ``key`` with ``val``/``vals``
    by ``cmp``; ``and``, ``or`` and ``not`` combine ``nodes``.
    """

    op: str = ""
    key: str = ""
    cmp: str = ""
    val: str = ""
    vals: list[str] = []
    nodes: list[FilterNode] = []


class SubscribeRequest(_Wire):
    channel: str = ""
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: Uint64 = 0
    data: Raw = NO_DATA
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    tf: Raw = NO_DATA
    """The tags filter: a :class:`FilterNode` as JSON. Kept raw, so that the JSON
    decoding of commands is unchanged (no validation before filters are evaluated);
    read it with ``msgspec.json.decode(tf, type=FilterNode)``."""
    flag: int = 0
    # Map / shared-poll subscriptions (protocol v0.19):
    type: int = 0
    phase: int = 0
    cursor: str = ""
    limit: int = 0
    asc: bool = False


class UnsubscribeRequest(_Wire):
    channel: str = ""


class PublishRequest(_Wire):
    channel: str = ""
    data: Raw = NO_DATA
    type: int = 0
    key: str = ""
    removed: bool = False


class PresenceRequest(_Wire):
    channel: str = ""


class PresenceStatsRequest(_Wire):
    channel: str = ""


class StreamPosition(_Wire):
    """A place in a channel's publication stream (its history)."""

    offset: Uint64 = 0
    """Offset of the last publication up to this place (publications are numbered
    from 1; 0: none)."""
    epoch: str = ""
    """Names one life of the stream: a stream whose position was lost
    (``broker.history_meta_ttl`` passed, Redis flushed, the memory broker's process
    restarted) starts a new epoch, and offsets of the old one no longer apply."""


class HistoryRequest(_Wire):
    channel: str = ""
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


class RPCRequest(_Wire):
    method: str = ""
    data: Raw = NO_DATA


class SendRequest(_Wire):
    data: Raw = NO_DATA


class RefreshRequest(_Wire):
    token: str = ""


class KeyedItem(_Wire):
    key: str = ""
    version: Uint64 = 0


class TrackBatch(_Wire):
    signature: str = ""
    items: list[KeyedItem] = []


class SubRefreshRequest(_Wire):
    channel: str = ""
    token: str = ""
    type: int = 0
    track: list[TrackBatch] = []
    untrack: list[str] = []


class Command(_Wire):
    """One client command. Exactly one method field is expected to be set."""

    id: Uint32 = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: UnsubscribeRequest | None = None
    publish: PublishRequest | None = None
    presence: PresenceRequest | None = None
    presence_stats: PresenceStatsRequest | None = None
    history: HistoryRequest | None = None
    rpc: RPCRequest | None = None
    send: SendRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: SubRefreshRequest | None = None


METHODS = tuple(name for name in Command.__struct_fields__ if name != "id")
"""The command methods, in the order they are looked for in a command."""


# --- Results and pushes (server -> client) ---------------------------------------


class ClientInfo(_Wire):
    """Who a client is, as others see it: in presence, join/leave events and the
    publications it sends."""

    user: str
    """The user ID (``""`` for an anonymous client)."""
    client: str
    """The connection's unique ID."""
    conn_info: Raw = NO_DATA
    """Application JSON attached to the connection (the token's ``info`` claim, or
    the connect hook's ``info``)."""
    chan_info: Raw = NO_DATA
    """Application JSON attached to this subscription (the subscription token's
    ``info`` claim, or the subscribe hook's ``info``)."""


class Publication(_Wire):
    """A message published to a channel, as subscribers and history get it."""

    data: Raw
    """The application's JSON payload, as published."""
    info: ClientInfo | None = None
    """The publishing client, when a client published it (not the server API)."""
    offset: Uint64 = 0
    """Its offset in the channel's stream (0 when the channel keeps no history)."""
    tags: dict[str, str] | None = None
    """String key-value pairs given by the publisher; subscription filters (``tf``)
    match on them."""
    delta: bool = False
    """``data`` is a Fossil patch against the subscriber's previous publication (only
    for subscriptions that negotiated delta compression)."""


class SubscribeResult(_Wire):
    expires: bool = False
    ttl: Uint32 = 0
    recoverable: bool = False
    epoch: str = ""
    publications: list[Publication] = []
    recovered: bool = False
    offset: Uint64 = 0
    positioned: bool = False
    data: Raw = NO_DATA
    was_recovering: bool = False
    delta: bool = False
    """Delta compression is on for this subscription (it asked for ``fossil``)."""


class ConnectResult(_Wire):
    client: str
    version: str
    expires: bool = False
    ttl: Uint32 = 0
    data: Raw = NO_DATA
    subs: dict[str, SubscribeResult] | None = None
    ping: Uint32 = 0
    pong: bool = False
    session: str = ""
    """Emulation and unidirectional transports: the session to send commands to."""
    node: str = ""
    """... and the node that holds it."""


class Empty(_Wire):
    """The ``{}`` result of unsubscribe, publish and sends."""


class PresenceResult(_Wire):
    presence: dict[str, ClientInfo]


class PresenceStatsResult(_Wire):
    num_clients: int
    num_users: int


class HistoryResult(_Wire):
    publications: list[Publication]
    epoch: str
    offset: Uint64


class RPCResult(_Wire):
    data: Raw = NO_DATA


class RefreshResult(_Wire):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: Uint32 = 0


class SubRefreshResult(_Wire):
    expires: bool = False
    ttl: Uint32 = 0


class ErrorBody(_Wire):
    code: int
    message: str
    temporary: bool = False


class Join(_Wire):
    info: ClientInfo


class Leave(_Wire):
    info: ClientInfo


class UnsubscribePush(_Wire):
    code: int
    reason: str


class SubscribePush(_Wire):
    recoverable: bool = False
    epoch: str = ""
    offset: Uint64 = 0
    positioned: bool = False
    data: Raw = NO_DATA


class MessagePush(_Wire):
    data: Raw


class DisconnectPush(_Wire):
    """A disconnect on emulation and unidirectional transports (WebSocket closes instead)."""

    code: int
    reason: str


class RefreshPush(_Wire):
    """The connection's new expiry, after a server API ``refresh``."""

    expires: bool = False
    ttl: Uint32 = 0


class Push(_Wire):
    channel: str = ""
    pub: Publication | None = None
    join: Join | None = None
    leave: Leave | None = None
    unsubscribe: UnsubscribePush | None = None
    subscribe: SubscribePush | None = None
    message: MessagePush | None = None
    connect: ConnectResult | None = None
    """The first push of a unidirectional connection: its connect result."""
    disconnect: DisconnectPush | None = None
    refresh: RefreshPush | None = None


class Reply(_Wire):
    id: Uint32 = 0
    error: ErrorBody | None = None
    push: Push | None = None
    connect: ConnectResult | None = None
    subscribe: SubscribeResult | None = None
    unsubscribe: Empty | None = None
    publish: Empty | None = None
    presence: PresenceResult | None = None
    presence_stats: PresenceStatsResult | None = None
    history: HistoryResult | None = None
    rpc: RPCResult | None = None
    refresh: RefreshResult | None = None
    sub_refresh: SubRefreshResult | None = None


# --- Codec -----------------------------------------------------------------------

_command_decoder = msgspec.json.Decoder(Command)
_encoder = msgspec.json.Encoder()

encode = _encoder.encode
"""Encode a wire object to compact JSON bytes (one line, no newline)."""


def decode_frame(frame: str | bytes) -> list[Command]:
    """Decode one WebSocket text frame into its commands, in order.

    Raises :class:`msgspec.DecodeError` (a :class:`ValueError`) when any line is not
    a valid command, an empty line included, as Centrifugo does (one trailing
    newline is allowed). An empty frame gives ``[]``.
    """
    if isinstance(frame, str):
        frame = frame.encode()
    if b"\n\n" in frame or frame[:1] == b"\n":
        raise msgspec.DecodeError("an empty line between commands")
    return _command_decoder.decode_lines(frame)


def strip_newlines(raw: Raw) -> Raw:
    """Make application JSON safe to embed in a newline-delimited frame.

    JSON cannot hold a raw newline inside a string, so outside strings they are
    only whitespace and removing them keeps the document equal.
    """
    data = bytes(raw)
    if b"\n" in data or b"\r" in data:
        return Raw(data.replace(b"\r", b"").replace(b"\n", b""))
    return raw


def to_raw(value: Any) -> Raw:
    """A Python value, or application JSON already as :class:`msgspec.Raw`, as wire JSON.

    The one way the application's values become payloads (``data``, ``info``): JSON
    without raw newlines, which would break the newline-delimited framing.
    """
    if isinstance(value, Raw):
        return strip_newlines(value)
    return Raw(_encoder.encode(value))  # msgspec escapes newlines inside strings


def optional_raw(value: Any) -> Raw:
    """:func:`to_raw`, with ``None`` as the absent payload (:data:`NO_DATA`)."""
    return NO_DATA if value is None else to_raw(value)
