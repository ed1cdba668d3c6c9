"""Configuration: defaults, one TOML file, ``TIDINGS_*`` environment overrides, CLI flags.

The schema (option names, defaults, bounds) is :mod:`tidings.options`. Channel
options for channels without a namespace sit at the top level, as in Centrifugo
v5; each ``[namespaces.NAME]`` table holds the full set for channels
``NAME:...`` (a namespace does not inherit the top level).

Defaults deny. ``dev=True`` opens everything for local development: anonymous
connections, subscribe/publish/presence/history for everyone, history with
recovery, presence and join/leave on every channel. A config file still wins.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..options import ChannelOptions, Config, ConfigError, bound_message

__all__ = ["load_config"]

T = TypeVar("T")


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
"""Applied only without an ``http_api.key``: a key the user configured is always checked."""
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
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults < file < environment < ``overrides``.

    ``overrides`` uses dotted keys (``{"port": 8001, "client.ping_interval": 5}``),
    as do environment variables: ``TIDINGS_CLIENT_PING_INTERVAL=5`` sets
    ``client.ping_interval``. Values from the environment are read as TOML values
    (``5``, ``true``, ``"text"``), falling back to the raw string. A ``TIDINGS_*``
    variable that names no option is an error (a typo would otherwise go unnoticed).

    ``defaults`` (dotted keys too) replace the built-in defaults: the file, the
    environment and ``overrides`` still win over them (``tidings serve`` turns
    ``gc_freeze`` on this way).

    Raises:
        ConfigError: naming the file (or the variable) and the option that is wrong.
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
    for key, value in (defaults or {}).items():
        _set_default(data, key, value)
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
            if table == "http_api" and isinstance(given, dict) and given.get("key"):
                continue  # --dev must not open an API whose key the user configured
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
        raise ConfigError(_readable(str(exc), where, data)) from None


def _readable(message: str, where: str, data: Mapping[str, Any] | None = None) -> str:
    """Turn msgspec's ``<text> - at `$.client.x``` into ``client.x: <text>``.

    A value out of the bounds of its option type (``Expected `float` > 0.0``) reads
    ``client.x must be greater than 0, got 0``, the value found in ``data``.
    """
    text, _, path = message.partition(" - at `$")
    path = path.rstrip("`").lstrip(".")
    key = where + path
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
    if unknown:
        parent = key.rstrip(".")
        return f"unknown option {parent + '.' if parent else ''}{unknown.group(1)}"
    bound = re.fullmatch(r"Expected `(?:int|float)` (>=|>|<=|<) (\S+)", text)
    if bound and key:
        words = bound_message(key, bound.group(1), float(bound.group(2)))
        found = _lookup(data, path)
        return words if found is None else f"{words}, got {found[0]!r}"
    return f"{key.rstrip('.')}: {text}" if key else text


def _lookup(data: Mapping[str, Any] | None, path: str) -> tuple[Any] | None:
    """The value at msgspec's ``client.x`` path in ``data``, if it is there."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return (value,)


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
    unknown: list[str] = []
    for name, value in env.items():
        known = _ENV_KEYS.get(name)
        if known is not None:
            key, is_string = known
            values[key] = value if is_string else _env_value(value)
        elif name.upper().startswith("TIDINGS_"):
            unknown.append(name)
    if unknown:
        raise ConfigError("; ".join(_unknown_variable(name) for name in sorted(unknown)))
    return values


def _unknown_variable(name: str) -> str:
    message = f"unknown environment variable {name}: no option has this name"
    # compare what follows TIDINGS_, which every name shares
    options = {known[len("TIDINGS_") :]: known for known in _ENV_KEYS}
    close = difflib.get_close_matches(name[len("TIDINGS_") :].upper(), options, n=1, cutoff=0.7)
    return f"{message} (did you mean {options[close[0]]}?)" if close else message


def _env_value(text: str) -> Any:
    """Read a non-string option from the environment as a TOML value (``5``, ``true``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_default(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless the file set it (or a table on its way is not a table)."""
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            return  # the file's value of the wrong type is reported when converting
    data.setdefault(last, value)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for index, part in enumerate(parents):
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            table = ".".join(parents[: index + 1])
            raise ConfigError(f"{table} must be a table to set {key}")
    data[last] = value
