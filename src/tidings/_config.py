"""Configuration: defaults, one TOML file, ``TIDINGS_*`` environment overrides, CLI flags.

Option names are Centrifugo's where one exists (``token_hmac_secret_key``,
``client.ping_interval``, channel options such as ``allow_subscribe_for_client``),
so its users feel at home. Channel options for channels without a namespace sit
at the top level, as in Centrifugo v5; each ``[namespaces.NAME]`` table holds the
full set for channels ``NAME:...`` (a namespace does not inherit the top level).

Defaults deny. ``dev=True`` opens everything for local development: anonymous
connections, subscribe/publish/presence/history for everyone, history with
recovery, presence and join/leave on every channel. A config file still wins.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

__all__ = ["ChannelOptions", "ClientOptions", "Config", "ConfigError", "load_config"]


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
CHANNEL_OPTION_NAMES = frozenset(ChannelOptions.__struct_fields__)
DEV_CHANNEL_OPTIONS: dict[str, Any] = {
    **{name: True for name in CHANNEL_OPTION_NAMES if name.startswith("allow_")},
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "history_size": 100,
    "history_ttl": 300,
    "force_recovery": True,
}
DEV_CLIENT_OPTIONS: dict[str, Any] = {"allow_anonymous_connect_without_token": True}
DEV_HTTP_API_OPTIONS: dict[str, Any] = {"insecure": True}
DEV_ADMIN_OPTIONS: dict[str, Any] = {"password": "admin"}
_DURATIONS = frozenset(
    {
        "shutdown_timeout",
        "client.ping_interval",
        "client.pong_timeout",
        "client.stale_close_delay",
        "client.expired_close_delay",
        "client.write_delay",
        "proxy.timeout",
        "broker.presence_ttl",
        "broker.presence_update_interval",
        "broker.history_meta_ttl",
        "broker.node_info_interval",
        "admin.session_ttl",
    }
)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults < file < environment < ``overrides``.

    ``overrides`` uses dotted keys (``{"port": 8001, "client.ping_interval": 5}``),
    as do environment variables: ``TIDINGS_CLIENT_PING_INTERVAL=5`` sets
    ``client.ping_interval``. Values from the environment are read as TOML values
    (``5``, ``true``, ``"text"``), falling back to the raw string.

    Raises:
        ConfigError: naming the file and the option that is wrong.
    """
    data: dict[str, Any] = {}
    source = "configuration"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for key, value in _from_env(os.environ if env is None else env).items():
        _set_dotted(data, key, value)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return _build(data, source)


def _build(data: dict[str, Any], source: str) -> Config:
    try:
        return _convert_config(dict(data))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _convert_config(data: dict[str, Any]) -> Config:
    dev = data.get("dev") is True
    if "channel" in data:
        raise ConfigError("put channel options at the top level, not in a [channel] table")
    defaults = DEV_CHANNEL_OPTIONS if dev else {}
    top = {name: data.pop(name) for name in list(data) if name in CHANNEL_OPTION_NAMES}
    namespaces = data.pop("namespaces", {})
    if not isinstance(namespaces, dict):
        raise ConfigError("namespaces must be a table of [namespaces.NAME] tables")
    if dev:
        data.setdefault("demo", True)
        data.setdefault("allowed_origins", ["*"])
        for table, dev_options in (
            ("client", DEV_CLIENT_OPTIONS),
            ("http_api", DEV_HTTP_API_OPTIONS),
            ("admin", DEV_ADMIN_OPTIONS),
        ):
            given = data.get(table, {})
            if isinstance(given, dict):
                data[table] = {**dev_options, **given}
    _parse_durations(data, "")
    config = _convert(data, Config, "")
    channel = _channel_options({**defaults, **top}, "")
    named = {}
    for name, options in namespaces.items():
        if not isinstance(options, dict):
            raise ConfigError(f"namespaces.{name} must be a table")
        named[name] = _channel_options({**defaults, **options}, f"namespaces.{name}.")
    try:
        return msgspec.structs.replace(config, channel=channel, namespaces=named)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def _channel_options(data: dict[str, Any], where: str) -> ChannelOptions:
    if isinstance(data.get("history_ttl"), str):
        data["history_ttl"] = _duration(f"{where}history_ttl", data["history_ttl"])
    return _convert(data, ChannelOptions, where)


def _convert(data: dict[str, Any], kind: type[T], where: str) -> T:
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_readable(str(exc), where)) from None


def _readable(message: str, where: str) -> str:
    """Turn msgspec's ``<text> - at `$.client.x``` into ``client.x: <text>``."""
    text, _, path = message.partition(" - at `$")
    key = where + path.rstrip("`").lstrip(".")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
    if unknown:
        parent = key.rstrip(".")
        return f"unknown option {parent + '.' if parent else ''}{unknown.group(1)}"
    return f"{key.rstrip('.')}: {text}" if key else text


def _parse_durations(data: dict[str, Any], prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _parse_durations(value, f"{dotted}.")
        elif isinstance(value, str) and dotted in _DURATIONS:
            data[key] = _duration(dotted, value)


def _duration(key: str, text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise ConfigError(f"{key}: expected a duration such as 25, '25s' or '500ms', got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _known_keys() -> dict[str, tuple[str, bool]]:
    """Environment variable name -> (dotted option key, whether the option is a string)."""
    keys: dict[str, tuple[str, bool]] = {}

    def add(prefix: str, struct: type[msgspec.Struct]) -> None:
        for info in msgspec.structs.fields(struct):
            if info.name in ("channel", "namespaces"):
                continue
            if isinstance(info.type, type) and issubclass(info.type, msgspec.Struct):
                add(f"{prefix}{info.name}.", info.type)
            else:
                dotted = prefix + info.name
                keys["TIDINGS_" + dotted.replace(".", "_").upper()] = (dotted, info.type is str)

    add("", Config)
    add("", ChannelOptions)
    return keys


_ENV_KEYS = _known_keys()


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in env.items():
        known = _ENV_KEYS.get(name)
        if known is not None:
            key, is_string = known
            values[key] = value if is_string else _env_value(value)
    return values


def _env_value(text: str) -> Any:
    """Read a non-string option from the environment as a TOML value (``5``, ``true``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for index, part in enumerate(parents):
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            table = ".".join(parents[: index + 1])
            raise ConfigError(f"{table} must be a table to set {key}")
    data[last] = value
