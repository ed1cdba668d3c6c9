"""End-to-end tests: unmodified centrifuge-python clients against ``tidings serve``.

Every test starts its own server (see conftest.py) with the config it needs, so
tests are independent. Every wait is bounded (a few seconds) so that a broken
server fails a test quickly instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from textwrap import dedent
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from centrifuge import (
    Client,
    ClientState,
    DeltaType,
    ReplyError,
    StreamPosition,
    SubscriptionState,
    fossil,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import (
    HMAC_SECRET,
    WAIT,
    WRONG_SECRET,
    MakeClient,
    Server,
    StartServer,
    connect,
    decoded,
    drain,
    event_where,
    events_of,
    expect_subscribed,
    make_sub_token,
    make_token,
    new_sub,
    next_event,
    payload,
    pubs,
    state_docs,
    subscribe_ok,
    wait,
)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def config(
    top: str = "",
    client: str = "",
    namespaces: dict[str, str] | None = None,
    secret: str = HMAC_SECRET,
) -> str:
    """A TOML config: the HMAC key, top-level channel options, [client], namespaces."""
    parts = [f'token_hmac_secret_key = "{secret}"', dedent(top).strip()]
    if client:
        parts += ["", "[client]", dedent(client).strip()]
    for name, body in (namespaces or {}).items():
        parts += ["", f"[namespaces.{name}]", dedent(body).strip()]
    return "\n".join(parts) + "\n"


async def expect_refused(client: Client, channel: str, code: int, **kwargs: Any) -> None:
    """Subscribing to ``channel`` ends unsubscribed with ``code``."""
    sub, events = new_sub(client, channel, **kwargs)
    await wait(sub.subscribe(), what=f"sub.subscribe({channel!r})")
    try:
        ctx = await asyncio.wait_for(events.unsubscribed.get(), WAIT)
    except TimeoutError:
        ctx = None
    if ctx is None:
        pytest.fail(
            f"subscribe to {channel!r} was not refused with {code} within {WAIT}s: "
            f"state={sub.state} subscribed={drain(events.subscribed)} "
            f"errors={drain(events.errors)}"
        )
    assert ctx.code == code, f"subscribe to {channel!r}: expected code {code}, got {ctx}"
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert events.subscribed.empty(), "on_subscribed was called for a refused subscription"


async def expect_reply_error(aw: Any, code: int, what: str) -> ReplyError:
    with pytest.raises(ReplyError) as info:
        await wait(aw, what=what)
    assert info.value.code == code, f"{what}: expected error {code}, got {info.value}"
    return info.value


# ---------------------------------------------------------------------------
# Connecting
# ---------------------------------------------------------------------------


async def test_health_endpoint_and_anonymous_connect(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config(client="allow_anonymous_connect_without_token = true"))
    client = make_client(server)
    await connect(client)
    ctx = await next_event(events_of(client).connected, what="on_connected")
    assert ctx.client, "connect reply has no client id"
    assert client.client_id == ctx.client


async def test_anonymous_subscribe_needs_allow_subscribe_for_anonymous(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(
        config(
            client="allow_anonymous_connect_without_token = true",
            namespaces={
                "public": "allow_subscribe_for_client = true\nallow_subscribe_for_anonymous = true",
                "members": "allow_subscribe_for_client = true",
            },
        )
    )
    client = make_client(server)
    await connect(client)
    await subscribe_ok(client, "public:news")
    await expect_refused(client, "members:news", 103)


async def test_connect_without_token_refused_when_anonymous_not_allowed(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config())
    client = make_client(server)
    await wait(client.connect(), what="client.connect()")
    ctx = await next_event(events_of(client).disconnected, what="terminal disconnect")
    assert client.state == ClientState.DISCONNECTED
    assert events_of(client).connected.empty()
    # Not specified exactly by the contract. Centrifugo (the centrifuge library)
    # closes with 3501 "bad request" (client credentials not found); 101
    # "unauthorized" or 3500 "invalid token" would be fine too: all are terminal.
    assert ctx.code in (101, 3500, 3501), ctx


async def test_token_connect_hs256(start_server: StartServer, make_client: MakeClient) -> None:
    server = await start_server(config())
    client = make_client(server, token=make_token("42", info={"name": "Alice"}))
    await connect(client)
    ctx = await next_event(events_of(client).connected)
    assert ctx.client


async def test_token_connect_rs256(start_server: StartServer, make_client: MakeClient) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    toml = config() + f'token_rsa_public_key = """\n{public_pem}"""\n'
    # Top-level keys must come before tables; config() without tables has none.
    server = await start_server(toml)
    rs_client = make_client(server, token=make_token("42", secret=private_pem, algorithm="RS256"))
    await connect(rs_client)
    hs_client = make_client(server, token=make_token("43"))
    await connect(hs_client)
    # A token signed with another RSA key is rejected.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    bad = make_client(server, token=make_token("44", secret=other_pem, algorithm="RS256"))
    await wait(bad.connect())
    ctx = await next_event(events_of(bad).disconnected, what="3500 for a forged RS256 token")
    assert ctx.code == 3500


async def test_expired_token_calls_get_token_then_connects(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config())
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return make_token("42")

    client = make_client(server, token=make_token("42", exp=-120), get_token=get_token)
    await wait(client.connect(), what="client.connect()")
    await next_event(events_of(client).connected, what="connect after get_token")
    assert client.state == ClientState.CONNECTED
    assert calls == 1, f"get_token called {calls} times"
    errors = drain(events_of(client).errors)
    codes = [getattr(e.error, "code", None) for e in errors]
    assert 109 in codes, f"no 'token expired' (109) connect error reported: {errors}"


async def test_expired_token_from_get_token_is_retried(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config())
    tokens = [make_token("42", exp=-120), make_token("42")]
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return tokens.pop(0) if tokens else make_token("42")

    client = make_client(server, get_token=get_token)
    await wait(client.connect())
    await next_event(events_of(client).connected, what="connect after second get_token")
    assert calls == 2


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_token("42", secret=WRONG_SECRET), id="wrong-secret"),
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param(
            jwt.encode({"sub": "42", "exp": int(time.time()) + 3600}, None, algorithm="none"),
            id="alg-none",
        ),
    ],
)
async def test_invalid_token_disconnects_3500(
    start_server: StartServer, make_client: MakeClient, token: str
) -> None:
    server = await start_server(config())
    client = make_client(server, token=token)
    await wait(client.connect(), what="client.connect()")
    ctx = await next_event(events_of(client).disconnected, what="disconnect 3500")
    assert ctx.code == 3500, ctx
    assert client.state == ClientState.DISCONNECTED
    assert events_of(client).connected.empty()
    # Terminal: no reconnect attempt follows.
    await asyncio.sleep(0.3)
    assert client.state == ClientState.DISCONNECTED
    assert events_of(client).connected.empty()


# ---------------------------------------------------------------------------
# Publish / subscribe
# ---------------------------------------------------------------------------

PUBSUB = config(
    top="""
    allow_subscribe_for_client = true
    allow_publish_for_subscriber = true
    """,
    namespaces={
        "open": "allow_subscribe_for_client = true\nallow_publish_for_client = true",
    },
)


async def test_publish_from_one_client_received_by_another(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PUBSUB)
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    sub_a, ev_a, _ = await subscribe_ok(alice, "chat")
    sub_b, ev_b, _ = await subscribe_ok(bob, "chat")

    await wait(sub_a.publish(payload({"text": "hello"})), what="publish")
    [got] = await pubs(ev_b, 1, "at bob")
    assert decoded(got.data) == {"text": "hello"}
    [own] = await pubs(ev_a, 1, "at alice (the publisher is subscribed too)")
    assert decoded(own.data) == {"text": "hello"}

    # Many publications keep their order.
    for i in range(20):
        await wait(sub_b.publish(payload({"n": i})))
    received = await pubs(ev_a, 20, "in order")
    assert [decoded(p.data) for p in received] == [{"n": i} for i in range(20)]


async def test_publication_carries_publisher_info(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PUBSUB)
    alice = make_client(server, token=make_token("42", info={"name": "Alice"}))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    sub_a, _, _ = await subscribe_ok(alice, "chat")
    _, ev_b, _ = await subscribe_ok(bob, "chat")
    await wait(sub_a.publish(payload("plain string payload")))
    [got] = await pubs(ev_b, 1)
    assert decoded(got.data) == "plain string payload"
    assert got.info is not None, "client publication without ClientInfo"
    assert got.info.user == "42"
    assert got.info.client == alice.client_id
    assert decoded(got.info.conn_info) == {"name": "Alice"}


async def test_client_publish_without_subscription(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PUBSUB)
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    _, ev_b, _ = await subscribe_ok(bob, "open:board")
    await wait(alice.publish("open:board", payload({"k": [1, 2, 3]})), what="client.publish")
    [got] = await pubs(ev_b, 1)
    assert decoded(got.data) == {"k": [1, 2, 3]}


async def test_unsubscribe_stops_publications(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PUBSUB)
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    _, ev_a, _ = await subscribe_ok(alice, "open:x")
    sub_b, ev_b, _ = await subscribe_ok(bob, "open:x")
    await wait(sub_b.unsubscribe())
    await next_event(ev_b.unsubscribed)
    # Bob subscribes to another channel, which orders his unsubscribe before
    # the publication below on his connection.
    _, ev_b2, _ = await subscribe_ok(bob, "open:y")
    await wait(alice.publish("open:x", payload(1)))
    await wait(alice.publish("open:y", payload(2)))
    [got] = await pubs(ev_b2, 1)
    assert decoded(got.data) == 2
    [got_a] = await pubs(ev_a, 1)
    assert decoded(got_a.data) == 1
    assert ev_b.publications.empty(), "publication delivered after unsubscribe"


# ---------------------------------------------------------------------------
# Presence, history, join/leave
# ---------------------------------------------------------------------------


async def test_presence_and_presence_stats(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(
        config(
            namespaces={
                "room": """
                presence = true
                allow_subscribe_for_client = true
                allow_presence_for_subscriber = true
                """
            }
        )
    )
    alice1 = make_client(server, token=make_token("42", info={"name": "Alice"}))
    alice2 = make_client(server, token=make_token("42", info={"name": "Alice"}))
    bob = make_client(server, token=make_token("43", info={"name": "Bob"}))
    subs = {}
    for c in (alice1, alice2, bob):
        await connect(c)
        subs[c] = (await subscribe_ok(c, "room:1"))[0]

    result = await wait(subs[alice1].presence(), what="presence")
    assert set(result.clients) == {alice1.client_id, alice2.client_id, bob.client_id}
    for client_id, info in result.clients.items():
        assert info.client == client_id
    assert result.clients[alice1.client_id].user == "42"
    assert result.clients[alice2.client_id].user == "42"
    assert result.clients[bob.client_id].user == "43"
    assert decoded(result.clients[bob.client_id].conn_info) == {"name": "Bob"}
    assert decoded(result.clients[alice1.client_id].conn_info) == {"name": "Alice"}

    stats = await wait(subs[bob].presence_stats(), what="presence_stats")
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await wait(subs[bob].unsubscribe())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        stats = await wait(subs[alice1].presence_stats())
        if (stats.num_clients, stats.num_users) == (2, 1) or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (stats.num_clients, stats.num_users) == (2, 1), "presence not updated on unsubscribe"

    await wait(alice2.disconnect())
    deadline = loop.time() + WAIT
    while True:
        result = await wait(subs[alice1].presence())
        if set(result.clients) == {alice1.client_id} or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert set(result.clients) == {alice1.client_id}, "presence not updated on disconnect"


async def test_history(start_server: StartServer, make_client: MakeClient) -> None:
    server = await start_server(
        config(
            namespaces={
                "hist": """
                history_size = 10
                history_ttl = 60
                allow_subscribe_for_client = true
                allow_publish_for_subscriber = true
                allow_history_for_subscriber = true
                """
            }
        )
    )
    client = make_client(server, token=make_token("42"))
    await connect(client)
    sub, events, _ = await subscribe_ok(client, "hist:1")
    for i in range(5):
        await wait(sub.publish(payload({"n": i})))
    live = await pubs(events, 5)
    assert [decoded(p.data) for p in live] == [{"n": i} for i in range(5)]
    assert all(p.offset > 0 for p in live), "publications in a channel with history have offsets"

    res = await wait(sub.history(limit=-1), what="history(limit=-1)")
    assert [decoded(p.data) for p in res.publications] == [{"n": i} for i in range(5)]
    offsets = [p.offset for p in res.publications]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5, offsets
    assert offsets == [p.offset for p in live]
    assert res.offset == offsets[-1]
    assert res.epoch

    top = await wait(sub.history(limit=0), what="history(limit=0)")
    assert top.publications == []
    assert (top.offset, top.epoch) == (res.offset, res.epoch)

    first = await wait(sub.history(limit=2))
    assert [decoded(p.data) for p in first.publications] == [{"n": 0}, {"n": 1}]

    last = await wait(sub.history(limit=2, reverse=True))
    assert [decoded(p.data) for p in last.publications] == [{"n": 4}, {"n": 3}]

    since = await wait(
        sub.history(limit=-1, since=StreamPosition(offset=offsets[1], epoch=res.epoch))
    )
    assert [decoded(p.data) for p in since.publications] == [{"n": 2}, {"n": 3}, {"n": 4}]

    # The stream keeps only history_size publications.
    for i in range(5, 15):
        await wait(sub.publish(payload({"n": i})))
    await pubs(events, 10)
    full = await wait(sub.history(limit=-1))
    assert [decoded(p.data) for p in full.publications] == [{"n": i} for i in range(5, 15)]
    assert full.epoch == res.epoch


async def test_join_leave_when_requested_by_subscriber(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(
        config(
            namespaces={
                # Centrifugo honours the subscriber's join_leave request only
                # when it may call presence in the channel.
                "jl": """
                join_leave = true
                presence = true
                allow_subscribe_for_client = true
                allow_presence_for_subscriber = true
                """
            }
        )
    )
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43", info={"name": "Bob"}))
    await connect(alice)
    await connect(bob)
    _, ev_a, _ = await subscribe_ok(alice, "jl:room", join_leave=True)
    sub_b, _, _ = await subscribe_ok(bob, "jl:room", join_leave=True)

    join = await event_where(
        ev_a.joins, lambda j: j.info.client == bob.client_id, what="join of bob"
    )
    assert join.info.user == "43"
    assert decoded(join.info.conn_info) == {"name": "Bob"}

    await wait(sub_b.unsubscribe())
    leave = await event_where(
        ev_a.leaves, lambda j: j.info.client == bob.client_id, what="leave of bob"
    )
    assert leave.info.user == "43"


async def test_join_leave_forced_push(start_server: StartServer, make_client: MakeClient) -> None:
    server = await start_server(
        config(
            namespaces={
                "fjl": """
                join_leave = true
                force_push_join_leave = true
                allow_subscribe_for_client = true
                """
            }
        )
    )
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    _, ev_a, _ = await subscribe_ok(alice, "fjl:room")  # no join_leave flag
    await subscribe_ok(bob, "fjl:room")
    join = await event_where(
        ev_a.joins, lambda j: j.info.client == bob.client_id, what="forced join push"
    )
    assert join.info.user == "43"

    # Leaving by disconnecting.
    await wait(bob.disconnect())
    leave = await event_where(
        ev_a.leaves, lambda j: j.info.client == join.info.client, what="forced leave push"
    )
    assert leave.info.user == "43"


# ---------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------


def recovery_config(history_size: int) -> str:
    return config(
        top="allow_publish_for_client = true",
        namespaces={
            "rec": f"""
            history_size = {history_size}
            history_ttl = 300
            force_recovery = true
            allow_subscribe_for_client = true
            allow_publish_for_client = true
            allow_publish_for_subscriber = true
            allow_history_for_subscriber = true
            """
        },
    )


async def test_recovery_after_reconnect(start_server: StartServer, make_client: MakeClient) -> None:
    server = await start_server(recovery_config(100))
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    sub, events, first = await subscribe_ok(alice, "rec:feed")
    assert first.recoverable, first
    assert first.stream_position is not None and first.stream_position.epoch, first
    assert not first.was_recovering

    await wait(bob.publish("rec:feed", payload({"live": 1})))
    [live] = await pubs(events, 1)
    assert live.offset > 0

    await wait(alice.disconnect())
    await next_event(events_of(alice).disconnected)
    assert sub.state == SubscriptionState.SUBSCRIBING

    for i in range(5):
        await wait(bob.publish("rec:feed", payload({"missed": i})))

    await connect(alice)
    ctx = await next_event(events.subscribed, what="resubscribe with recovery")
    assert ctx.was_recovering, ctx
    assert ctx.recovered, ctx
    assert ctx.stream_position is not None and ctx.stream_position.epoch == (
        first.stream_position.epoch
    )
    missed = await pubs(events, 5, "recovered")
    assert [decoded(p.data) for p in missed] == [{"missed": i} for i in range(5)]
    assert [p.offset for p in missed] == list(range(live.offset + 1, live.offset + 6))

    # Live publications continue after the recovered ones, without duplicates.
    await wait(bob.publish("rec:feed", payload({"after": True})))
    [after] = await pubs(events, 1)
    assert decoded(after.data) == {"after": True}
    assert after.offset == live.offset + 6
    assert events.publications.empty()


async def test_recovery_beyond_history_size(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(recovery_config(3))
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    sub, events, first = await subscribe_ok(alice, "rec:feed")
    assert first.recoverable

    await wait(bob.publish("rec:feed", payload({"live": 1})))
    await pubs(events, 1)

    await wait(alice.disconnect())
    await next_event(events_of(alice).disconnected)
    for i in range(10):
        await wait(bob.publish("rec:feed", payload({"missed": i})))

    await connect(alice)
    ctx = await next_event(events.subscribed, what="resubscribe")
    assert ctx.was_recovering, ctx
    assert not ctx.recovered, f"recovered 10 missed publications with history_size=3: {ctx}"

    # Nothing recovered is delivered: the next publication is a fresh one.
    await wait(bob.publish("rec:feed", payload({"marker": True})))
    [nxt] = await pubs(events, 1)
    assert decoded(nxt.data) == {"marker": True}, (
        f"unexpected publication after failed recovery: {nxt}"
    )

    hist = await wait(sub.history(limit=-1))
    assert [decoded(p.data) for p in hist.publications] == [
        {"missed": 8},
        {"missed": 9},
        {"marker": True},
    ]


async def test_recovery_of_server_side_subscription(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(recovery_config(100))
    alice = make_client(server, token=make_token("42", channels=["rec:server"]))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    ev = events_of(alice)
    first = await next_event(ev.subscribed, what="server-side subscribe")
    assert first.channel == "rec:server"
    assert first.recoverable, first

    await wait(bob.publish("rec:server", payload({"live": 1})))
    live = await next_event(ev.publications)
    assert live.pub.offset > 0

    await wait(alice.disconnect())
    for i in range(3):
        await wait(bob.publish("rec:server", payload({"missed": i})))
    await connect(alice)
    again = await event_where(ev.subscribed, lambda c: c.channel == "rec:server")
    assert again.was_recovering and again.recovered, again
    got = [await next_event(ev.publications) for _ in range(3)]
    assert [g.channel for g in got] == ["rec:server"] * 3
    assert [decoded(g.pub.data) for g in got] == [{"missed": i} for i in range(3)]


async def test_reconnect_and_resubscribe_after_server_restart(
    start_server: StartServer, make_client: MakeClient
) -> None:
    """The SDK reconnects by itself to a restarted server and resubscribes. The
    history lived in memory, so recovery from the old position fails (new epoch)."""
    server = await start_server(recovery_config(100))
    alice = make_client(server, token=make_token("42"))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    _, events, first = await subscribe_ok(alice, "rec:feed")
    await wait(bob.publish("rec:feed", payload({"before": True})))
    await pubs(events, 1)

    await server.restart()
    ctx = await next_event(events.subscribed, timeout=8, what="resubscribe after restart")
    assert ctx.was_recovering, ctx
    assert not ctx.recovered, ctx
    assert ctx.stream_position is not None and first.stream_position is not None
    assert ctx.stream_position.epoch != first.stream_position.epoch

    await wait(bob.ready(timeout=8), timeout=9, what="bob reconnected")
    await wait(bob.publish("rec:feed", payload({"after": True})))
    [got] = await pubs(events, 1)
    assert decoded(got.data) == {"after": True}


# ---------------------------------------------------------------------------
# Errors: unknown namespace, permissions, private and user-limited channels
# ---------------------------------------------------------------------------


async def test_unknown_namespace_102(start_server: StartServer, make_client: MakeClient) -> None:
    server = await start_server(
        config(
            top="allow_subscribe_for_client = true",
            namespaces={"known": "allow_subscribe_for_client = true"},
        )
    )
    client = make_client(server, token=make_token("42"))
    await connect(client)
    await expect_refused(client, "unknown:chan", 102)
    # The connection is still usable.
    await subscribe_ok(client, "known:chan")
    await subscribe_ok(client, "plain")


PERMS = config(
    namespaces={
        "closed": """
        presence = true
        history_size = 10
        history_ttl = 60
        """,
        "ro": """
        presence = true
        history_size = 10
        history_ttl = 60
        allow_subscribe_for_client = true
        """,
        "subonly": """
        presence = true
        history_size = 10
        history_ttl = 60
        allow_subscribe_for_client = true
        allow_publish_for_subscriber = true
        allow_presence_for_subscriber = true
        allow_history_for_subscriber = true
        """,
    }
)


async def test_subscribe_permission_denied_103(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PERMS)
    client = make_client(server, token=make_token("42"))
    await connect(client)
    await expect_refused(client, "closed:x", 103)
    await expect_refused(client, "plain", 103)  # top level denies everything by default


async def test_publish_permission_denied_103(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PERMS)
    client = make_client(server, token=make_token("42"))
    await connect(client)
    sub, events, _ = await subscribe_ok(client, "ro:x")
    await expect_reply_error(sub.publish(payload({"a": 1})), 103, "publish without allow_publish")
    await expect_reply_error(
        client.publish("closed:x", payload(1)), 103, "client publish to closed:x"
    )
    # For-subscriber permission does not extend to non-subscribers.
    await expect_reply_error(
        client.publish("subonly:x", payload(1)), 103, "publish as non-subscriber"
    )
    assert events.publications.empty()
    assert client.state == ClientState.CONNECTED


async def test_presence_and_history_permission_denied_103(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PERMS)
    client = make_client(server, token=make_token("42"))
    await connect(client)
    sub, _, _ = await subscribe_ok(client, "ro:x")
    await expect_reply_error(sub.presence(), 103, "presence without allow_presence")
    await expect_reply_error(sub.presence_stats(), 103, "presence_stats without allow_presence")
    await expect_reply_error(sub.history(limit=-1), 103, "history without allow_history")
    # Subscriber-only permissions: denied before subscribing, allowed after.
    await expect_reply_error(client.presence("subonly:y"), 103, "presence as non-subscriber")
    await expect_reply_error(client.history("subonly:y", limit=-1), 103, "history non-subscriber")
    sub_y, _, _ = await subscribe_ok(client, "subonly:y")
    await wait(sub_y.presence())
    await wait(sub_y.history(limit=-1))
    await wait(sub_y.publish(payload({"ok": True})))


async def test_already_subscribed_105_raw(start_server: StartServer) -> None:
    server = await start_server(config(top="allow_subscribe_for_client = true"))
    token = make_token("42")
    async with websockets.connect(
        server.url, ping_interval=None, open_timeout=WAIT, close_timeout=1, proxy=None
    ) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
        reply = await _reply(ws, 1)
        assert "connect" in reply, reply
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "news"}}))
        reply = await _reply(ws, 2)
        assert "subscribe" in reply and "error" not in reply, reply
        await ws.send(json.dumps({"id": 3, "subscribe": {"channel": "news"}}))
        reply = await _reply(ws, 3)
        assert reply.get("error", {}).get("code") == 105, reply


async def test_private_channel_without_token_103(
    start_server: StartServer, make_client: MakeClient
) -> None:
    # allow_subscribe_for_client does not open $-channels: they always need a token.
    server = await start_server(config(top="allow_subscribe_for_client = true"))
    client = make_client(server, token=make_token("42"))
    await connect(client)
    await expect_refused(client, "$secret", 103)


async def test_private_channel_with_subscription_token(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config(top="allow_subscribe_for_client = true"))
    alice = make_client(server, token=make_token("42"))
    await connect(alice)

    # Static token.
    await subscribe_ok(alice, "$secret", token=make_sub_token("42", "$secret"))

    # get_token callback.
    asked: list[str] = []

    async def get_token(channel: str) -> str:
        asked.append(channel)
        return make_sub_token("42", channel)

    bob = make_client(server, token=make_token("43"))
    await connect(bob)

    async def get_bob_token(channel: str) -> str:
        asked.append(channel)
        return make_sub_token("43", channel)

    await subscribe_ok(bob, "$secret", get_token=get_bob_token)
    await subscribe_ok(alice, "$other", get_token=get_token)
    assert asked == ["$secret", "$other"]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_sub_token("99", "$secret"), id="other-user"),
        pytest.param(make_sub_token("42", "$another"), id="other-channel"),
        pytest.param(make_sub_token("42", "$secret", secret=WRONG_SECRET), id="forged"),
    ],
)
async def test_private_channel_with_wrong_token_refused(
    start_server: StartServer, make_client: MakeClient, token: str
) -> None:
    """The contract only says "no token -> 103". Centrifugo closes the connection
    with 3500 (invalid token) for a token of another user or channel; 103 would
    be acceptable as well. The subscription must not succeed either way."""
    server = await start_server(config(top="allow_subscribe_for_client = true"))
    client = make_client(server, token=make_token("42"))
    await connect(client)
    sub, events = new_sub(client, "$secret", token=token)
    await wait(sub.subscribe())
    unsub = asyncio.ensure_future(events.unsubscribed.get())
    disc = asyncio.ensure_future(events_of(client).disconnected.get())
    done, pending = await asyncio.wait({unsub, disc}, timeout=WAIT, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    assert done, f"subscribe with a wrong token neither refused nor disconnected: {sub.state}"
    if unsub in done:
        assert unsub.result().code == 103, unsub.result()
    else:
        assert disc.result().code == 3500, disc.result()
    assert events.subscribed.empty()


async def test_private_channel_expired_subscription_token_refetched(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config(top="allow_subscribe_for_client = true"))
    client = make_client(server, token=make_token("42"))
    await connect(client)
    tokens = [make_sub_token("42", "$secret", exp=-120), make_sub_token("42", "$secret")]
    calls = 0

    async def get_token(channel: str) -> str:
        nonlocal calls
        calls += 1
        return tokens.pop(0) if tokens else make_sub_token("42", channel)

    sub, events = new_sub(client, "$secret", get_token=get_token, min_resubscribe_delay=0.05)
    await wait(sub.subscribe())
    await expect_subscribed(sub, events)
    assert calls == 2, f"get_token called {calls} times"
    codes = [getattr(e.error, "code", None) for e in drain(events.errors)]
    assert 109 in codes, codes


async def test_a_short_lived_subscription_token_is_refreshed_by_the_sdk_and_kept(
    start_server: StartServer, make_client: MakeClient
) -> None:
    # The SDK refreshes at the ttl, in whole seconds: up to a second after the expiry.
    server = await start_server(config(client="expired_sub_close_delay = 1.5"))
    client = make_client(server, token=make_token("42"))
    await connect(client)
    calls = 0

    async def get_token(channel: str) -> str:
        nonlocal calls
        calls += 1
        return make_sub_token("42", channel, exp=2)  # the SDK refreshes before it lapses

    sub, events = new_sub(client, "$secret", get_token=get_token)
    await wait(sub.subscribe())
    await expect_subscribed(sub, events)
    drain(events.subscribing)
    await asyncio.sleep(4.5)  # past the first token's expiry and the grace
    assert calls >= 2, f"get_token called {calls} times: no sub_refresh"
    # A lapsed one would have been unsubscribed with 2501, and the SDK gone back to subscribing.
    assert not drain(events.subscribing) and not drain(events.unsubscribed)
    assert sub.state == SubscriptionState.SUBSCRIBED


async def test_user_limited_channel(start_server: StartServer, make_client: MakeClient) -> None:
    server = await start_server(
        config(
            top="""
            allow_user_limited_channels = true
            allow_publish_for_subscriber = true
            """,
            namespaces={"nolimit": "allow_publish_for_subscriber = true"},
        )
    )
    u42 = make_client(server, token=make_token("42"))
    u43 = make_client(server, token=make_token("43"))
    u44 = make_client(server, token=make_token("44"))
    for c in (u42, u43, u44):
        await connect(c)
    sub42, _, _ = await subscribe_ok(u42, "dialog#42,43")
    _, ev43, _ = await subscribe_ok(u43, "dialog#42,43")
    await expect_refused(u44, "dialog#42,43", 103)

    await wait(sub42.publish(payload({"hi": 43})))
    [got] = await pubs(ev43, 1)
    assert decoded(got.data) == {"hi": 43}

    # Without allow_user_limited_channels the '#' has no special meaning.
    await expect_refused(u42, "nolimit:dialog#42,43", 103)


# ---------------------------------------------------------------------------
# Server-side subscriptions (the `channels` claim)
# ---------------------------------------------------------------------------


async def test_server_side_subscriptions_from_channels_claim(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(config(top="allow_publish_for_client = true"))
    alice = make_client(server, token=make_token("42", channels=["news", "alerts"]))
    bob = make_client(server, token=make_token("43"))
    await connect(alice)
    await connect(bob)
    ev = events_of(alice)
    got = {(await next_event(ev.subscribed, what="server-side on_subscribed")).channel}
    got.add((await next_event(ev.subscribed, what="server-side on_subscribed")).channel)
    assert got == {"news", "alerts"}
    assert alice.subscriptions() == {}, "server-side subs must not appear as client-side ones"

    await wait(bob.publish("news", payload({"headline": "x"})))
    await wait(bob.publish("alerts", payload({"level": 3})))
    p1 = await next_event(ev.publications, what="server-side publication")
    p2 = await next_event(ev.publications, what="server-side publication")
    assert (p1.channel, decoded(p1.pub.data)) == ("news", {"headline": "x"})
    assert (p2.channel, decoded(p2.pub.data)) == ("alerts", {"level": 3})


# ---------------------------------------------------------------------------
# Ping / pong (raw WebSocket, not the SDK)
# ---------------------------------------------------------------------------

# Centrifugo requires ping_interval > pong_timeout (and tidings' config checks it),
# so pong_timeout is 0.5 s rather than 1 s.
PING_CONFIG = config(
    client="""
    allow_anonymous_connect_without_token = true
    ping_interval = 1
    pong_timeout = 0.5
    """
)


def _messages(frame: str | bytes) -> list[dict[str, Any]]:
    text = frame.decode() if isinstance(frame, bytes) else frame
    return [json.loads(line) for line in text.strip().split("\n") if line.strip()]


async def _reply(ws: Any, cmd_id: int) -> dict[str, Any]:
    """Read frames until the reply with ``cmd_id`` (pings and pushes are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        frame = await wait(
            ws.recv(),
            timeout=max(0.01, deadline - loop.time()),
            what=f"the reply to command id={cmd_id}",
        )
        for msg in _messages(frame):
            if msg.get("id") == cmd_id:
                return msg


async def _raw_connect(ws: Any) -> dict[str, Any]:
    await ws.send('{"id":1,"connect":{}}')
    reply = await _reply(ws, 1)
    assert "error" not in reply, reply
    return reply["connect"]


async def test_no_pong_closes_3012(start_server: StartServer) -> None:
    server = await start_server(PING_CONFIG)
    async with websockets.connect(
        server.url, ping_interval=None, open_timeout=WAIT, close_timeout=1, proxy=None
    ) as ws:
        result = await _raw_connect(ws)
        assert result.get("pong") is True, result
        assert result.get("ping") == 1, result
        started = time.monotonic()
        pings = 0
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                frame = await wait(ws.recv(), timeout=4, what="close 3012 (no pong)")
                pings += sum(1 for m in _messages(frame) if m == {})
        elapsed = time.monotonic() - started
    assert info.value.rcvd is not None, "closed without a close frame"
    assert info.value.rcvd.code == 3012, info.value
    assert pings >= 1, "closed for no pong without having pinged"
    # First ping in [0.5, 1] s, then pong_timeout 0.5 s.
    assert elapsed < 3.0, elapsed


async def test_answering_pings_keeps_connection_alive(start_server: StartServer) -> None:
    server = await start_server(PING_CONFIG)
    async with websockets.connect(
        server.url, ping_interval=None, open_timeout=WAIT, close_timeout=1, proxy=None
    ) as ws:
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        await _raw_connect(ws)
        end = loop.time() + 3.2
        pings = 0
        first_ping_after: float | None = None
        while (left := end - loop.time()) > 0:
            try:
                frame = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            except websockets.ConnectionClosed as exc:
                pytest.fail(f"connection closed although pongs were sent: {exc!r}")
            for msg in _messages(frame):
                if msg == {}:
                    pings += 1
                    if first_ping_after is None:
                        first_ping_after = loop.time() - connected_at
                    await ws.send("{}")
        assert pings >= 2, f"only {pings} pings in 3.2 s with ping_interval=1"
        # The first ping is randomized in [interval/2, interval].
        assert first_ping_after is not None and 0.4 <= first_ping_after <= 1.3, first_ping_after
        # Still usable.
        await ws.send(json.dumps({"id": 2, "presence_stats": {"channel": "x"}}))
        reply = await _reply(ws, 2)
        assert reply.get("id") == 2


async def test_sdk_stays_connected_across_pings(
    start_server: StartServer, make_client: MakeClient
) -> None:
    server = await start_server(PING_CONFIG)
    client = make_client(server, max_server_ping_delay=1.0)
    await connect(client)
    await asyncio.sleep(2.5)
    assert client.state == ClientState.CONNECTED
    ev = events_of(client)
    assert ev.connecting.qsize() == 1, f"reconnected: {drain(ev.connecting)}"  # the initial one
    assert ev.disconnected.empty()


# ---------------------------------------------------------------------------
# Shutdown
# ---------------------------------------------------------------------------


async def test_sigterm_exits_zero(start_server: StartServer, make_client: MakeClient) -> None:
    server: Server = await start_server(config())
    client = make_client(server, token=make_token("42"))
    await connect(client)
    drain(events_of(client).connecting)
    code = await server.terminate(timeout=5)
    assert code == 0, f"exit code after SIGTERM: {code} (None = still running after 5 s)"
    ctx = await next_event(events_of(client).connecting, what="client notices the shutdown")
    assert client.state != ClientState.CONNECTED
    print("client saw", ctx)


# ---------------------------------------------------------------------------
# Fossil delta compression
# ---------------------------------------------------------------------------

DELTA_API_KEY = "e2e-delta-api-key"


def delta_config(broker_url: str = "") -> str:
    """Namespaces for delta compression: ``delta`` allows Fossil (with recovery, history for
    subscribers and tags filters), ``plain`` has history but no ``allowed_delta_types``."""
    text = config(
        namespaces={
            "delta": """
            history_size = 20
            history_ttl = 60
            force_recovery = true
            allowed_delta_types = ["fossil"]
            allow_subscribe_for_client = true
            allow_history_for_subscriber = true
            allow_tags_filter = true
            """,
            "plain": """
            history_size = 20
            history_ttl = 60
            allow_subscribe_for_client = true
            """,
        }
    )
    text += f'\n[http_api]\nkey = "{DELTA_API_KEY}"\n'
    if broker_url:
        text += f'\n[broker]\nurl = "{broker_url}"\n'
    return text


async def api_call(server: Server, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One server API call; fails unless it succeeded."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{server.host}:{server.api_port}/api/{method}",
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers={"X-API-Key": DELTA_API_KEY, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=WAIT),
        ) as response,
    ):
        reply = await response.json()
    assert response.status == 200 and "error" not in reply, (method, response.status, reply)
    result: dict[str, Any] = reply["result"]
    return result


async def api_publish(server: Server, channel: str, data: Any, **fields: Any) -> dict[str, Any]:
    return await api_call(server, "publish", {"channel": channel, "data": data, **fields})


async def test_delta_subscription_decodes_fossil_patches_exactly(
    start_server: StartServer, make_client: MakeClient
) -> None:
    """With ``delta=DeltaType.FOSSIL`` the first publication comes in full and each later one
    (published with ``delta: true``) as a patch the SDK decodes to exactly the published
    object; history, never delta-encoded, gives the same objects."""
    server = await start_server(delta_config())
    client = make_client(server, token=make_token("42"))
    await connect(client)
    sub, events, _ = await subscribe_ok(client, "delta:state", delta=DeltaType.FOSSIL)
    docs = state_docs(6)
    for doc in docs:
        await api_publish(server, "delta:state", doc, delta=True)
    got = await pubs(events, len(docs), "delta publications")
    assert [decoded(p.data) for p in got] == docs
    assert [p.offset for p in got] == [1, 2, 3, 4, 5, 6]
    assert [p.delta for p in got] == [False] + [True] * 5

    history = await wait(sub.history(limit=-1), what="history of a delta subscription")
    assert [decoded(p.data) for p in history.publications] == docs
    assert not any(p.delta for p in history.publications)

    # Not marked for delta: full again, each one.
    more = state_docs(8)[6:]
    for doc in more:
        await api_publish(server, "delta:state", doc)
    got = await pubs(events, len(more), "publications without delta")
    assert [(decoded(p.data), p.delta) for p in got] == [(doc, False) for doc in more]


async def test_delta_subscription_recovers_a_chain_of_patches(
    start_server: StartServer, make_client: MakeClient
) -> None:
    """Publications missed while disconnected are recovered the first in full, each next
    one as a patch against it; the next live one is a patch against the last recovered."""
    server = await start_server(delta_config())
    client = make_client(server, token=make_token("42"))
    await connect(client)
    _, events, first = await subscribe_ok(client, "delta:rec", delta=DeltaType.FOSSIL)
    assert first.recoverable, first
    docs = state_docs(9)
    for doc in docs[:3]:
        await api_publish(server, "delta:rec", doc, delta=True)
    live = await pubs(events, 3, "live")
    assert [(decoded(p.data), p.delta) for p in live] == [
        (docs[0], False),
        (docs[1], True),
        (docs[2], True),
    ]

    await wait(client.disconnect())
    await next_event(events_of(client).disconnected)
    for doc in docs[3:8]:
        await api_publish(server, "delta:rec", doc, delta=True)
    await connect(client)
    ctx = await next_event(events.subscribed, what="resubscribe with recovery")
    assert ctx.was_recovering and ctx.recovered, ctx
    recovered = await pubs(events, 5, "recovered")
    assert [decoded(p.data) for p in recovered] == docs[3:8]
    assert [p.offset for p in recovered] == [4, 5, 6, 7, 8]
    assert [p.delta for p in recovered] == [False, True, True, True, True]

    await api_publish(server, "delta:rec", docs[8], delta=True)
    [after] = await pubs(events, 1, "after recovery")
    assert (decoded(after.data), after.offset, after.delta) == (docs[8], 9, True)
    assert events.publications.empty()


async def test_delta_to_a_subscriber_of_another_hub_on_redis(
    start_server: StartServer, make_client: MakeClient, redis_url: str
) -> None:
    """Two hubs on one Redis: publications made through hub A's server API reach a delta
    subscriber of hub B as patches (the previous publication travels through Redis)."""
    hub_a = await start_server(delta_config(redis_url))
    hub_b = await start_server(delta_config(redis_url))
    client = make_client(hub_b, token=make_token("42"))
    await connect(client)
    _, events, _ = await subscribe_ok(client, "delta:cluster", delta=DeltaType.FOSSIL)
    docs = state_docs(6)
    for doc in docs:
        result = await api_publish(hub_a, "delta:cluster", doc, delta=True)
    assert result["offset"] == 6, result
    got = await pubs(events, len(docs), "from hub A")
    assert [decoded(p.data) for p in got] == docs
    assert [p.offset for p in got] == [1, 2, 3, 4, 5, 6]
    assert [p.delta for p in got] == [False] + [True] * 5


async def test_delta_and_plain_subscribers_of_one_channel(
    start_server: StartServer, make_client: MakeClient
) -> None:
    """A delta subscriber and a plain one of the same channel both get exactly the published
    objects; the plain one never sees a patch."""
    server = await start_server(delta_config())
    delta_client = make_client(server, token=make_token("42"))
    plain_client = make_client(server, token=make_token("43"))
    await connect(delta_client)
    await connect(plain_client)
    _, delta_events, _ = await subscribe_ok(delta_client, "delta:mixed", delta=DeltaType.FOSSIL)
    _, plain_events, _ = await subscribe_ok(plain_client, "delta:mixed")
    docs = state_docs(5)
    for doc in docs:
        await api_publish(server, "delta:mixed", doc, delta=True)
    with_delta = await pubs(delta_events, len(docs), "delta subscriber")
    plain = await pubs(plain_events, len(docs), "plain subscriber")
    assert [decoded(p.data) for p in with_delta] == docs
    assert [p.delta for p in with_delta] == [False, True, True, True, True]
    assert [decoded(p.data) for p in plain] == docs
    assert not any(p.delta for p in plain)


async def test_delta_with_multibyte_characters_and_patches_that_do_not_pay(
    start_server: StartServer, make_client: MakeClient
) -> None:
    """Multi-byte characters change from one publication to the next (é to è: a patch may
    cut a character in two, which a JSON client cannot take as a string, so it may get that
    one in full), and publications unlike the one before go in full; every one decodes
    exactly. Published with delta through the broadcast API, to two channels."""
    server = await start_server(delta_config())
    client = make_client(server, token=make_token("42"))
    await connect(client)
    channels = ["delta:text1", "delta:text2"]
    subs = [await subscribe_ok(client, c, delta=DeltaType.FOSSIL) for c in channels]
    docs = []
    for status in ["café", "cafè", "café ✓", "cafê ✓ 🎉", "𝄞 naïve", "𝄞 naïvé"]:
        doc = copy.deepcopy(state_docs(1)[0])
        doc["items"][30]["status"] = status
        docs.append(doc)
    # Unlike the documents around it: a patch to it, or from it to the next one, would be
    # no smaller than the full payload.
    docs[4:4] = [{"replaced": "entirely", "n": [1, 2, 3]}]
    for doc in docs:
        # Raw UTF-8 on the wire (not \u escapes): the stored payload has multi-byte characters.
        await api_call(server, "broadcast", {"channels": channels, "data": doc, "delta": True})
    for channel, (_, events, _) in zip(channels, subs, strict=True):
        got = await pubs(events, len(docs), channel)
        assert [decoded(p.data) for p in got] == docs, channel
        flags = [p.delta for p in got]
        assert (flags[0], flags[4], flags[5]) == (False, False, False), flags
        if isinstance(got[0].data, bytes):  # Protobuf: patches are bytes, any one can go
            assert flags == [False, True, True, True, False, False, True], flags


async def _raw_pushes(ws: Any, n: int) -> list[dict[str, Any]]:
    """The next ``n`` publication pushes (pings answered, replies skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    found: list[dict[str, Any]] = []
    while len(found) < n:
        left = max(0.01, deadline - loop.time())
        frame = await wait(ws.recv(), timeout=left, what=f"publication {len(found) + 1}/{n}")
        for msg in _messages(frame):
            if msg == {}:
                await ws.send("{}")
            elif "pub" in msg.get("push", {}):
                found.append(msg["push"]["pub"])
    return found


async def _raw_subscribe(ws: Any, body: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"id": 1, "connect": {"token": make_token("42")}}))
    assert "connect" in await _reply(ws, 1)
    await ws.send(json.dumps({"id": 2, "subscribe": body}))
    reply = await _reply(ws, 2)
    assert "subscribe" in reply, reply
    result: dict[str, Any] = reply["subscribe"]
    return result


def _raw_ws(server: Server) -> Any:
    return websockets.connect(
        server.url, ping_interval=None, open_timeout=WAIT, close_timeout=1, proxy=None
    )


@pytest.mark.parametrize("channel", ["delta:x", "plain:x"])
async def test_unknown_delta_type_closes_3501_raw(start_server: StartServer, channel: str) -> None:
    """A delta type the server does not know is a bad request: the connection closes with
    3501, whether the channel allows delta or not (the SDKs refuse it before sending)."""
    server = await start_server(delta_config())
    async with _raw_ws(server) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": make_token("42")}}))
        assert "connect" in await _reply(ws, 1)
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel, "delta": "xdelta"}}))
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                frame = await wait(ws.recv(), what="close 3501 for an unknown delta type")
                assert all("subscribe" not in m for m in _messages(frame)), frame
    assert info.value.rcvd is not None, "closed without a close frame"
    assert info.value.rcvd.code == 3501, info.value


async def test_fossil_over_json_sends_strings_then_patches_raw(start_server: StartServer) -> None:
    """On the JSON wire a fossil subscription gets ``delta: true`` in its reply, then the
    first publication's JSON text as a string, then Fossil patches (``delta: true``) as
    strings, which the SDK's own Fossil decoder turns into the published JSON."""
    server = await start_server(delta_config())
    docs = state_docs(3)
    async with _raw_ws(server) as ws:
        result = await _raw_subscribe(ws, {"channel": "delta:raw", "delta": "fossil"})
        assert result.get("delta") is True, result
        for doc in docs:
            await api_publish(server, "delta:raw", doc, delta=True)
        first, *patches = await _raw_pushes(ws, len(docs))
    assert isinstance(first["data"], str) and not first.get("delta"), first
    assert json.loads(first["data"]) == docs[0]
    previous = first["data"].encode()
    for pub, doc in zip(patches, docs[1:], strict=True):
        assert pub.get("delta") is True and isinstance(pub["data"], str), pub
        assert len(pub["data"]) < 200, pub  # a patch, not the ~4 KiB document
        assert pub["data"].endswith(";"), pub  # Fossil's checksum terminator
        previous = fossil.apply_delta(previous, pub["data"].encode())
        assert json.loads(previous) == doc
    assert [p["offset"] for p in [first, *patches]] == [1, 2, 3]


@pytest.mark.parametrize(
    ("channel", "extra"),
    [
        pytest.param("plain:raw", {}, id="not-allowed-in-namespace"),
        pytest.param(
            "delta:raw",
            {"tf": {"key": "k", "cmp": "eq", "val": "v"}},
            id="with-a-tags-filter",
        ),
    ],
)
async def test_delta_silently_off_raw(
    start_server: StartServer, channel: str, extra: dict[str, Any]
) -> None:
    """Where delta cannot be had, a fossil subscribe succeeds without ``delta`` in its reply
    and publications come in full, as JSON values: in a namespace without
    ``allowed_delta_types``, and with a tags filter (a filtered client's previous
    publication is not the channel's)."""
    server = await start_server(delta_config())
    docs = state_docs(3)
    async with _raw_ws(server) as ws:
        result = await _raw_subscribe(ws, {"channel": channel, "delta": "fossil", **extra})
        assert "delta" not in result, result
        for doc in docs:
            await api_publish(server, channel, doc, delta=True, tags={"k": "v"})
        got = await _raw_pushes(ws, len(docs))
    assert [p["data"] for p in got] == docs
    assert not any("delta" in p for p in got), got
