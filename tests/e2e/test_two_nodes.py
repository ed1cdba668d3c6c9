"""End-to-end: subscription features across two ``tidings serve`` processes on one Redis.

In every test the subscriber is an unmodified centrifuge-python client of hub B, and
what it should see happens through hub A (its server API): the publication, its tags
and its history travel through the tests' own redis-server only, and so do the server
API's commands about a user (control messages). The SDK tests run over the JSON
protocol and over Protobuf (the ``make_client`` fixture).

Not here: a client ``send`` reaching the ``on_message`` hook needs Python hooks, which
``tidings serve`` has no way to load.
"""

from __future__ import annotations

import asyncio
import json
from textwrap import dedent
from typing import Any

import aiohttp
import pytest
import websockets
from centrifuge import (
    Client,
    Filter,
    FilterNode,
    Publication,
    SubscriptionState,
)

from .conftest import (
    HMAC_SECRET,
    WAIT,
    MakeClient,
    Server,
    StartServer,
    SubEvents,
    connect,
    decoded,
    drain,
    events_of,
    make_sub_token,
    make_token,
    next_event,
    pubs,
    subscribe_ok,
    wait,
)

API_KEY = "e2e-two-nodes-api-key"

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def hub_config(redis_url: str, client: str = "", namespaces: dict[str, str] | None = None) -> str:
    """A hub of the cluster: the shared Redis as broker, the API key, [client], namespaces."""
    parts = [
        f'token_hmac_secret_key = "{HMAC_SECRET}"',
        "",
        "[broker]",
        f'url = "{redis_url}"',
        "",
        "[http_api]",
        f'key = "{API_KEY}"',
    ]
    if client:
        parts += ["", "[client]", dedent(client).strip()]
    for name, body in (namespaces or {}).items():
        parts += ["", f"[namespaces.{name}]", dedent(body).strip()]
    return "\n".join(parts) + "\n"


async def two_hubs(start_server: StartServer, config: str) -> tuple[Server, Server]:
    """Hubs A and B, started with the same config (so on the same Redis)."""
    return await start_server(config), await start_server(config)


async def api_post(server: Server, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of ``server``'s HTTP API, its whole reply; fails unless it succeeded."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{server.host}:{server.api_port}/api/{method}",
            data=json.dumps(body).encode(),
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=WAIT),
        ) as response,
    ):
        reply: dict[str, Any] = await response.json()
    assert response.status == 200 and "error" not in reply, (
        f"API {method} on hub {server.index}: HTTP {response.status} {reply}"
    )
    return reply


async def api_call(server: Server, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of ``server``'s HTTP API; its result."""
    result: dict[str, Any] = (await api_post(server, method, body)).get("result", {})
    return result


async def publish(
    server: Server, channel: str, data: Any, tags: dict[str, str] | None = None
) -> int:
    """Publish through ``server``'s API; the publication's offset (0 without history)."""
    body: dict[str, Any] = {"channel": channel, "data": data}
    if tags:
        body["tags"] = tags
    result = await api_call(server, "publish", body)
    return int(result.get("offset", 0))


async def pubs_until(events: SubEvents, last: dict[str, Any], what: str) -> list[Publication]:
    """Publications up to and including the one whose data is ``last``."""
    got: list[Publication] = []
    while not got or decoded(got[-1].data) != last:
        got.append((await next_event(events.publications, what=f"{last} {what}")).pub)
    return got


async def disconnect(client: Client) -> None:
    """Disconnect the client; it stays disconnected (its subscriptions kept for
    recovery) until :func:`connect`."""
    await wait(client.disconnect(), what="client.disconnect()")
    await next_event(events_of(client).disconnected, what="on_disconnected")


def assert_never_out_of_sync(client: Client, events: SubEvents) -> None:
    """The server never saw a gap: no close 3010 (the SDK then reconnects: on_connecting)
    and no unsubscribe 2500 (it then resubscribes: on_subscribing), nor a second subscribe."""
    client_events = events_of(client)
    codes = [c.code for c in drain(client_events.disconnected) + drain(client_events.connecting)]
    codes += [c.code for c in drain(events.subscribing) + drain(events.unsubscribed)]
    assert 3010 not in codes and 2500 not in codes, f"insufficient state: {codes}"
    assert events.subscribed.empty(), f"subscribed again: {drain(events.subscribed)}"


# ---------------------------------------------------------------------------
# Tags filter
# ---------------------------------------------------------------------------

# With presence, hub B's subscribe awaits Redis once more after reading the history:
# publications that arrive meanwhile are buffered and merged with the recovered ones.
TAGS_NAMESPACE = """
history_size = 10000
history_ttl = 60
presence = true
force_recovery = true
allow_subscribe_for_client = true
allow_tags_filter = true
"""

# AAPL at 100 or more. "99" >= "100" as strings, not as numbers: the comparison is decimal.
AAPL_FROM_100: FilterNode = Filter.all(Filter.eq("ticker", "AAPL"), Filter.gte("price", "100"))


def quote(ticker: str, price: str) -> dict[str, str]:
    return {"ticker": ticker, "price": price}


MATCHING = quote("AAPL", "120")
NOT_MATCHING = [quote("MSFT", "300"), quote("AAPL", "99"), {}]


async def test_a_tags_filtered_subscriber_of_hub_b_gets_exactly_the_matching_publications(
    start_server: StartServer, make_client: MakeClient, redis_url: str
) -> None:
    """Publications with tags published through hub A reach a filtered subscriber of hub B
    only when they match: the filter is applied on B, to tags that came through Redis."""
    hub_a, hub_b = await two_hubs(
        start_server, hub_config(redis_url, namespaces={"quotes": TAGS_NAMESPACE})
    )
    client = make_client(hub_b, token=make_token("42"))
    await connect(client)
    _, events, first = await subscribe_ok(client, "quotes:live", tags_filter=AAPL_FROM_100)
    assert first.recoverable, first

    sent = [
        ({"n": 1}, MATCHING),
        ({"n": 2}, NOT_MATCHING[0]),
        ({"n": 3}, NOT_MATCHING[1]),
        ({"n": 4}, NOT_MATCHING[2]),
        ({"n": 5}, quote("AAPL", "100.5")),
        ({"n": 6}, quote("AAPL", "100")),
    ]
    offsets = [await publish(hub_a, "quotes:live", data, tags) for data, tags in sent]
    assert offsets == [1, 2, 3, 4, 5, 6], offsets
    got = await pubs_until(events, {"n": 6}, "from hub A")
    assert [(decoded(p.data), p.offset) for p in got] == [
        ({"n": 1}, 1),
        ({"n": 5}, 5),
        ({"n": 6}, 6),
    ]
    assert got[0].tags == MATCHING, got[0]
    assert_never_out_of_sync(client, events)


class Stream:
    """Publications of one channel through one hub's API, each ``{"n": N}`` where N is
    the offset it must get (one publisher, so the test knows every offset)."""

    def __init__(self, server: Server, channel: str) -> None:
        self.server = server
        self.channel = channel
        self.tags: list[dict[str, str]] = []
        """The tags of each publication, by offset - 1."""

    @property
    def last(self) -> int:
        return len(self.tags)

    async def publish(self, tags: dict[str, str]) -> int:
        n = self.last + 1
        offset = await publish(self.server, self.channel, {"n": n}, tags)
        assert offset == n, f"publication {n} got offset {offset}"
        self.tags.append(tags)
        return n

    async def publish_batch(self, tags: list[dict[str, str]]) -> None:
        """Publish in one ``batch`` call: many publications a millisecond."""
        first = self.last + 1
        commands = [
            {"publish": {"channel": self.channel, "data": {"n": n}, "tags": t}}
            for n, t in enumerate(tags, start=first)
        ]
        replies = (await api_post(self.server, "batch", {"commands": commands}))["replies"]
        offsets = [r.get("publish", {}).get("offset") for r in replies]
        assert offsets == list(range(first, first + len(tags))), replies
        self.tags.extend(tags)

    def matching(self, after: int) -> list[int]:
        """The offsets after ``after`` of the publications with MATCHING tags."""
        return [n for n, t in enumerate(self.tags, start=1) if n > after and t == MATCHING]


async def test_a_tags_filtered_subscriber_of_hub_b_recovers_only_the_matching_missed_ones(
    start_server: StartServer, make_client: MakeClient, redis_url: str
) -> None:
    """On a recoverable channel the publications the filter left out still count in the
    stream: a filtered subscriber of hub B that reconnects recovers (``recovered`` true,
    never a 3010 or 2500 for a gap) and gets just the matching ones it missed. Hub A keeps
    publishing, densely, while the subscriber resubscribes, three times over."""
    hub_a, hub_b = await two_hubs(
        start_server, hub_config(redis_url, namespaces={"quotes": TAGS_NAMESPACE})
    )
    client = make_client(hub_b, token=make_token("42"))
    await connect(client)
    sub, events, first = await subscribe_ok(client, "quotes:rec", tags_filter=AAPL_FROM_100)
    assert first.recoverable and first.stream_position is not None, first
    stream = Stream(hub_a, "quotes:rec")

    await stream.publish(MATCHING)
    for tags in NOT_MATCHING:
        await stream.publish(tags)
    marker = await stream.publish(MATCHING)
    live = await pubs_until(events, {"n": marker}, "live")
    assert [(decoded(p.data), p.offset) for p in live] == [({"n": 1}, 1), ({"n": 5}, 5)]
    assert live[0].tags == MATCHING, live[0]

    dense = [MATCHING, *NOT_MATCHING] * 10
    for cycle in range(3):
        # The last ones before the disconnect are skipped, so the client's own offset
        # (its last publication) is behind the stream's.
        for tags in NOT_MATCHING:
            await stream.publish(tags)
        await disconnect(client)
        for tags in [NOT_MATCHING[1], MATCHING, NOT_MATCHING[2], MATCHING, NOT_MATCHING[0]]:
            await stream.publish(tags)

        async def publish_while_resubscribing() -> None:
            while sub.state != SubscriptionState.SUBSCRIBED and stream.last < 5000:
                await stream.publish_batch(dense)

        await asyncio.gather(connect(client), publish_while_resubscribing())
        ctx = await next_event(events.subscribed, what=f"resubscribe #{cycle} with recovery")
        assert ctx.was_recovering and ctx.recovered, ctx
        assert ctx.stream_position is not None
        assert ctx.stream_position.epoch == first.stream_position.epoch, ctx
        seen, marker = marker, await stream.publish(MATCHING)
        got = await pubs_until(events, {"n": marker}, f"after reconnect #{cycle}")
        assert [(decoded(p.data)["n"], p.offset) for p in got] == [
            (n, n) for n in stream.matching(after=seen)
        ]
        assert events.publications.empty(), drain(events.publications)
        assert_never_out_of_sync(client, events)


# ---------------------------------------------------------------------------
# Cache recovery
# ---------------------------------------------------------------------------

CACHE_NAMESPACE = """
history_size = 5
history_ttl = 60
force_recovery = true
force_recovery_mode = "cache"
allow_subscribe_for_client = true
allow_tags_filter = true
"""


async def test_cache_recovery_on_hub_b_gives_only_the_latest_publication_of_hub_a(
    start_server: StartServer, make_client: MakeClient, redis_url: str
) -> None:
    """In cache mode a subscriber of hub B that missed three publications of hub A gets
    the latest alone on its reconnect, as recovered, and then the live stream."""
    hub_a, hub_b = await two_hubs(
        start_server, hub_config(redis_url, namespaces={"state": CACHE_NAMESPACE})
    )
    client = make_client(hub_b, token=make_token("42"))
    await connect(client)
    _, events, first = await subscribe_ok(client, "state:board")
    assert first.recoverable and first.stream_position is not None, first
    await publish(hub_a, "state:board", {"v": 0})
    [live] = await pubs(events, 1, "live")
    assert (decoded(live.data), live.offset) == ({"v": 0}, 1)

    await disconnect(client)
    for v in (1, 2, 3):
        await publish(hub_a, "state:board", {"v": v})
    await connect(client)
    ctx = await next_event(events.subscribed, what="resubscribe with cache recovery")
    assert ctx.was_recovering and ctx.recovered, ctx
    assert ctx.stream_position is not None
    assert ctx.stream_position.epoch == first.stream_position.epoch, ctx

    await publish(hub_a, "state:board", {"v": 4})
    got = await pubs_until(events, {"v": 4}, "after the reconnect")
    assert [(decoded(p.data), p.offset) for p in got] == [({"v": 3}, 4), ({"v": 4}, 5)]
    assert_never_out_of_sync(client, events)


async def test_cache_recovery_with_a_tags_filter_gives_the_latest_matching_publication(
    start_server: StartServer, make_client: MakeClient, redis_url: str
) -> None:
    """Cache recovery with a tags filter, across hubs: the latest publication that
    passes the filter, not the latest of the channel."""
    hub_a, hub_b = await two_hubs(
        start_server, hub_config(redis_url, namespaces={"state": CACHE_NAMESPACE})
    )
    client = make_client(hub_b, token=make_token("42"))
    await connect(client)
    _, events, _ = await subscribe_ok(client, "state:quotes", tags_filter=AAPL_FROM_100)
    await publish(hub_a, "state:quotes", {"v": 0}, MATCHING)
    await pubs(events, 1, "live")

    await disconnect(client)
    await publish(hub_a, "state:quotes", {"v": 1}, MATCHING)
    await publish(hub_a, "state:quotes", {"v": 2}, quote("AAPL", "130"))
    await publish(hub_a, "state:quotes", {"v": 3}, NOT_MATCHING[1])
    await connect(client)
    ctx = await next_event(events.subscribed, what="resubscribe with cache recovery")
    assert ctx.was_recovering and ctx.recovered, ctx

    await publish(hub_a, "state:quotes", {"v": 4}, MATCHING)
    got = await pubs_until(events, {"v": 4}, "after the reconnect")
    assert [(decoded(p.data), p.offset) for p in got] == [({"v": 2}, 3), ({"v": 4}, 5)]
    assert got[0].tags == quote("AAPL", "130"), got[0]
    assert_never_out_of_sync(client, events)


# ---------------------------------------------------------------------------
# Subscription token refresh
# ---------------------------------------------------------------------------


# JSON only: the refresh over Protobuf is test_sdk_python.py's (one hub, both protocols);
# what this adds is the second hub, which the protocol does not reach, and it waits out a
# token's expiry and grace (6 s a run).
@pytest.mark.parametrize("make_client", ["json"], indirect=True)
async def test_a_subscription_token_refreshed_on_hub_b_keeps_publications_of_hub_a_coming(
    start_server: StartServer, make_client: MakeClient, redis_url: str
) -> None:
    """A private channel subscribed on hub B with a 2-second token: the SDK refreshes it
    (``sub_refresh``, get_token called again) and keeps the subscription, past the expiry
    and the grace, while publications made through hub A keep arriving."""
    # The SDK refreshes at the ttl, in whole seconds: up to a second after the expiry.
    hub_a, hub_b = await two_hubs(
        start_server, hub_config(redis_url, client="expired_sub_close_delay = 1.5")
    )
    client = make_client(hub_b, token=make_token("42"))
    await connect(client)
    calls = 0

    async def get_token(channel: str) -> str:
        nonlocal calls
        calls += 1
        return make_sub_token("42", channel, exp=2)

    sub, events, _ = await subscribe_ok(client, "$secret", get_token=get_token)
    drain(events.subscribing)
    for i in range(4):  # over 4.8 s: past the first token's expiry and the grace
        await asyncio.sleep(1.2)
        await publish(hub_a, "$secret", {"i": i})
        [got] = await pubs(events, 1, f"#{i} from hub A")
        assert decoded(got.data) == {"i": i}
    assert calls >= 2, f"get_token called {calls} times: no sub_refresh"
    # A lapsed token would have been unsubscribed (2501), the SDK gone back to subscribing.
    assert not drain(events.subscribing) and not drain(events.unsubscribed)
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert events.publications.empty()


# ---------------------------------------------------------------------------
# Server API `send`: a `message` push to a user
# ---------------------------------------------------------------------------


async def test_user_commands_through_hub_a_reach_a_connection_of_hub_b(
    start_server: StartServer, redis_url: str
) -> None:
    """The server API commands about a user (``send``, ``subscribe``, ``disconnect``)
    called on hub A reach the user's connection on hub B: control messages through
    Redis. A raw JSON client, since centrifuge-python has no ``message`` event."""
    hub_a, hub_b = await two_hubs(start_server, hub_config(redis_url))
    async with websockets.connect(hub_b.url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": make_token("42")}}))
        assert "connect" in json.loads(await asyncio.wait_for(ws.recv(), 5))

        async def next_push() -> dict[str, Any]:
            push: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))["push"]
            return push

        await api_call(hub_a, "send", {"user": "42", "data": {"from": "A"}})
        assert await next_push() == {"message": {"data": {"from": "A"}}}
        await api_call(hub_a, "subscribe", {"user": "42", "channel": "from-a"})
        assert (await next_push())["channel"] == "from-a"
        await api_call(hub_a, "disconnect", {"user": "42"})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3503


ROOM = """
presence = true
history_size = 10
history_ttl = 60
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_publish_for_anonymous = true
allow_history_for_subscriber = true
allow_history_for_anonymous = true
allow_presence_for_subscriber = true
allow_presence_for_anonymous = true
"""


async def test_emulation_posts_alternating_between_the_nodes_reach_the_session(
    start_server: StartServer, redis_url: str
) -> None:
    """An HTTP-streaming client of hub A whose /emulation posts alternate between A and
    B (a load balancer without sticky sessions): every command is handled, in order,
    and its reply comes on the stream. A node nobody announced gets 404."""
    config = hub_config(
        redis_url,
        client="allow_anonymous_connect_without_token = true",
        namespaces={"room": ROOM},
    ).replace("[broker]", "[http_stream]\nenabled = true\n\n[broker]")
    hub_a, hub_b = await two_hubs(start_server, config)
    http = f"http://{hub_a.host}"
    async with aiohttp.ClientSession() as session:
        stream = await session.post(
            f"{http}:{hub_a.port}/connection/http_stream", json={"id": 1, "connect": {}}
        )
        assert stream.status == 200

        async def next_line() -> dict[str, Any]:
            line: dict[str, Any] = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
            return line

        connected = (await next_line())["connect"]
        commands = [
            {"id": 2, "subscribe": {"channel": "room:a"}},
            {"id": 3, "publish": {"channel": "room:a", "data": {"n": 1}}},
            {"id": 4, "presence_stats": {"channel": "room:a"}},
            {"id": 5, "history": {"channel": "room:a", "limit": -1}},
        ]
        for command, hub in zip(commands, [hub_b, hub_a, hub_b, hub_b], strict=True):
            post = {"session": connected["session"], "node": connected["node"]}
            response = await session.post(
                f"{http}:{hub.port}/emulation", json={**post, "data": json.dumps(command)}
            )
            assert response.status == 204, await response.text()
        replies = {}
        while len(replies) < len(commands):
            line = await next_line()
            if "id" in line:
                replies[line["id"]] = line
        assert "subscribe" in replies[2] and "publish" in replies[3]
        assert replies[4]["presence_stats"] == {"num_clients": 1, "num_users": 1}
        assert [p["data"] for p in replies[5]["history"]["publications"]] == [{"n": 1}]
        unknown = {"session": connected["session"], "node": "no-such-node", "data": "{}"}
        response = await session.post(f"{http}:{hub_b.port}/emulation", json=unknown)
        assert response.status == 404
        stream.close()
