"""The configuration schema: every option of every layer, its default and its bounds.

Option names are Centrifugo's where one exists (``token_hmac_secret_key``,
``client.ping_interval``, channel options such as ``allow_subscribe_for_client``),
so its users feel at home. The node, the transports and the API read these
types; the application shell builds them (:mod:`tidings.app.config`: file,
environment, flags).

Defaults deny; ``dev=True`` (applied by the loader) opens everything.
"""

from __future__ import annotations

import re

import msgspec

__all__ = [
    "AdminOptions",
    "BrokerOptions",
    "ChannelOptions",
    "ClientOptions",
    "Config",
    "ConfigError",
    "HTTPAPIOptions",
    "ProxyOptions",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the option."""


class _Options(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class ChannelOptions(_Options, frozen=True):
    """What a channel (or every channel of a namespace) offers and allows."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = msgspec.field(default=0)
    history_ttl: float = 0.0
    force_recovery: bool = False
    force_positioning: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_client: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


class ClientOptions(_Options, frozen=True):
    """Per-connection settings (``[client]``)."""

    ping_interval: float = 25.0
    pong_timeout: float = 8.0
    stale_close_delay: float = 10.0
    expired_close_delay: float = 25.0
    channel_limit: int = 128
    channel_max_length: int = 255
    queue_max_size: int = 1024 * 1024
    write_delay: float = 0.005
    """Writes to clients happen at most this often (seconds): under load, messages
    gather into one frame and one system call per client; when idle, nothing waits."""
    max_message_size: int = 65536
    allow_anonymous_connect_without_token: bool = False
    connection_limit: int = 100_000
    """Connections per node; more are refused at the handshake with HTTP 503 (0: no limit)."""
    user_connection_limit: int = 0
    """Connections per user on a node; more are closed with 3504 (0: no limit)."""
    connection_rate_limit: float = 0.0
    """New connections per second per node; more get HTTP 503 (0: no limit)."""
    command_rate_limit: float = 1000.0
    """Commands per second per connection (bursts of twice that); over it: error 111,
    and 3013 when a client keeps going (0: no limit)."""


class HTTPAPIOptions(_Options, frozen=True):
    """The internal HTTP port: server API, metrics, readiness (``[http_api]``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9000
    key: str = ""
    """The API key; without one (and without ``insecure``) every API call gets 401."""
    insecure: bool = False
    """Accept API calls without a key (``--dev`` sets it)."""
    max_body_size: int = 1024 * 1024


class BrokerOptions(_Options, frozen=True):
    """Where publications travel between nodes (``[broker]``)."""

    url: str = "memory"
    """``memory`` (one process) or ``redis://host:6379/0``."""
    prefix: str = "tidings"
    """Prefix of every Redis key and channel, to share one Redis between hubs."""
    pubsub_shards: int = 4
    presence_ttl: float = 60.0
    """A node's clients vanish from presence this long after the node dies."""
    presence_update_interval: float = 25.0
    history_meta_ttl: float = 30 * 24 * 3600.0
    node_info_interval: float = 3.0


class ProxyOptions(_Options, frozen=True):
    """HTTP endpoints answering hooks, for backends not in Python (``[proxy]``)."""

    connect_endpoint: str = ""
    refresh_endpoint: str = ""
    subscribe_endpoint: str = ""
    publish_endpoint: str = ""
    rpc_endpoint: str = ""
    unsubscribe_endpoint: str = ""
    disconnect_endpoint: str = ""
    timeout: float = 1.0
    http_headers: list[str] = []
    """Headers of the client's WebSocket handshake forwarded to the connect endpoint."""


class AdminOptions(_Options, frozen=True):
    """The admin UI on the API port (``[admin]``); off without a password."""

    password: str = ""
    secret: str = ""
    """Signs session cookies; random per process when empty (logins end on restart)."""
    session_ttl: float = 8 * 3600.0


class Config(_Options, frozen=True):
    """The whole hub configuration.

    Build it with :func:`load_config`, which also applies the open defaults of
    ``dev``; a ``Config`` built directly takes its channel options as given.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    dev: bool = False
    allowed_origins: list[str] = []
    """Origins allowed to open WebSockets (``*`` wildcards). Empty: requests without an
    Origin header (non-browser clients) and same-host pages only. Others get HTTP 403."""
    tls_cert: str = ""
    tls_key: str = ""
    """PEM files: serve ``wss://`` directly, without a proxy in front."""
    demo: bool = False
    """Serve the demo app on the WebSocket port (``--dev`` turns it on)."""
    workers: int = 1
    """Processes sharing the ports (needs a shared broker such as Redis)."""
    log_level: str = "info"
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line)."""
    shutdown_timeout: float = 10.0
    gc_freeze: bool = True
    """Freeze long-lived objects out of the garbage collector's full collections
    (short pauses with many connections, see ``_gc.py``); the policy is process-wide."""
    token_hmac_secret_key: str = ""
    token_rsa_public_key: str = ""
    token_ecdsa_public_key: str = ""
    token_audience: str = ""
    token_issuer: str = ""
    history_max_publication_limit: int = 300
    client: ClientOptions = ClientOptions()
    http_api: HTTPAPIOptions = HTTPAPIOptions()
    proxy: ProxyOptions = ProxyOptions()
    broker: BrokerOptions = BrokerOptions()
    admin: AdminOptions = AdminOptions()
    channel: ChannelOptions = ChannelOptions()
    """Options of channels without a namespace (top-level keys in the file)."""
    namespaces: dict[str, ChannelOptions] = {}

    def __post_init__(self) -> None:
        if self.client.ping_interval <= self.client.pong_timeout:
            raise ConfigError("client.ping_interval must be greater than client.pong_timeout")
        for name in self.namespaces:
            if not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
                raise ConfigError(f"namespaces.{name}: a namespace name is letters, digits, _-.")
        broker = self.broker
        if broker.url != "memory" and not broker.url.startswith(_REDIS_SCHEMES):
            raise ConfigError(f"broker.url must be 'memory' or redis://..., got {broker.url!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.workers > 1 and broker.url == "memory":
            raise ConfigError(
                "workers > 1 needs a shared broker: the memory broker cannot connect "
                "processes (set broker.url = 'redis://...' or --broker)"
            )
        if broker.presence_update_interval >= broker.presence_ttl:
            raise ConfigError(
                "broker.presence_update_interval must be less than broker.presence_ttl"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        for key, value in _positive_numbers(self):
            if value <= 0:
                raise ConfigError(f"{key} must be greater than 0, got {value}")


def _positive_numbers(config: Config) -> list[tuple[str, float]]:
    client = config.client
    return [
        ("client.ping_interval", client.ping_interval),
        ("client.pong_timeout", client.pong_timeout),
        ("client.channel_limit", client.channel_limit),
        ("client.channel_max_length", client.channel_max_length),
        ("client.queue_max_size", client.queue_max_size),
        ("client.max_message_size", client.max_message_size),
        ("port", config.port or 1),  # 0 picks a free port
    ]


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
