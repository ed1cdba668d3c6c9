"""Tests for tidings.app.config: defaults, the TOML file, TIDINGS_* variables and overrides."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect
import pytest

from tidings import ChannelOptions, ClientOptions, Config, ConfigError, load_config
from tidings.app.config import ConfigProblems
from tidings.options import AdminOptions, BrokerOptions, HTTPAPIOptions, ProxyOptions

ALLOW_OPTIONS = sorted(
    name for name in ChannelOptions.__struct_fields__ if name.startswith("allow_")
)


def write(tmp_path: Path, text: str, name: str = "tidings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(
    tmp_path: Path,
    text: str,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    return load_config(write(tmp_path, text), env=env or {}, overrides=overrides)


def config_error(tmp_path: Path, text: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, **kwargs)
    return str(caught.value)


# -- defaults -------------------------------------------------------------------------------------


def test_defaults_without_a_file_are_the_documented_values() -> None:
    config = load_config(env={})
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.dev is False
    assert config.log_level == "info"
    assert config.shutdown_timeout == 10.0
    assert config.history_max_publication_limit == 300
    assert config.client.ping_interval == 25.0
    assert config.client.pong_timeout == 8.0
    assert config.client.stale_close_delay == 10.0
    assert config.client.expired_close_delay == 25.0
    assert config.client.channel_limit == 128
    assert config.client.channel_max_length == 255
    assert config.client.queue_max_size == 1024 * 1024
    assert config.client.max_message_size == 65536
    assert config.http_api.port == 9000
    assert config.http_api.key == ""


def test_loading_nothing_gives_the_same_config_as_the_constructor() -> None:
    assert load_config(env={}) == Config()
    assert load_config(env={}, overrides={}) == Config()


def test_safe_defaults_deny_every_channel_permission() -> None:
    config = load_config(env={})
    for name in ALLOW_OPTIONS:
        assert getattr(config.channel, name) is False, name


def test_safe_defaults_turn_off_presence_join_leave_history_and_recovery() -> None:
    channel = load_config(env={}).channel
    assert channel.presence is False
    assert channel.join_leave is False
    assert channel.force_push_join_leave is False
    assert channel.force_recovery is False
    assert channel.force_positioning is False
    assert channel.history_size == 0
    assert channel.history_ttl == 0
    assert channel.history_enabled is False
    assert channel == ChannelOptions()


def test_safe_defaults_refuse_anonymous_connections_and_configure_no_keys() -> None:
    config = load_config(env={})
    assert config.client.allow_anonymous_connect_without_token is False
    assert config.token_hmac_secret_key == ""
    assert config.token_rsa_public_key == ""
    assert config.token_ecdsa_public_key == ""
    assert config.token_audience == ""
    assert config.token_issuer == ""
    assert config.namespaces == {}


def test_a_config_built_directly_still_checks_ping_interval_against_pong_timeout() -> None:
    with pytest.raises(ConfigError, match="client.ping_interval"):
        Config(client=ClientOptions(ping_interval=5, pong_timeout=10))


def test_a_config_built_directly_still_checks_namespace_names() -> None:
    with pytest.raises(ConfigError, match="namespaces.bad name"):
        Config(namespaces={"bad name": ChannelOptions()})


def test_config_objects_are_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


# -- the file -------------------------------------------------------------------------------------


FULL_FILE = """
host = "0.0.0.0"
port = 8100
log_level = "debug"
shutdown_timeout = "3s"
token_hmac_secret_key = "a-secret-key-of-at-least-thirty-two-bytes"
token_audience = "hub"
token_issuer = "auth"
history_max_publication_limit = 50
presence = true
allow_subscribe_for_client = true

[client]
ping_interval = "20s"
pong_timeout = "500ms"
channel_limit = 16
allow_anonymous_connect_without_token = true

[http_api]
port = 9100
key = "api-key"

[namespaces.chat]
history_size = 10
history_ttl = "1m"
allow_publish_for_subscriber = true

[namespaces."feed.v2"]
join_leave = true
"""


def test_a_file_sets_top_level_client_http_api_and_namespace_options(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL_FILE)
    assert config.host == "0.0.0.0"
    assert config.port == 8100
    assert config.log_level == "debug"
    assert config.shutdown_timeout == 3.0
    assert config.token_hmac_secret_key == "a-secret-key-of-at-least-thirty-two-bytes"
    assert config.token_audience == "hub"
    assert config.token_issuer == "auth"
    assert config.history_max_publication_limit == 50
    assert config.client.ping_interval == 20.0
    assert config.client.pong_timeout == 0.5
    assert config.client.channel_limit == 16
    assert config.client.allow_anonymous_connect_without_token is True
    assert config.client.max_message_size == 65536  # untouched keys keep their defaults
    assert config.http_api.port == 9100
    assert config.http_api.key == "api-key"
    assert set(config.namespaces) == {"chat", "feed.v2"}
    assert config.namespaces["feed.v2"].join_leave is True


def test_top_level_channel_options_apply_to_channels_without_a_namespace(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL_FILE)
    assert config.channel.presence is True
    assert config.channel.allow_subscribe_for_client is True
    assert config.channel.allow_publish_for_client is False


def test_a_namespace_does_not_inherit_top_level_channel_options(tmp_path: Path) -> None:
    chat = load_text(tmp_path, FULL_FILE).namespaces["chat"]
    assert chat.history_size == 10
    assert chat.history_ttl == 60.0
    assert chat.history_enabled is True
    assert chat.allow_publish_for_subscriber is True
    assert chat.presence is False
    assert chat.allow_subscribe_for_client is False


def test_an_empty_namespace_table_denies_everything(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[namespaces.chat]\n")
    assert config.namespaces == {"chat": ChannelOptions()}


@pytest.mark.parametrize(
    ("size", "ttl", "enabled"),
    [(0, 0, False), (10, 0, False), (0, 60, False), (10, 60, True)],
)
def test_history_is_enabled_only_with_both_a_size_and_a_ttl(
    tmp_path: Path, size: int, ttl: int, enabled: bool
) -> None:
    config = load_text(tmp_path, f"history_size = {size}\nhistory_ttl = {ttl}\n")
    assert config.channel.history_enabled is enabled


def test_the_path_may_be_a_string_or_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 8123\n")
    assert load_config(path, env={}).port == 8123
    assert load_config(str(path), env={}).port == 8123


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == Config()


def test_port_zero_is_allowed_to_pick_a_free_port(tmp_path: Path) -> None:
    assert load_text(tmp_path, "port = 0\n").port == 0


def test_a_namespace_name_may_use_letters_digits_underscore_dash_and_dot(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[namespaces."Chat_1-beta.v2"]\npresence = true\n')
    assert config.namespaces["Chat_1-beta.v2"].presence is True


# -- error paths: every message names the bad key -------------------------------------------------


def test_an_unknown_top_level_option_is_named_in_the_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, "bogus_option = 1\n")
    assert "unknown option bogus_option" in message


def test_an_error_from_the_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bogus_option = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}: ")


def test_an_unknown_option_in_the_client_table_is_named_with_its_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[client]\nping_intervall = 5\n")
    assert "unknown option client.ping_intervall" in message


def test_an_unknown_option_in_a_namespace_is_named_with_the_namespace(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[namespaces.chat]\npresense = true\n")
    assert "unknown option namespaces.chat.presense" in message


def test_an_unknown_option_in_the_http_api_table_is_named_with_its_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[http_api]\nsecret = 'x'\n")
    assert "unknown option http_api.secret" in message


def test_a_client_option_at_the_top_level_is_unknown_there(tmp_path: Path) -> None:
    message = config_error(tmp_path, "ping_interval = 30\n")
    assert "unknown option ping_interval" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('port = "8000"\n', "port"),
        ("host = 1\n", "host"),
        ('dev = "yes"\n', "dev"),
        ("dev = 1\n", "dev"),
        ("log_level = 10\n", "log_level"),
        ("token_hmac_secret_key = 12345\n", "token_hmac_secret_key"),
        ("history_max_publication_limit = 1.5\n", "history_max_publication_limit"),
        ('presence = "yes"\n', "presence"),
        ("history_size = 1.5\n", "history_size"),
        ("allow_subscribe_for_client = 1\n", "allow_subscribe_for_client"),
        ('[client]\nchannel_limit = "many"\n', "client.channel_limit"),
        ("[client]\nping_interval = true\n", "client.ping_interval"),
        ('[http_api]\nport = "9000"\n', "http_api.port"),
        ("[namespaces.chat]\njoin_leave = 1\n", "namespaces.chat.join_leave"),
        ('[namespaces.chat]\nhistory_size = "10"\n', "namespaces.chat.history_size"),
        ("client = 5\n", "client"),
        ('http_api = "x"\n', "http_api"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_in_the_error(
    tmp_path: Path, text: str, key: str
) -> None:
    message = config_error(tmp_path, text)
    assert f"{key}: Expected" in message


def test_a_wrong_type_in_the_client_table_names_the_full_dotted_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[client]\nallow_anonymous_connect_without_token = 1\n")
    assert "client.allow_anonymous_connect_without_token:" in message


def test_a_channel_table_is_refused_with_a_hint_to_use_the_top_level(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[channel]\npresence = true\n")
    assert "channel" in message
    assert "top level" in message


def test_namespaces_must_be_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "namespaces = 5\n")
    assert "namespaces must be a table" in message


def test_each_namespace_must_be_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[namespaces]\nchat = true\n")
    assert "namespaces.chat must be a table" in message


@pytest.mark.parametrize("name", ["bad name", "a:b", "a/b", "$chat", "a#b", ""])
def test_an_invalid_namespace_name_is_named_in_the_error(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, f'[namespaces."{name}"]\n')
    assert f"namespaces.{name}:" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[client]\nping_interval = 5\npong_timeout = 5\n", "client.ping_interval"),
        ("[client]\nping_interval = 5\npong_timeout = 8\n", "client.ping_interval"),
        ('[client]\nping_interval = "5s"\npong_timeout = "5000ms"\n', "client.ping_interval"),
        ("[client]\npong_timeout = 30\n", "client.ping_interval"),
    ],
)
def test_ping_interval_not_above_pong_timeout_is_refused_naming_both_keys(
    tmp_path: Path, text: str, key: str
) -> None:
    message = config_error(tmp_path, text)
    assert key in message
    assert "client.pong_timeout" in message


def test_ping_interval_just_above_pong_timeout_is_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[client]\nping_interval = "8001ms"\npong_timeout = "8s"\n')
    assert config.client.ping_interval == pytest.approx(8.001)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port = -1\n", "port must be at least 0, got -1"),
        ("port = 99999\n", "port must be at most 65535, got 99999"),
        ("port = 65536\n", "port must be at most 65535, got 65536"),
        ("[http_api]\nport = 70000\n", "http_api.port must be at most 65535, got 70000"),
        ("[client]\nchannel_limit = 0\n", "client.channel_limit must be at least 1, got 0"),
        ("[client]\nchannel_max_length = -5\n", "client.channel_max_length must be at least 1"),
        ("[client]\nqueue_max_size = 0\n", "client.queue_max_size must be at least 1, got 0"),
        ("[client]\nmax_message_size = 0\n", "client.max_message_size must be at least 1"),
        # a 0 s heartbeat tick: one core at 100 %
        (
            "[client]\nstale_close_delay = 0\n",
            "client.stale_close_delay must be greater than 0, got 0",
        ),
        (
            '[client]\nstale_close_delay = "0ms"\n',
            "client.stale_close_delay must be greater than 0, got 0.0",
        ),
        ("[client]\nping_interval = 0\n", "client.ping_interval must be greater than 0"),
        ("[client]\npong_timeout = 0\n", "client.pong_timeout must be greater than 0"),
        ("[client]\nwrite_delay = -0.5\n", "client.write_delay must be at least 0, got -0.5"),
        ("[client]\nexpired_close_delay = -1\n", "client.expired_close_delay must be at least 0"),
        ("[client]\nconnection_limit = -1\n", "client.connection_limit must be at least 0"),
        ("[client]\ncommand_rate_limit = -1\n", "client.command_rate_limit must be at least 0"),
        ("[broker]\nnode_info_interval = 0\n", "broker.node_info_interval must be greater than 0"),
        (
            "[broker]\npresence_update_interval = 0\n",
            "broker.presence_update_interval must be greater than 0",
        ),
        ("[broker]\npubsub_shards = 0\n", "broker.pubsub_shards must be at least 1, got 0"),
        ("[proxy]\ntimeout = 0\n", "proxy.timeout must be greater than 0, got 0"),
        ("[admin]\nsession_ttl = 0\n", "admin.session_ttl must be greater than 0, got 0"),
        ("[http_api]\nmax_body_size = 0\n", "http_api.max_body_size must be at least 1, got 0"),
        ("shutdown_timeout = -1\n", "shutdown_timeout must be at least 0, got -1"),
        ("shutdown_timeout = nan\n", "shutdown_timeout must be at least 0, got nan"),
        (
            "history_max_publication_limit = -1\n",
            "history_max_publication_limit must be at least 0, got -1",
        ),
        ("history_size = -1\n", "history_size must be at least 0, got -1"),
        ("history_ttl = -1\n", "history_ttl must be at least 0, got -1"),
        (
            "[namespaces.chat]\nhistory_size = -3\n",
            "namespaces.chat.history_size must be at least 0, got -3",
        ),
        ("workers = 0\n", "workers must be at least 1, got 0"),
    ],
)
def test_a_number_out_of_the_bounds_of_its_option_is_named_in_the_error(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = config_error(tmp_path, text)
    assert expected in message
    assert message.count("\n") == 0


@pytest.mark.parametrize(
    "text",
    [
        "port = 0\n[http_api]\nport = 0\n",  # 0 picks a free port
        "port = 65535\n[http_api]\nport = 1\n",
        "[client]\nwrite_delay = 0\n",
        "[client]\nexpired_close_delay = 0\n",
        "[client]\nconnection_limit = 0\nuser_connection_limit = 0\n",
        "[client]\nconnection_rate_limit = 0\ncommand_rate_limit = 0\n",
        "[client]\nchannel_limit = 1\nqueue_max_size = 1\nmax_message_size = 1\n",
        "shutdown_timeout = 0\nhistory_max_publication_limit = 0\n",
        "history_size = 0\nhistory_ttl = 0\n",
        '[client]\nstale_close_delay = "1ms"\n[broker]\nnode_info_interval = 0.01\n',
    ],
)
def test_the_bounds_themselves_and_zero_where_it_means_off_are_accepted(
    tmp_path: Path, text: str
) -> None:
    load_text(tmp_path, text)


def numeric_options() -> Iterator[tuple[str, Any]]:
    """Every numeric option (dotted, as a user writes it) and its msgspec type."""
    tables = {
        "": Config,
        "client.": ClientOptions,
        "http_api.": HTTPAPIOptions,
        "broker.": BrokerOptions,
        "proxy.": ProxyOptions,
        "admin.": AdminOptions,
        "namespaces.chat.": ChannelOptions,
    }
    for prefix, struct in tables.items():
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            if isinstance(field.type, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                yield prefix + field.name, field.type


NUMERIC_OPTIONS = dict(numeric_options())


def test_the_numeric_options_are_all_found() -> None:
    assert {"port", "workers", "client.stale_close_delay", "broker.node_info_interval"} <= set(
        NUMERIC_OPTIONS
    )
    assert "namespaces.chat.history_size" in NUMERIC_OPTIONS
    assert len(NUMERIC_OPTIONS) >= 28


@pytest.mark.parametrize("key", sorted(NUMERIC_OPTIONS))
def test_every_numeric_option_has_a_lower_bound_and_a_value_under_it_is_named(key: str) -> None:
    """No option is left unbounded: a value just under its bound stops the load."""
    kind = NUMERIC_OPTIONS[key]
    assert kind.ge is not None or kind.gt is not None, f"{key} has no lower bound"
    bound = kind.gt if kind.gt is not None else kind.ge - 1
    below = bound if isinstance(kind, msgspec.inspect.IntType) else bound - 0.5
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={key: below})
    assert f"{key} must be " in str(caught.value)
    assert f"got {below!r}" in str(caught.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            lambda: Config(client=ClientOptions(stale_close_delay=0)),
            "client.stale_close_delay must be greater than 0, got 0",
        ),
        (
            lambda: Config(broker=BrokerOptions(node_info_interval=0)),
            "broker.node_info_interval must be greater than 0, got 0",
        ),
        (lambda: Config(port=99999), "port must be at most 65535, got 99999"),
        (lambda: Config(shutdown_timeout=-1), "shutdown_timeout must be at least 0, got -1"),
        (
            lambda: Config(channel=ChannelOptions(history_size=-1)),
            "history_size must be at least 0, got -1",
        ),
        (
            lambda: Config(namespaces={"chat": ChannelOptions(history_ttl=-1)}),
            "namespaces.chat.history_ttl must be at least 0, got -1",
        ),
        (lambda: Config(workers=0), "workers must be at least 1, got 0"),
    ],
)
def test_a_config_built_directly_checks_the_same_bounds(
    config: Callable[[], Config], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config()
    assert str(caught.value) == expected


def test_a_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert "cannot read config file" in message
    assert str(path) in message
    assert "No such file" in message


def test_a_directory_instead_of_a_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env={})
    assert "cannot read config file" in str(caught.value)
    assert str(tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["port = \n", "[client\nping_interval = 5\n", "port = 1\nport = 2\n", "host = 'unterminated\n"],
)
def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "(at " in message  # tomllib's location: a line and column, or the end


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'host = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value)


def test_config_errors_are_value_errors() -> None:
    assert issubclass(ConfigError, ValueError)


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ('"25s"', 25.0),
        ('"500ms"', 0.5),
        ('"2m"', 120.0),
        ('"1h"', 3600.0),
        ('"30"', 30.0),
        ('"1.5s"', 1.5),
        ('" 40 s "', 40.0),
        ("30", 30.0),
        ("12.5", 12.5),
    ],
)
def test_durations_accept_numbers_and_unit_suffixes(
    tmp_path: Path, value: str, seconds: float
) -> None:
    config = load_text(tmp_path, f"[client]\nping_interval = {value}\npong_timeout = 0.1\n")
    assert config.client.ping_interval == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "read", "seconds"),
    [
        ('shutdown_timeout = "1m"\n', lambda c: c.shutdown_timeout, 60.0),
        ('[client]\npong_timeout = "2s"\n', lambda c: c.client.pong_timeout, 2.0),
        ('[client]\nstale_close_delay = "250ms"\n', lambda c: c.client.stale_close_delay, 0.25),
        ('[client]\nexpired_close_delay = "1h"\n', lambda c: c.client.expired_close_delay, 3600.0),
        ('history_ttl = "2m"\n', lambda c: c.channel.history_ttl, 120.0),
        (
            '[namespaces.chat]\nhistory_ttl = "9s"\n',
            lambda c: c.namespaces["chat"].history_ttl,
            9.0,
        ),
    ],
)
def test_every_duration_option_accepts_a_duration_string(
    tmp_path: Path, text: str, read: Callable[[Config], float], seconds: float
) -> None:
    assert read(load_text(tmp_path, text)) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "25x", "-5s", "", "5 seconds", "1.s", "25S"])
@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("[client]\nping_interval = {}\n", "client.ping_interval"),
        ("[client]\npong_timeout = {}\n", "client.pong_timeout"),
        ("shutdown_timeout = {}\n", "shutdown_timeout"),
        ("history_ttl = {}\n", "history_ttl"),
        ("[namespaces.chat]\nhistory_ttl = {}\n", "namespaces.chat.history_ttl"),
    ],
)
def test_a_bad_duration_string_is_named_with_its_key_and_value(
    tmp_path: Path, template: str, key: str, bad: str
) -> None:
    message = config_error(tmp_path, template.format(f'"{bad}"'))
    assert f"{key}: expected a duration" in message
    assert repr(bad) in message


def test_a_duration_string_is_not_accepted_for_an_option_that_is_not_a_duration(
    tmp_path: Path,
) -> None:
    message = config_error(tmp_path, '[client]\nchannel_limit = "25s"\n')
    assert "client.channel_limit:" in message


# -- environment ----------------------------------------------------------------------------------


def test_environment_variables_override_the_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, "port = 8001\nhost = 'file'\n", env={"TIDINGS_PORT": "8002"})
    assert config.port == 8002
    assert config.host == "file"


def test_environment_variable_names_map_to_dotted_keys() -> None:
    config = load_config(
        env={
            "TIDINGS_HOST": "0.0.0.0",
            "TIDINGS_CLIENT_PING_INTERVAL": "30",
            "TIDINGS_CLIENT_CHANNEL_LIMIT": "7",
            "TIDINGS_CLIENT_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN": "true",
            "TIDINGS_HTTP_API_PORT": "9100",
            "TIDINGS_HTTP_API_KEY": "api-key",
            "TIDINGS_TOKEN_HMAC_SECRET_KEY": "a-secret-key-of-at-least-thirty-two-bytes",
            "TIDINGS_HISTORY_MAX_PUBLICATION_LIMIT": "10",
        }
    )
    assert config.host == "0.0.0.0"
    assert config.client.ping_interval == 30.0
    assert config.client.channel_limit == 7
    assert config.client.allow_anonymous_connect_without_token is True
    assert config.http_api.port == 9100
    assert config.http_api.key == "api-key"
    assert config.token_hmac_secret_key == "a-secret-key-of-at-least-thirty-two-bytes"
    assert config.history_max_publication_limit == 10


def test_environment_variables_set_top_level_channel_options() -> None:
    config = load_config(
        env={
            "TIDINGS_PRESENCE": "true",
            "TIDINGS_HISTORY_SIZE": "20",
            "TIDINGS_HISTORY_TTL": "5m",
            "TIDINGS_ALLOW_SUBSCRIBE_FOR_CLIENT": "true",
        }
    )
    assert config.channel.presence is True
    assert config.channel.history_size == 20
    assert config.channel.history_ttl == 300.0
    assert config.channel.allow_subscribe_for_client is True
    assert config.channel.allow_publish_for_client is False


def test_environment_durations_accept_unit_suffixes() -> None:
    config = load_config(
        env={"TIDINGS_CLIENT_PING_INTERVAL": "1m", "TIDINGS_CLIENT_PONG_TIMEOUT": "500ms"}
    )
    assert config.client.ping_interval == 60.0
    assert config.client.pong_timeout == 0.5


def test_environment_values_of_string_options_are_taken_as_they_are() -> None:
    config = load_config(
        env={
            "TIDINGS_LOG_LEVEL": "debug",
            "TIDINGS_TOKEN_ISSUER": '"quoted issuer"',
            "TIDINGS_TOKEN_AUDIENCE": "has spaces and = signs",
            "TIDINGS_DEV": "false",
        }
    )
    assert config.log_level == "debug"
    assert config.token_issuer == '"quoted issuer"'
    assert config.token_audience == "has spaces and = signs"
    assert config.dev is False


def test_an_environment_variable_merges_into_a_file_table_instead_of_replacing_it(
    tmp_path: Path,
) -> None:
    config = load_text(
        tmp_path,
        "[client]\nping_interval = 40\nchannel_limit = 3\n",
        env={"TIDINGS_CLIENT_PONG_TIMEOUT": "20"},
    )
    assert config.client.ping_interval == 40.0
    assert config.client.channel_limit == 3
    assert config.client.pong_timeout == 20.0


def test_unrelated_environment_variables_are_ignored() -> None:
    config = load_config(env={"PORT": "1234", "PATH": "/usr/bin", "XTIDINGS_PORT": "1"})
    assert config == Config()


@pytest.mark.parametrize(
    "name", ["TIDINGS_NOT_AN_OPTION", "TIDINGS_CHANNEL", "TIDINGS_NAMESPACES", "TIDINGS_CLIENT"]
)
def test_an_unknown_tidings_environment_variable_is_an_error_naming_it(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={name: "1"})
    assert str(caught.value).startswith(f"unknown environment variable {name}: ")


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("TIDINGS_CLIENT_PING_INTERVL", "TIDINGS_CLIENT_PING_INTERVAL"),
        ("TIDINGS_GC_FREZE", "TIDINGS_GC_FREEZE"),
        ("TIDINGS_API_KEY", "TIDINGS_HTTP_API_KEY"),
        ("TIDINGS_HTTP_API_PORTS", "TIDINGS_HTTP_API_PORT"),
        ("tidings_port", "TIDINGS_PORT"),
    ],
)
def test_an_unknown_environment_variable_suggests_the_closest_option(
    name: str, suggested: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={name: "5"})
    assert f"unknown environment variable {name}" in str(caught.value)
    assert f"(did you mean {suggested}?)" in str(caught.value)


def test_an_unknown_environment_variable_far_from_every_option_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TIDINGS_DOCS_SCREENSHOTS": "1"})
    assert "did you mean" not in str(caught.value)


def test_every_unknown_environment_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TIDINGS_ONE": "1", "TIDINGS_TWO": "2", "TIDINGS_PORT": "8001"})
    assert "TIDINGS_ONE" in str(caught.value)
    assert "TIDINGS_TWO" in str(caught.value)


def test_an_environment_value_out_of_bounds_names_the_option() -> None:
    with pytest.raises(ConfigError, match="client.stale_close_delay must be greater than 0"):
        load_config(env={"TIDINGS_CLIENT_STALE_CLOSE_DELAY": "0"})
    with pytest.raises(ConfigError, match="port must be at most 65535, got 99999"):
        load_config(env={"TIDINGS_PORT": "99999"})


def test_a_bad_environment_value_names_the_option() -> None:
    with pytest.raises(ConfigError, match="port:"):
        load_config(env={"TIDINGS_PORT": "eighty"})
    with pytest.raises(ConfigError, match="client.ping_interval: expected a duration"):
        load_config(env={"TIDINGS_CLIENT_PING_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="client.ping_interval"):
        load_config(env={"TIDINGS_CLIENT_PING_INTERVAL": "2"})


def test_the_process_environment_is_read_when_env_is_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_PORT", "8123")
    assert load_config().port == 8123
    assert load_config(env={}).port == 8000


def test_an_environment_variable_can_turn_on_dev_mode() -> None:
    config = load_config(env={"TIDINGS_DEV": "true"})
    assert config.dev is True
    assert config.channel.allow_subscribe_for_anonymous is True
    assert config.client.allow_anonymous_connect_without_token is True


def test_a_numeric_looking_secret_from_the_environment_stays_a_string() -> None:
    secret = "12345678901234567890123456789012345678"
    config = load_config(
        env={"TIDINGS_TOKEN_HMAC_SECRET_KEY": secret, "TIDINGS_HTTP_API_KEY": "123456"}
    )
    assert config.token_hmac_secret_key == secret
    assert config.http_api.key == "123456"


def test_a_scalar_client_value_plus_an_environment_override_is_a_config_error(
    tmp_path: Path,
) -> None:
    message = config_error(
        tmp_path, 'client = "fast"\n', env={"TIDINGS_CLIENT_PING_INTERVAL": "30"}
    )
    assert "client" in message


# -- precedence -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_file", "use_env", "use_override", "expected"),
    [
        (False, False, False, 8000),
        (True, False, False, 8001),
        (False, True, False, 8002),
        (True, True, False, 8002),
        (False, False, True, 8003),
        (True, False, True, 8003),
        (True, True, True, 8003),
    ],
)
def test_precedence_is_defaults_then_file_then_environment_then_overrides(
    tmp_path: Path, use_file: bool, use_env: bool, use_override: bool, expected: int
) -> None:
    path = write(tmp_path, "port = 8001\n") if use_file else None
    env = {"TIDINGS_PORT": "8002"} if use_env else {}
    overrides = {"port": 8003} if use_override else None
    assert load_config(path, env=env, overrides=overrides).port == expected


def test_precedence_holds_for_nested_client_options(tmp_path: Path) -> None:
    path = write(tmp_path, "[client]\nping_interval = 30\nstale_close_delay = 1\n")
    config = load_config(
        path,
        env={"TIDINGS_CLIENT_PING_INTERVAL": "40", "TIDINGS_CLIENT_CHANNEL_LIMIT": "9"},
        overrides={"client.ping_interval": "50s"},
    )
    assert config.client.ping_interval == 50.0
    assert config.client.channel_limit == 9
    assert config.client.stale_close_delay == 1.0


def test_overrides_use_dotted_keys_and_can_create_a_namespace() -> None:
    config = load_config(
        env={},
        overrides={"namespaces.chat.presence": True, "namespaces.chat.history_ttl": "10s"},
    )
    assert config.namespaces["chat"].presence is True
    assert config.namespaces["chat"].history_ttl == 10.0


def test_overrides_merge_into_a_namespace_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[namespaces.chat]\nhistory_size = 5\njoin_leave = true\n")
    config = load_config(path, env={}, overrides={"namespaces.chat.join_leave": False})
    assert config.namespaces["chat"].history_size == 5
    assert config.namespaces["chat"].join_leave is False


def test_an_unknown_override_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="unknown option client.bogus"):
        load_config(env={}, overrides={"client.bogus": 1})


# -- defaults given by the caller (tidings serve's gc_freeze) -------------------------------------


def test_gc_freeze_is_off_by_default() -> None:
    """The policy is process-wide: an embedded hub leaves the program's gc alone."""
    assert Config().gc_freeze is False
    assert load_config(env={}).gc_freeze is False


def test_caller_defaults_replace_the_built_in_defaults() -> None:
    config = load_config(env={}, defaults={"gc_freeze": True, "client.channel_limit": 9})
    assert config.gc_freeze is True
    assert config.client.channel_limit == 9


@pytest.mark.parametrize(
    ("text", "env", "overrides"),
    [
        ("gc_freeze = false\n", {}, {}),
        ("", {"TIDINGS_GC_FREEZE": "false"}, {}),
        ("gc_freeze = true\n", {"TIDINGS_GC_FREEZE": "false"}, {}),
        ("", {}, {"gc_freeze": False}),
    ],
)
def test_the_file_the_environment_and_overrides_win_over_caller_defaults(
    tmp_path: Path, text: str, env: dict[str, str], overrides: dict[str, Any]
) -> None:
    config = load_text(tmp_path, text, env=env, overrides=overrides or None)
    assert config.gc_freeze is False
    path = write(tmp_path, text)
    config = load_config(path, env=env, overrides=overrides, defaults={"gc_freeze": True})
    assert config.gc_freeze is False


def test_caller_defaults_merge_into_a_table_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[client]\nchannel_limit = 3\n")
    config = load_config(
        path, env={}, defaults={"client.channel_limit": 9, "client.channel_max_length": 7}
    )
    assert config.client.channel_limit == 3
    assert config.client.channel_max_length == 7


def test_a_wrong_table_in_the_file_is_reported_despite_caller_defaults(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'client = "fast"\n')
    assert "client" in message
    with pytest.raises(ConfigError, match="client"):
        load_config(write(tmp_path, 'client = "fast"\n'), env={}, defaults={"client.x": 1})


# -- dev mode -------------------------------------------------------------------------------------


def assert_wide_open(options: ChannelOptions) -> None:
    for name in ALLOW_OPTIONS:
        assert getattr(options, name) is True, name
    assert options.presence is True
    assert options.join_leave is True
    assert options.force_push_join_leave is True
    assert options.force_recovery is True
    assert options.history_size > 0
    assert options.history_ttl > 0
    assert options.history_enabled is True


def test_dev_mode_opens_every_channel_permission_and_feature() -> None:
    config = load_config(env={}, overrides={"dev": True})
    assert config.dev is True
    assert_wide_open(config.channel)
    assert config.channel.history_size == 100
    assert config.channel.history_ttl == 300.0


def test_dev_mode_allows_anonymous_connections() -> None:
    config = load_config(env={}, overrides={"dev": True})
    assert config.client.allow_anonymous_connect_without_token is True


def test_dev_mode_opens_every_namespace_of_the_file_too(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[namespaces.chat]\n", overrides={"dev": True})
    assert_wide_open(config.namespaces["chat"])


def test_dev_set_in_the_file_itself_opens_everything(tmp_path: Path) -> None:
    config = load_text(tmp_path, "dev = true\n[namespaces.chat]\n")
    assert config.dev is True
    assert_wide_open(config.channel)
    assert_wide_open(config.namespaces["chat"])
    assert config.client.allow_anonymous_connect_without_token is True


def test_dev_false_keeps_the_safe_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "dev = false\n[namespaces.chat]\n")
    assert config.channel == ChannelOptions()
    assert config.namespaces["chat"] == ChannelOptions()
    assert config.client.allow_anonymous_connect_without_token is False


def test_a_file_still_overrides_dev_defaults_at_the_top_level(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "presence = false\nallow_publish_for_anonymous = false\nhistory_size = 7\n",
        overrides={"dev": True},
    )
    assert config.channel.presence is False
    assert config.channel.allow_publish_for_anonymous is False
    assert config.channel.history_size == 7
    assert config.channel.allow_subscribe_for_anonymous is True
    assert config.channel.join_leave is True


def test_a_file_still_overrides_dev_defaults_inside_a_namespace(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[namespaces.chat]\nallow_publish_for_anonymous = false\nhistory_ttl = '5s'\n"
        "[namespaces.open]\n",
        overrides={"dev": True},
    )
    chat = config.namespaces["chat"]
    assert chat.allow_publish_for_anonymous is False
    assert chat.history_ttl == 5.0
    assert chat.allow_subscribe_for_anonymous is True
    assert chat.presence is True
    assert_wide_open(config.namespaces["open"])


def test_a_top_level_file_option_does_not_leak_into_namespaces_in_dev_mode(
    tmp_path: Path,
) -> None:
    config = load_text(tmp_path, "presence = false\n[namespaces.chat]\n", overrides={"dev": True})
    assert config.channel.presence is False
    assert config.namespaces["chat"].presence is True


def test_a_file_still_overrides_the_dev_client_default(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[client]\nallow_anonymous_connect_without_token = false\nping_interval = 30\n",
        overrides={"dev": True},
    )
    assert config.client.allow_anonymous_connect_without_token is False
    assert config.client.ping_interval == 30.0


def test_dev_mode_keeps_the_other_client_options_of_the_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[client]\nchannel_limit = 4\n", overrides={"dev": True})
    assert config.client.channel_limit == 4
    assert config.client.allow_anonymous_connect_without_token is True


def test_dev_mode_does_not_relax_validation(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[namespaces.chat]\nbogus = 1\n", overrides={"dev": True})
    assert "unknown option namespaces.chat.bogus" in message


def test_dev_mode_makes_an_api_without_a_key_insecure() -> None:
    assert load_config(env={}, overrides={"dev": True}).http_api.insecure is True


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ('[http_api]\nkey = "api-key"\n', {}),
        ("", {"TIDINGS_HTTP_API_KEY": "api-key"}),
    ],
)
def test_dev_mode_does_not_make_an_api_with_a_configured_key_insecure(
    tmp_path: Path, text: str, env: dict[str, str]
) -> None:
    config = load_text(tmp_path, text, env=env, overrides={"dev": True})
    assert config.http_api.key == "api-key"
    assert config.http_api.insecure is False


def test_dev_mode_with_a_key_by_override_is_not_insecure() -> None:
    config = load_config(env={}, overrides={"dev": True, "http_api.key": "api-key"})
    assert config.http_api.insecure is False


def test_dev_mode_does_not_change_non_channel_options() -> None:
    config = load_config(env={}, overrides={"dev": True})
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.token_hmac_secret_key == ""
    assert config.client.ping_interval == 25.0


# -- every problem at once, Go durations ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("1m30s", 90.0), ("1h2m", 3720.0), ("250us", 0.00025), ("1.5h", 5400.0)]
)
def test_durations_accept_go_durations(tmp_path: Path, value: str, seconds: float) -> None:
    config = load_text(tmp_path, f'shutdown_timeout = "{value}"\n')
    assert config.shutdown_timeout == pytest.approx(seconds)


def test_every_problem_of_a_file_is_in_the_error(tmp_path: Path) -> None:
    text = 'port = "eighty"\nbogus = 1\nhistory_size = -1\n[client]\npong_timeout = "soon"\n'
    with pytest.raises(ConfigProblems) as caught:
        load_text(tmp_path, text)
    assert caught.value.problems == [
        "port: Expected `int`, got `str`",
        "unknown option bogus",
        "history_size must be at least 0, got -1",
        "client.pong_timeout: expected a duration such as 25, '25s', '500ms' or '1m30s', got"
        " 'soon'",
    ]
    assert str(caught.value) == f"{tmp_path / 'tidings.toml'}: " + "; ".join(caught.value.problems)


def test_options_that_need_each_other_are_checked_together(tmp_path: Path) -> None:
    text = (
        'workers = 2\ntls_cert = "c.pem"\ntls_key = "k.pem"\n[broker]\nurl = "redis://r:6379/0"\n'
    )
    config = load_text(tmp_path, text)
    assert (config.workers, config.tls_key) == (2, "k.pem")


def test_workers_auto_is_one_per_core(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text('workers = "auto"\n[broker]\nurl = "redis://r:6379/0"\n')
    assert load_config(path, env={}).workers == len(os.sched_getaffinity(0))
    env = {"TIDINGS_WORKERS": "auto", "TIDINGS_BROKER_URL": "redis://r:6379/0"}
    assert load_config(env=env).workers == len(os.sched_getaffinity(0))
