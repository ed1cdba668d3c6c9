"""Configuration: defaults, one file, ``TIDINGS_*`` environment overrides, CLI flags.

The schema (option names, defaults, bounds) is :mod:`tidings.options`. The file is
TOML, JSON (``.json``) or YAML (``.yaml``, ``.yml``), in one of two layouts:

- tidings' own: channel options for channels without a namespace sit at the top
  level, as in Centrifugo v5; each ``[namespaces.NAME]`` table holds the full set
  for channels ``NAME:...`` (a namespace does not inherit the top level);
- Centrifugo v6's nested one (``client.token.hmac_secret_key``,
  ``channel.namespaces``, ...), told apart by its keys and translated by
  :mod:`tidings.app.centrifugo`, which warns about every key tidings does not support.

Every problem of a file is reported at once (:class:`ConfigProblems`); those between
options (``client.ping_interval`` against ``client.pong_timeout``), which ``Config``
checks, once every option is valid by itself.

Defaults deny. ``dev=True`` opens everything for local development: anonymous
connections, subscribe/publish/presence/history for everyone, history with
recovery, presence and join/leave on every channel. A config file still wins.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from .._docstrings import field_docs
from ..options import ChannelOptions, Config, ConfigError, bound_message

__all__ = ["ConfigProblems", "generate_config", "load_config", "parse_duration", "read_config"]

T = TypeVar("T")

logger = logging.getLogger("tidings.config")


class ConfigProblems(ConfigError):
    """Every problem found in a configuration, each naming its option."""

    def __init__(self, source: str, problems: list[str], warnings: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems
        self.warnings = warnings
        """Keys of a Centrifugo file tidings does not support (see :func:`read_config`)."""


CHANNEL_OPTION_NAMES = frozenset(ChannelOptions.__struct_fields__)
DEV_CHANNEL_OPTIONS: dict[str, Any] = {
    **{name: True for name in CHANNEL_OPTION_NAMES if name.startswith("allow_")},
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "history_size": 100,
    "history_ttl": 300,
    "force_recovery": True,
    "allowed_delta_types": ["fossil"],
}
DEV_CLIENT_OPTIONS: dict[str, Any] = {"allow_anonymous_connect_without_token": True}
DEV_HTTP_API_OPTIONS: dict[str, Any] = {"insecure": True}
"""Applied only without an ``http_api.key``: a key the user configured is always checked."""
DEV_ADMIN_OPTIONS: dict[str, Any] = {"password": "admin"}
STREAM_TRANSPORTS = ("http_stream", "sse", "uni_http_stream", "uni_sse", "uni_websocket")
"""The transports beside WebSocket, each off unless enabled (``--dev`` enables them)."""
_DURATIONS = frozenset(
    {
        "shutdown_timeout",
        "client.ping_interval",
        "client.pong_timeout",
        "client.stale_close_delay",
        "client.expired_close_delay",
        "client.expired_sub_close_delay",
        "client.write_delay",
        "proxy.timeout",
        "broker.presence_ttl",
        "broker.presence_update_interval",
        "broker.history_meta_ttl",
        "broker.node_info_interval",
        "admin.session_ttl",
    }
)
_CHANNEL_DURATIONS = frozenset({"history_ttl"})
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_ONE_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
"""``25``, ``"25s"``, ``" 40 s "``: a number of seconds, or of one unit."""
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
"""``"1m30s"``, ``"1h2m"``, ``"250us"``: Go's ``time.ParseDuration`` (Centrifugo's), unsigned."""


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

    The file may be a Centrifugo v6 configuration (see the module docstring): each
    key of it that tidings does not support is logged as a warning of the
    ``tidings.config`` logger (:func:`read_config` returns them instead).

    Raises:
        ConfigError: naming the file (or the variable) and the option that is wrong;
            :class:`ConfigProblems` lists every problem of the file.
    """
    config, warnings = read_config(path, env=env, overrides=overrides, defaults=defaults)
    for warning in warnings:
        logger.warning("%s", warning)
    return config


def read_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> tuple[Config, list[str]]:
    """:func:`load_config`, returning the warnings about the file instead of logging them."""
    # centrifugo reads durations with this module's parser: imported here, not at the top
    from . import centrifugo

    data: dict[str, Any] = {}
    source = "configuration"
    warnings: list[str] = []
    problems: list[str] = []
    origins: dict[str, str] = {}
    if path is not None:
        source = str(path)
        data = _read_file(path)
        marker = centrifugo.marker(data)
        if marker is not None:
            translation = centrifugo.translate(data, marker)
            data, warnings = translation.options, translation.warnings
            problems, origins = translation.problems, translation.origins
    for key, value in (defaults or {}).items():
        _set_default(data, key, value)
    for key, value in _from_env(os.environ if env is None else env).items():
        _set_dotted(data, key, value)
        origins.pop(key, None)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
        origins.pop(key, None)
    if data.get("workers") == "auto":
        data["workers"] = len(os.sched_getaffinity(0))  # one process per core it may use
    for key, problem in _problems(data):
        origin = origins.get(key)
        problems.append(problem if origin is None else f"{problem} (from {origin})")
    if not problems:
        try:
            return _convert_config(dict(data)), warnings
        except ConfigError as exc:  # between options: once each is valid
            problems.extend(str(exc).splitlines())
    raise ConfigProblems(source, problems, warnings)


_FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}


def _read_file(path: str | Path) -> dict[str, Any]:
    """The file's contents as a mapping: TOML, or JSON / YAML by the file's extension."""
    kind = _FORMATS.get(Path(path).suffix.lower(), "TOML")
    try:
        with open(path, "rb") as file:
            raw = file.read()
        if kind == "TOML":
            return tomllib.loads(raw.decode())
        data = json.loads(raw) if kind == "JSON" else yaml.safe_load(raw.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: invalid {kind}: {exc}") from None
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object of options")
    bad = next(_non_string_keys(data), None)
    if bad is not None:
        raise ConfigError(f"{path}: option names are strings, got {bad!r}")
    return data


def _non_string_keys(value: Any) -> Iterator[Any]:
    """Keys YAML read as something else than a string (``1:``, ``yes:``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield key
            yield from _non_string_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _non_string_keys(item)


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
            *((name, {"enabled": True}) for name in STREAM_TRANSPORTS),
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
    _parse_channel_durations(data, where)
    return _convert(data, ChannelOptions, where)


def _parse_channel_durations(data: dict[str, Any], where: str) -> None:
    """Read the duration strings of channel options in place (``history_ttl``)."""
    for key in _CHANNEL_DURATIONS & set(data):
        if isinstance(data[key], str):
            data[key] = _duration(where + key, data[key])


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


def parse_duration(text: str) -> float:
    """Seconds in ``25``, ``"25s"``, ``"500ms"`` or Go's ``"1m30s"``.

    Raises:
        ValueError: for anything else (negative durations included).
    """
    match = _ONE_DURATION.fullmatch(text)
    if match:
        return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if _GO_DURATION.fullmatch(text):
        parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
        return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    raise ValueError(f"not a duration: {text!r}")


def _duration(key: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError(
            f"{key}: expected a duration such as 25, '25s', '500ms' or '1m30s', got {text!r}"
        ) from None


# -- every problem at once --------------------------------------------------------------------


def _unchecked_config() -> type[msgspec.Struct]:
    """``Config``'s fields without the checks between them (``Config.__post_init__``).

    Each option is converted alone into it, so that one wrong option does not hide
    the others, and an option that needs another (``workers`` needs a broker) is
    not refused for lack of it.
    """
    fields: list[tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(Config):
        if info.name in ("channel", "namespaces"):
            continue  # read apart: at the top level, and per namespace
        default = (
            info.default
            if info.default is not msgspec.NODEFAULT
            else msgspec.field(default_factory=info.default_factory)
        )
        fields.append((info.name, info.type, default))
    return msgspec.defstruct(
        "UncheckedConfig", fields, kw_only=True, forbid_unknown_fields=True, frozen=True
    )


_UNCHECKED = _unchecked_config()
_TABLES = frozenset(
    info.name
    for info in msgspec.structs.fields(Config)
    if isinstance(info.type, type) and issubclass(info.type, msgspec.Struct)
    if info.name != "channel"  # its options sit at the top level
)
"""The ``[tables]`` of a tidings file."""


def _problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(option, message) for every option of ``data`` that is wrong by itself."""
    problems: list[tuple[str, str]] = []

    def check(kind: type[Any], item: dict[str, Any], where: str, key: str) -> None:
        """Convert ``item``, which holds the one option ``key``."""
        try:
            item = _with_durations(item, where, channel=kind is ChannelOptions)
            msgspec.convert(item, kind, strict=True)
        except ConfigError as exc:
            problems.append((key, str(exc)))
        except msgspec.ValidationError as exc:
            problems.append((key, _readable(str(exc), where, item)))

    for name, value in data.items():
        if name == "channel":
            problems.append(
                (name, "put channel options at the top level, not in a [channel] table")
            )
        elif name in CHANNEL_OPTION_NAMES:
            check(ChannelOptions, {name: value}, "", name)
        elif name == "namespaces":
            if not isinstance(value, dict):
                problems.append((name, "namespaces must be a table of [namespaces.NAME] tables"))
                continue
            for namespace, options in value.items():
                where = f"namespaces.{namespace}."
                if not isinstance(options, dict):
                    problems.append((where[:-1], f"namespaces.{namespace} must be a table"))
                    continue
                for option, item in options.items():
                    check(ChannelOptions, {option: item}, where, where + option)
        elif name in _TABLES and isinstance(value, dict):
            for option, item in value.items():
                check(_UNCHECKED, {name: {option: item}}, "", f"{name}.{option}")
        else:
            check(_UNCHECKED, {name: value}, "", name)
    return problems


def _with_durations(item: dict[str, Any], where: str, *, channel: bool) -> dict[str, Any]:
    """A copy of ``item`` with its duration strings read (a ``ConfigError`` if bad)."""
    item = copy.deepcopy(item)
    if channel:
        _parse_channel_durations(item, where)
    else:
        _parse_durations(item, where)
    return item


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


# -- a configuration file with every option -------------------------------------------------------

_LEFT_UNSET = {"gc_freeze": "unset: `tidings serve` turns it on, an embedded Hub leaves it off"}
"""Options whose default depends on who runs the hub: listed, but commented out."""


def generate_config() -> str:
    """A TOML configuration with every option at its default, under its description.

    The descriptions are the docstrings of the options' attributes in
    :mod:`tidings.options`; an option that has none is listed with its default only.
    The result loads back as the defaults (``Config()``).
    """
    lines = [
        "# tidings configuration: every option at its default (`tidings gen-config`).",
        "# Durations are seconds, or strings such as '25s', '500ms', '1m30s'.",
    ]
    tables = [info for info in msgspec.structs.fields(Config) if info.name in _TABLES]
    for info in msgspec.structs.fields(Config):
        if info.name not in _TABLES and info.name not in ("channel", "namespaces"):
            lines += _option_lines(info, "", field_docs(Config))
    lines += ["", "# Options of channels without a namespace: top-level keys, before any [table]."]
    for info in msgspec.structs.fields(ChannelOptions):
        lines += _option_lines(info, "", field_docs(ChannelOptions))
    for table in tables:
        kind = table.type
        assert isinstance(kind, type) and issubclass(kind, msgspec.Struct)
        summary = (kind.__doc__ or "").strip().splitlines()[0]
        lines += ["", f"# {summary}", f"[{table.name}]"]
        for info in msgspec.structs.fields(kind):
            lines += _option_lines(info, f"{table.name}.", field_docs(kind))
    lines += [
        "",
        "# Namespaces: channels 'NAME:...' take the options of [namespaces.NAME], the same",
        "# as the channel options above (none is inherited from the top level).",
        "# [namespaces.chat]",
        "# presence = true",
        "# allow_subscribe_for_client = true",
    ]
    return "\n".join(lines) + "\n"


def _option_lines(info: msgspec.structs.FieldInfo, prefix: str, docs: dict[str, str]) -> list[str]:
    lines = [""] if info.name in docs else []
    lines += [f"# {line}".rstrip() for line in docs.get(info.name, "").splitlines()]
    default = info.default if info.default is not msgspec.NODEFAULT else info.default_factory()
    line = f"{info.name} = {toml_value(default)}"
    if prefix + info.name in _DURATIONS or (not prefix and info.name in _CHANNEL_DURATIONS):
        line += "  # seconds"
    if info.name in _LEFT_UNSET:
        line = f"# {line}  ({_LEFT_UNSET[info.name]})"
    return [*lines, line]


def toml_value(value: Any) -> str:
    """``value`` as a TOML file writes it (``gen-config``, the options reference)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")
