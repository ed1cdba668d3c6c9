"""End-to-end tests: the real centrifuge-js SDK in Node over the WebSocket fallbacks.

The transports under test are HTTP-streaming (``POST /connection/http_stream``, JSON lines,
or Protobuf with ``Content-Type: application/octet-stream``) and SSE (``/connection/sse``,
JSON), whose later commands the SDK posts to ``/emulation`` with the ``session`` and ``node``
of the connect reply. Each test runs over the three variants (``http_stream-json``,
``http_stream-protobuf``, ``sse-json``) one scenario of ``js/transports.mjs`` in a ``node``
subprocess, which prints what the SDK reported as JSON lines; the assertions are made here.
A scenario that needs the test to act (restart a hub) prints a ``step`` and waits for the
answer on its stdin.

Node 20 has no ``EventSource``: the SSE variant needs the ``eventsource`` package in
``tests/e2e/js/node_modules``. Without Node, the SDK or that package the tests are skipped,
except under ``CI=true`` where they fail.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from ..conftest import free_port
from .conftest import (
    JS,
    Record,
    Results,
    Server,
    StartServer,
    Step,
    _unavailable,
    check_recovery,
    js_hub_config,
    make_token,
    run_script,
)

SCRIPT = JS / "transports.mjs"
API_KEY = "e2e-js-transports-api-key"
VARIANTS = ["http_stream-json", "http_stream-protobuf", "sse-json"]


# ---------------------------------------------------------------------------
# The variants
# ---------------------------------------------------------------------------


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest, node: str) -> str:
    """The transport and protocol of the emulated clients; SSE needs an EventSource."""
    name: str = request.param
    if name.startswith("sse") and not (JS / "node_modules/eventsource/package.json").exists():
        _unavailable(f"SSE needs the eventsource package in {JS} (Node 20 has no EventSource)")
    return name


def protocol_of(kind: str) -> str:
    return kind.rsplit("-", 1)[1]


def encoding_of(kind: str) -> str:
    """How the SDK of ``kind`` hands payloads over: objects (JSON) or bytes (Protobuf)."""
    return "bytes" if protocol_of(kind) == "protobuf" else "json"


def transport_of(kind: str) -> str:
    return kind.rsplit("-", 1)[0]


async def run_js(
    node: str,
    server: Server,
    scenario: str,
    steps: dict[str, Step] | None = None,
    **params: Any,
) -> Results:
    """Run ``scenario`` of transports.mjs against ``server``, answering its steps; fail unless
    it ran to its end."""
    return await run_script(node, SCRIPT, server, API_KEY, scenario, params, steps)


# ---------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------


def config(broker_url: str = "", transports: bool = True) -> str:
    """The hub: HTTP-streaming and SSE on (unless not ``transports``: ``--dev`` turns them on),
    a ``room`` namespace for presence and history, ``rec`` for recovery."""
    sections = """
    [http_stream]
    enabled = true

    [sse]
    enabled = true
    """
    return js_hub_config(API_KEY, sections if transports else "", broker_url)


async def api_publish(server: Server, channel: str, data: Any) -> Record:
    """Publish through ``server``'s API; its result (offset and epoch)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{server.host}:{server.api_port}/api/publish",
            json={"channel": channel, "data": data},
            headers={"X-API-Key": API_KEY},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response,
    ):
        reply: Record = await response.json()
    assert response.status == 200 and "error" not in reply, reply
    result: Record = reply["result"]
    return result


def check_connected(record: Record, kind: str) -> None:
    """A client of ``kind`` connected over its transport; an emulated one got a session and
    the node's id (the secret its /emulation posts carry), distinct from its client id."""
    transport = transport_of(kind)
    assert (record["transport"], record["inUse"]) == (transport, transport), record
    if transport == "websocket":
        return
    assert isinstance(record["session"], str) and record["session"], record
    assert isinstance(record["node"], str) and record["node"], record
    assert record["session"] != record["client"], record


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


async def test_publish_presence_and_history(
    start_server: StartServer, node: str, variant: str
) -> None:
    """Everything after connect goes through /emulation and comes back on the stream:
    subscribe, publish (the clients' and the server API's), presence, history, join/leave."""
    server = await start_server(config())
    publications: list[tuple[str, Any]] = [
        ("alice", {"from": "alice", "text": "héllo ✓ 🎉", "n": [1, 2.5, None, True]}),
        ("api", {"from": "api"}),
        ("bob", "a bare JSON string"),
        ("alice", 42),
    ]
    res = await run_js(
        node,
        server,
        "basics",
        variant=variant,
        channel="room:lobby",
        tokens={
            "alice": make_token("alice", info={"name": "Alice"}),
            "bob": make_token("bob", info={"name": "Bob"}),
        },
        publications=publications,
    )
    connected = {r["who"]: r for r in res.of("connected")}
    for record in connected.values():
        check_connected(record, variant)
    alice, bob = connected["alice"]["client"], connected["bob"]["client"]
    assert alice != bob and connected["alice"]["session"] != connected["bob"]["session"]
    assert connected["alice"]["node"] == connected["bob"]["node"]

    join = res.one("join", who="alice")
    assert (join["info"]["client"], join["info"]["user"]) == (bob, "bob")
    assert join["info"]["connInfo"] == {"name": "Bob"}

    publisher = {"alice": {"client": alice, "user": "alice", "connInfo": {"name": "Alice"}}}
    publisher["bob"] = {"client": bob, "user": "bob", "connInfo": {"name": "Bob"}}
    for receiver in ("alice", "bob"):
        got = res.of("publication", receiver=receiver)
        assert [p["data"] for p in got] == [value for _, value in publications], receiver
        assert [p["offset"] for p in got] == [1, 2, 3, 4], got
        assert {p["encoding"] for p in got} == {encoding_of(variant)}, got
        assert [p["info"] for p in got] == [publisher.get(who) for who, _ in publications]
    [api] = res.of("api_publish")
    assert api["result"]["offset"] == 2

    for who in ("alice", "bob"):
        clients = res.one("presence", who=who)["clients"]
        assert sorted((c["key"], c["client"], c["user"]) for c in clients) == sorted(
            [(alice, alice, "alice"), (bob, bob, "bob")]
        )
        assert {c["user"]: c.get("connInfo") for c in clients} == {
            "alice": {"name": "Alice"},
            "bob": {"name": "Bob"},
        }
        stats = res.one("presence_stats", who=who)
        assert (stats["numClients"], stats["numUsers"]) == (2, 2)
        full = res.one("history", who=who, query="all")
        assert full["offset"] == 4 and full["epoch"]
        assert [p["data"] for p in full["publications"]] == [v for _, v in publications]
        assert [p["offset"] for p in full["publications"]] == [1, 2, 3, 4]
        assert [p["info"] for p in full["publications"]] == [
            publisher.get(w) for w, _ in publications
        ]
        assert res.one("extra_publications", who=who)["count"] == 0

    position = res.one("history", query="position")
    assert (position["offset"], position["publications"]) == (4, [])
    since = res.one("history", query="since_first")
    assert [p["offset"] for p in since["publications"]] == [2, 3, 4]
    newest = res.one("history", query="reverse_2")
    assert [p["offset"] for p in newest["publications"]] == [4, 3]

    # bob's stream ended: the hub saw it go, alice got the leave and presence forgot bob.
    leave = res.one("leave", who="alice")
    assert (leave["info"]["client"], leave["info"]["user"]) == (bob, "bob")
    after = res.one("presence_stats_after_leave")
    assert (after["numClients"], after["numUsers"]) == (1, 1)


async def test_recovery_after_the_client_reconnects(
    start_server: StartServer, node: str, variant: str
) -> None:
    """The reader's stream ends (it disconnects); the server API and a WebSocket writer
    publish; the reader reconnects over a new stream, with a new session, and recovers."""
    server = await start_server(config())
    # A writer of the other protocol, as in test_sdk_js.py's WebSocket recovery test.
    writer_kind = "websocket-" + ("json" if protocol_of(variant) == "protobuf" else "protobuf")
    missed = 4
    res = await run_js(
        node,
        server,
        "recovery",
        variant=variant,
        writer=writer_kind,
        channel="rec:feed",
        missed=missed,
        tokens={"reader": make_token("reader"), "writer": make_token("writer")},
    )
    check_recovery(res, missed, encoding_of(variant))
    first, second = res.of("connected", who="reader")
    check_connected(first, variant)
    check_connected(second, variant)
    assert first["session"] != second["session"], "a new stream reused the session"


async def test_recovery_after_the_hub_restarts(
    start_server: StartServer, node: str, variant: str, redis_url: str
) -> None:
    """The hub ends the reader's stream as it shuts down (3001) and starts again as a new node;
    meanwhile another hub on the same Redis publishes. The SDK reconnects by itself over the
    same transport, its /emulation posts now name the new node, and it recovers what it missed
    from the Redis history."""
    hub = await start_server(config(redis_url))
    other = await start_server(config(redis_url))
    channel = "rec:restart"
    missed = 3
    published: list[Record] = []

    async def restart(_: Record) -> Record:
        await hub.stop()
        for i in range(missed):
            published.append(await api_publish(other, channel, {"missed": i}))
        await hub.start()
        return {"port": hub.port}

    res = await run_js(
        node,
        hub,
        "restart",
        steps={"restart": restart},
        variant=variant,
        channel=channel,
        missed=missed,
        tokens={"reader": make_token("reader")},
    )
    [before] = res.of("connected", who="reader")
    check_connected(before, variant)
    after = res.one("reconnected")
    check_connected(after, variant)
    assert after["node"] != before["node"], "the restarted hub kept its node id"
    assert after["session"] != before["session"]

    cut = res.one("connecting")
    assert cut["first"] == [3001, "shutdown"], cut

    subscribed = res.one("subscribed", who="reader")
    epoch = subscribed["streamPosition"]["epoch"]
    assert [p["epoch"] for p in published] == [epoch] * missed
    again = res.one("resubscribed")
    assert (again["wasRecovering"], again["recovered"]) == (True, True), again
    assert again["streamPosition"]["epoch"] == epoch

    recovered = res.of("publication", phase="recovered")
    assert [p["data"] for p in recovered] == [{"missed": i} for i in range(missed)]
    assert [p["offset"] for p in recovered] == [2, 3, 4]
    assert {p["encoding"] for p in recovered} == {encoding_of(variant)}
    [last] = res.of("publication", phase="after")
    assert (last["data"], last["offset"]) == ({"after": True}, 5)
    assert last["info"]["client"] == after["client"]
    assert res.one("extra_publications")["count"] == 0, "duplicates after recovery"


async def test_fallback_from_an_unreachable_websocket(
    start_server: StartServer, node: str, variant: str
) -> None:
    """With a WebSocket endpoint nothing listens on first in its list, the SDK falls back to
    the variant's transport (which ``--dev`` turns on), works over it, and keeps it when it
    connects again."""
    server = await start_server(config(transports=False), dev=True)
    dead = f"ws://127.0.0.1:{free_port()}/connection/websocket"
    res = await run_js(
        node,
        server,
        "fallback",
        variant=variant,
        deadWebsocket=dead,
        channel="room:fallback",
        token=make_token("carol"),
        publications=[("client", {"n": 1}), ("api", {"n": 2})],
    )
    first, again = res.of("connected", who="client")
    check_connected(first, variant)
    check_connected(again, variant)
    errors = res.one("errors", phase="first")["errors"]
    assert errors and {e["transport"] for e in errors} == {"websocket"}, errors
    assert res.one("errors", phase="again")["errors"] == [], "WebSocket was tried again"

    got = res.of("publication", phase="first")
    assert [(p["data"], p["offset"]) for p in got] == [({"n": 1}, 1), ({"n": 2}, 2)]
    assert got[0]["info"]["client"] == first["client"] and got[1]["info"] is None
    [late] = res.of("publication", phase="again")
    assert (late["data"], late["offset"]) == ({"again": True}, 3)
    assert late["info"]["client"] == again["client"]


@pytest.mark.parametrize("websocket", ["websocket-json", "websocket-protobuf"])
async def test_websocket_and_emulated_clients_in_one_channel(
    start_server: StartServer, node: str, variant: str, websocket: str
) -> None:
    """A WebSocket client and a client of the variant see each other's publications in
    order, each in its own encoding, and each other in presence."""
    server = await start_server(config())
    publications: list[tuple[str, Any]] = [
        ("websocket", {"from": "websocket"}),
        ("emulated", {"from": "emulated", "text": "ça va ✓"}),
        ("api", {"from": "api"}),
        ("emulated", [1, 2, 3]),
    ]
    res = await run_js(
        node,
        server,
        "mixed",
        variant=variant,
        websocket=websocket,
        channel="room:mixed",
        tokens={"websocket": make_token("wanda"), "emulated": make_token("emil")},
        publications=publications,
    )
    kinds = {"websocket": websocket, "emulated": variant}
    connected = {r["who"]: r for r in res.of("connected")}
    for who, kind in kinds.items():
        check_connected(connected[who], kind)
    sender = {who: connected[who]["client"] for who in kinds}

    for receiver, kind in kinds.items():
        got = res.of("publication", receiver=receiver)
        assert [p["data"] for p in got] == [value for _, value in publications], receiver
        assert [p["offset"] for p in got] == [1, 2, 3, 4]
        assert {p["encoding"] for p in got} == {encoding_of(kind)}, got
        assert [p["info"] and p["info"]["client"] for p in got] == [
            sender.get(who) for who, _ in publications
        ]
        clients = res.one("presence", who=receiver)["clients"]
        assert sorted((c["client"], c["user"]) for c in clients) == sorted(
            [(sender["websocket"], "wanda"), (sender["emulated"], "emil")]
        )
        past = res.one("history", who=receiver)
        assert [p["data"] for p in past["publications"]] == [v for _, v in publications]
        assert res.one("extra_publications", who=receiver)["count"] == 0


async def test_a_burst_and_pings_over_a_stream(
    start_server: StartServer, node: str, variant: str
) -> None:
    """A burst of publications reaches the SDK whole and in order though the hub writes
    several to a chunk, and the stream outlives the hub's pings (every 0.5 s), whose pongs
    go through /emulation: a pong lost or late would end it with 3012."""
    text = config().replace(
        "[http_api]", '[client]\nping_interval = "0.5s"\npong_timeout = "0.3s"\n\n[http_api]'
    )
    server = await start_server(text)
    docs = [{"i": i, "text": "é✓🎉" * 20} for i in range(200)]
    res = await run_js(
        node,
        server,
        "burst",
        variant=variant,
        channel="rec:burst",
        token=make_token("dora"),
        docs=docs,
        stayMs=2500,
    )
    check_connected(res.one("connected"), variant)
    assert res.one("api_batch")["status"] == 200
    burst = res.one("burst")
    assert burst["offsets"] == list(range(1, 201))
    assert burst["encodings"] == [encoding_of(variant)] and burst["same"] is True
    stayed = res.one("stayed")
    assert (stayed["state"], stayed["drops"]) == ("connected", []), stayed
    [after] = res.of("publication", phase="after")
    assert (after["data"], after["offset"]) == ({"still": "here"}, 201)
