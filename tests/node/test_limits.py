"""Every limit, configured small and hit, on a real hub with raw WebSocket clients.

Handshake limits (``connection_limit``, ``connection_rate_limit``, ``allowed_origins``)
answer with an HTTP status (``InvalidStatus``); per-connection limits with a close code
(1009, 3504, 3013) or a command error (106, 107, 111). TLS is served from a
certificate made by ``trustme``. The last tests check that a default configuration
opens nothing.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin

from tidings import Config, Hub, load_config, make_token
from tidings.node.limits import Turns

from ..conftest import SECRET, HubFactory, eventually
from ..wsclient import closed_with, receive

TIMEOUT = 5


# --- raw client helpers ---------------------------------------------------------------


async def replies(ws: ClientConnection, count: int) -> dict[int, dict[str, Any]]:
    """The next ``count`` replies (messages with an id), by id; pushes are skipped."""
    found: dict[int, dict[str, Any]] = {}
    while len(found) < count:
        for message in await receive(ws):
            if message.get("id"):
                found[message["id"]] = message
    return found


async def reply(ws: ClientConnection, command: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(command))
    return (await replies(ws, 1))[command["id"]]


async def connected(hub: Hub, user: str | None = None, **kwargs: Any) -> ClientConnection:
    """A connected client: with a token for ``user``, or anonymous (``None``)."""
    ws = await connect(hub.url, open_timeout=TIMEOUT, **kwargs)
    token = make_token(SECRET, user) if user is not None else ""
    answer = await reply(ws, {"id": 1, "connect": {"token": token} if token else {}})
    assert "connect" in answer, answer
    return ws


async def handshake_status(url: str, **kwargs: Any) -> int:
    """101 when the WebSocket opened (then closed again), else the HTTP status."""
    try:
        ws = await connect(url, open_timeout=TIMEOUT, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


def open_hub(make_hub: HubFactory, **overrides: Any) -> Any:
    """A hub where any client may subscribe and publish (limits are what is tested)."""
    return make_hub(
        **{
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
            "http_api.enabled": False,
            **overrides,
        }
    )


# --- message size, channels -----------------------------------------------------------


async def test_a_message_over_max_message_size_closes_with_1009_and_a_smaller_one_passes(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.max_message_size": 512})
    ws = await connected(hub, "u")
    small = {"id": 2, "publish": {"channel": "a", "data": "x" * 300}}
    assert (await reply(ws, small)) == {"id": 2, "publish": {}}
    await ws.send(json.dumps({"id": 3, "publish": {"channel": "a", "data": "x" * 600}}))
    assert (await closed_with(ws))[0] == 1009
    await eventually(lambda: hub.node.num_clients == 0)


async def test_subscribing_past_channel_limit_gets_error_106_and_the_connection_stays(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.channel_limit": 3})
    ws = await connected(hub, "u")
    await ws.send(
        "\n".join(json.dumps({"id": n, "subscribe": {"channel": f"c{n}"}}) for n in range(2, 6))
    )
    answers = await replies(ws, 4)
    assert [("subscribe" in answers[n]) for n in (2, 3, 4)] == [True, True, True]
    assert answers[5]["error"]["code"] == 106
    # Leaving one frees a slot; the connection is still usable.
    assert (await reply(ws, {"id": 6, "unsubscribe": {"channel": "c2"}})) == {
        "id": 6,
        "unsubscribe": {},
    }
    assert "subscribe" in await reply(ws, {"id": 7, "subscribe": {"channel": "c5"}})
    await ws.close()


@pytest.mark.parametrize(
    "channel",
    ["x" * 17, "caf\u00e9", "\u0444", "a b", "tab\tbed", "emoji\U0001f600"],
    ids=["too-long", "latin1", "cyrillic", "space", "tab", "emoji"],
)
async def test_a_too_long_or_non_ascii_channel_name_gets_error_107(
    make_hub: HubFactory, channel: str
) -> None:
    hub = await open_hub(make_hub, **{"client.channel_max_length": 16})
    ws = await connected(hub, "u")
    for command_id, method in enumerate(("subscribe", "publish"), start=2):
        request: dict[str, Any] = {"channel": channel}
        if method == "publish":
            request["data"] = {}
        answer = await reply(ws, {"id": command_id, method: request})
        assert answer["error"]["code"] == 107, answer
    # 16 printable ASCII characters are fine.
    assert "subscribe" in await reply(ws, {"id": 9, "subscribe": {"channel": "y" * 16}})
    assert hub.node.channels() == {"y" * 16: 1}
    await ws.close()


# --- connections ----------------------------------------------------------------------


async def test_connection_limit_refuses_the_handshake_with_503_until_a_slot_frees(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.connection_limit": 2})
    first = await connected(hub, "u1")
    second = await connected(hub, "u2")
    with pytest.raises(InvalidStatus) as refused:
        await connect(hub.url, open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 503
    assert first.close_code is None and second.close_code is None
    await first.close()
    await eventually(lambda: len(hub.server.clients) < 2)
    third = await connected(hub, "u3")
    assert "subscribe" in await reply(third, {"id": 2, "subscribe": {"channel": "a"}})
    await second.close()
    await third.close()


async def test_concurrent_handshakes_never_exceed_connection_limit(make_hub: HubFactory) -> None:
    hub = await open_hub(make_hub, **{"client.connection_limit": 5})

    async def attempt() -> ClientConnection | int:
        try:
            return await connect(hub.url, open_timeout=TIMEOUT)
        except InvalidStatus as exc:
            return exc.response.status_code

    outcomes = await asyncio.gather(*(attempt() for _ in range(40)))
    opened = [o for o in outcomes if not isinstance(o, int)]
    assert len(opened) == 5
    assert sorted(set(o for o in outcomes if isinstance(o, int))) == [503]
    assert len(hub.server.clients) == 5
    for ws in opened:
        await ws.close()


async def test_user_connection_limit_closes_the_extra_connection_with_3504_only(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.user_connection_limit": 2})
    first = await connected(hub, "alice")
    second = await connected(hub, "alice")
    other = await connected(hub, "bob")  # other users are not counted against alice
    extra = await connect(hub.url, open_timeout=TIMEOUT)
    await extra.send(json.dumps({"id": 1, "connect": {"token": make_token(SECRET, "alice")}}))
    assert (await closed_with(extra))[0] == 3504
    for n, ws in enumerate((first, second, other), start=2):
        assert "subscribe" in await reply(ws, {"id": n, "subscribe": {"channel": f"c{n}"}})
        assert ws.close_code is None
    # When one of alice's connections ends, she may connect again.
    await first.close()
    await eventually(lambda: len(hub.node.user_clients("alice")) < 2)
    again = await connected(hub, "alice")
    await again.close()
    await second.close()
    await other.close()


@pytest.mark.slow
async def test_connection_rate_limit_refuses_a_burst_with_503_and_later_connections_pass(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.connection_rate_limit": 2})  # burst of 2
    statuses = [await handshake_status(hub.url) for _ in range(5)]
    assert statuses[:2] == [101, 101]
    assert 503 in statuses[2:]
    await asyncio.sleep(0.6)  # more than one token is back at 2 per second
    assert await handshake_status(hub.url) == 101


# --- commands -------------------------------------------------------------------------


def publishes(first_id: int, count: int) -> str:
    return "\n".join(
        json.dumps({"id": n, "publish": {"channel": "a", "data": {"n": n}}})
        for n in range(first_id, first_id + count)
    )


async def test_a_command_flood_gets_error_111_then_closes_with_3013(make_hub: HubFactory) -> None:
    # 5 per second in bursts of 10: the connect and 9 publishes pass, the next 10 get
    # 111, and the 11th refusal in a row closes the connection.
    hub = await open_hub(make_hub, **{"client.command_rate_limit": 5})
    ws = await connected(hub, "u")
    await ws.send(publishes(2, 40))
    answered: list[dict[str, Any]] = []
    try:
        while True:
            answered += [m for m in await receive(ws) if m.get("id")]
    except ConnectionClosed:
        pass
    assert ws.close_code == 3013
    codes = [m["error"]["code"] if "error" in m else 0 for m in answered]
    # (A slow machine may earn a token back during the flood: one more success, and
    # the ten refusals that close the connection come after it.)
    assert codes[:9] == [0] * 9 and codes[-10:] == [111] * 10 and len(codes) <= 21, codes
    assert all(m["error"]["temporary"] for m in answered if "error" in m)


@pytest.mark.slow
async def test_a_refused_command_is_retried_successfully_once_the_rate_allows(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.command_rate_limit": 5})
    ws = await connected(hub, "u")
    await ws.send(publishes(2, 12))  # 9 pass, 3 refused: not enough to be closed
    answers = await replies(ws, 12)
    refused = sorted(n for n, m in answers.items() if "error" in m)
    assert refused == [11, 12, 13] or refused == [12, 13], refused  # a token may come back
    assert {answers[n]["error"]["code"] for n in refused} == {111}
    await asyncio.sleep(0.5)  # 2.5 tokens back
    assert await reply(ws, {"id": 20, "publish": {"channel": "a", "data": {}}}) == {
        "id": 20,
        "publish": {},
    }
    assert ws.close_code is None
    await ws.close()


@pytest.mark.slow
async def test_a_client_under_command_rate_limit_is_never_refused_even_next_to_a_flooder(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub, **{"client.command_rate_limit": 20})  # bursts of 40
    polite = await connected(hub, "polite")
    flooder = await connected(hub, "flooder")
    await flooder.send(publishes(2, 200))  # the flooder's own bucket empties, not polite's
    await polite.send(publishes(2, 30))  # a burst under 40
    answers = list((await replies(polite, 30)).values())
    next_id = 32
    for _ in range(10):  # then 10 commands per second, half the rate, for 1 s
        await asyncio.sleep(0.2)
        await polite.send(publishes(next_id, 2))
        answers += (await replies(polite, 2)).values()
        next_id += 2
    assert len(answers) == 50
    assert [a for a in answers if "error" in a] == []
    assert polite.close_code is None
    assert (await closed_with(flooder))[0] == 3013
    await polite.close()


# --- origins --------------------------------------------------------------------------


async def test_default_origins_allow_no_origin_and_the_same_host_and_refuse_others_with_403(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(make_hub)
    assert hub.config.allowed_origins == []
    same_host = Origin(f"http://127.0.0.1:{hub.port}")
    assert await handshake_status(hub.url) == 101
    assert await handshake_status(hub.url, origin=same_host) == 101
    for foreign in (
        "http://evil.example",
        f"http://127.0.0.1:{hub.port + 1}",
        f"http://127.0.0.1.evil.example:{hub.port}",
        "null",
    ):
        assert await handshake_status(hub.url, origin=Origin(foreign)) == 403, foreign


async def test_allowed_origins_patterns_admit_matching_pages_and_refuse_others_with_403(
    make_hub: HubFactory,
) -> None:
    hub = await open_hub(
        make_hub, allowed_origins=["https://app.example.com", "https://*.example.org"]
    )
    for allowed in ("https://app.example.com", "https://a.example.org", "HTTPS://B.EXAMPLE.ORG"):
        assert await handshake_status(hub.url, origin=Origin(allowed)) == 101, allowed
    assert await handshake_status(hub.url) == 101  # no Origin: not a browser
    for foreign in (
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com.evil.example",
        "https://example.org",
        "https://a.example.org.evil.example",
        f"http://127.0.0.1:{hub.port}",  # the same host is no longer implied
    ):
        assert await handshake_status(hub.url, origin=Origin(foreign)) == 403, foreign


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Any, Path, Path]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return ca, cert_path, key_path


async def test_tls_serves_wss_to_a_client_trusting_the_ca_and_refuses_plain_ws(
    make_hub: HubFactory, tls_files: tuple[Any, Path, Path]
) -> None:
    ca, cert_path, key_path = tls_files
    hub = await open_hub(make_hub, tls_cert=str(cert_path), tls_key=str(key_path))
    path = "/connection/websocket"
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    async with connect(f"wss://127.0.0.1:{hub.port}{path}", ssl=context) as ws:
        answer = await reply(ws, {"id": 1, "connect": {"token": make_token(SECRET, "u")}})
        assert "connect" in answer
        assert "subscribe" in await reply(ws, {"id": 2, "subscribe": {"channel": "a"}})
    # A client that does not trust the CA is refused by its own TLS check.
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(f"wss://127.0.0.1:{hub.port}{path}", open_timeout=TIMEOUT)
    # Plain ws:// to the TLS port never opens a WebSocket.
    with pytest.raises((InvalidHandshake, OSError)):
        await connect(f"ws://127.0.0.1:{hub.port}{path}", open_timeout=TIMEOUT)
    await eventually(lambda: len(hub.server.clients) == 0)


async def test_the_hub_url_says_wss_when_tls_is_on(
    make_hub: HubFactory, tls_files: tuple[Any, Path, Path]
) -> None:
    _, cert_path, key_path = tls_files
    hub = await open_hub(make_hub, tls_cert=str(cert_path), tls_key=str(key_path))
    assert hub.url.startswith("wss://")


# --- safe defaults --------------------------------------------------------------------


def test_a_default_config_opens_nothing() -> None:
    config = Config()
    for options in (config.channel, load_config(env={}).channel):
        allows = {k: v for k, v in msgspec.structs.asdict(options).items() if k.startswith("allow")}
        assert not any(allows.values()), allows
    assert config.client.allow_anonymous_connect_without_token is False
    assert config.http_api.insecure is False and config.http_api.key == ""
    assert config.allowed_origins == [] and config.dev is False
    assert config.namespaces == {}


async def test_a_default_config_denies_subscribe_publish_presence_and_history_to_clients(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    # Without the token, nobody may even connect.
    anonymous = await connect(hub.url, open_timeout=TIMEOUT)
    await anonymous.send('{"id":1,"connect":{}}')
    assert (await closed_with(anonymous))[0] == 3501
    ws = await connected(hub, "u")
    await ws.send(
        "\n".join(
            json.dumps(c)
            for c in (
                {"id": 2, "subscribe": {"channel": "news"}},
                {"id": 3, "publish": {"channel": "news", "data": {}}},
                {"id": 4, "presence": {"channel": "news"}},
                {"id": 5, "presence_stats": {"channel": "news"}},
                {"id": 6, "history": {"channel": "news"}},
                {"id": 7, "subscribe": {"channel": "chat:news"}},
            )
        )
    )
    codes = {n: m["error"]["code"] for n, m in (await replies(ws, 6)).items()}
    # 108: presence and history are off by default; 102: no namespace is configured.
    assert codes == {2: 103, 3: 103, 4: 108, 5: 108, 6: 108, 7: 102}
    assert hub.node.channels() == {}
    await ws.close()


async def test_with_presence_and_history_on_but_no_allow_option_clients_and_anonymous_get_103(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        presence=True,
        history_size=10,
        history_ttl=60,
        allow_subscribe_for_client=True,
        allow_publish_for_client=True,
        allow_presence_for_client=True,
        allow_history_for_client=True,
        **{"client.allow_anonymous_connect_without_token": True, "http_api.enabled": False},
    )
    commands = [
        {"id": 3, "publish": {"channel": "n", "data": {}}},
        {"id": 4, "presence": {"channel": "n"}},
        {"id": 5, "presence_stats": {"channel": "n"}},
        {"id": 6, "history": {"channel": "n"}},
        {"id": 2, "subscribe": {"channel": "n"}},
    ]
    frame = "\n".join(json.dumps(c) for c in commands)
    # An anonymous client needs the _for_anonymous options too.
    anonymous = await connected(hub)
    await anonymous.send(frame)
    answers = await replies(anonymous, 5)
    assert {n: m["error"]["code"] for n, m in answers.items()} == dict.fromkeys(range(2, 7), 103)
    # The same commands pass for a client with a token.
    ws = await connected(hub, "u")
    await ws.send(frame)
    assert [m for m in (await replies(ws, 5)).values() if "error" in m] == []
    await anonymous.close()
    await ws.close()


# -- turns per loop iteration (a reconnect storm must not hold the loop) --------------------------


async def test_turns_let_a_quota_of_callers_go_on_per_loop_iteration_in_arrival_order() -> None:
    turns = Turns(3)
    iteration = 0
    went: list[tuple[int, int]] = []  # (caller, iteration it went on in)

    async def caller(n: int) -> None:
        await turns.take()
        went.append((n, iteration))

    async def count_iterations() -> None:
        nonlocal iteration
        while True:
            await asyncio.sleep(0)
            iteration += 1

    counter = asyncio.create_task(count_iterations())
    await asyncio.sleep(0)
    await asyncio.gather(*(caller(n) for n in range(10)))
    counter.cancel()
    assert [n for n, _ in went] == list(range(10))
    per_iteration: dict[int, int] = {}
    for _, it in went:
        per_iteration[it] = per_iteration.get(it, 0) + 1
    assert max(per_iteration.values()) <= 3, went
    assert len(per_iteration) >= 4, went


async def test_turns_do_not_make_a_caller_wait_below_the_quota_and_skip_cancelled_waiters() -> None:
    turns = Turns(1)
    await asyncio.wait_for(turns.take(), 0.1)  # below the quota: no wait at all
    await asyncio.sleep(0)  # a new iteration: the quota is free again
    first, second, third = (asyncio.create_task(turns.take()) for _ in range(3))
    await asyncio.sleep(0)  # all three asked in that iteration: the first went on
    assert first.done() and not second.done() and not third.done()
    second.cancel()
    await asyncio.wait_for(third, 1.0)  # the cancelled one is skipped, the next goes on
    assert second.cancelled()
