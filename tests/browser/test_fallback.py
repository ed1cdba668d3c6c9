"""The demo where WebSocket is blocked: centrifuge-js falls back to HTTP-streaming, then SSE.

Chromium blocks the transports per page (Playwright routes), as a proxy would; the server is
a real ``tidings serve --dev``, which serves every transport. A fallback page chats with a
page on WebSocket, and ``listen.html`` (a plain ``EventSource`` on ``uni_sse``) reads a room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .chat import badge, send, texts
from .conftest import HubProcess, Pages, screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route, WebSocketRoute

WEBSOCKET = "**/connection/websocket"
HTTP_STREAM = "**/connection/http_stream"
ROUNDS, SUBSCRIPTIONS = 5, 12
"""Rounds of concurrent subscribes from a fallback page, and the subscribes in each round."""


def _refuse_websocket(ws: WebSocketRoute) -> None:
    ws.close()  # never reaches the server: the page sees a socket that failed


def _abort(route: Route) -> None:
    route.abort()  # a network error, as from a proxy that drops the request


def open_chat_over(
    pages: Pages,
    hub: HubProcess,
    expect: Any,
    name: str,
    transport: str,
    room: str = "general",
) -> Page:
    """A user in ``room``, with every transport before ``transport`` blocked; connected and live."""
    page = pages.new()
    if transport in ("http_stream", "sse"):
        page.route_web_socket(WEBSOCKET, _refuse_websocket)
    if transport == "sse":
        page.route(HTTP_STREAM, _abort)
    page.goto(f"{hub.url}?name={quote(name)}#{room}")
    expect(badge(page)).to_have_attribute("data-state", "connected")
    expect(badge(page)).to_have_attribute("data-transport", transport)
    expect(badge(page).locator(".transport")).to_have_text(transport.replace("_", "-"))
    expect(page.locator("#room-status")).to_have_attribute("data-state", "live")
    return page


def _chat_both_ways(fallback: Page, websocket: Page, expect: Any, label: str) -> None:
    """Each page sees the other in the room, and what either writes reaches both."""
    for page in (fallback, websocket):
        expect(page.locator("#presence li")).to_have_count(2)
    send(fallback, f"hello from {label}")
    expect(texts(websocket)).to_have_text([f"hello from {label}"])
    send(websocket, "hello from websocket")
    conversation = [f"hello from {label}", "hello from websocket"]
    expect(texts(fallback)).to_have_text(conversation)
    expect(texts(websocket)).to_have_text(conversation)


def test_a_page_without_websocket_chats_over_http_streaming(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    """A blocked WebSocket moves the SDK to HTTP-streaming, whose commands go to /emulation."""
    alice = open_chat_over(pages, hub, expect, "Alice", "http_stream")
    bob = open_chat_over(pages, hub, expect, "Bob", "websocket")
    _chat_both_ways(alice, bob, expect, "http-stream")
    expect(badge(alice)).to_have_attribute("data-reconnects", "0")  # fell back on the first try
    expect(alice.locator("#presence")).to_contain_text("Bob")
    expect(bob.locator("#presence")).to_contain_text("Alice")
    screenshot(alice, "chat-fallback-http-stream")


def test_a_page_without_websocket_and_http_streaming_chats_over_sse(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    """With HTTP-streaming refused too, the last fallback, SSE, still chats both ways."""
    carol = open_chat_over(pages, hub, expect, "Carol", "sse", room="random")
    bob = open_chat_over(pages, hub, expect, "Bob", "websocket", room="random")
    _chat_both_ways(carol, bob, expect, "sse")
    expect(badge(carol)).to_have_attribute("data-reconnects", "0")
    screenshot(carol, "chat-fallback-sse")


def test_a_fallback_page_subscribes_to_several_channels_at_once(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    """Each subscribe is a separate ``/emulation`` post, so they can reach the server together.

    Over WebSocket the commands of one connection come one after the other; posts do not, and
    the session must still take them in turn (not answer 500, which makes the SDK reconnect).
    Subscribing to new channels takes the server long enough for the next post to overlap;
    a few rounds make an overlap all but certain.
    """
    alice = open_chat_over(pages, hub, expect, "Alice", "http_stream")
    failed: list[str] = []
    alice.on(
        "response",
        lambda response: (
            failed.append(f"{response.status} {response.url}")
            if "/emulation" in response.url and response.status >= 400
            else None
        ),
    )
    states = alice.evaluate(
        """async ([rounds, count]) => {
          const { centrifuge } = window.tidingsDemo;
          const states = [];
          for (let round = 0; round < rounds; round++) {
            const options = { recoverable: true, joinLeave: true };
            const subs = Array.from({ length: count }, (_, i) =>
              centrifuge.newSubscription(`extra-${round}-${i}`, options));
            for (const sub of subs) sub.subscribe();
            await Promise.all(subs.map((sub) => sub.ready(5000)));
            states.push(...subs.map((sub) => sub.state));
          }
          return states;
        }""",
        [ROUNDS, SUBSCRIPTIONS],
    )
    assert states == ["subscribed"] * (ROUNDS * SUBSCRIPTIONS)
    assert failed == [], f"/emulation failed (see {hub.log.name}): {failed}"
    expect(badge(alice)).to_have_attribute("data-reconnects", "0")
    expect(alice.locator("#room-status")).to_have_attribute("data-state", "live")
    send(alice, "still on the first connection")
    expect(texts(alice)).to_have_text(["still on the first connection"])
    expect(badge(alice)).to_have_attribute("data-reconnects", "0")


def test_listen_page_reads_a_room_over_uni_sse(hub: HubProcess, pages: Pages, expect: Any) -> None:
    """listen.html, no SDK: the server subscribes it from cf_connect and streams the room."""
    alice = open_chat_over(pages, hub, expect, "Alice", "websocket", room="lobby")
    listener = pages.new()
    listener.goto(f"{hub.url}listen.html?room=lobby")
    expect(listener.locator("#channel")).to_have_text("room-lobby")
    expect(listener.locator("#state")).to_have_attribute("data-state", "open")

    send(alice, "is anyone listening?")
    hub.api("publish", {"channel": "room-lobby", "data": {"user": "api", "text": "the API too"}})
    items = listener.locator("#messages li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("Alice: is anyone listening?")
    expect(items.nth(1)).to_contain_text("api: the API too")
    expect(items.locator(".offset")).to_have_text(["#1", "#2"])
    expect(texts(alice)).to_have_text(["is anyone listening?", "the API too"])

    pushes = listener.evaluate("window.tidingsListen.pushes")
    assert "connect" in pushes[0], pushes[0]
    assert "room-lobby" in pushes[0]["connect"].get("subs", {}), pushes[0]
    publications = [push["pub"] for push in pushes if "pub" in push]
    assert [pub["data"]["text"] for pub in publications] == ["is anyone listening?", "the API too"]
    assert all(push.get("channel") == "room-lobby" for push in pushes if "pub" in push), pushes
    screenshot(listener, "listen-uni-sse")


def test_a_fallback_page_recovers_after_a_server_restart(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    """A page on HTTP-streaming reconnects on it and shows what was written while it was away."""
    alice = open_chat_over(pages, hub, expect, "Alice", "http_stream")
    bob = open_chat_over(pages, hub, expect, "Bob", "websocket")
    send(alice, "before the restart")
    expect(texts(bob)).to_have_text(["before the restart"])

    # Alice cannot reconnect until the route goes: what Bob writes meanwhile reaches the new
    # process before her, so she can only get it from its history.
    alice.route(HTTP_STREAM, _abort)
    hub.restart()  # SIGTERM (clients closed with 3001), then a new process on the same ports
    expect(badge(bob)).to_have_attribute("data-reconnects", "1")
    expect(bob.locator("#room-status")).to_have_attribute("data-state", "live")
    send(bob, "while Alice was away")
    expect(texts(bob)).to_have_text(["before the restart", "while Alice was away"])
    expect(badge(alice)).to_have_attribute("data-state", "connecting")
    expect(badge(alice)).to_contain_text("reconnecting")
    expect(texts(alice)).to_have_text(["before the restart"])

    alice.unroute(HTTP_STREAM, _abort)
    expect(badge(alice)).to_have_attribute("data-state", "connected")
    expect(badge(alice)).to_have_attribute("data-reconnects", "1")
    expect(badge(alice)).to_have_attribute("data-transport", "http_stream")  # kept its transport
    expect(alice.locator("#room-status")).to_have_attribute("data-state", "live")
    expect(alice.locator("#messages")).to_contain_text("The server restarted")
    expect(texts(alice)).to_have_text(["before the restart", "while Alice was away"])
    expect(alice.locator("#presence li")).to_have_count(2)

    send(alice, "back over http-stream")
    conversation = ["before the restart", "while Alice was away", "back over http-stream"]
    expect(texts(bob)).to_have_text(conversation)
    expect(texts(alice)).to_have_text(conversation)
    screenshot(alice, "server-restart-http-stream")
