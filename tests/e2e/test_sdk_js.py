"""End-to-end tests: the real centrifuge-js SDK (npm ``centrifuge``) in Node against the hub.

Each test starts its own hub (``start_server`` from conftest.py), then runs one scenario of
``js/scenarios.mjs`` in a ``node`` subprocess: the scenario's parameters go in as JSON on stdin,
and what the SDK reported comes back as JSON lines (connected contexts, publications, presence,
history, refusals...). The assertions are made here, on those values. The JSON client is
``import { Centrifuge } from 'centrifuge'``, the Protobuf one
``import { Centrifuge } from 'centrifuge/build/protobuf'`` (subprotocol ``centrifuge-protobuf``),
and tests that do not mix the two run over each.

The SDK is installed by ``make test`` (``npm ci`` in ``tests/e2e/js``). Without Node or
without ``tests/e2e/js/node_modules`` the tests are skipped, except under ``CI=true`` where
they fail.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from aiohttp import web

from ..conftest import clean_environment, free_port
from .conftest import HMAC_SECRET, WRONG_SECRET, Server, StartServer, make_token

JS = Path(__file__).resolve().parent / "js"
SCRIPT = JS / "scenarios.mjs"
API_KEY = "e2e-js-api-key"
PROTOCOLS = ["json", "protobuf"]

SCENARIO_DEADLINE = 15.0
"""Bound of one scenario inside Node (it then reports a failure itself)."""
RUN_TIMEOUT = SCENARIO_DEADLINE + 10.0
"""Bound of the Node process as seen from here (a hung process is killed)."""

Record = dict[str, Any]


# ---------------------------------------------------------------------------
# Node and the SDK
# ---------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"centrifuge-js tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, once the SDK is installed in ``tests/e2e/js/node_modules``."""
    path = shutil.which("node")
    if path is None:
        _unavailable("no node on PATH (apt-get install nodejs npm)")
    assert path is not None
    for package in ("centrifuge", "ws"):
        if not (JS / "node_modules" / package / "package.json").exists():
            _unavailable(f"{package} is not installed in {JS} (run make test, or npm ci there)")
    return path


@dataclass
class Results:
    """The JSON lines one scenario printed."""

    records: list[Record]
    stderr: str

    def of(self, type_: str, **match: Any) -> list[Record]:
        return [
            r
            for r in self.records
            if r["type"] == type_ and all(r.get(k) == v for k, v in match.items())
        ]

    def one(self, type_: str, **match: Any) -> Record:
        found = self.of(type_, **match)
        assert len(found) == 1, f"expected one {type_!r} record {match}, got {found}\n{self}"
        return found[0]

    def __str__(self) -> str:
        lines = "\n".join(json.dumps(r) for r in self.records)
        return f"--- scenario output ---\n{lines}\n--- node stderr ---\n{self.stderr}"


async def run_js(node: str, server: Server, scenario: str, **params: Any) -> Results:
    """Run ``scenario`` against ``server``; fail unless it ran to its end."""
    request = {
        "scenario": scenario,
        "url": server.url,
        "api": {"url": f"http://{server.host}:{server.api_port}", "key": API_KEY},
        "deadlineMs": int(SCENARIO_DEADLINE * 1000),
        **params,
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(JS),
        env=clean_environment(),
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            proc.communicate(json.dumps(request).encode()), RUN_TIMEOUT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node scenario {scenario!r} still running after {RUN_TIMEOUT}s: killed")
    results = Results(parse_lines(stdout.decode(errors="replace")), stderr.decode(errors="replace"))
    print(results)  # the whole output, shown by pytest when the test fails
    last = results.records[-1] if results.records else None
    if proc.returncode != 0 or last is None or last["type"] != "done":
        pytest.fail(
            f"node scenario {scenario!r} did not finish (exit {proc.returncode}): "
            f"{last and last.get('error')}\n{results.stderr}",
            pytrace=False,
        )
    return results


def parse_lines(text: str) -> list[Record]:
    """The scenario's JSON lines (anything else printed is kept as a ``stdout`` record)."""
    records: list[Record] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        records.append(record if isinstance(record, dict) else {"type": "stdout", "line": line})
    return records


# ---------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------


def config(rpc_endpoint: str = "", broker_url: str = "") -> str:
    """One hub configuration for every scenario: a namespace per kind of channel (with
    ``broker_url``, on that Redis)."""
    text = f"""
    token_hmac_secret_key = "{HMAC_SECRET}"

    [http_api]
    key = "{API_KEY}"

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

    [namespaces.room]
    presence = true
    join_leave = true
    history_size = 10
    history_ttl = 60
    allow_subscribe_for_client = true
    allow_publish_for_subscriber = true
    allow_history_for_subscriber = true
    allow_presence_for_subscriber = true

    [namespaces.rec]
    history_size = 100
    history_ttl = 300
    force_recovery = true
    allow_subscribe_for_client = true
    allow_publish_for_client = true

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
    text = dedent(text).lstrip()
    if broker_url:
        text += f'\n[broker]\nurl = "{broker_url}"\n'
    return text


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


def ids(results: Results, who: str) -> list[str]:
    """The client ids a client of the scenario got, in connection order."""
    return [r["client"] for r in results.of("connected", who=who)]


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
    [json_id] = ids(res, "json")
    [pb_id] = ids(res, "protobuf")
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
    [alice1], [alice2], [bob] = ids(res, "alice1"), ids(res, "alice2"), ids(res, "bob")
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
    first_id, second_id = ids(res, "reader")
    assert first_id != second_id, "a reconnected client got the same client id"
    [writer_id] = ids(res, "writer")
    first = res.one("subscribed", who="reader")
    assert first["recoverable"] is True and first["wasRecovering"] is False, first
    assert first["streamPosition"]["epoch"], first
    assert first["streamPosition"]["offset"] == 0, first
    epoch = first["streamPosition"]["epoch"]

    [live] = res.of("publication", phase="live")
    assert (live["data"], live["offset"]) == ({"live": 1}, 1)
    assert live["info"]["client"] == writer_id

    gone = res.one("disconnected")
    assert gone["clientState"] == "disconnected"
    assert gone["subState"] == "subscribing", "the SDK keeps the subscription to recover it"

    api = res.of("api_publish")
    assert [(r["result"]["offset"], r["result"]["epoch"]) for r in api] == [(2, epoch), (4, epoch)]

    again = res.one("resubscribed")
    assert again["wasRecovering"] is True, again
    assert again["recovered"] is True, again
    assert again["hasRecoveredPublications"] is True, again
    assert again["streamPosition"]["epoch"] == epoch, again

    recovered = res.of("publication", phase="recovered")
    assert [p["data"] for p in recovered] == [{"missed": i} for i in range(missed)]
    assert [p["offset"] for p in recovered] == [2, 3, 4, 5]
    # Server API publications have no publisher and keep their tags; the writer's have it.
    assert [p["info"] for p in recovered[0::2]] == [None, None]
    assert [p["tags"] for p in recovered[0::2]] == [{"via": "api"}, {"via": "api"}]
    assert [p["info"]["client"] for p in recovered[1::2]] == [writer_id, writer_id]
    expected_encoding = "json" if protocol == "json" else "bytes"
    assert {p["encoding"] for p in recovered} == {expected_encoding}

    [after] = res.of("publication", phase="after")
    assert (after["data"], after["offset"]) == ({"after": True}, 6)
    assert res.one("extra_publications")["count"] == 0, "duplicates after recovery"


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
    [client_id] = ids(res, "token")
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
    [refreshed_id] = ids(res, "expired")
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


def state_docs(n: int) -> list[Record]:
    """``n`` versions of a state-like document of about 4 KiB, each one field apart from
    the one before (a patch is then a few dozen bytes)."""
    doc: Record = {
        "board": "operations",
        "items": [
            {"id": k, "name": f"item-{k:03d}", "status": "idle", "load": 0, "zone": "eu-west"}
            for k in range(60)
        ],
    }
    docs = []
    for i in range(n):
        doc = copy.deepcopy(doc)
        doc["items"][(i * 7) % 60]["load"] = i + 1
        docs.append(doc)
    return docs


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
    res = await run_js(
        node,
        server,
        "delta",
        protocol=protocol,
        token=make_token("gil"),
        channel=channel,
        apiDelta=api_delta,
        docs=docs,
    )
    live = res.of("publication", phase="live")
    assert [p["data"] for p in live] == docs
    assert [p["offset"] for p in live] == [1, 2, 3, 4, 5, 6]
    assert {p["encoding"] for p in live} == {"json" if protocol == "json" else "bytes"}
    assert_compressed(res.one("delta_stats", phase="live"), docs, 1 if patches else len(docs))
    assert res.one("extra_publications")["count"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_delta_subscription_recovers_missed_publications_as_a_chain_of_patches(
    start_server: StartServer, node: str, protocol: str
) -> None:
    """Publications missed while disconnected come back in the subscribe reply, the first
    in full and each next one as a patch against it; the next live one is a patch again."""
    server = await start_server(config())
    docs = state_docs(11)
    live_docs, missed, after = docs[:6], docs[6:10], docs[10]
    res = await run_js(
        node,
        server,
        "delta",
        protocol=protocol,
        token=make_token("gil"),
        channel="delta:rec",
        apiDelta=True,
        docs=live_docs,
        missed=missed,
        after=after,
    )
    assert [p["data"] for p in res.of("publication", phase="live")] == live_docs
    live_stats = res.one("delta_stats", phase="live")
    assert_compressed(live_stats, live_docs, 1)

    again = res.one("resubscribed")
    assert (again["wasRecovering"], again["recovered"]) == (True, True), again
    recovered = res.of("publication", phase="recovered")
    assert [p["data"] for p in recovered] == missed
    assert [p["offset"] for p in recovered] == [7, 8, 9, 10]
    stats = res.one("delta_stats", phase="recovered")
    assert stats["numFullPayloads"] - live_stats["numFullPayloads"] == 1, stats
    assert stats["numDeltaPayloads"] - live_stats["numDeltaPayloads"] == len(missed) - 1, stats

    [last] = res.of("publication", phase="after")
    assert (last["data"], last["offset"]) == (after, 11)
    final = res.one("delta_stats", phase="after")
    assert final["numFullPayloads"] == stats["numFullPayloads"], final
    assert final["numDeltaPayloads"] == stats["numDeltaPayloads"] + 1, final
    assert_compressed(final, docs, 2)
    assert res.one("extra_publications")["count"] == 0


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
    docs = state_docs(10)
    live_docs, missed, after = docs[:6], docs[6:9], docs[9]
    res = await run_js(
        node,
        hub_b,
        "delta",
        protocol=protocol,
        token=make_token("gil"),
        channel="delta:cluster",
        apiDelta=True,
        publishApis=[api[hub_a], api[hub_a], api[hub_b]],
        docs=live_docs,
        missed=missed,
        after=after,
    )
    assert {r["api"] for r in res.of("api_publish")} == {api[hub_a]["url"], api[hub_b]["url"]}
    live = res.of("publication", phase="live")
    assert [p["data"] for p in live] == live_docs
    assert [p["offset"] for p in live] == [1, 2, 3, 4, 5, 6]
    assert_compressed(res.one("delta_stats", phase="live"), live_docs, 1)

    again = res.one("resubscribed")
    assert (again["wasRecovering"], again["recovered"]) == (True, True), again
    assert [p["data"] for p in res.of("publication", phase="recovered")] == missed
    [last] = res.of("publication", phase="after")
    assert (last["data"], last["offset"]) == (after, 10)
    # Live: 1 full + 5 patches; recovered: 1 full + 2 patches; after: 1 patch.
    assert_compressed(res.one("delta_stats", phase="after"), docs, 2)
    assert res.one("extra_publications")["count"] == 0


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
