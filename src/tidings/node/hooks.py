"""Application hooks: Python callables the hub calls at each step of a client's life.

Register them on a :class:`~tidings.Hub` (``hub.on_connect(func)``, also usable as
a decorator). Each hook is an ``async`` function taking one event. Hooks that
decide (connect, subscribe, publish, rpc, refresh) refuse by raising
:class:`~tidings.Error` (the client gets that error) or
:class:`~tidings.DisconnectRequest` (the connection is closed with its code),
and accept by returning ``None`` or a reply that changes what happens (the
refresh hook is the exception: only a reply with a future ``expire_at``, or 0 for
never, keeps the connection; anything else closes it with 3005). Hooks that
observe (unsubscribe, disconnect) are called once per event, with the reason
code; what they raise is logged and ignored.

A registered ``on_subscribe`` or ``on_publish`` hook replaces the
``allow_subscribe_*`` / ``allow_publish_*`` options: the hook decides. Private
(``$``) channels still need a subscription token, and a valid token still
grants a subscription without asking the hook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConnectEvent",
    "ConnectReply",
    "DisconnectEvent",
    "Hooks",
    "MessageEvent",
    "PublishEvent",
    "PublishReply",
    "RPCEvent",
    "RefreshEvent",
    "RefreshReply",
    "SubRefreshEvent",
    "SubRefreshReply",
    "SubscribeEvent",
    "SubscribeReply",
    "UnsubscribeEvent",
]


@dataclass(frozen=True, slots=True)
class ConnectEvent:
    """A client sent ``connect``. ``user`` is set when it carried a valid token."""

    client: str
    user: str
    token: str
    data: Any
    name: str
    version: str
    headers: Mapping[str, str]
    channels: tuple[str, ...] = ()
    """Server-side subscriptions from the token."""
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class ConnectReply:
    """What a connect hook may change. ``None`` fields keep what the token said."""

    user: str | None = None
    info: Any = None
    """JSON-serialisable; sent to others as the client's ``conn_info``."""
    data: Any = None
    """Sent to the client in the connect result."""
    channels: list[str] = field(default_factory=list)
    """More server-side subscriptions."""
    expire_at: int | None = None
    """Unix time when the connection expires (0: never)."""


@dataclass(frozen=True, slots=True)
class RefreshEvent:
    """A connection's token expired; the hook may extend it (instead of a client refresh)."""

    client: str
    user: str
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class RefreshReply:
    """What a refresh hook decides: a new expiry, or the end of the connection."""

    expire_at: int = 0
    """New expiry (Unix time, in the future); 0: never expire."""
    expired: bool = False
    """Close the connection (3005) instead."""


@dataclass(frozen=True, slots=True)
class SubscribeEvent:
    """A client asked to subscribe without a subscription token (the hook decides)."""

    client: str
    """The connection's ID."""
    user: str
    """The user ID (``""`` for an anonymous client)."""
    channel: str
    """The channel to subscribe to."""
    data: Any
    """The subscribe command's ``data`` as JSON values (``None`` when absent; bytes
    when a Protobuf client sent something other than JSON)."""
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class SubscribeReply:
    """What a subscribe hook may attach to an accepted subscription."""

    info: Any = None
    """Channel info of this subscriber (``chan_info``)."""
    data: Any = None
    """Sent to the client in the subscribe result."""
    expire_at: int | None = None
    """When the subscription expires (Unix time): then the sub_refresh hook extends
    it, or, without one, it ends with an unsubscribe push 2501 (SDKs subscribe again,
    and the subscribe hook decides anew). None or 0: never."""


@dataclass(frozen=True, slots=True)
class SubRefreshEvent:
    """A subscription that the subscribe hook gave an expiry reached it."""

    client: str
    """The connection's ID."""
    user: str
    """The user ID (``""`` for an anonymous client)."""
    channel: str
    """The subscription's channel."""
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class SubRefreshReply:
    """What a sub_refresh hook decides: a new expiry, or the end of the subscription."""

    expire_at: int = 0
    """New expiry (Unix time, in the future); 0: never expire."""
    expired: bool = False
    """End the subscription (unsubscribe push 2501) instead."""


@dataclass(frozen=True, slots=True)
class PublishEvent:
    """A client publishes to a channel (the hook decides, and may rewrite it)."""

    client: str
    """The connection's ID."""
    user: str
    """The user ID (``""`` for an anonymous client)."""
    channel: str
    """The channel to publish to."""
    data: Any
    """What the client publishes, as JSON values (bytes when a Protobuf client sent
    something other than JSON)."""
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class PublishReply:
    """What a publish hook may change about an accepted publication."""

    data: Any = None
    """Publish this instead of the client's data (``None``: unchanged)."""
    skip_history: bool = False
    """Deliver the publication to subscribers without keeping it in the channel's
    history."""


@dataclass(frozen=True, slots=True)
class RPCEvent:
    """A client sent ``rpc``; the hook's return value (JSON-serialisable) is the answer."""

    client: str
    """The connection's ID."""
    user: str
    """The user ID (``""`` for an anonymous client)."""
    method: str
    """The ``method`` the client named (may be empty)."""
    data: Any
    """The call's ``data`` as JSON values (``None`` when absent; bytes when a Protobuf
    client sent something other than JSON)."""
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A client sent ``send``: an asynchronous message, with no reply."""

    client: str
    """The connection's ID."""
    user: str
    """The user ID (``""`` for an anonymous client)."""
    data: Any
    """The message's ``data`` as JSON values (bytes when a Protobuf client sent
    something other than JSON)."""
    protocol: str = "json"
    """The client's protocol: ``json`` or ``protobuf``."""
    transport: str = "websocket"
    """The client's transport: ``websocket``, ``http_stream``, ``sse``, ``uni_sse``, ..."""


@dataclass(frozen=True, slots=True)
class UnsubscribeEvent:
    """A client left a channel: ``code`` 0 when it asked to, else the server's reason."""

    client: str
    user: str
    channel: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    """A connection ended, with the close code it got (1000-range codes for transport ends)."""

    client: str
    user: str
    code: int
    reason: str


ConnectHook = Callable[[ConnectEvent], Awaitable[ConnectReply | None]]
RefreshHook = Callable[[RefreshEvent], Awaitable[RefreshReply | None]]
SubscribeHook = Callable[[SubscribeEvent], Awaitable[SubscribeReply | None]]
PublishHook = Callable[[PublishEvent], Awaitable[PublishReply | None]]
RPCHook = Callable[[RPCEvent], Awaitable[Any]]
SubRefreshHook = Callable[[SubRefreshEvent], Awaitable[SubRefreshReply | None]]
MessageHook = Callable[[MessageEvent], Awaitable[None]]
UnsubscribeHook = Callable[[UnsubscribeEvent], Awaitable[None]]
DisconnectHook = Callable[[DisconnectEvent], Awaitable[None]]


@dataclass(slots=True)
class Hooks:
    """The hooks in use; each is ``None`` until registered."""

    connect: ConnectHook | None = None
    refresh: RefreshHook | None = None
    subscribe: SubscribeHook | None = None
    sub_refresh: SubRefreshHook | None = None
    publish: PublishHook | None = None
    rpc: RPCHook | None = None
    message: MessageHook | None = None
    unsubscribe: UnsubscribeHook | None = None
    disconnect: DisconnectHook | None = None
