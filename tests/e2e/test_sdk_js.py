"""End-to-end tests: the real centrifuge-js SDK (npm ``centrifuge``) in Node against the hub.

Each test starts its own hub (``start_server`` from conftest.py), then runs one scenario of
``js/scenarios.mjs`` in a ``node`` subprocess (``run_script`` from conftest.py): the scenario's
parameters go in as a JSON line on stdin, and what the SDK reported comes back as JSON lines
(connected contexts, publications, presence, history, refusals...). The assertions are made
here, on those values. The JSON client is ``import { Centrifuge } from 'centrifuge'``, the
Protobuf one
``import { Centrifuge } from 'centrifuge/build/protobuf'`` (subprotocol ``centrifuge-protobuf``),
and tests that do not mix the two run over each.

The SDK is installed by ``make test`` (``npm ci`` in ``tests/e2e/js``). Without Node or
without ``tests/e2e/js/node_modules`` the tests are skipped, except under ``CI=true`` where
they fail.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from ..conftest import free_port
from .conftest import (
    JS,
    WRONG_SECRET,
    Record,
    Results,
    Server,
    StartServer,
    check_recovery,
    js_hub_config,
    make_token,
    run_script,
    state_docs,
)

SCRIPT = JS / "scenarios.mjs"
API_KEY = "e2e-js-api-key"
PROTOCOLS = ["json", "protobuf"]


async def run_js(node: str, server: Server, scenario: str, **params: Any) -> Results:
    """Run ``scenario`` of scenarios.mjs against ``server``; fail unless it ran to its end."""
    return await run_script(node, SCRIPT, server, API_KEY, scenario, params)


# ---------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------


def config(rpc_endpoint: str = "", broker_url: str = "") -> str:
    """One hub configuration for every scenario: a namespace per kind of channel (with
    ``broker_url``, on that Redis)."""
    sections = f"""
    [proxy]
    rpc_endpoint = "{rpc_endpoint}"

    [namespaces.chat]
    history_size = 10
    history_ttl = 60
    presence = true
    allow_subscribe_for_client = true
    allow_publish_for_subscriber = true
    allow_history_for_subscriber = true
    allow_presence_for_subscriber = true

    [namespaces.readonly]
    allow_subscribe_for_client = true

    [namespaces.market]
    allow_subscribe_for_client = true
    allow_tags_filter = true

    [namespaces.secret]
    presence = true

    [namespaces.delta]
    history_size = 20
    history_ttl = 60
    force_recovery = true
    allowed_delta_types = ["fossil"]
    allow_subscribe_for_client = true

    [namespaces.deltapub]
    history_size = 20
    history_ttl = 60
    allowed_delta_types = ["fossil"]
    delta_publish = true
    allow_subscribe_for_client = true
    """
    return js_hub_config(API_KEY, sections, broker_url)


@dataclass
class RPCBackend:
    """An HTTP backend answering the hub's RPC proxy requests (Centrifugo's shapes).

    Method ``echo`` answers ``{"user", "method", "protocol", "echo"}`` from the request;
    ``refuse`` answers an error 4001; any other method error 4004.
    """

    url: str
    requests: list[Record] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body: Record = await request.json()
        self.requests.append(body)
        if body.get("method") == "echo":
            data = {
                "user": body.get("user"),
                "method": body.get("method"),
                "protocol": body.get("protocol"),
                "echo": body.get("data"),
            }
            return web.json_response({"result": {"data": data}})
        if body.get("method") == "refuse":
            return web.json_response({"error": {"code": 4001, "message": "refused by backend"}})
        return web.json_response({"error": {"code": 4004, "message": "no such method"}})


@pytest.fixture
async def rpc_backend() -> AsyncIterator[RPCBackend]:
    port = free_port()
    backend = RPCBackend(f"http://127.0.0.1:{port}/rpc")
    app = web.Application()
    app.router.add_post("/rpc", backend.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield backend
    finally:
        await runner.cleanup()


def without_tags(pub: Record) -> Record:
    return {k: v for k, v in pub.items() if k != "tags"}


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


async def test_json_and_protobuf_clients_see_each_others_publications(
    start_server: StartServer, node: str
) -> None:
    server = await start_server(config())
    # (publisher, JSON payload), published in this order.
    publications: list[tuple[str, Any]] = [
        ("json", {"from": "json", "text": "héllo ✓ 🎉", "n": [1, 2.5, None, True]}),
        ("protobuf", {"from": "protobuf", "nested": {"k": "v"}}),
        ("protobuf", "a bare JSON string"),
        ("json", 42),
    ]
    res = await run_js(
        node,
        server,
        "cross_protocol",
        channel="chat:mixed",
        tokens={
            "json": make_token("alice", info={"name": "Alice"}),
            "protobuf": make_token("bob", info={"name": "Bob"}),
        },
        publications=publications,
    )
    [json_id] = res.ids("json")
    [pb_id] = res.ids("protobuf")
    assert json_id and pb_id and json_id != pb_id
    publisher = {
        "json": (json_id, "alice", {"name": "Alice"}),
        "protobuf": (pb_id, "bob", {"name": "Bob"}),
    }

    for who in ("json", "protobuf"):
        sub = res.one("subscribed", who=who)
        assert sub["channel"] == "chat:mixed"
        assert sub["recoverable"] is False and sub["wasRecovering"] is False

    for receiver in ("json", "protobuf"):
        got = res.of("publication", receiver=receiver)
        assert [p["data"] for p in got] == [value for _, value in publications], receiver
        # The SDK's own encoding: objects over JSON, bytes (of JSON) over Protobuf.
        expected_encoding = "json" if receiver == "json" else "bytes"
        assert {p["encoding"] for p in got} == {expected_encoding}, got
        assert [p["offset"] for p in got] == [1, 2, 3, 4], got
        assert all(p["channel"] == "chat:mixed" for p in got)
        for pub, (sender, _) in zip(got, publications, strict=True):
            client, user, conn_info = publisher[sender]
            assert pub["info"] == {"client": client, "user": user, "connInfo": conn_info}, pub

    # Both see the same history, each in its own encoding.
    json_history = res.one("history", who="json")
    pb_history = res.one("history", who="protobuf")
    assert json_history["offset"] == pb_history["offset"] == 4
    assert json_history["epoch"] and json_history["epoch"] == pb_history["epoch"]
    for hist in (json_history, pb_history):
        assert [p["data"] for p in hist["publications"]] == [v for _, v in publications]
        assert [p["offset"] for p in hist["publications"]] == [1, 2, 3, 4]
    assert [without_tags(p) for p in pb_history["publications"]] == [
        without_tags(p) | {"encoding": "bytes"} for p in json_history["publications"]
    ]

    for who in ("json", "protobuf"):
        clients = res.one("presence", who=who)["clients"]
        assert {(c["key"], c["client"], c["user"]) for c in clients} == {
            (json_id, json_id, "alice"),
            (pb_id, pb_id, "bob"),
        }, clients
        conn = {c["user"]: c.get("connInfo") for c in clients}
        assert conn == {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}}
        assert res.one("extra_publications", who=who)["count"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_presence_join_leave_and_history(
    start_server: StartServer, node: str, protocol: str
) -> None:
    server = await start_server(config())
    values = [{"n": i, "text": f"message {i}"} for i in range(5)]
    res = await run_js(
        node,
        server,
        "presence_history",
        protocol=protocol,
        channel="room:lobby",
        tokens={
            "alice1": make_token("alice", info={"name": "Alice"}),
            "alice2": make_token("alice", info={"name": "Alice"}),
            "bob": make_token("bob", info={"name": "Bob"}),
        },
        publications=values,
    )
    [alice1], [alice2], [bob] = res.ids("alice1"), res.ids("alice2"), res.ids("bob")
    assert len({alice1, alice2, bob}) == 3
    assert res.one("subscribed", who="alice1")["recoverable"] is False

    joins = res.of("join", who="alice1")
    assert [(j["info"]["client"], j["info"]["user"]) for j in joins] == [
        (alice2, "alice"),
        (bob, "bob"),
    ]
    assert joins[1]["info"]["connInfo"] == {"name": "Bob"}
    assert all(j["channel"] == "room:lobby" for j in joins)

    clients = res.one("presence", who="alice1")["clients"]
    assert sorted((c["key"], c["client"], c["user"]) for c in clients) == sorted(
        [(alice1, alice1, "alice"), (alice2, alice2, "alice"), (bob, bob, "bob")]
    )
    assert {c["client"]: c.get("connInfo") for c in clients}[bob] == {"name": "Bob"}
    stats = res.one("presence_stats", who="bob")
    assert (stats["numClients"], stats["numUsers"]) == (3, 2)

    live = res.of("publication", receiver="alice1")
    assert [p["data"] for p in live] == values
    assert [p["offset"] for p in live] == [1, 2, 3, 4, 5]
    assert all(p["info"]["client"] == alice1 for p in live)

    full = res.one("history", query="all")
    assert full["offset"] == 5 and full["epoch"]
    assert [p["data"] for p in full["publications"]] == values
    assert [p["offset"] for p in full["publications"]] == [1, 2, 3, 4, 5]
    expected_encoding = "json" if protocol == "json" else "bytes"
    assert {p["encoding"] for p in full["publications"]} == {expected_encoding}
    assert all(p["info"]["client"] == alice1 for p in full["publications"])

    position = res.one("history", query="position")
    assert (position["offset"], position["epoch"], position["publications"]) == (
        5,
        full["epoch"],
        [],
    )
    since = res.one("history", query="since_first")
    assert [p["offset"] for p in since["publications"]] == [2, 3, 4, 5]
    assert [p["data"] for p in since["publications"]] == values[1:]
    newest = res.one("history", query="reverse_2")
    assert [p["offset"] for p in newest["publications"]] == [5, 4]
    assert [p["data"] for p in newest["publications"]] == [values[4], values[3]]

    # bob disconnected: alice1 saw the leave, and presence forgot bob.
    leave = res.one("leave", who="alice1")
    assert (leave["info"]["client"], leave["info"]["user"]) == (bob, "bob")
    after = res.one("presence_stats_after_leave")
    assert (after["numClients"], after["numUsers"]) == (2, 1)
    rest = res.one("presence_after_leave")["clients"]
    assert sorted(c["client"] for c in rest) == sorted([alice1, alice2])


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_recovery_after_reconnect(
    start_server: StartServer, node: str, protocol: str
) -> None:
    """The reader (``protocol``) misses publications made by the server API and by a writer
    of the other protocol while it is disconnected; reconnected, the SDK recovers them."""
    server = await start_server(config())
    missed = 4
    res = await run_js(
        node,
        server,
        "recovery",
        protocol=protocol,
        channel="rec:feed",
        missed=missed,
        tokens={"reader": make_token("reader"), "writer": make_token("writer")},
    )
    epoch = check_recovery(res, missed, "json" if protocol == "json" else "bytes")
    api = res.of("api_publish")
    assert [(r["result"]["offset"], r["result"]["epoch"]) for r in api] == [(2, epoch), (4, epoch)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_token_connect_and_rpc(
    start_server: StartServer, node: str, rpc_backend: RPCBackend, protocol: str
) -> None:
    server = await start_server(config(rpc_endpoint=rpc_backend.url))
    res = await run_js(
        node,
        server,
        "token_rpc",
        protocol=protocol,
        channel="chat:tokens",
        token=make_token("alice"),
        expiredToken=make_token("carol", exp=-60),
        freshToken=make_token("carol"),
        rpc=[
            ["echo", {"question": "ça va?", "n": 1}],
            ["refuse", {}],
            ["missing", None],
        ],
    )
    [client_id] = res.ids("token")
    assert client_id

    echo = res.one("rpc", method="echo")
    assert echo["ok"] is True, echo
    assert echo["encoding"] == ("json" if protocol == "json" else "bytes")
    assert echo["value"] == {
        "user": "alice",
        "method": "echo",
        "protocol": protocol,
        "echo": {"question": "ça va?", "n": 1},
    }
    refuse = res.one("rpc", method="refuse")
    assert (refuse["ok"], refuse["code"], refuse["message"]) == (False, 4001, "refused by backend")
    missing = res.one("rpc", method="missing")
    assert (missing["ok"], missing["code"]) == (False, 4004)

    # What the backend was asked: Centrifugo's RPC proxy request.
    first = rpc_backend.requests[0]
    assert first["client"] == client_id
    assert (first["user"], first["method"], first["protocol"]) == ("alice", "echo", protocol)
    assert first["data"] == {"question": "ça va?", "n": 1}
    assert [r["method"] for r in rpc_backend.requests] == ["echo", "refuse", "missing"]

    # An expired token: the SDK asked getToken once and connected with the fresh one.
    assert res.one("get_token")["calls"] == 1
    [refreshed_id] = res.ids("expired")
    [pub] = res.of("publication")
    assert pub["info"] == {"client": refreshed_id, "user": "carol"}
    assert pub["data"] == {"who": "refreshed"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_server_messages_and_a_send_without_a_message_hook(
    start_server: StartServer, node: str, protocol: str
) -> None:
    server = await start_server(config())
    res = await run_js(
        node, server, "messages", protocol=protocol, token=make_token("dan"), user="dan"
    )
    message = res.one("message")
    assert message["encoding"] == ("json" if protocol == "json" else "bytes")
    assert message["value"] == {"hello": "from the server"}
    # tidings serve has no message hook: as Centrifugo, it closes with 3508, not to reconnect.
    after = res.one("after_send")
    assert (after["code"], after["reason"], after["state"]) == (
        3508,
        "not available",
        "disconnected",
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_get_state_after_error_112_for_an_unrecoverable_position(
    start_server: StartServer, node: str, protocol: str
) -> None:
    server = await start_server(config())
    res = await run_js(
        node, server, "stream_state", protocol=protocol, token=make_token("eve"), channel="rec:s"
    )
    state = res.one("get_state")
    # The stale position was refused (112, flag bit 2), so the SDK asked again.
    assert state["calls"] == 2, state
    subscribed = res.one("subscribed")
    assert (subscribed["wasRecovering"], subscribed["recovered"]) == (True, True), subscribed
    assert subscribed["streamPosition"] == {
        "offset": state["top"]["offset"],
        "epoch": state["top"]["epoch"],
    }
    [pub] = res.of("publication")
    assert pub["data"] == {"n": 2} and pub["offset"] == state["top"]["offset"] + 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_tags_filter_delivers_exactly_the_matching_publications(
    start_server: StartServer, node: str, protocol: str
) -> None:
    server = await start_server(config())
    tf = {"op": "or", "nodes": [
        {"key": "ticker", "cmp": "eq", "val": "AAPL"},
        {"key": "ticker", "cmp": "eq", "val": "END"},
    ]}  # fmt: skip
    res = await run_js(
        node,
        server,
        "tags_filter",
        protocol=protocol,
        token=make_token("fay"),
        channel="market:stocks",
        filter=tf,
        tickers=["AAPL", "MSFT", "AAPL", "IBM"],
    )
    got = [(p["data"], p["tags"]) for p in res.of("publication")]
    assert got == [
        ({"n": 0}, {"ticker": "AAPL"}),
        ({"n": 2}, {"ticker": "AAPL"}),
        ({"last": True}, {"ticker": "END"}),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_errors_reported_by_the_sdk(
    start_server: StartServer, node: str, protocol: str
) -> None:
    server = await start_server(config())
    res = await run_js(
        node,
        server,
        "errors",
        protocol=protocol,
        token=make_token("alice"),
        badToken=make_token("alice", secret=WRONG_SECRET),
        refusedChannels=["secret:plans", "nowhere:x"],
        readOnlyChannel="readonly:news",
    )
    # Refused subscriptions end unsubscribed with the server's error code (not retried).
    expected = {"secret:plans": (103, "permission denied"), "nowhere:x": (102, "unknown channel")}
    for channel, (code, reason) in expected.items():
        refused = res.one("refused_subscribe", channel=channel)
        assert (refused["code"], refused["reason"]) == (code, reason), refused
        assert refused["subState"] == "unsubscribed"
        assert refused["subscribed"] == 0
        assert refused["errors"] == [], refused

    # Refused calls reject with the error; the client and its subscription stay.
    assert res.one("refused_call", call="publish")["code"] == 103
    for call in ("presence", "history"):
        refused = res.one("refused_call", call=call)
        assert (refused["code"], refused["temporary"]) == (108, False), refused
    state = res.one("client_state")
    assert (state["state"], state["subState"]) == ("connected", "subscribed")

    # A token signed with another key: the connection ends with 3500 and no reconnect.
    bad = res.one("bad_token")
    assert (bad["code"], bad["reason"]) == (3500, "invalid token"), bad
    assert (bad["state"], bad["connected"]) == ("disconnected", 0)


# ---------------------------------------------------------------------------
# Fossil delta compression
# ---------------------------------------------------------------------------


def wire_size(doc: Record) -> int:
    """The size of ``doc`` as the scenario sends it (``JSON.stringify``: compact, UTF-8)."""
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


def assert_compressed(stats: Record, docs: list[Record], full: int) -> None:
    """``stats`` (``sub.deltaStats()`` over ``docs``) counts ``full`` full payloads and
    patches for the rest, decoded to exactly the published bytes, patches being small."""
    n = len(docs)
    assert (stats["numPublications"], stats["numFullPayloads"], stats["numDeltaPayloads"]) == (
        n,
        full,
        n - full,
    ), stats
    assert stats["bytesDecoded"] == sum(wire_size(d) for d in docs), stats
    assert wire_size(docs[0]) > 4000  # big enough for delta compression to be worth it
    if full < n:
        # A one-field change: a patch is a few dozen bytes against a ~4 KiB document.
        assert stats["bytesReceived"] < sum(wire_size(d) for d in docs[:full]) + 100 * (n - full)
        assert stats["bytesReceived"] * 3 < stats["bytesDecoded"], stats


async def run_delta(
    node: str, server: Server, protocol: str, channel: str, docs: list[Record], **params: Any
) -> Results:
    """Run the ``delta`` scenario: a ``delta: 'fossil'`` subscriber of ``channel`` gets
    ``docs``, published through the server API (``params``: how, and what follows)."""
    return await run_js(
        node,
        server,
        "delta",
        protocol=protocol,
        token=make_token("gil"),
        channel=channel,
        docs=docs,
        **params,
    )


DELTA_MODES = {
    # mode: (channel, publish with `delta: true` through the API, patches expected)
    "api-delta": ("delta:state", True, True),
    "delta-publish": ("deltapub:state", False, True),
    "not-marked": ("delta:state", False, False),
}


@pytest.mark.parametrize("mode", DELTA_MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_delta_subscription_decodes_fossil_patches_to_the_published_objects(
    start_server: StartServer, node: str, protocol: str, mode: str
) -> None:
    """A ``delta: 'fossil'`` subscription gets the first publication in full and each later
    one as a patch when it is published with delta (server API ``delta: true``, or the
    namespace's ``delta_publish``), in full otherwise; the SDK decodes every one to exactly
    the published object."""
    channel, api_delta, patches = DELTA_MODES[mode]
    server = await start_server(config())
    docs = state_docs(6)
    res = await run_delta(node, server, protocol, channel, docs, apiDelta=api_delta)
    live = res.of("publication", phase="live")
    assert [p["data"] for p in live] == docs
    assert [p["offset"] for p in live] == [1, 2, 3, 4, 5, 6]
    assert {p["encoding"] for p in live} == {"json" if protocol == "json" else "bytes"}
    assert_compressed(res.one("delta_stats", phase="live"), docs, 1 if patches else len(docs))
    assert res.one("extra_publications")["count"] == 0


async def run_delta_recovery(
    node: str, server: Server, protocol: str, channel: str, n: int, **params: Any
) -> Results:
    """Run the ``delta`` scenario over ``n`` documents published with ``delta: true``: six
    live, then all but the last while the client is disconnected, the last once it has
    reconnected. Checks what every such run shows: each phase got exactly its documents, the
    subscription recovered, live and in all as compressed as expected."""
    docs = state_docs(n)
    live_docs, missed, after = docs[:6], docs[6:-1], docs[-1]
    res = await run_delta(
        node,
        server,
        protocol,
        channel,
        live_docs,
        apiDelta=True,
        missed=missed,
        after=after,
        **params,
    )
    assert [p["data"] for p in res.of("publication", phase="live")] == live_docs
    assert_compressed(res.one("delta_stats", phase="live"), live_docs, 1)

    again = res.one("resubscribed")
    assert (again["wasRecovering"], again["recovered"]) == (True, True), again
    assert [p["data"] for p in res.of("publication", phase="recovered")] == missed
    [last] = res.of("publication", phase="after")
    assert (last["data"], last["offset"]) == (after, n)
    # Live: 1 full + 5 patches; recovered: 1 full + the rest patches; after: 1 patch.
    assert_compressed(res.one("delta_stats", phase="after"), docs, 2)
    assert res.one("extra_publications")["count"] == 0
    return res


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_delta_subscription_recovers_missed_publications_as_a_chain_of_patches(
    start_server: StartServer, node: str, protocol: str
) -> None:
    """Publications missed while disconnected come back in the subscribe reply, the first
    in full and each next one as a patch against it; the next live one is a patch again."""
    server = await start_server(config())
    res = await run_delta_recovery(node, server, protocol, "delta:rec", 11)
    recovered = res.of("publication", phase="recovered")
    assert [p["offset"] for p in recovered] == [7, 8, 9, 10]
    live_stats = res.one("delta_stats", phase="live")
    stats = res.one("delta_stats", phase="recovered")
    assert stats["numFullPayloads"] - live_stats["numFullPayloads"] == 1, stats
    assert stats["numDeltaPayloads"] - live_stats["numDeltaPayloads"] == len(recovered) - 1, stats
    final = res.one("delta_stats", phase="after")
    assert final["numFullPayloads"] == stats["numFullPayloads"], final
    assert final["numDeltaPayloads"] == stats["numDeltaPayloads"] + 1, final


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_delta_across_two_hubs_on_redis(
    start_server: StartServer, node: str, redis_url: str, protocol: str
) -> None:
    """Two hubs share the channel through Redis: publications made through either hub's
    server API (the subscriber is on hub B) reach it as patches, the previous publication
    coming from Redis; recovery from Redis's history is chained too."""
    hub_a = await start_server(config(broker_url=redis_url))
    hub_b = await start_server(config(broker_url=redis_url))
    api = {
        hub: {"url": f"http://{hub.host}:{hub.api_port}", "key": API_KEY} for hub in (hub_a, hub_b)
    }
    res = await run_delta_recovery(
        node,
        hub_b,
        protocol,
        "delta:cluster",
        10,
        publishApis=[api[hub_a], api[hub_a], api[hub_b]],
    )
    assert {r["api"] for r in res.of("api_publish")} == {api[hub_a]["url"], api[hub_b]["url"]}
    assert [p["offset"] for p in res.of("publication", phase="live")] == [1, 2, 3, 4, 5, 6]


async def test_delta_and_plain_subscribers_of_both_protocols_share_a_channel(
    start_server: StartServer, node: str
) -> None:
    """On one channel, JSON and Protobuf subscribers with and without delta all get exactly
    the published objects: the patch goes to the delta ones only."""
    server = await start_server(config())
    docs = state_docs(5)
    res = await run_js(
        node, server, "delta_mixed", token=make_token("hal"), channel="delta:mixed", docs=docs
    )
    for receiver in ("json-delta", "json-plain", "protobuf-delta", "protobuf-plain"):
        got = res.of("publication", receiver=receiver)
        assert [p["data"] for p in got] == docs, receiver
        assert [p["offset"] for p in got] == [1, 2, 3, 4, 5], receiver
        expected_encoding = "json" if receiver.startswith("json") else "bytes"
        assert {p["encoding"] for p in got} == {expected_encoding}, receiver
        stats = res.one("delta_stats", receiver=receiver)
        if receiver.endswith("-delta"):
            assert_compressed(stats, docs, 1)
        else:
            assert stats["numPublications"] == 0, stats  # no delta asked: none decoded
        assert res.one("extra_publications", receiver=receiver)["count"] == 0
