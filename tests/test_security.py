"""Authentication and authorisation, attacked from a raw WebSocket client and raw HTTP.

Tokens are forged by hand (``alg: none``, HS256 signed with the RSA public key,
wrong audience or issuer, another user's or channel's subscription token), channels
are tried without the right (``$`` private, ``#`` user-limited, publish), and the HTTP
API is called with wrong keys. A Hypothesis property test draws random channel
permissions and client actions and checks, against a model of Centrifugo's rules
written independently of the hub, that no client ever gets a publication of a
channel it was not allowed to subscribe to.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tidings import Hub, MessageEvent, load_config, make_token
from tidings.api import http as _api

from .conftest import API_KEY, SECRET, HubFactory
from .wsclient import closed_with, receive

TIMEOUT = 5
INVALID_TOKEN, BAD_REQUEST = 3500, 3501
PERMISSION_DENIED, TOKEN_EXPIRED, UNKNOWN_CHANNEL = 103, 109, 102


# --- helpers --------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand: HMAC-SHA256 signed with ``hmac_key``, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


async def answer(ws: ClientConnection, command: dict[str, Any]) -> dict[str, Any]:
    """Send one command; return its reply (pushes before it are dropped)."""
    await ws.send(json.dumps(command))
    while True:
        for message in await receive(ws):
            if message.get("id") == command["id"]:
                return message


async def connect_with(hub: Hub, token: str) -> ClientConnection:
    ws = await connect(hub.url, open_timeout=TIMEOUT)
    await ws.send(json.dumps({"id": 1, "connect": {"token": token} if token else {}}))
    return ws


async def connected(hub: Hub, user: str | None) -> ClientConnection:
    ws = await connect_with(hub, make_token(SECRET, user) if user is not None else "")
    (reply,) = await receive(ws)
    assert "connect" in reply, reply
    return ws


async def refused_with(hub: Hub, token: str) -> int | None:
    """How a connect with ``token`` ends: a close code, or the error code of its reply."""
    ws = await connect_with(hub, token)
    try:
        (reply,) = await receive(ws)
    except ConnectionClosed:
        return ws.close_code
    await ws.close()
    assert "error" in reply, reply
    return int(reply["error"]["code"])


async def connects(hub: Hub, token: str) -> bool:
    ws = await connect_with(hub, token)
    try:
        (reply,) = await receive(ws)
    except ConnectionClosed:
        return False
    await ws.close()
    return "connect" in reply


@pytest.fixture(scope="module")
def rsa_key() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public_pem


# --- connection tokens ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
@pytest.mark.parametrize("signature", ["", "junk"])
async def test_a_token_with_alg_none_closes_with_3500(
    make_hub: HubFactory, alg: str, signature: str
) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    token = forge({"alg": alg, "typ": "JWT"}, {"sub": "admin"}, None) + signature
    assert await refused_with(hub, token) == INVALID_TOKEN
    assert await connects(hub, hs256({"sub": "admin"}))  # a genuine token does connect


@pytest.mark.parametrize("with_hmac_secret", [False, True], ids=["rsa-only", "rsa-and-hmac"])
async def test_an_hs256_token_signed_with_the_rsa_public_key_closes_with_3500(
    make_hub: HubFactory, rsa_key: tuple[rsa.RSAPrivateKey, str], with_hmac_secret: bool
) -> None:
    private, public_pem = rsa_key
    hub = await make_hub(
        token_rsa_public_key=public_pem,
        # 64 bytes: long enough for HS512 (PyJWT warns about shorter HMAC keys).
        token_hmac_secret_key="k" * 64 if with_hmac_secret else "",
        **{"http_api.enabled": False},
    )
    genuine = jwt.encode({"sub": "admin"}, private, algorithm="RS256")
    assert await connects(hub, genuine)
    for key in (public_pem.encode(), public_pem.strip().encode()):
        for alg in ("HS256", "HS384", "HS512"):  # HS384/512 headers with an SHA256 MAC
            forged = forge({"alg": alg, "typ": "JWT"}, {"sub": "admin"}, key)
            assert await refused_with(hub, forged) == INVALID_TOKEN, alg


async def test_a_token_signed_with_another_secret_closes_with_3500(make_hub: HubFactory) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    assert await refused_with(hub, hs256({"sub": "u"}, "another-secret-" * 3)) == INVALID_TOKEN
    assert await refused_with(hub, "not.a.token") == INVALID_TOKEN
    assert await refused_with(hub, hs256({"user": "no sub claim"})) == INVALID_TOKEN


async def test_an_expired_connection_token_gets_error_109_and_the_connection_is_then_unusable(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    ws = await connect_with(hub, hs256({"sub": "u", "exp": int(time.time()) - 10}))
    (reply,) = await receive(ws)
    assert reply["error"]["code"] == TOKEN_EXPIRED  # the SDKs fetch a new token
    await ws.send('{"id":2,"subscribe":{"channel":"a"}}')
    assert (await closed_with(ws))[0] == BAD_REQUEST  # as after any refused connect


async def test_a_not_yet_valid_token_gets_error_109_as_in_centrifugo(make_hub: HubFactory) -> None:
    # Centrifugo's jwtverify returns ErrTokenExpired when nbf is in the future, and
    # tidings' _auth documents the same ("expired or not valid yet (error 109)").
    hub = await make_hub(allow_subscribe_for_client=True, **{"http_api.enabled": False})
    soon = int(time.time()) + 600
    assert await refused_with(hub, hs256({"sub": "u", "nbf": soon})) == TOKEN_EXPIRED
    ws = await connected(hub, "u")
    token = hs256({"sub": "u", "channel": "$c", "nbf": soon})
    reply = await answer(ws, {"id": 2, "subscribe": {"channel": "$c", "token": token}})
    assert reply["error"]["code"] == TOKEN_EXPIRED
    await ws.close()


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"aud": "tidings", "iss": "https://auth.example"}, True),
        ({"aud": ["other", "tidings"], "iss": "https://auth.example"}, True),
        ({"aud": "other", "iss": "https://auth.example"}, False),
        ({"aud": ["other"], "iss": "https://auth.example"}, False),
        ({"iss": "https://auth.example"}, False),
        ({"aud": "tidings", "iss": "https://evil.example"}, False),
        ({"aud": "tidings"}, False),
        ({"aud": "Tidings", "iss": "https://auth.example"}, False),
    ],
    ids=[
        "right",
        "aud-list",
        "wrong-aud",
        "wrong-aud-list",
        "no-aud",
        "wrong-iss",
        "no-iss",
        "aud-case",
    ],
)
async def test_audience_and_issuer_are_enforced_when_configured(
    make_hub: HubFactory, claims: dict[str, Any], accepted: bool
) -> None:
    hub = await make_hub(
        token_audience="tidings",
        token_issuer="https://auth.example",
        **{"http_api.enabled": False},
    )
    token = hs256({"sub": "u", **claims})
    if accepted:
        assert await connects(hub, token)
    else:
        assert await refused_with(hub, token) == INVALID_TOKEN


async def test_a_subscription_token_is_not_a_connection_token_and_vice_versa(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    assert await refused_with(hub, make_token(SECRET, "u", channel="$c")) == INVALID_TOKEN
    ws = await connected(hub, "u")
    await ws.send(
        json.dumps({"id": 2, "subscribe": {"channel": "$c", "token": make_token(SECRET, "u")}})
    )
    assert (await closed_with(ws))[0] == INVALID_TOKEN


async def test_a_refresh_with_another_users_token_closes_with_3500(make_hub: HubFactory) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    ws = await connected(hub, "alice")
    await ws.send(json.dumps({"id": 2, "refresh": {"token": make_token(SECRET, "mallory")}}))
    assert (await closed_with(ws))[0] == INVALID_TOKEN


# --- subscription tokens and channel kinds --------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "bob", "channel": "$room"},
        {"sub": "alice", "channel": "$other"},
        {"sub": "alice", "channel": "$room", "client": "someone-else"},
        {"sub": "", "channel": "$room"},
    ],
    ids=["other-user", "other-channel", "other-client", "anonymous"],
)
async def test_a_subscription_token_for_another_user_channel_or_client_closes_with_3500(
    make_hub: HubFactory, claims: dict[str, Any]
) -> None:
    hub = await make_hub(**{"http_api.enabled": False})
    ws = await connected(hub, "alice")
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "$room", "token": hs256(claims)}}))
    assert (await closed_with(ws))[0] == INVALID_TOKEN
    assert hub.node.channels() == {}
    # The right token works.
    ok = await connected(hub, "alice")
    token = make_token(SECRET, "alice", channel="$room")
    assert "subscribe" in await answer(
        ok, {"id": 2, "subscribe": {"channel": "$room", "token": token}}
    )
    await ok.close()


async def test_a_private_channel_without_a_token_gets_103_whatever_the_options(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        allow_subscribe_for_client=True,
        allow_subscribe_for_anonymous=True,
        **{
            "namespaces.chat.allow_subscribe_for_client": True,
            "client.allow_anonymous_connect_without_token": True,
            "http_api.enabled": False,
        },
    )
    for user in ("alice", None):
        ws = await connected(hub, user)
        for n, channel in enumerate(("$room", "$chat:room", "$"), start=2):
            reply = await answer(ws, {"id": n, "subscribe": {"channel": channel}})
            assert reply["error"]["code"] == PERMISSION_DENIED, (user, channel)
        await ws.close()
    assert hub.node.channels() == {}


async def test_a_user_limited_channel_of_other_users_gets_103(make_hub: HubFactory) -> None:
    hub = await make_hub(
        **{
            "namespaces.dm.allow_user_limited_channels": True,
            "namespaces.dm.allow_subscribe_for_client": True,
            "namespaces.dm.allow_subscribe_for_anonymous": True,
            "client.allow_anonymous_connect_without_token": True,
            "http_api.enabled": False,
        }
    )
    alice = await connected(hub, "alice")
    for n, channel in enumerate(("dm:x#bob,carol", "dm:x#bob", "dm:x#alicex", "dm:x#"), start=2):
        reply = await answer(alice, {"id": n, "subscribe": {"channel": channel}})
        assert reply["error"]["code"] == PERMISSION_DENIED, channel
    assert "subscribe" in await answer(alice, {"id": 9, "subscribe": {"channel": "dm:x#bob,alice"}})
    anonymous = await connected(hub, None)
    for n, channel in enumerate(("dm:x#", "dm:x#,", "dm:x#bob"), start=2):
        reply = await answer(anonymous, {"id": n, "subscribe": {"channel": channel}})
        assert reply["error"]["code"] == PERMISSION_DENIED, channel
    assert hub.node.channels() == {"dm:x#bob,alice": 1}
    await alice.close()
    await anonymous.close()


# --- publish --------------------------------------------------------------------------


async def test_publishing_where_the_client_may_not_gets_103_and_reaches_nobody(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        allow_subscribe_for_client=True,
        **{
            "namespaces.room.allow_subscribe_for_client": True,
            "namespaces.room.allow_publish_for_subscriber": True,
            "http_api.enabled": False,
        },
    )
    listener = await connected(hub, "listener")
    for n, channel in enumerate(("news", "room:a"), start=2):
        assert "subscribe" in await answer(listener, {"id": n, "subscribe": {"channel": channel}})
    ws = await connected(hub, "u")
    # news: nobody may publish; room:a: only subscribers, and u is not one yet.
    for n, channel in enumerate(("news", "room:a", "$news"), start=2):
        reply = await answer(ws, {"id": n, "publish": {"channel": channel, "data": {"n": n}}})
        assert reply["error"]["code"] == PERMISSION_DENIED, channel
    assert "subscribe" in await answer(ws, {"id": 5, "subscribe": {"channel": "room:a"}})
    assert await answer(ws, {"id": 6, "publish": {"channel": "room:a", "data": {"ok": 1}}}) == {
        "id": 6,
        "publish": {},
    }
    # The listener got exactly the allowed publication.
    assert await publications_until_barrier(listener) == [("room:a", {"ok": 1})]
    await listener.close()
    await ws.close()


async def publications_until_barrier(ws: ClientConnection) -> list[tuple[str, Any]]:
    """Publications pushed to ``ws`` before the reply to a command sent now."""
    await ws.send('{"id":999,"rpc":{"method":"barrier"}}')
    found: list[tuple[str, Any]] = []
    while True:
        messages = await receive(ws)
        found += [
            (m["push"]["channel"], m["push"]["pub"]["data"])
            for m in messages
            if "pub" in m.get("push", {})
        ]
        if any(m.get("id") == 999 for m in messages):
            return found


async def test_the_listener_of_a_refused_publish_receives_nothing(make_hub: HubFactory) -> None:
    hub = await make_hub(allow_subscribe_for_client=True, **{"http_api.enabled": False})
    listener = await connected(hub, "listener")
    assert "subscribe" in await answer(listener, {"id": 2, "subscribe": {"channel": "news"}})
    ws = await connected(hub, "u")
    reply = await answer(ws, {"id": 2, "publish": {"channel": "news", "data": {"x": 1}}})
    assert reply["error"]["code"] == PERMISSION_DENIED
    await hub.publish("news", {"from": "server"})
    assert await publications_until_barrier(listener) == [("news", {"from": "server"})]
    await listener.close()
    await ws.close()


async def test_an_anonymous_subscriber_needs_allow_publish_for_anonymous_to_publish(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        allow_subscribe_for_client=True,
        allow_subscribe_for_anonymous=True,
        allow_publish_for_subscriber=True,
        **{"client.allow_anonymous_connect_without_token": True, "http_api.enabled": False},
    )
    ws = await connected(hub, None)
    assert "subscribe" in await answer(ws, {"id": 2, "subscribe": {"channel": "a"}})
    reply = await answer(ws, {"id": 3, "publish": {"channel": "a", "data": {}}})
    await ws.close()
    assert reply.get("error", {}).get("code") == PERMISSION_DENIED, reply


# --- hostile input ----------------------------------------------------------------------


async def test_deeply_nested_json_closes_with_3501_not_an_internal_error(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(allow_publish_for_client=True, **{"http_api.enabled": False})
    ws = await connected(hub, "u")
    depth = 3000  # 6 KB: far below max_message_size
    await ws.send('{"id":2,"publish":{"channel":"a","data":' + "[" * depth + "]" * depth + "}}")
    assert (await closed_with(ws))[0] == BAD_REQUEST


async def test_a_send_with_an_id_is_handled_like_any_send_and_never_answered(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(allow_subscribe_for_client=True, **{"http_api.enabled": False})
    messages: list[MessageEvent] = []

    @hub.on_message
    async def record(event: MessageEvent) -> None:
        messages.append(event)

    ws = await connected(hub, "u")
    await ws.send('{"id":2,"send":{"data":{}}}\n{"id":3,"subscribe":{"channel":"a"}}')
    reply = await answer_to(ws, 3)
    assert "subscribe" in reply
    assert [m.data for m in messages] == [{}]
    await ws.close()


# --- the HTTP API ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"headers": {"X-API-Key": "wrong"}},
        {"headers": {"X-API-Key": API_KEY[:-1]}},
        {"headers": {"X-API-Key": API_KEY + "x"}},
        {"headers": {"X-API-Key": API_KEY.upper()}},
        {"headers": {"Authorization": "apikey wrong"}},
        {"headers": {"Authorization": f"Bearer {API_KEY}"}},
        {"params": {"api_key": "wrong"}},
    ],
    ids=[
        "missing",
        "wrong",
        "prefix",
        "longer",
        "case",
        "authorization",
        "bearer",
        "query",
    ],
)
async def test_an_api_call_with_a_wrong_or_missing_key_gets_401_with_an_empty_body(
    make_hub: HubFactory, auth: dict[str, Any]
) -> None:
    hub = await make_hub()
    body = {"channel": "a", "data": {"x": 1}}
    async with aiohttp.ClientSession() as session:
        for path in ("/publish", "/batch", "/info"):
            payload = {"commands": [{"publish": body}]} if path == "/batch" else body
            async with session.post(hub.api_url + path, json=payload, **auth) as response:
                assert response.status == 401, path
                assert await response.read() == b""
        async with session.post(
            hub.api_url + "/publish", json=body, headers={"X-API-Key": API_KEY}
        ) as response:
            assert response.status == 200


async def test_without_a_configured_key_every_api_call_gets_401(make_hub: HubFactory) -> None:
    hub = await make_hub(**{"http_api.key": ""})
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"X-API-Key": ""}, {"Authorization": "apikey "}, {"X-API-Key": "x"}):
            async with session.post(hub.api_url + "/info", json={}, headers=headers) as response:
                assert response.status == 401
                assert await response.read() == b""


def test_the_api_key_is_compared_in_constant_time() -> None:
    # A timing test would be flaky (scheduler and network noise dwarf a string
    # comparison), so this checks the code: the key check goes through
    # hmac.compare_digest and never compares the key with ==.
    source = inspect.getsource(_api._authorized)
    assert "hmac.compare_digest(" in source
    assert "== expected" not in source and "expected ==" not in source
    assert "startswith" not in source


# --- property: no publication from a channel the client may not subscribe to ----------

PREFIXES = ("", "ns1:", "ns2:")
USERS = ("alice", "bob", "")  # "" is anonymous


def channels_of(prefix: str) -> list[str]:
    return [
        f"{prefix}room",
        f"${prefix}secret",
        f"{prefix}dm#alice",
        f"{prefix}dm#alice,bob",
        f"{prefix}dm#bob",
        f"${prefix}dm#alice",
    ]


CHANNELS = [c for p in PREFIXES for c in channels_of(p)] + ["ghost:room"]
namespace_options = st.fixed_dictionaries(
    {
        "allow_subscribe_for_client": st.booleans(),
        "allow_subscribe_for_anonymous": st.booleans(),
        "allow_user_limited_channels": st.booleans(),
    }
)
subscribe_actions = st.tuples(
    st.sampled_from(CHANNELS),
    st.sampled_from(["none"] * 6 + ["valid", "valid", "other_user", "other_channel"]),
)
clients = st.lists(
    st.tuples(st.sampled_from(USERS), st.lists(subscribe_actions, min_size=2, max_size=8)),
    min_size=2,
    max_size=3,
)


def expected_outcome(
    options: dict[str, dict[str, bool]], user: str, channel: str, token: str, subscribed: set[str]
) -> int | str:
    """Centrifugo's subscribe rules, from its docs: "ok", an error code, or "close"."""
    name = channel.removeprefix("$")
    namespace = name.split(":", 1)[0] if ":" in name else ""
    if namespace not in options:
        return UNKNOWN_CHANNEL
    if channel in subscribed:
        return 105
    ns = options[namespace]
    if token == "valid":
        return "ok"
    if token != "none":
        return "close"
    if channel.startswith("$"):
        return PERMISSION_DENIED
    if ns["allow_user_limited_channels"] and "#" in channel:
        allowed_users = channel.rsplit("#", 1)[1].split(",")
        return "ok" if user and user in allowed_users else PERMISSION_DENIED
    if ns["allow_subscribe_for_client"] and (user or ns["allow_subscribe_for_anonymous"]):
        return "ok"
    return PERMISSION_DENIED


def subscription_token(user: str, channel: str, kind: str) -> str:
    if kind == "valid":
        return make_token(SECRET, user, channel=channel)
    if kind == "other_user":
        return make_token(SECRET, "mallory", channel=channel)
    if kind == "other_channel":
        return make_token(SECRET, user, channel="elsewhere")
    return ""


async def permissions_scenario(
    options: dict[str, dict[str, bool]], scenario: list[tuple[str, list[tuple[str, str]]]]
) -> None:
    overrides: dict[str, Any] = {
        "port": 0,
        "token_hmac_secret_key": SECRET,
        "http_api.enabled": False,
        "client.allow_anonymous_connect_without_token": True,
        **options[""],
    }
    for namespace in ("ns1", "ns2"):
        for key, value in options[namespace].items():
            overrides[f"namespaces.{namespace}.{key}"] = value
    hub = Hub(load_config(env={}, overrides=overrides))
    await hub.start()
    sockets: list[ClientConnection] = []
    try:
        live: list[tuple[ClientConnection, set[str]]] = []
        for user, actions in scenario:
            ws = await connected(hub, user or None)
            sockets.append(ws)
            subscribed: set[str] = set()
            for n, (channel, kind) in enumerate(actions, start=2):
                expected = expected_outcome(options, user, channel, kind, subscribed)
                token = subscription_token(user, channel, kind)
                request = {"channel": channel, **({"token": token} if token else {})}
                await ws.send(json.dumps({"id": n, "subscribe": request}))
                if expected == "close":
                    assert (await closed_with(ws))[0] == INVALID_TOKEN, (user, channel, kind)
                    break
                reply = await answer_to(ws, n)
                got = "ok" if "subscribe" in reply else reply["error"]["code"]
                assert got == expected, (user, channel, kind, options)
                if got == "ok":
                    subscribed.add(channel)
            else:
                live.append((ws, subscribed))
        for channel in CHANNELS[:-1]:  # every channel of a configured namespace
            await hub.publish(channel, {"channel": channel})
        for ws, subscribed in live:
            # The reply to this rpc comes after every push queued before it.
            received = {channel for channel, _ in await publications_until_barrier(ws)}
            assert received <= subscribed, f"publications leaked: {received - subscribed}"
            assert received == subscribed
    finally:
        for ws in sockets:
            await ws.close()
        await hub.stop()


async def answer_to(ws: ClientConnection, command_id: int) -> dict[str, Any]:
    while True:
        for message in await receive(ws):
            if message.get("id") == command_id:
                return message


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    top=namespace_options,
    ns1=namespace_options,
    ns2=namespace_options,
    scenario=clients,
)
@pytest.mark.slow
def test_no_client_ever_receives_a_publication_of_a_channel_it_may_not_subscribe_to(
    top: dict[str, bool],
    ns1: dict[str, bool],
    ns2: dict[str, bool],
    scenario: list[tuple[str, list[tuple[str, str]]]],
) -> None:
    asyncio.run(permissions_scenario({"": top, "ns1": ns1, "ns2": ns2}, scenario))
