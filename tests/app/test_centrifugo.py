"""Tests for tidings.app.centrifugo: Centrifugo v6 configuration files read as tidings options."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from aiohttp import web
from centrifuge import Client, PublicationContext, SubscriptionEventHandler

from tidings import ChannelOptions, Config, ConfigError, load_config
from tidings.app import centrifugo
from tidings.app.config import ConfigProblems, read_config

from ..conftest import free_port
from .test_cli import Serving, cli_environment

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "centrifugo_v6.json"
DOC = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "centrifugo.md"
SECRET = "centrifugo-v6-secret-that-is-long-enough-for-hs256"
BACKEND = "http://backend:3000/centrifugo"

FIXTURE_WARNINGS = [
    "client.token.jwks_public_endpoint",
    "client.concurrency",
    "consumers[outbox].enabled",
    "consumers[outbox].type",
    "consumers[outbox].postgresql.dsn",
    "consumers[outbox].postgresql.outbox_table_name",
]


def fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "centrifugo.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def read(tmp_path: Path, data: dict[str, Any]) -> tuple[Config, list[str]]:
    return read_config(write(tmp_path, data), env={})


def problems(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigProblems) as caught:
        read(tmp_path, data)
    return caught.value.problems


# -- the fixture, key by key ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["centrifugo_v6.json", "centrifugo_v6.yaml"])
def test_the_fixture_maps_every_supported_key(name: str) -> None:
    config, _ = read_config(DATA / name, env={})
    assert config.log_level == "debug"
    assert (config.host, config.port, config.http_api.port) == ("127.0.0.1", 8000, 9000)
    assert config.broker.url == "redis://127.0.0.1:6379/2"
    assert config.broker.prefix == "chat-app"
    assert config.broker.presence_ttl == 45.0
    assert config.token_hmac_secret_key == SECRET
    assert config.token_audience == "chat-app"
    assert config.allowed_origins == ["https://chat.example.com", "http://localhost:*"]
    client = config.client
    assert (client.ping_interval, client.pong_timeout) == (20.0, 5.0)
    assert (client.channel_limit, client.queue_max_size) == (64, 2097152)
    assert client.max_message_size == 131072
    assert config.websocket.compression is True
    assert config.uni_sse.enabled is True
    assert config.history_max_publication_limit == 100
    assert config.proxy.connect_endpoint == f"{BACKEND}/connect"
    assert config.proxy.refresh_endpoint == f"{BACKEND}/refresh"
    assert config.proxy.subscribe_endpoint == f"{BACKEND}/subscribe"
    assert config.proxy.publish_endpoint == f"{BACKEND}/publish"
    assert config.proxy.rpc_endpoint == f"{BACKEND}/rpc"
    assert config.proxy.timeout == 2.0
    assert config.proxy.http_headers == ["Cookie", "Authorization"]
    assert config.http_api.key == "centrifugo-api-key"
    assert config.admin.password == "admin-password"
    assert config.admin.secret == "admin-secret-for-the-session-cookies"
    assert config.shutdown_timeout == 20.0
    assert config.channel.presence and config.channel.allow_subscribe_for_client
    assert not config.channel.join_leave
    chat, news = config.namespaces["chat"], config.namespaces["news"]
    assert (chat.presence, chat.join_leave, chat.force_push_join_leave) == (True, True, True)
    assert (chat.history_size, chat.history_ttl, chat.force_recovery) == (100, 300.0, True)
    assert chat.allow_publish_for_subscriber and chat.allow_history_for_subscriber
    assert chat.allow_presence_for_subscriber and not chat.allow_publish_for_client
    assert chat.allow_recovery and not chat.allow_positioning
    assert (news.history_size, news.history_ttl) == (10, 5400.0)  # "1h30m"
    assert news.allow_subscribe_for_anonymous and not news.presence
    assert set(config.namespaces) == {"chat", "news"}


def test_the_yaml_fixture_is_the_json_fixture() -> None:
    assert read_config(DATA / "centrifugo_v6.yaml", env={}) == read_config(FIXTURE, env={})


def test_each_unsupported_key_of_the_fixture_gets_one_warning_naming_it() -> None:
    _, warnings = read_config(FIXTURE, env={})
    assert [warning.partition(":")[0] for warning in warnings] == FIXTURE_WARNINGS
    assert all(warning.endswith(": not supported by tidings, ignored") for warning in warnings)


def test_load_config_logs_each_warning_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tidings.config"):
        load_config(FIXTURE, env={})
    logged = [record.getMessage().partition(":")[0] for record in caplog.records]
    assert logged == FIXTURE_WARNINGS
    assert {record.name for record in caplog.records} == {"tidings.config"}


def test_the_environment_and_overrides_still_win_over_a_centrifugo_file() -> None:
    config = load_config(
        FIXTURE, env={"TIDINGS_CLIENT_PING_INTERVAL": "40s"}, overrides={"port": 8100}
    )
    assert (config.client.ping_interval, config.port) == (40.0, 8100)


# -- telling the layouts apart --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "found"),
    [
        ({"http_server": {"port": 8000}}, "http_server"),
        ({"channel": {"without_namespace": {"presence": True}}}, "channel"),
        ({"client": {"token": {"hmac_secret_key": "x"}}}, "client.token"),
        ({"client": {"allowed_origins": []}}, "client.allowed_origins"),
        ({"broker": {"type": "memory"}}, "broker.type"),
        ({"admin": {"enabled": True}}, "admin.enabled"),
        ({"http_api": {"disabled": True}}, "http_api.disabled"),
        ({"port": 1, "log": {"level": "info"}}, "log"),
        ({"port": 1, "client": {"ping_interval": 5}}, None),  # the same in both: tidings'
        ({"http_api": {"key": "k"}, "admin": {"password": "p"}}, None),
        ({"channel": {"presence": True}}, None),  # tidings refuses it with its own hint
        ({}, None),
    ],
)
def test_a_centrifugo_file_is_told_by_a_key_only_centrifugo_has(
    data: dict[str, Any], found: str | None
) -> None:
    assert centrifugo.marker(data) == found


def test_a_channel_table_of_channel_options_stays_a_tidings_error(tmp_path: Path) -> None:
    path = tmp_path / "tidings.json"
    path.write_text('{"channel": {"presence": true}}')
    with pytest.raises(ConfigError, match="top level"):
        load_config(path, env={})


def test_a_tidings_file_in_json_or_yaml_loads_like_its_toml(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        "port = 8001\npresence = true\n[namespaces.chat]\njoin_leave = true\n"
    )
    (tmp_path / "a.json").write_text(
        '{"port": 8001, "presence": true, "namespaces": {"chat": {"join_leave": true}}}'
    )
    (tmp_path / "a.yml").write_text(
        "port: 8001\npresence: true\nnamespaces:\n  chat: {join_leave: true}\n"
    )
    configs = [load_config(tmp_path / name, env={}) for name in ("a.toml", "a.json", "a.yml")]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].namespaces["chat"].join_leave is True


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{", "invalid JSON"),
        ("bad.yaml", "a: [", "invalid YAML"),
        ("list.json", "[1]", "the top level must be an object"),
        ("keys.yaml", "1: true\n", "option names are strings, got 1"),
    ],
)
def test_a_json_or_yaml_file_that_cannot_be_read_names_the_file(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / name, env={})
    assert str(caught.value).startswith(f"{tmp_path / name}: ")
    assert message in str(caught.value)


def test_an_empty_yaml_file_gives_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml", env={}) == Config()


# -- problems -------------------------------------------------------------------------------------


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "client": {"token": {"hmac_secret_key": 5}, "ping_interval": 25, "pong_timout": "5s"},
            "channel": {
                "namespaces": [{"name": "chat", "history_ttl": "soon"}, {"presence": True}]
            },
            "engine": {"type": "nats"},
            "port": 8001,
        },
    )
    assert found == [
        "unknown Centrifugo v6 option client.pong_timout (the file is read as a Centrifugo v6"
        " configuration because of its key client.token)",
        "client.ping_interval: a number is nanoseconds for Centrifugo: write a duration string"
        " such as '25s'",
        "channel.namespaces[1] needs a name",
        "unknown Centrifugo v6 option port (the file is read as a Centrifugo v6 configuration"
        " because of its key client.token)",
        "engine.type: tidings has the memory and redis engines, not 'nats'",
        "token_hmac_secret_key: Expected `str`, got `int` (from client.token.hmac_secret_key)",
        "namespaces.chat.history_ttl: expected a duration such as 25, '25s', '500ms' or '1m30s',"
        " got 'soon' (from channel.namespaces[chat].history_ttl)",
    ]


def test_a_section_that_is_not_an_object_is_a_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, {"log": "debug"}) == ["log must be an object, got 'debug'"]


def test_two_namespaces_of_one_name_are_a_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, {"channel": {"namespaces": [{"name": "a1"}, {"name": "a1"}]}})
    assert found == ["channel.namespaces[a1]: a second item named 'a1'"]


# -- keys read together ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redis", "url"),
    [
        ({}, "redis://127.0.0.1:6379/0"),
        ({"address": "redis.internal:6380"}, "redis://redis.internal:6380/0"),
        ({"address": ["localhost:6379"], "db": 3}, "redis://localhost:6379/3"),
        ({"address": "redis://:pw@host:6379/1", "db": 3}, "redis://:pw@host:6379/1"),
        (
            {"address": "host:6379", "user": "app", "password": "p@ss"},
            "redis://app:p%40ss@host:6379/0",
        ),
        ({"address": "host:6379", "tls": {"enabled": True}}, "rediss://host:6379/0"),
    ],
)
def test_the_redis_engine_becomes_the_broker_url(
    tmp_path: Path, redis: dict[str, Any], url: str
) -> None:
    config, _ = read(tmp_path, {"engine": {"type": "redis", "redis": redis}})
    assert config.broker.url == url


def test_an_enabled_broker_wins_over_the_engine(tmp_path: Path) -> None:
    data = {
        "engine": {"type": "memory"},
        "broker": {"enabled": True, "type": "redis", "redis": {"address": "b:6379"}},
    }
    assert read(tmp_path, data)[0].broker.url == "redis://b:6379/0"
    data["broker"]["enabled"] = False
    assert read(tmp_path, data)[0].broker.url == "memory"


@pytest.mark.parametrize(
    ("redis", "url"),
    [
        ({"cluster_address": ["a:7000", "b:7001"]}, "redis+cluster://a:7000,b:7001"),
        ({"cluster_address": "redis://a:7000"}, "redis+cluster://a:7000"),
        ({"address": "redis+cluster://a:7000,b:7001"}, "redis+cluster://a:7000,b:7001"),
    ],
)
def test_a_redis_cluster_becomes_a_redis_cluster_url(
    tmp_path: Path, redis: dict[str, Any], url: str
) -> None:
    config, warnings = read(tmp_path, {"engine": {"type": "redis", "redis": redis}})
    assert (config.broker.url, warnings) == (url, [])


def test_the_nats_broker_becomes_a_nats_url_and_prefix(tmp_path: Path) -> None:
    nats = {"url": "nats://n1:4222,nats://n2:4222", "prefix": "app"}
    data = {"broker": {"enabled": True, "type": "nats", "nats": nats}}
    config, warnings = read(tmp_path, data)
    assert (config.broker.url, config.broker.prefix, warnings) == (nats["url"], "app", [])
    default = read(tmp_path, {"broker": {"enabled": True, "type": "nats"}})[0].broker
    assert (default.url, default.prefix) == ("nats://localhost:4222", "centrifugo")


def test_nats_is_a_broker_type_not_an_engine_type(tmp_path: Path) -> None:
    found = problems(tmp_path, {"engine": {"type": "nats"}})
    assert found == ["engine.type: tidings has the memory and redis engines, not 'nats'"]


def test_sharded_redis_is_a_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, {"engine": {"type": "redis", "redis": {"address": ["a:1", "b:2"]}}})
    assert found == ["engine.redis.address: tidings uses one Redis, got ['a:1', 'b:2']"]


def test_tls_files_are_read_only_when_tls_is_enabled(tmp_path: Path) -> None:
    tls = {"cert_pem": "/etc/tls/cert.pem", "key_pem": "/etc/tls/key.pem"}
    config, _ = read(tmp_path, {"http_server": {"tls": tls}})
    assert (config.tls_cert, config.tls_key) == ("", "")
    config, _ = read(tmp_path, {"http_server": {"tls": {"enabled": True, **tls}}})
    assert (config.tls_cert, config.tls_key) == ("/etc/tls/cert.pem", "/etc/tls/key.pem")


def test_pem_text_instead_of_a_tls_file_is_a_problem(tmp_path: Path) -> None:
    tls = {"enabled": True, "cert_pem": "-----BEGIN CERTIFICATE-----\n...", "key_pem": "k.pem"}
    assert problems(tmp_path, {"http_server": {"tls": tls}}) == [
        "http_server.tls.cert_pem: tidings reads TLS files: give the path of a PEM file"
    ]


def test_a_named_proxy_of_every_namespace_becomes_the_endpoint(tmp_path: Path) -> None:
    data = {
        "proxies": [{"name": "backend", "endpoint": "http://b/sub", "timeout": "3s"}],
        "channel": {
            "without_namespace": {
                "subscribe_proxy_enabled": True,
                "subscribe_proxy_name": "backend",
            },
            "namespaces": [
                {"name": "chat", "subscribe_proxy_enabled": True, "subscribe_proxy_name": "backend"}
            ],
        },
    }
    config, warnings = read(tmp_path, data)
    assert (config.proxy.subscribe_endpoint, config.proxy.timeout) == ("http://b/sub", 3.0)
    assert warnings == []


def test_a_proxy_asked_by_some_namespaces_only_is_asked_for_every_channel_with_a_warning(
    tmp_path: Path,
) -> None:
    data = {
        "channel": {
            "proxy": {"publish": {"endpoint": "http://b/pub"}},
            "namespaces": [{"name": "chat", "publish_proxy_enabled": True}, {"name": "news"}],
        }
    }
    config, warnings = read(tmp_path, data)
    assert config.proxy.publish_endpoint == "http://b/pub"
    assert warnings == [
        "channel.without_namespace, channel.namespaces[news]: not asking the proxy is not"
        " supported: tidings asks proxy.publish_endpoint (http://b/pub) for every channel"
    ]


def test_two_endpoints_for_one_event_are_a_problem(tmp_path: Path) -> None:
    data = {
        "proxies": [{"name": "other", "endpoint": "http://b/other"}],
        "channel": {
            "proxy": {"subscribe": {"endpoint": "http://b/sub"}},
            "without_namespace": {"subscribe_proxy_enabled": True},
            "namespaces": [
                {"name": "chat", "subscribe_proxy_enabled": True, "subscribe_proxy_name": "other"}
            ],
        },
    }
    assert problems(tmp_path, data) == [
        "tidings has one proxy.subscribe_endpoint for every channel; the Centrifugo file uses"
        " http://b/sub (channel.without_namespace), http://b/other (channel.namespaces[chat])"
    ]


def test_a_missing_named_proxy_is_a_problem(tmp_path: Path) -> None:
    data = {"rpc": {"without_namespace": {"proxy_enabled": True, "proxy_name": "nope"}}}
    assert problems(tmp_path, data) == [
        "rpc.without_namespace.proxy_name: no proxy named 'nope' in proxies"
    ]


def test_different_proxy_timeouts_are_a_problem(tmp_path: Path) -> None:
    proxy = {"enabled": True, "endpoint": "http://b/x"}
    data = {
        "client": {
            "proxy": {"connect": {**proxy, "timeout": "2s"}, "refresh": {**proxy, "timeout": "3s"}}
        }
    }
    assert problems(tmp_path, data) == [
        "client.proxy.connect.timeout and client.proxy.refresh.timeout both set proxy.timeout,"
        " to '2s' and '3s': tidings has one proxy.timeout"
    ]


def test_a_disabled_section_is_not_read(tmp_path: Path) -> None:
    data = {
        "admin": {"enabled": False, "password": "pw", "insecure": True},
        "client": {"proxy": {"connect": {"endpoint": "http://b/connect", "binary_encoding": True}}},
        "sse": {"enabled": False, "handler_prefix": "/sse"},
    }
    config, warnings = read(tmp_path, data)
    assert config.admin.password == ""
    assert config.proxy.connect_endpoint == ""
    assert warnings == []


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("trace", "debug"),
        ("debug", "debug"),
        ("info", "info"),
        ("warn", "warning"),
        ("error", "error"),
        ("none", "critical"),
    ],
)
def test_log_levels_map_to_python_levels(tmp_path: Path, level: str, expected: str) -> None:
    assert read(tmp_path, {"log": {"level": level}})[0].log_level == expected


def test_values_that_ask_for_what_tidings_does_need_no_word(tmp_path: Path) -> None:
    data = {
        "http_server": {"address": "", "internal_port": ""},
        "http_api": {"disabled": True},
        "prometheus": {"enabled": True},
        "health": {"enabled": True},
        "usage_stats": {"disabled": True},
    }
    config, warnings = read(tmp_path, data)
    assert (config.host, config.http_api.port, config.http_api.enabled) == ("0.0.0.0", 9000, False)
    assert warnings == []


def test_unsupported_keys_at_their_centrifugo_default_need_no_word(tmp_path: Path) -> None:
    data = {
        "client": {"concurrency": 0, "expired_sub_close_delay": "25000ms", "insecure": False},
        "websocket": {"compression": False, "write_timeout": "1s"},
        "channel": {"namespace_boundary": ":", "without_namespace": {"allow_recovery": False}},
        "node": {"name": ""},
        "emulation": {"handler_prefix": "/emulation"},
        "broker": {"nats": {"url": "nats://x:4222"}},  # broker.type is not nats
    }
    assert read(tmp_path, data)[1] == []


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"client": {"token": {"audience_regex": "^app$"}}}, "client.token.audience_regex"),
        ({"client": {"token": {"issuer_regex": "^me$"}}}, "client.token.issuer_regex"),
        ({"client": {"token": {"user_id_claim": "uid"}}}, "client.token.user_id_claim"),
        (
            {"client": {"subscription_token": {"enabled": True}}},
            "client.subscription_token.enabled",
        ),
        (
            {"client": {"disallow_anonymous_connection_tokens": True}},
            "client.disallow_anonymous_connection_tokens",
        ),
        ({"channel": {"private_prefix": "private:"}}, "channel.private_prefix"),
        ({"channel": {"namespace_boundary": "/"}}, "channel.namespace_boundary"),
        (
            {"channel": {"without_namespace": {"channel_regex": "^[a-z]+$"}}},
            "channel.without_namespace.channel_regex",
        ),
        (
            {"channel": {"namespaces": [{"name": "chat", "channel_regex": "^chat:[a-z]+$"}]}},
            "channel.namespaces[chat].channel_regex",
        ),
        ({"websocket": {"disabled": True}}, "websocket.disabled"),
    ],
)
def test_an_unsupported_key_that_restricts_access_refuses_the_file(
    tmp_path: Path, data: dict[str, Any], key: str
) -> None:
    """Ignoring it would let in what Centrifugo keeps out: a problem, not a warning."""
    (problem,) = problems(tmp_path, data)
    assert problem.startswith(f"{key}: not supported by tidings, and ignoring it would open")


def test_the_how_to_lists_the_refused_keys_of_the_code() -> None:
    assert centrifugo.markdown_refused() in DOC.read_text()


# -- the tables -----------------------------------------------------------------------------------


def resolves(schema: Any, key: str) -> bool:
    """Whether the generic ``key`` (``a.b[].c``) is a key of ``schema``."""
    for part in re.split(r"\.|(?=\[\])", key):
        if part == "[]":
            if not isinstance(schema, centrifugo.ListOf):
                return False
            schema = schema.item
        elif isinstance(schema, dict) and part in schema:
            schema = schema[part]
        else:
            return False
    return True


def test_every_mapped_key_is_a_centrifugo_key() -> None:
    assert [key for key in centrifugo.MAPPING if not resolves(centrifugo.CENTRIFUGO, key)] == []


def tidings_options() -> set[str]:
    """Every dotted tidings option, ``NAME`` standing for a namespace's name."""
    options = {info.name for info in msgspec.structs.fields(Config)}
    for info in msgspec.structs.fields(Config):
        if isinstance(info.type, type) and issubclass(info.type, msgspec.Struct):
            options |= {f"{info.name}.{field}" for field in info.type.__struct_fields__}
    channel = set(ChannelOptions.__struct_fields__)
    return options | channel | {"namespaces.NAME"} | {f"namespaces.NAME.{n}" for n in channel}


def test_every_mapping_names_tidings_options() -> None:
    known = tidings_options() | {"proxy.*_endpoint", ""}
    named = {option for rule in centrifugo.MAPPING.values() for option in rule.option.split(", ")}
    assert named - known == set()


def test_every_channel_option_of_tidings_is_read_within_and_without_namespaces() -> None:
    for name in ChannelOptions.__struct_fields__:
        assert centrifugo.MAPPING[f"channel.without_namespace.{name}"].option == name
        assert (
            centrifugo.MAPPING[f"channel.namespaces[].{name}"].option == f"namespaces.NAME.{name}"
        )


def test_the_how_to_holds_the_tables_of_the_code() -> None:
    """docs/how-to/centrifugo.md shows both tables; regenerate them with
    ``python -c "from tidings.app import centrifugo as c; print(c.markdown_table());
    print(c.markdown_unsupported())"``."""
    text = DOC.read_text()
    assert centrifugo.markdown_table() in text
    assert centrifugo.markdown_unsupported() in text


# -- serving a Centrifugo file --------------------------------------------------------------------


class Publications(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[PublicationContext] = asyncio.Queue()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.queue.put_nowait(ctx)


@pytest.mark.slow
async def test_serve_with_the_centrifugo_fixture_accepts_a_client_with_an_hmac_token(
    tmp_path: Path, redis_url: str
) -> None:
    """The fixture, with its Redis, ports and backend made the test's own: a client with a
    token signed by ``client.token.hmac_secret_key`` subscribes, publishes and calls RPC
    through the proxies of the file."""
    calls: list[tuple[str, dict[str, Any]]] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append((request.match_info["event"], body))
        result: dict[str, Any] = {}
        if request.match_info["event"] == "rpc":
            result = {"data": {"echo": body["data"]}}
        return web.json_response({"result": result})

    backend = web.Application()
    backend.router.add_post("/centrifugo/{event}", answer)
    runner = web.AppRunner(backend)
    await runner.setup()
    backend_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()

    port, api_port = free_port(), free_port()
    text = FIXTURE.read_text().replace("http://backend:3000", f"http://127.0.0.1:{backend_port}")
    data = json.loads(text)
    data["http_server"].update(port=port, internal_port=str(api_port))
    data["engine"]["redis"]["address"] = redis_url
    # The connect proxy stays on: as in Centrifugo, a client with a token never reaches it.
    path = write(tmp_path, data)
    serving = Serving(["--config", str(path)], cli_environment())
    try:
        await asyncio.to_thread(serving.wait_for, " serving ws://")
        warned = serving.wait_for("not supported by tidings", count=len(FIXTURE_WARNINGS))
        assert all("WARNING tidings.config: " in line for line in warned)
        claims = {"sub": "42", "aud": "chat-app", "exp": int(time.time()) + 60}  # client.token
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        client = Client(f"ws://127.0.0.1:{port}/connection/websocket", token=token)
        await asyncio.wait_for(client.connect(), 10)
        events = Publications()
        sub = client.new_subscription("chat:room", events)
        await asyncio.wait_for(sub.subscribe(), 10)
        await asyncio.wait_for(sub.publish({"text": "hello"}), 10)
        publication = await asyncio.wait_for(events.queue.get(), 10)
        assert publication.pub.data == {"text": "hello"}
        rpc = await asyncio.wait_for(client.rpc("whoami", {"n": 1}), 10)
        assert rpc.data == {"echo": {"n": 1}}
        await client.disconnect()
    finally:
        assert serving.stop() == 0
        await runner.cleanup()
    assert [(event, body["user"]) for event, body in calls] == [
        ("subscribe", "42"),
        ("publish", "42"),
        ("rpc", "42"),
    ]
    assert calls[0][1]["channel"] == "chat:room"


def test_the_sub_refresh_proxy_of_the_namespaces_is_the_sub_refresh_endpoint(
    tmp_path: Path,
) -> None:
    data = {
        "channel": {
            "proxy": {"sub_refresh": {"endpoint": "http://backend/sub_refresh"}},
            "without_namespace": {"sub_refresh_proxy_enabled": True},
            "namespaces": [{"name": "chat", "sub_refresh_proxy_enabled": True}],
        }
    }
    config, warnings = read(tmp_path, data)
    assert config.proxy.sub_refresh_endpoint == "http://backend/sub_refresh"
    assert warnings == []
