"""Read a Centrifugo v6 configuration file as tidings options.

Three tables say everything, in this order:

- :data:`CENTRIFUGO` is Centrifugo v6's configuration (its ``internal/configtypes``):
  every key with its default, so that a key unknown to Centrifugo is an error and a
  key left at its default needs no word;
- :data:`MAPPING` is what tidings makes of a key: the tidings option it sets, and how;
- every other key of :data:`CENTRIFUGO` is not supported: set to anything but its
  default, it gets one warning, naming it; except the keys of :data:`REFUSED`, which
  restrict who may do what in Centrifugo: ignoring one would allow more than the file
  says, so the file is refused instead.

A file is Centrifugo's when it has a key that only Centrifugo v6 has (:func:`marker`):
a top-level section tidings lacks (``http_server``, ``engine``, ``channel`` holding
more than channel options, ...), or, in ``client``, ``broker``, ``http_api`` or
``admin``, a key only Centrifugo has (``client.token``, ``broker.type``, ...).
Everything else is tidings' own layout.

As in Centrifugo, a section with ``enabled`` is not looked at (beyond its key names)
unless it is enabled, and an engine's or broker's ``redis`` only when its ``type`` is
``redis``. Sections tidings models only as "not supported" (:data:`ANY`) are not
checked key by key: each value set in them (other than ``false``, ``0``, ``""`` or
empty) gets its warning.

Keys absent from the file keep tidings' defaults, which differ from Centrifugo's in
places (``host`` 127.0.0.1, the server API on port 9000): see docs/how-to/centrifugo.md.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgspec

from ..options import ChannelOptions, Config
from .config import parse_duration

__all__ = [
    "CENTRIFUGO",
    "MAPPING",
    "Rule",
    "Translation",
    "marker",
    "markdown_table",
    "markdown_unsupported",
    "translate",
]


class _Any:
    """A section tidings does not model: every value set in it is unsupported."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()


@dataclasses.dataclass(frozen=True)
class ListOf:
    """A list of objects, each named by its ``name`` key (``channel.namespaces``)."""

    item: dict[str, Any]


_FEATURE: dict[str, Any] = {"enabled": False, "*": ANY}
"""A feature tidings lacks, off unless enabled (``*``: any other key, not checked)."""


def _stream(name: str) -> dict[str, Any]:
    """The keys of a streaming transport's section."""
    return {
        "enabled": False,
        "handler_prefix": f"/connection/{name}",
        "max_request_body_size": 65536,
        "*": ANY,
    }


_TLS: dict[str, Any] = {
    "enabled": False,
    "cert_pem": "",
    "key_pem": "",
    "server_ca_pem": "",
    "client_ca_pem": "",
    "insecure_skip_verify": False,
    "server_name": "",
}
_TOKEN: dict[str, Any] = {
    "hmac_secret_key": "",
    "hmac_previous_secret_key": "",
    "hmac_previous_secret_key_valid_until": 0,
    "rsa_public_key": "",
    "ecdsa_public_key": "",
    "jwks_public_endpoint": "",
    "audience": "",
    "audience_regex": "",
    "issuer": "",
    "issuer_regex": "",
    "user_id_claim": "",
    "insecure_skip_jwks_endpoint_safety_check": False,
}
_PROXY: dict[str, Any] = {
    "endpoint": "",
    "timeout": "1s",
    "http_headers": [],
    "grpc_metadata": [],
    "emulated_headers": [],
    "binary_encoding": False,
    "include_connection_meta": False,
    "http": ANY,
    "grpc": ANY,
}
_REDIS: dict[str, Any] = {
    "address": ["redis://127.0.0.1:6379"],
    "prefix": "centrifugo",
    "connect_timeout": "1s",
    "io_timeout": "4s",
    "db": 0,
    "user": "",
    "password": "",
    "client_name": "",
    "force_resp2": False,
    "cluster_address": [],
    "tls": _TLS,
    "sentinel_address": [],
    "sentinel_user": "",
    "sentinel_password": "",
    "sentinel_master_name": "",
    "sentinel_client_name": "",
    "sentinel_tls": _TLS,
    "replica_client": {"enabled": False},
    "history_use_lists": False,
}
_CHANNEL_OPTIONS: dict[str, Any] = {
    "presence": False,
    "join_leave": False,
    "force_push_join_leave": False,
    "map_clients_presence_channel_prefix": "",
    "map_users_presence_channel_prefix": "",
    "history_size": 0,
    "history_ttl": "0s",
    "history_meta_ttl": "0s",
    "force_positioning": False,
    "allow_positioning": False,
    "force_recovery": False,
    "allow_recovery": False,
    "force_recovery_mode": "",
    "auto_cache_recover": False,
    "allowed_delta_types": [],
    "allow_tags_filter": False,
    "delta_publish": False,
    "allow_subscribe_for_anonymous": False,
    "allow_subscribe_for_client": False,
    "allow_publish_for_anonymous": False,
    "allow_publish_for_subscriber": False,
    "allow_publish_for_client": False,
    "allow_presence_for_anonymous": False,
    "allow_presence_for_subscriber": False,
    "allow_presence_for_client": False,
    "allow_history_for_anonymous": False,
    "allow_history_for_subscriber": False,
    "allow_history_for_client": False,
    "allow_user_limited_channels": False,
    "channel_regex": "",
    "publication_data_format": "",
    "subscribe_proxy_enabled": False,
    "subscribe_proxy_name": "default",
    "publish_proxy_enabled": False,
    "publish_proxy_name": "default",
    "sub_refresh_proxy_enabled": False,
    "sub_refresh_proxy_name": "default",
    "subscribe_stream_proxy_enabled": False,
    "subscribe_stream_proxy_name": "default",
    "subscribe_stream_proxy_bidirectional": False,
    "subscription_type": "",
    "map": ANY,
    "shared_poll": ANY,
}

CENTRIFUGO: Final[dict[str, Any]] = {
    "http_server": {
        "address": "",
        "port": 8000,
        "internal_address": "",
        "internal_port": "",
        "tls": _TLS,
        "tls_autocert": _FEATURE,
        "tls_external": False,
        "internal_tls": _FEATURE,
        "http3": _FEATURE,
        "h2c_external": False,
    },
    "log": {"level": "info", "file": ""},
    "engine": {
        "type": "memory",
        "redis": {
            **_REDIS,
            "presence_ttl": "60s",
            "presence_hash_field_ttl": False,
            "presence_user_mapping": False,
        },
    },
    "broker": {
        "enabled": False,
        "type": "memory",
        "redis": _REDIS,
        "nats": {
            "url": "nats://localhost:4222",
            "prefix": "centrifugo",
            "dial_timeout": "1s",
            "write_timeout": "1s",
            "allow_wildcards": False,
            "raw_mode": ANY,
            "tls": _TLS,
        },
        "postgres": ANY,
        "redisnats": ANY,
    },
    "presence_manager": {"enabled": False, "type": "memory", "redis": ANY},
    "map_broker": {"type": "memory", "redis": ANY, "postgres": ANY},
    "controller": _FEATURE,
    "shared_poll": {
        "hmac_secret_key": "",
        "hmac_previous_secret_key": "",
        "hmac_previous_secret_key_valid_until": 0,
        "concurrency_limit": 0,
    },
    "client": {
        "proxy": {
            "connect": {"enabled": False, **_PROXY},
            "refresh": {"enabled": False, **_PROXY},
        },
        "allowed_origins": [],
        "token": _TOKEN,
        "subscription_token": {"enabled": False, **_TOKEN},
        "allow_anonymous_connect_without_token": False,
        "disallow_anonymous_connection_tokens": False,
        "ping_interval": "25s",
        "pong_timeout": "8s",
        "expired_close_delay": "25s",
        "expired_sub_close_delay": "25s",
        "stale_close_delay": "10s",
        "channel_limit": 128,
        "queue_max_size": 1048576,
        "presence_update_interval": "27s",
        "concurrency": 0,
        "channel_position_check_delay": "40s",
        "channel_position_max_time_lag": "0s",
        "connection_limit": 0,
        "user_connection_limit": 0,
        "connection_rate_limit": 0,
        "connect_include_server_time": False,
        "history_max_publication_limit": 300,
        "recovery_max_publication_limit": 300,
        "insecure_skip_token_signature_verify": False,
        "user_id_http_header": "",
        "insecure": False,
        "subscribe_to_user_personal_channel": _FEATURE,
        "connect_code_to_unidirectional_disconnect": _FEATURE,
    },
    "channel": {
        "proxy": {
            "subscribe": _PROXY,
            "publish": _PROXY,
            "sub_refresh": _PROXY,
            "subscribe_stream": _PROXY,
            "map_publish": _PROXY,
            "map_remove": _PROXY,
            "shared_poll_refresh": _PROXY,
        },
        "without_namespace": _CHANNEL_OPTIONS,
        "namespaces": ListOf({"name": "", **_CHANNEL_OPTIONS}),
        "history_meta_ttl": "720h",
        "publication_data_format": "",
        "max_length": 255,
        "private_prefix": "$",
        "namespace_boundary": ":",
        "user_boundary": "#",
        "user_separator": ",",
    },
    "rpc": {
        "proxy": _PROXY,
        "without_namespace": {"proxy_enabled": False, "proxy_name": "default"},
        "namespaces": ListOf({"name": "", "proxy_enabled": False, "proxy_name": "default"}),
        "ping": {"enabled": False, "method": "ping"},
        "namespace_boundary": ":",
    },
    "proxies": ListOf({"name": "", **_PROXY}),
    "http_api": {
        "disabled": False,
        "handler_prefix": "/api",
        "key": "",
        "error_mode": "",
        "external": False,
        "insecure": False,
    },
    "grpc_api": _FEATURE,
    "consumers": ListOf({"name": "", **_FEATURE}),
    "websocket": {
        "disabled": False,
        "handler_prefix": "/connection/websocket",
        "compression": False,
        "compression_min_size": 0,
        "compression_level": 1,
        "read_buffer_size": 0,
        "use_write_buffer_pool": False,
        "write_buffer_size": 0,
        "write_timeout": "1000ms",
        "message_size_limit": 65536,
        "decompressed_message_size_limit": 0,
    },
    "sse": _stream("sse"),
    "http_stream": _stream("http_stream"),
    "webtransport": _FEATURE,
    "uni_sse": _stream("uni_sse"),
    "uni_http_stream": _stream("uni_http_stream"),
    "uni_websocket": {
        "enabled": False,
        "handler_prefix": "/connection/uni_websocket",
        "message_size_limit": 65536,
        "*": ANY,
    },
    "uni_grpc": _FEATURE,
    "emulation": {"handler_prefix": "/emulation", "max_request_body_size": 65536},
    "admin": {
        "enabled": False,
        "handler_prefix": "",
        "password": "",
        "secret": "",
        "insecure": False,
        "web_path": "",
        "web_proxy_address": "",
        "external": False,
    },
    "prometheus": {
        "enabled": False,
        "handler_prefix": "/metrics",
        "instrument_http_handlers": False,
        "recovered_publications_histogram": False,
        "native_histograms": False,
    },
    "health": {"enabled": False, "handler_prefix": "/health"},
    "swagger": _FEATURE,
    "debug": _FEATURE,
    "init": _FEATURE,
    "opentelemetry": _FEATURE,
    "graphite": _FEATURE,
    "usage_stats": {"disabled": False},
    "node": {"name": "", "info_metrics_aggregate_interval": "60s"},
    "shutdown": {"timeout": "30s"},
    "pid_file": "",
    "enable_unreleased_features": False,
}
"""Centrifugo v6's configuration: every key and its default (sections are dicts)."""


# -- what tidings makes of each key ---------------------------------------------------------------


class _Skip(Exception):
    """The key sets no option (its value asks for tidings' behaviour)."""


class _Problem(Exception):
    """The key's value cannot be translated; the message says why."""


def _same(value: Any) -> Any:
    return value


def _duration(value: Any) -> Any:
    """Go durations are strings (``"25s"``, read by tidings); a number is nanoseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value != 0:
        raise _Problem(
            f"a number is nanoseconds for Centrifugo: write a duration string such as '{value}s'"
        )
    return value


def _address(value: Any) -> Any:
    return "0.0.0.0" if value == "" else value  # Centrifugo's "" is every interface


def _port(value: Any) -> Any:
    """``internal_port`` is a string in Centrifugo ("": the main port, which tidings cannot)."""
    if value in ("", None):
        raise _Skip
    try:
        return int(value)
    except ValueError:
        raise _Problem(f"expected a port number, got {value!r}") from None


def _negate(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Problem(f"expected true or false, got {value!r}")
    return not value


_LOG_LEVELS = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "error": "error",
    "fatal": "critical",
    "none": "critical",
}


def _log_level(value: Any) -> Any:
    if value not in _LOG_LEVELS:
        raise _Problem(f"expected one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return _LOG_LEVELS[value]


def _enables(value: Any) -> Any:
    """``enabled``: its section is read only when true, and sets nothing itself."""
    raise _Skip


def _table(value: Any) -> Any:
    """A namespace's name: its table, filled by the namespace's other keys."""
    return {}


@dataclasses.dataclass(frozen=True)
class Rule:
    """What tidings makes of one Centrifugo key."""

    option: str
    """The tidings option it sets (``NAME``: the namespace's name); empty: none."""
    convert: Callable[[Any], Any] | None = _same
    """Centrifugo value -> tidings value; ``None``: read with other keys (see ``note``)."""
    note: str = ""


def _channel_rules() -> dict[str, Rule]:
    """Channel options tidings has take the same name, without and within namespaces."""
    rules: dict[str, Rule] = {}
    names = [name for name in ChannelOptions.__struct_fields__ if name in _CHANNEL_OPTIONS]
    for name in names:
        convert = _duration if name.endswith("_ttl") else _same
        rules[f"channel.without_namespace.{name}"] = Rule(name, convert)
    rules["channel.namespaces[].name"] = Rule("namespaces.NAME", _table)
    for name in names:
        convert = _duration if name.endswith("_ttl") else _same
        rules[f"channel.namespaces[].{name}"] = Rule(f"namespaces.NAME.{name}", convert)
    return rules


_REDIS_NOTE = "with the other `redis` keys, when the type is `redis`"
_CLUSTER_NOTE = "a Redis Cluster: `redis+cluster://` and the seed addresses"
_PROXY_NOTE = (
    "for the namespaces that set `{event}_proxy_enabled`; tidings asks it for every channel"
)
_RPC_NOTE = "when `rpc.without_namespace` or a `rpc.namespaces[]` sets `proxy_enabled`"

MAPPING: Final[dict[str, Rule]] = {
    "http_server.address": Rule("host", _address, '`""` (every interface): `0.0.0.0`'),
    "http_server.port": Rule("port"),
    "http_server.internal_address": Rule("http_api.host", _address),
    "http_server.internal_port": Rule("http_api.port", _port, "a string in Centrifugo"),
    "http_server.tls.enabled": Rule("tls_cert, tls_key", _enables, "`true`: serve `wss://`"),
    "http_server.tls.cert_pem": Rule("tls_cert", None, "a file path (not PEM text)"),
    "http_server.tls.key_pem": Rule("tls_key", None, "a file path (not PEM text)"),
    "log.level": Rule("log_level", _log_level, "`trace`: `debug`, `warn`: `warning`"),
    "engine.type": Rule("broker.url", None, "`memory` or `redis`"),
    "engine.redis.address": Rule(
        "broker.url", None, "one address (`redis+cluster://` too): " + _REDIS_NOTE
    ),
    "engine.redis.cluster_address": Rule("broker.url", None, _CLUSTER_NOTE),
    "engine.redis.db": Rule("broker.url", None, _REDIS_NOTE),
    "engine.redis.user": Rule("broker.url", None, _REDIS_NOTE),
    "engine.redis.password": Rule("broker.url", None, _REDIS_NOTE),
    "engine.redis.tls.enabled": Rule("broker.url", None, "`rediss://`"),
    "engine.redis.prefix": Rule("broker.prefix"),
    "engine.redis.presence_ttl": Rule("broker.presence_ttl", _duration),
    "broker.enabled": Rule("broker.url", _enables, "`true`: `broker` wins over `engine`"),
    "broker.type": Rule("broker.url", None, "`memory`, `redis` or `nats`"),
    "broker.nats.url": Rule("broker.url", None, "when the type is `nats`"),
    "broker.nats.prefix": Rule("broker.prefix", None, "when the type is `nats`"),
    "broker.redis.address": Rule(
        "broker.url", None, "one address (`redis+cluster://` too): " + _REDIS_NOTE
    ),
    "broker.redis.cluster_address": Rule("broker.url", None, _CLUSTER_NOTE),
    "broker.redis.db": Rule("broker.url", None, _REDIS_NOTE),
    "broker.redis.user": Rule("broker.url", None, _REDIS_NOTE),
    "broker.redis.password": Rule("broker.url", None, _REDIS_NOTE),
    "broker.redis.tls.enabled": Rule("broker.url", None, "`rediss://`"),
    "broker.redis.prefix": Rule("broker.prefix"),
    "client.token.hmac_secret_key": Rule("token_hmac_secret_key"),
    "client.token.rsa_public_key": Rule("token_rsa_public_key"),
    "client.token.ecdsa_public_key": Rule("token_ecdsa_public_key"),
    "client.token.audience": Rule("token_audience"),
    "client.token.issuer": Rule("token_issuer"),
    "client.allowed_origins": Rule("allowed_origins"),
    "client.allow_anonymous_connect_without_token": Rule(
        "client.allow_anonymous_connect_without_token"
    ),
    "client.ping_interval": Rule("client.ping_interval", _duration),
    "client.pong_timeout": Rule("client.pong_timeout", _duration),
    "client.expired_close_delay": Rule("client.expired_close_delay", _duration),
    "client.expired_sub_close_delay": Rule("client.expired_sub_close_delay", _duration),
    "client.stale_close_delay": Rule("client.stale_close_delay", _duration),
    "client.channel_limit": Rule("client.channel_limit"),
    "client.queue_max_size": Rule("client.queue_max_size"),
    "client.connection_limit": Rule("client.connection_limit"),
    "client.user_connection_limit": Rule("client.user_connection_limit"),
    "client.connection_rate_limit": Rule("client.connection_rate_limit"),
    "client.presence_update_interval": Rule("broker.presence_update_interval", _duration),
    "client.history_max_publication_limit": Rule("history_max_publication_limit"),
    "client.proxy.connect.enabled": Rule("proxy.connect_endpoint", _enables, "`true`: used"),
    "client.proxy.connect.endpoint": Rule("proxy.connect_endpoint"),
    "client.proxy.connect.timeout": Rule("proxy.timeout", _duration, "one for every proxy"),
    "client.proxy.connect.http_headers": Rule("proxy.http_headers"),
    "client.proxy.refresh.enabled": Rule("proxy.refresh_endpoint", _enables, "`true`: used"),
    "client.proxy.refresh.endpoint": Rule("proxy.refresh_endpoint"),
    "client.proxy.refresh.timeout": Rule("proxy.timeout", _duration, "one for every proxy"),
    **_channel_rules(),
    "channel.without_namespace.subscribe_proxy_enabled": Rule("proxy.subscribe_endpoint", None),
    "channel.without_namespace.subscribe_proxy_name": Rule("proxy.subscribe_endpoint", None),
    "channel.without_namespace.publish_proxy_enabled": Rule("proxy.publish_endpoint", None),
    "channel.without_namespace.publish_proxy_name": Rule("proxy.publish_endpoint", None),
    "channel.namespaces[].subscribe_proxy_enabled": Rule("proxy.subscribe_endpoint", None),
    "channel.namespaces[].subscribe_proxy_name": Rule("proxy.subscribe_endpoint", None),
    "channel.namespaces[].publish_proxy_enabled": Rule("proxy.publish_endpoint", None),
    "channel.namespaces[].publish_proxy_name": Rule("proxy.publish_endpoint", None),
    "channel.without_namespace.sub_refresh_proxy_enabled": Rule("proxy.sub_refresh_endpoint", None),
    "channel.without_namespace.sub_refresh_proxy_name": Rule("proxy.sub_refresh_endpoint", None),
    "channel.namespaces[].sub_refresh_proxy_enabled": Rule("proxy.sub_refresh_endpoint", None),
    "channel.namespaces[].sub_refresh_proxy_name": Rule("proxy.sub_refresh_endpoint", None),
    "channel.proxy.subscribe.endpoint": Rule(
        "proxy.subscribe_endpoint", None, _PROXY_NOTE.format(event="subscribe")
    ),
    "channel.proxy.subscribe.timeout": Rule("proxy.timeout", None, "one for every proxy"),
    "channel.proxy.publish.endpoint": Rule(
        "proxy.publish_endpoint", None, _PROXY_NOTE.format(event="publish")
    ),
    "channel.proxy.publish.timeout": Rule("proxy.timeout", None, "one for every proxy"),
    "channel.proxy.sub_refresh.endpoint": Rule(
        "proxy.sub_refresh_endpoint", None, _PROXY_NOTE.format(event="sub_refresh")
    ),
    "channel.proxy.sub_refresh.timeout": Rule("proxy.timeout", None, "one for every proxy"),
    "channel.max_length": Rule("client.channel_max_length"),
    "channel.history_meta_ttl": Rule("broker.history_meta_ttl", _duration),
    "rpc.proxy.endpoint": Rule("proxy.rpc_endpoint", None, _RPC_NOTE),
    "rpc.proxy.timeout": Rule("proxy.timeout", None, "one for every proxy"),
    "rpc.without_namespace.proxy_enabled": Rule("proxy.rpc_endpoint", None),
    "rpc.without_namespace.proxy_name": Rule("proxy.rpc_endpoint", None),
    "rpc.namespaces[].name": Rule("proxy.rpc_endpoint", None),
    "rpc.namespaces[].proxy_enabled": Rule("proxy.rpc_endpoint", None),
    "rpc.namespaces[].proxy_name": Rule("proxy.rpc_endpoint", None),
    "proxies[].name": Rule("proxy.*_endpoint", None, "the proxy a `*_proxy_name` names"),
    "proxies[].endpoint": Rule("proxy.*_endpoint", None, "the proxy a `*_proxy_name` names"),
    "proxies[].timeout": Rule("proxy.timeout", None, "one for every proxy"),
    "http_api.key": Rule("http_api.key"),
    "http_api.insecure": Rule("http_api.insecure"),
    "http_api.disabled": Rule("http_api.enabled", _negate, "negated"),
    "admin.enabled": Rule("admin.password", _enables, "`true`: the admin UI (with a password)"),
    "admin.password": Rule("admin.password"),
    "admin.secret": Rule("admin.secret"),
    "websocket.message_size_limit": Rule("client.max_message_size"),
    **{
        f"{name}.{key}": Rule(f"{name}.{key}")
        for name in ("http_stream", "sse", "uni_http_stream", "uni_sse")
        for key in ("enabled", "max_request_body_size")
    },
    "uni_websocket.enabled": Rule("uni_websocket.enabled"),
    "emulation.max_request_body_size": Rule("emulation.max_request_body_size"),
    "websocket.compression": Rule("websocket.compression"),
    "websocket.compression_level": Rule("websocket.compression_level"),
    "websocket.compression_min_size": Rule("websocket.compression_min_size"),
    "websocket.decompressed_message_size_limit": Rule("websocket.decompressed_message_size_limit"),
    "shutdown.timeout": Rule("shutdown_timeout", _duration),
    "prometheus.enabled": Rule("", _enables, "always on: `/metrics` on the API port"),
    "health.enabled": Rule("", _enables, "always on: `/health` on both ports"),
    "usage_stats.disabled": Rule("", _enables, "tidings sends no usage statistics"),
}
"""Centrifugo v6 key (``[]``: each item of a list) -> what tidings makes of it."""


# -- telling the layouts apart --------------------------------------------------------------------


REFUSED: Final[dict[str, str]] = {
    "client.token.audience_regex": "tokens would be accepted whatever their audience",
    "client.token.issuer_regex": "tokens would be accepted whatever their issuer",
    "client.token.user_id_claim": "the user would be read from `sub` instead",
    "client.subscription_token.enabled": (
        "subscription tokens would be checked with the connection token keys"
    ),
    "client.disallow_anonymous_connection_tokens": "tokens without a user would be accepted",
    "channel.private_prefix": "tidings' private channels start with `$` alone",
    "channel.namespace_boundary": "tidings' namespaces end at `:` alone",
    "channel.without_namespace.channel_regex": "any channel name would be accepted",
    "channel.namespaces[].channel_regex": "any channel name would be accepted",
    "websocket.disabled": "tidings always serves WebSocket",
}
"""Unsupported keys that restrict access in Centrifugo, and what ignoring one would
allow: set to anything but their default, the file is refused."""


def _tidings_fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(info.name for info in msgspec.structs.fields(kind))


_TIDINGS_TOP = (_tidings_fields(Config) - {"channel"}) | _tidings_fields(ChannelOptions)
_SHARED_SECTIONS = {
    info.name: _tidings_fields(info.type)
    for info in msgspec.structs.fields(Config)
    if info.name in CENTRIFUGO and isinstance(info.type, type)
    if issubclass(info.type, msgspec.Struct) and info.name != "channel"
}
"""Sections both layouts have (``client``, ``broker``, ...) -> tidings' keys in them."""


def marker(data: Mapping[str, Any]) -> str | None:
    """The first key of ``data`` that only a Centrifugo v6 file has; None: tidings' layout."""
    for key, value in data.items():
        if key == "channel":
            # tidings refuses a [channel] of channel options, with a hint of its own
            if isinstance(value, dict) and not set(value) <= _tidings_fields(ChannelOptions):
                return key
        elif key in CENTRIFUGO and key not in _TIDINGS_TOP:
            return key
        elif key in _SHARED_SECTIONS and isinstance(value, dict):
            for name in value:
                if name in CENTRIFUGO[key] and name not in _SHARED_SECTIONS[key]:
                    return f"{key}.{name}"
    return None


# -- translating ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Translation:
    """A Centrifugo v6 file as tidings options."""

    options: dict[str, Any]
    """Nested, as a tidings file holds them (channel options at the top level)."""
    warnings: list[str]
    """One per key tidings does not support, naming it."""
    problems: list[str]
    """Keys unknown to Centrifugo, values that cannot be translated."""
    origins: dict[str, str]
    """tidings option -> the Centrifugo key it came from (for messages)."""


@dataclasses.dataclass
class _Translator:
    marker: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    origins: dict[str, str] = dataclasses.field(default_factory=dict)

    def set(self, option: str, value: Any, origin: str, name: str = "") -> None:
        """Set ``option`` (``NAME``: the namespace ``name``), once."""
        *tables, last = [name if part == "NAME" else part for part in option.split(".")]
        parent = self.options
        for table in tables:
            parent = parent.setdefault(table, {})
        dotted = ".".join([*tables, last])
        if isinstance(value, dict):  # a namespace: its options may be there already
            parent.setdefault(last, value)
            return
        previous = self.origins.get(dotted)
        if previous is not None and parent[last] != value:
            self.problems.append(
                f"{previous} and {origin} both set {dotted}, to {parent[last]!r} and"
                f" {value!r}: tidings has one {dotted}"
            )
            return
        parent[last] = value
        self.origins[dotted] = origin

    def walk(self, value: Any, schema: Any, key: str, generic: str, name: str = "") -> None:
        """Check ``value`` (at ``key``) against ``schema``; map or warn about each leaf."""
        if value is None:
            return  # JSON null: unset
        if schema is ANY:
            self.unsupported(value, key)
        elif isinstance(schema, ListOf):
            self.walk_list(value, schema, key, generic)
        elif isinstance(schema, dict):
            self.walk_section(value, schema, key, generic, name)
        else:
            self.leaf(value, schema, key, generic, name)

    def walk_section(
        self, value: Any, schema: dict[str, Any], key: str, generic: str, name: str
    ) -> None:
        if not isinstance(value, dict):
            self.problems.append(f"{key} must be an object, got {value!r}")
            return
        prefix, generic_prefix = (f"{key}." if key else ""), (f"{generic}." if generic else "")
        for child in value:
            if child not in schema and "*" not in schema:
                self.problems.append(self.unknown(prefix + child))
        if "enabled" in schema and value.get("enabled") is not True:
            return  # Centrifugo does not look at a section that is not enabled
        for child, item in value.items():
            if "type" in schema and child in ("redis", "nats", "postgres", "redisnats"):
                if value.get("type", schema["type"]) != child:
                    continue  # another type's settings: Centrifugo does not read them
            if child in schema or "*" in schema:
                sub = schema.get(child, ANY)
                self.walk(item, sub, prefix + child, generic_prefix + child, name)

    def walk_list(self, value: Any, schema: ListOf, key: str, generic: str) -> None:
        if not isinstance(value, list):
            self.problems.append(f"{key} must be a list of objects, got {value!r}")
            return
        seen: set[str] = set()
        for index, item in enumerate(value):
            name = item.get("name") if isinstance(item, dict) else None
            label = f"{key}[{name if isinstance(name, str) and name else index}]"
            if not isinstance(name, str) or not name:
                self.problems.append(f"{label} needs a name")
            elif name in seen:
                self.problems.append(f"{label}: a second item named {name!r}")
            else:
                seen.add(name)
                self.walk(item, schema.item, label, f"{generic}[]", name)

    def leaf(self, value: Any, default: Any, key: str, generic: str, name: str) -> None:
        rule = MAPPING.get(generic)
        if rule is None:
            if generic.endswith("[].name"):
                return  # names the item, whose other keys are warned about
            if _is_default(value, default):
                return
            if generic in REFUSED:
                self.problems.append(
                    f"{key}: not supported by tidings, and ignoring it would open more than "
                    f"the file says ({REFUSED[generic]}); remove it to accept that"
                )
            else:
                self.warnings.append(f"{key}: not supported by tidings, ignored")
            return
        if rule.convert is None:
            return  # read with other keys, below
        try:
            converted = rule.convert(value)
        except _Skip:
            return
        except _Problem as exc:
            self.problems.append(f"{key}: {exc}")
            return
        self.set(rule.option, converted, key, name)

    def unsupported(self, value: Any, key: str) -> None:
        """Warn about each value set in a section tidings does not model."""
        for leaf, item in _leaves(value, key):
            if item not in (None, False, 0, "", [], {}):
                self.warnings.append(f"{leaf}: not supported by tidings, ignored")

    def unknown(self, key: str) -> str:
        return (
            f"unknown Centrifugo v6 option {key} (the file is read as a Centrifugo v6"
            f" configuration because of its key {self.marker})"
        )


def _leaves(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        if value.get("enabled") is False:
            return
        for child, item in value.items():
            yield from _leaves(item, f"{key}.{child}")
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{key}[{item.get('name', index)}]")
    else:
        yield key, value


def _is_default(value: Any, default: Any) -> bool:
    if value == default:
        return True
    if isinstance(value, str) and isinstance(default, str):
        try:
            return parse_duration(value) == parse_duration(default)
        except ValueError:
            return False
    return False


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def translate(data: Mapping[str, Any], found: str) -> Translation:
    """Centrifugo v6 configuration ``data`` (told by its key ``found``) as tidings options."""
    translator = _Translator(found)
    for key, value in data.items():
        if key not in CENTRIFUGO:
            translator.problems.append(translator.unknown(key))
        else:
            translator.walk(value, CENTRIFUGO[key], key, key)
    for combine in (_broker, _tls, _channel_proxies, _rpc_proxy):
        try:
            combine(data, translator)
        except _Problem as exc:
            translator.problems.append(str(exc))
    return Translation(
        translator.options, translator.warnings, translator.problems, translator.origins
    )


def _section(data: Mapping[str, Any], dotted: str) -> dict[str, Any]:
    value = _lookup(data, dotted)
    return value if isinstance(value, dict) else {}


def _broker(data: Mapping[str, Any], translator: _Translator) -> None:
    """``engine`` (or ``broker``, when enabled) -> ``broker.url``."""
    where = "broker" if _section(data, "broker").get("enabled") is True else "engine"
    section = _section(data, where)
    kind = section.get("type")
    if kind is None or kind == "memory":
        if kind is not None:
            translator.set("broker.url", "memory", f"{where}.type")
        return
    if kind == "nats" and where == "broker":
        nats = _section(data, "broker.nats")
        url, prefix = nats.get("url", "nats://localhost:4222"), nats.get("prefix", "centrifugo")
        if not isinstance(url, str) or not isinstance(prefix, str):
            raise _Problem("broker.nats: url and prefix are strings")
        translator.set("broker.url", url, "broker.nats.url")
        translator.set("broker.prefix", prefix, "broker.nats.prefix")
        return
    if kind != "redis":
        known = (
            "memory, redis and nats brokers" if where == "broker" else "memory and redis engines"
        )
        raise _Problem(f"{where}.type: tidings has the {known}, not {kind!r}")
    redis = _section(data, f"{where}.redis")
    cluster = redis.get("cluster_address") or []
    if isinstance(cluster, str):
        cluster = [cluster]
    if cluster:
        if not all(isinstance(seed, str) for seed in cluster):
            raise _Problem(f"{where}.redis.cluster_address: addresses are strings")
        seeds = ",".join(seed.partition("://")[2] or seed for seed in cluster)
        translator.set("broker.url", f"redis+cluster://{seeds}", f"{where}.redis.cluster_address")
        return
    addresses = redis.get("address", _REDIS["address"])
    if isinstance(addresses, str):
        addresses = [addresses]
    if not isinstance(addresses, list) or len(addresses) != 1 or not isinstance(addresses[0], str):
        raise _Problem(f"{where}.redis.address: tidings uses one Redis, got {addresses!r}")
    if addresses[0].startswith("redis+cluster://"):
        translator.set("broker.url", addresses[0], f"{where}.redis.address")
        return
    user, password, db = redis.get("user", ""), redis.get("password", ""), redis.get("db", 0)
    if not isinstance(user, str) or not isinstance(password, str) or not isinstance(db, int):
        raise _Problem(f"{where}.redis: user and password are strings, db a number")
    url = urllib.parse.urlsplit(
        addresses[0] if "://" in addresses[0] else f"redis://{addresses[0]}"
    )
    netloc = url.netloc
    if "@" not in netloc and (user or password):
        credentials = urllib.parse.quote(user, safe="")
        if password:
            credentials += ":" + urllib.parse.quote(password, safe="")
        netloc = f"{credentials}@{netloc}"
    path = url.path if url.path.strip("/") else f"/{db}"
    tls = _section(data, f"{where}.redis.tls").get("enabled") is True
    scheme = "rediss" if tls and url.scheme == "redis" else url.scheme
    translator.set(
        "broker.url", urllib.parse.urlunsplit((scheme, netloc, path, url.query, "")), where
    )


def _tls(data: Mapping[str, Any], translator: _Translator) -> None:
    """``http_server.tls`` -> ``tls_cert`` / ``tls_key``: files, which tidings loads itself."""
    tls = _section(data, "http_server.tls")
    if tls.get("enabled") is not True:
        return
    for key, option in (("cert_pem", "tls_cert"), ("key_pem", "tls_key")):
        value = tls.get(key, "")
        if not isinstance(value, str) or not value or "-----BEGIN" in value:
            raise _Problem(
                f"http_server.tls.{key}: tidings reads TLS files: give the path of a PEM file"
            )
        translator.set(option, value, f"http_server.tls.{key}")


def _items(data: Mapping[str, Any], dotted: str) -> list[dict[str, Any]]:
    """The named objects of a list (the others are reported by the walk)."""
    items = _lookup(data, dotted)
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)]


def _proxy_users(
    data: Mapping[str, Any],
    scopes: list[tuple[str, dict[str, Any]]],
    default: dict[str, Any],
    enabled: str,
    name: str,
) -> tuple[dict[tuple[str, Any], list[str]], list[str]]:
    """(endpoint, timeout) -> the scopes that ask it; the scopes that ask no proxy.

    ``enabled`` / ``name`` are the scopes' keys turning the proxy on and naming it
    (``default``: the ``default`` proxy, else one of ``proxies``).
    """
    named = {item["name"]: item for item in _items(data, "proxies")}
    used: dict[tuple[str, Any], list[str]] = {}
    unused: list[str] = []
    for scope, options in scopes:
        if options.get(enabled) is not True:
            unused.append(scope)
            continue
        proxy_name = options.get(name) or "default"
        if proxy_name == "default":
            proxy = default
        elif proxy_name in named:
            proxy = named[proxy_name]
        else:
            raise _Problem(f"{scope}.{name}: no proxy named {proxy_name!r} in proxies")
        endpoint = proxy.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise _Problem(f"{scope}.{enabled}: the proxy {proxy_name!r} has no endpoint")
        used.setdefault((endpoint, proxy.get("timeout", "1s")), []).append(scope)
    return used, unused


def _use_proxy(
    translator: _Translator,
    option: str,
    used: dict[tuple[str, Any], list[str]],
    unused: list[str],
) -> None:
    if not used:
        return
    endpoints = {endpoint for endpoint, _ in used}
    if len(endpoints) > 1:
        raise _Problem(
            f"tidings has one {option} for every channel; the Centrifugo file uses "
            + ", ".join(
                f"{endpoint} ({', '.join(scopes)})" for (endpoint, _), scopes in used.items()
            )
        )
    (endpoint, timeout), *others = used
    scopes = [scope for users in used.values() for scope in users]
    if any(not _is_default(other, timeout) for _, other in others):
        raise _Problem(f"{', '.join(scopes)}: the proxies of {option} have different timeouts")
    translator.set(option, endpoint, scopes[0])
    if not _is_default(timeout, "1s"):
        translator.set("proxy.timeout", _duration(timeout), f"the timeout of {scopes[0]}'s proxy")
    if unused:
        translator.warnings.append(
            f"{', '.join(unused)}: not asking the proxy is not supported: tidings asks"
            f" {option} ({endpoint}) for every channel"
        )


def _scopes(data: Mapping[str, Any], section: str) -> list[tuple[str, dict[str, Any]]]:
    """``without_namespace`` and each of ``namespaces``, of ``channel`` or ``rpc``."""
    scopes = [(f"{section}.without_namespace", _section(data, f"{section}.without_namespace"))]
    for item in _items(data, f"{section}.namespaces"):
        scopes.append((f"{section}.namespaces[{item['name']}]", item))
    return scopes


def _channel_proxies(data: Mapping[str, Any], translator: _Translator) -> None:
    """``*_proxy_enabled`` of the namespaces -> ``proxy.subscribe_endpoint``, ``publish``,
    ``sub_refresh``."""
    for event in ("subscribe", "publish", "sub_refresh"):
        used, unused = _proxy_users(
            data,
            _scopes(data, "channel"),
            _section(data, f"channel.proxy.{event}"),
            f"{event}_proxy_enabled",
            f"{event}_proxy_name",
        )
        _use_proxy(translator, f"proxy.{event}_endpoint", used, unused)


def _rpc_proxy(data: Mapping[str, Any], translator: _Translator) -> None:
    """``rpc`` -> ``proxy.rpc_endpoint`` (tidings' RPC has no namespaces)."""
    used, unused = _proxy_users(
        data, _scopes(data, "rpc"), _section(data, "rpc.proxy"), "proxy_enabled", "proxy_name"
    )
    _use_proxy(translator, "proxy.rpc_endpoint", used, unused)


# -- the tables in markdown (docs/how-to/centrifugo.md holds them; a test compares) ------------


def markdown_table() -> str:
    """:data:`MAPPING` as a markdown table."""
    lines = ["| Centrifugo v6 | tidings | notes |", "|---|---|---|"]
    for key, rule in MAPPING.items():
        option = ", ".join(f"`{part}`" for part in rule.option.split(", ")) if rule.option else ""
        lines.append(f"| `{key}` | {option or '—'} | {rule.note} |")
    return "\n".join(lines)


def markdown_unsupported() -> str:
    """The keys of :data:`CENTRIFUGO` tidings does not support, as a markdown list."""
    keys: dict[str, list[str]] = {}
    for key in _unsupported(CENTRIFUGO, ""):
        keys.setdefault(key.split(".")[0].split("[")[0], []).append(key)
    return "\n".join(f"- {', '.join(f'`{key}`' for key in section)}" for section in keys.values())


def markdown_refused() -> str:
    """The keys of :data:`REFUSED`, as a markdown table."""
    rows = ["| key | ignoring it would mean |", "|---|---|"]
    rows += [f"| `{key}` | {why} |" for key, why in REFUSED.items()]
    return "\n".join(rows)


def _unsupported(schema: Any, prefix: str) -> Iterator[str]:
    if schema is ANY:
        yield f"{prefix}.*"
    elif isinstance(schema, ListOf):
        yield from _unsupported(schema.item, f"{prefix}[]")
    elif isinstance(schema, dict):
        if schema.get("*") is ANY:  # a whole feature tidings lacks
            yield prefix
            return
        for key, sub in schema.items():
            yield from _unsupported(sub, f"{prefix}.{key}" if prefix else key)
    elif prefix not in MAPPING:
        yield prefix
