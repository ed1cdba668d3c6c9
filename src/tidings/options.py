"""The configuration schema: every option of every layer, its default and its bounds.

Option names are Centrifugo's where one exists (``token_hmac_secret_key``,
``client.ping_interval``, channel options such as ``allow_subscribe_for_client``),
so its users feel at home. The node, the transports and the API read these
types; the application shell builds them (:mod:`tidings.app.config`: file,
environment, flags).

Defaults deny; ``dev=True`` (applied by the loader) opens everything.
"""

from __future__ import annotations

import functools
import operator
import re
from typing import Annotated, Any

import msgspec
import msgspec.inspect

__all__ = [
    "AdminOptions",
    "BrokerOptions",
    "ChannelOptions",
    "ClientOptions",
    "Config",
    "ConfigError",
    "HTTPAPIOptions",
    "ProxyOptions",
    "StreamOptions",
    "EmulationOptions",
    "WebSocketOptions",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the option."""


# Bounds live on the option types: msgspec checks them while loading (its message
# names the option, see ``tidings.app.config``), and ``Config.__post_init__`` checks
# the same bounds, read from these types, on a config built directly.
Seconds = Annotated[float, msgspec.Meta(gt=0)]
"""A duration that must be positive (an interval of 0 would spin, a timeout of 0 fail)."""
Delay = Annotated[float, msgspec.Meta(ge=0)]
"""A duration where 0 means at once (or, for a TTL, off)."""
Positive = Annotated[int, msgspec.Meta(ge=1)]
"""A size or count that must be at least 1."""
Limit = Annotated[int, msgspec.Meta(ge=0)]
"""A size or count where 0 means none (or no limit, as the option says)."""
Rate = Annotated[float, msgspec.Meta(ge=0)]
"""Per second; 0 means no limit."""
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A TCP port; 0 picks a free one."""


RECOVERY_MODES = ("", "stream", "cache")


class _Options(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class ChannelOptions(_Options, frozen=True):
    """What a channel (or every channel of a namespace) offers and allows."""

    presence: bool = False
    """Keep who is subscribed, for the ``presence`` and ``presence_stats`` calls
    (of clients and of the server API)."""
    join_leave: bool = False
    """Publish a join/leave event when a client subscribes/unsubscribes; a subscriber
    gets them when it asks (``join_leave`` in its subscribe) and may read presence."""
    force_push_join_leave: bool = False
    """Push the join/leave events (of ``join_leave``) to every subscriber, asked or not."""
    history_size: Limit = 0
    """Publications kept per channel (0: no history)."""
    history_ttl: Delay = 0.0
    """Seconds history is kept (0: no history)."""
    history_meta_ttl: Delay = 0.0
    """Seconds the channel's stream position (epoch and offset) outlives its last
    publication; then it starts a new epoch (0: ``broker.history_meta_ttl``)."""
    force_recovery: bool = False
    """Make every subscription recoverable: on resubscribe a client gets the
    publications it missed from history (needs history)."""
    force_positioning: bool = False
    """Make every subscription positioned: its client gets the stream position, and
    one that may have missed publications is unsubscribed (2500) or disconnected (3010)
    to subscribe again (needs history)."""
    allow_positioning: bool = False
    """Clients may ask for a positioned subscription (``positioned`` in subscribe)."""
    allow_recovery: bool = False
    """Clients may ask for a recoverable subscription (``recoverable`` in subscribe)."""
    force_recovery_mode: str = ""
    """What recovery gives back: ``stream`` (or empty), every publication missed, from
    history; ``cache``, only the channel's latest publication (for state-like channels,
    usually with ``history_size = 1``)."""
    auto_cache_recover: bool = False
    """In ``cache`` mode, give every new subscription the latest publication, asked or
    not (server-side subscriptions too)."""
    allow_tags_filter: bool = False
    """Clients may subscribe with a tags filter (``tf``): they get only the
    publications whose tags pass it."""
    allowed_delta_types: list[str] = []
    """Delta compressions a subscription may ask for (``["fossil"]``): its client then
    gets publications as patches against the previous one (needs history; not
    with a tags filter)."""
    delta_publish: bool = False
    """Publish every publication of the channel with delta (server API ``delta: true``
    does it for one): delta subscribers may get it as a patch."""
    allow_subscribe_for_client: bool = False
    """Authenticated clients may subscribe without a subscription token."""
    allow_subscribe_for_anonymous: bool = False
    """Anonymous clients (no user) may subscribe without a subscription token too
    (with ``allow_subscribe_for_client``)."""
    allow_publish_for_subscriber: bool = False
    """Clients subscribed to the channel may publish to it."""
    allow_publish_for_client: bool = False
    """Authenticated clients may publish, subscribed or not."""
    allow_publish_for_anonymous: bool = False
    """Anonymous clients (no user) may publish too (with ``allow_publish_for_client``
    or ``_for_subscriber``)."""
    allow_history_for_subscriber: bool = False
    """Clients subscribed to the channel may read its history."""
    allow_history_for_client: bool = False
    """Authenticated clients may read history, subscribed or not."""
    allow_history_for_anonymous: bool = False
    """Anonymous clients (no user) may read history too (with ``allow_history_for_client``
    or ``_for_subscriber``)."""
    allow_presence_for_subscriber: bool = False
    """Clients subscribed to the channel may read its presence and presence stats."""
    allow_presence_for_client: bool = False
    """Authenticated clients may read presence and presence stats, subscribed or not."""
    allow_presence_for_anonymous: bool = False
    """Anonymous clients (no user) may read presence too (with ``allow_presence_for_client``
    or ``_for_subscriber``)."""
    allow_user_limited_channels: bool = False
    """A channel name with ``#`` lists its users after it: ``dialog#42,43`` is only for
    users 42 and 43, who may subscribe to it without a token."""

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


class ClientOptions(_Options, frozen=True):
    """Per-connection settings (``[client]``)."""

    ping_interval: Seconds = 25.0
    """Seconds between the server's pings to a client (the first one is randomized);
    also sent to the client, which closes the connection when pings stop coming."""
    pong_timeout: Seconds = 8.0
    """Seconds a client has to answer a ping; then it is disconnected with 3012
    (less than ``ping_interval``)."""
    stale_close_delay: Seconds = 10.0
    """Seconds a new connection has to send ``connect``; then it is closed with 3502."""
    expired_close_delay: Delay = 25.0
    """Seconds of grace after a connection's token expires, for the client to refresh
    it, before it is closed with 3005 (without a refresh hook)."""
    expired_sub_close_delay: Delay = 25.0
    """Grace, in seconds, after a subscription token expires without a ``sub_refresh``
    before the subscription ends with an unsubscribe push 2501 (the SDKs subscribe
    again with a new token)."""
    channel_limit: Positive = 128
    """Channels one connection may be subscribed to; more get error 106."""
    channel_max_length: Positive = 255
    """Longest channel name, in characters; longer ones get error 107."""
    queue_max_size: Positive = 1024 * 1024
    """Bytes a client may have waiting to be sent; a client that falls further behind
    is disconnected with 3008 (slow)."""
    write_delay: Delay = 0.005
    """Seconds from the end of one write to clients to the next: under load, messages
    gather into one frame and one system call per client; when idle, nothing waits
    (0: each message is written at once)."""
    max_message_size: Positive = 65536
    """Largest message a client may send, in bytes; a larger one closes the connection
    with 1009."""
    allow_anonymous_connect_without_token: bool = False
    """Accept connections without a token, as anonymous clients (user ``""``)."""
    connection_limit: Limit = 100_000
    """Connections per node; more are refused at the handshake with HTTP 503 (0: no limit)."""
    user_connection_limit: Limit = 0
    """Connections per user on a node; more are closed with 3504 (0: no limit)."""
    connection_rate_limit: Rate = 0.0
    """New connections per second per node; more get HTTP 503 (0: no limit)."""
    command_rate_limit: Rate = 1000.0
    """Commands per second per connection (bursts of twice that); over it: error 111,
    and 3013 when a client keeps going (0: no limit)."""


class WebSocketOptions(_Options, frozen=True):
    """WebSocket compression (``[websocket]``): permessage-deflate, RFC 7692."""

    compression: bool = False
    """Offer permessage-deflate to clients that ask for it (browsers and most SDKs
    do), without context takeover: no deflate state is kept per connection."""
    compression_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 1
    """zlib level of outgoing frames: 1 is fastest, 9 smallest."""
    compression_min_size: Limit = 0
    """Frames of at most this many bytes go uncompressed (compressing a few bytes
    costs more than it saves)."""
    compression_shared: bool = True
    """Compress a frame once for every connection that gets the same bytes (a
    publication flushed alone is shared by all its subscribers). ``false``: deflate
    per connection, as Centrifugo does (kept to measure the difference)."""
    decompressed_message_size_limit: Limit = 0
    """Largest message a compressing client may send once inflated, in bytes; a larger
    one closes the connection with 1009 (0: ten times ``client.max_message_size``). On
    a connection that negotiated compression this bound replaces
    ``client.max_message_size``, for compressed and plain messages alike."""


class StreamOptions(_Options, frozen=True):
    """A transport of the client port other than WebSocket (``[http_stream]``,
    ``[sse]``, ``[uni_http_stream]``, ``[uni_sse]``, ``[uni_websocket]``)."""

    enabled: bool = False
    """Serve it (``--dev`` serves every one)."""
    max_request_body_size: Positive = 65536
    """Largest request body (the connect command), in bytes; a larger one gets 413."""
    connect_code_to_http_response: bool = False
    """``uni_http_stream``, ``uni_sse``: answer a refused connect with an HTTP status
    (401 for an invalid or expired token, 400, 403, 429, 503, else 500) instead of a
    200 stream holding a ``disconnect`` push."""


class EmulationOptions(_Options, frozen=True):
    """``POST /emulation``: the commands of HTTP-streaming and SSE clients (``[emulation]``),
    served when either transport is."""

    max_request_body_size: Positive = 65536
    """Largest request body, in bytes; a larger one gets 413."""


class HTTPAPIOptions(_Options, frozen=True):
    """The internal HTTP port: server API, metrics, readiness (``[http_api]``)."""

    enabled: bool = True
    """Open the API port (a ``Hub`` mounted in an ASGI application opens it only when
    asked)."""
    host: str = "127.0.0.1"
    """Address the API port listens on; keep it internal."""
    port: Port = 9000
    """The API port."""
    key: str = ""
    """The API key; without one (and without ``insecure``) every API call gets 401.
    A configured key is always checked, ``insecure`` or not."""
    insecure: bool = False
    """Accept API calls without a key when no ``key`` is configured (``--dev`` sets it)."""
    max_body_size: Positive = 1024 * 1024
    """Largest request body, in bytes; larger ones get HTTP 413."""


class BrokerOptions(_Options, frozen=True):
    """Where publications travel between nodes (``[broker]``)."""

    url: str = "memory"
    """``memory`` (one process), ``redis://host:6379/0``, a Redis Cluster
    (``redis+cluster://host:7000,host:7001``) or NATS with JetStream
    (``nats://host:4222``, several servers comma-separated)."""
    prefix: str = "tidings"
    """Prefix of every key, channel, subject, stream and bucket in the broker, to share
    one Redis or NATS between hubs."""
    pubsub_shards: Positive = 4
    """Redis pub/sub connections per node, channels spread over them by hash (a Redis
    Cluster has one per master)."""
    presence_ttl: Seconds = 60.0
    """A node's clients vanish from presence this long after the node dies."""
    presence_update_interval: Seconds = 25.0
    """Seconds between a node's refreshes of its clients' presence (less than
    ``presence_ttl``)."""
    history_meta_ttl: Seconds = 30 * 24 * 3600.0
    """Seconds a channel's stream position (epoch and offset) is kept after its last
    publication, by any broker; then the channel starts a new epoch (a namespace's
    ``history_meta_ttl`` sets its own)."""
    node_info_interval: Seconds = 3.0
    """Seconds between a node's announcements of itself to the others; a node silent
    for three of them is dropped from the ``info`` API."""


class ProxyOptions(_Options, frozen=True):
    """HTTP endpoints answering hooks, for backends not in Python (``[proxy]``)."""

    connect_endpoint: str = ""
    """URL answering connect (Centrifugo's connect proxy); empty: none."""
    refresh_endpoint: str = ""
    """URL asked to extend a connection whose token expires (refresh proxy)."""
    subscribe_endpoint: str = ""
    """URL deciding subscriptions without a token (subscribe proxy); replaces the
    ``allow_subscribe_*`` options."""
    sub_refresh_endpoint: str = ""
    """Extends (or ends) a subscription whose subscribe answer had ``expire_at``, when
    it expires (Centrifugo's sub_refresh proxy)."""
    publish_endpoint: str = ""
    """URL deciding clients' publications (publish proxy); replaces the
    ``allow_publish_*`` options."""
    rpc_endpoint: str = ""
    """URL answering clients' ``rpc`` calls (RPC proxy)."""
    unsubscribe_endpoint: str = ""
    """URL told of every ended subscription (tidings' own; its answer is ignored)."""
    disconnect_endpoint: str = ""
    """URL told of every ended connection (tidings' own; its answer is ignored)."""
    timeout: Seconds = 1.0
    """Seconds a proxy request may take; a failed or late answer is error 100."""
    http_headers: list[str] = []
    """Headers of the client's WebSocket handshake forwarded to the connect endpoint."""


class AdminOptions(_Options, frozen=True):
    """The admin UI on the API port (``[admin]``); off without a password."""

    password: str = ""
    """The admin UI's password; no admin UI without one (``--dev`` sets ``admin``)."""
    secret: str = ""
    """Signs session cookies; random when empty (logins end on restart). With
    ``workers > 1``, ``tidings serve`` draws one for all its workers."""
    session_ttl: Seconds = 8 * 3600.0
    """Seconds an admin login lasts."""


class Config(_Options, frozen=True):
    """The whole hub configuration.

    Build it with :func:`load_config`, which also applies the open defaults of
    ``dev``; a ``Config`` built directly takes its channel options as given.
    """

    host: str = "127.0.0.1"
    """Address the client port listens on (WebSocket ``/connection/websocket``,
    ``GET /health``)."""
    port: Port = 8000
    """The client port."""
    dev: bool = False
    """Open everything for local development (applied by :func:`load_config`):
    anonymous clients, every channel permission, presence, join/leave and history,
    the demo app, any origin, the API without a key (unless one is set) and the admin
    UI with password ``admin``. Options set explicitly still win."""
    allowed_origins: list[str] = []
    """Origins allowed to open WebSockets (``*`` wildcards). Empty: requests without an
    Origin header (non-browser clients) and same-host pages only. Others get HTTP 403."""
    tls_cert: str = ""
    """Path of the PEM certificate (chain): with ``tls_key``, serve ``wss://`` directly,
    without a proxy in front."""
    tls_key: str = ""
    """Path of the PEM private key of ``tls_cert``."""
    demo: bool = False
    """Serve the demo app on the WebSocket port (``--dev`` turns it on)."""
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    """Processes sharing the ports (needs a shared broker such as Redis); ``"auto"`` in a
    file, the environment or ``--workers``: one per core."""
    log_level: str = "info"
    """``debug``, ``info``, ``warning``, ``error`` or ``critical``."""
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line)."""
    shutdown_timeout: Delay = 10.0
    """Seconds a stop waits for clients to take their last messages (0: none)."""
    gc_freeze: bool = False
    """Freeze long-lived objects out of the garbage collector's full collections
    (short pauses with many connections, see ``app/gc_policy.py``). The policy is
    process-wide, so it is off for an embedded ``Hub``; ``tidings serve`` turns it on
    unless the configuration sets it."""
    token_hmac_secret_key: str = ""
    """Secret of HS256/384/512 connection and subscription tokens (JWT)."""
    token_rsa_public_key: str = ""
    """PEM public key of RS256/384/512 tokens."""
    token_ecdsa_public_key: str = ""
    """PEM public key of ES256/384/512 tokens."""
    token_audience: str = ""
    """When set, tokens must carry this ``aud`` claim."""
    token_issuer: str = ""
    """When set, tokens must carry this ``iss`` claim."""
    history_max_publication_limit: Limit = 300
    """Most publications one history call returns (0: positions only)."""
    client: ClientOptions = ClientOptions()
    websocket: WebSocketOptions = WebSocketOptions()
    http_stream: StreamOptions = StreamOptions()
    """HTTP-streaming (``POST /connection/http_stream``), the SDKs' first fallback."""
    sse: StreamOptions = StreamOptions()
    """Server-sent events (``/connection/sse``), the SDKs' second fallback (JSON)."""
    emulation: EmulationOptions = EmulationOptions()
    uni_http_stream: StreamOptions = StreamOptions()
    """Unidirectional HTTP-streaming (``POST /connection/uni_http_stream``): one push per line."""
    uni_sse: StreamOptions = StreamOptions()
    """Unidirectional server-sent events (``/connection/uni_sse``): plain ``EventSource``."""
    uni_websocket: StreamOptions = StreamOptions()
    """Unidirectional WebSocket (``/connection/uni_websocket``): one push per message."""
    http_api: HTTPAPIOptions = HTTPAPIOptions()
    proxy: ProxyOptions = ProxyOptions()
    broker: BrokerOptions = BrokerOptions()
    admin: AdminOptions = AdminOptions()
    channel: ChannelOptions = ChannelOptions()
    """Options of channels without a namespace (top-level keys in the file)."""
    namespaces: dict[str, ChannelOptions] = {}
    """Channel options by namespace: channels ``NAME:...`` take those of
    ``[namespaces.NAME]`` (nothing is inherited from the top level); a channel of
    an unknown namespace gets error 102."""

    def __post_init__(self) -> None:
        _check_bounds(self, _type_info(), "")
        problems = self.problems()
        if problems:  # one per line: the loader lists them one by one
            raise ConfigError("\n".join(problems))

    def problems(self) -> list[str]:
        """What is wrong between options (each one's own bounds hold)."""
        problems = []
        if self.client.ping_interval <= self.client.pong_timeout:
            problems.append("client.ping_interval must be greater than client.pong_timeout")
        for name in self.namespaces:
            if not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
                problems.append(f"namespaces.{name}: a namespace name is letters, digits, _-.")
        broker = self.broker
        if broker.url != "memory" and not broker.url.startswith(_BROKER_SCHEMES):
            problems.append(
                "broker.url must be 'memory', redis://..., redis+cluster://... or nats://...,"
                f" got {broker.url!r}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key go together")
        if self.workers > 1 and broker.url == "memory":
            problems.append(
                "workers > 1 needs a shared broker: the memory broker cannot connect "
                "processes (set broker.url = 'redis://...' or --broker)"
            )
        if broker.presence_update_interval >= broker.presence_ttl:
            problems.append("broker.presence_update_interval must be less than broker.presence_ttl")
        for where, channel in (
            ("", self.channel),
            *((f"namespaces.{name}.", options) for name, options in self.namespaces.items()),
        ):
            if channel.force_recovery_mode not in RECOVERY_MODES:
                problems.append(
                    f"{where}force_recovery_mode must be 'stream' or 'cache', "
                    f"got {channel.force_recovery_mode!r}"
                )
            meta_ttl = channel.history_meta_ttl or broker.history_meta_ttl
            if channel.history_ttl > meta_ttl:
                problems.append(
                    f"{where}history_ttl ({channel.history_ttl:g}) must not exceed the "
                    f"history_meta_ttl ({meta_ttl:g}): the position would expire before "
                    "the publications it numbers"
                )
            for delta in channel.allowed_delta_types:
                if delta != "fossil":
                    problems.append(f"{where}allowed_delta_types: only 'fossil', got {delta!r}")
        if self.log_format not in ("text", "json"):
            problems.append(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        return problems


_BOUNDS = (
    ("gt", operator.gt, ">"),
    ("ge", operator.ge, ">="),
    ("lt", operator.lt, "<"),
    ("le", operator.le, "<="),
)
_BOUND_WORDS = {">": "greater than", ">=": "at least", "<": "less than", "<=": "at most"}


def bound_message(key: str, comparison: str, bound: float) -> str:
    """``client.x must be greater than 0``: what a bound of an option type says.

    ``comparison`` is one of ``>``, ``>=``, ``<``, ``<=``, as msgspec writes it; the
    loader (:mod:`tidings.app.config`) turns msgspec's own errors into this too.
    """
    return f"{key} must be {_BOUND_WORDS[comparison]} {bound:g}"


def _bound_error(key: str, value: object, kind: Any) -> str | None:
    """What is wrong with ``value`` for an option of the bounded type ``kind``, if anything.

    ``kind`` is a :mod:`msgspec.inspect` ``IntType``/``FloatType``.
    """
    if not isinstance(value, int | float):
        return None  # a value of the wrong type: the type checker's business
    for name, holds, comparison in _BOUNDS:
        bound = getattr(kind, name)
        if bound is not None and not holds(value, bound):
            return f"{bound_message(key, comparison, bound)}, got {value!r}"
    return None


@functools.cache
def _type_info() -> msgspec.inspect.StructType:
    info = msgspec.inspect.type_info(Config)
    assert isinstance(info, msgspec.inspect.StructType)
    return info


def _check_bounds(options: msgspec.Struct, info: msgspec.inspect.StructType, prefix: str) -> None:
    """Check the bounds of the option types (msgspec checks them only when decoding)."""
    for field in info.fields:
        value = getattr(options, field.name)
        kind = field.type
        if isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        if isinstance(kind, msgspec.inspect.StructType):
            # channel options without a namespace sit at the top level of the file
            _check_bounds(value, kind, "" if field.name == "channel" else f"{prefix}{field.name}.")
        elif isinstance(kind, msgspec.inspect.DictType) and isinstance(
            kind.value_type, msgspec.inspect.StructType
        ):
            for name, item in value.items():
                _check_bounds(item, kind.value_type, f"{prefix}{field.name}.{name}.")
        elif isinstance(kind, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
            error = _bound_error(prefix + field.name, value, kind)
            if error is not None:
                raise ConfigError(error)


_BROKER_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "nats://")
