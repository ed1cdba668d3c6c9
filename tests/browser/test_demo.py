"""The demo chat (centrifuge-js in Chromium) against a real ``tidings serve --dev``."""

from __future__ import annotations

from typing import Any

from .chat import badge, open_chat, send, texts
from .conftest import HubProcess, Pages, screenshot


def test_two_users_chat_and_a_late_joiner_gets_the_history(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    alice = open_chat(pages, hub, expect, "Alice", prompt=True)
    bob = open_chat(pages, hub, expect, "Bob")
    for page in (alice, bob):
        expect(page.locator("#presence li")).to_have_count(2)
        expect(page.locator("#presence")).to_contain_text("Alice")
        expect(page.locator("#presence")).to_contain_text("Bob")
    expect(alice.locator("#messages")).to_contain_text("Bob joined the room")

    send(alice, "Hi Bob!")
    expect(texts(bob)).to_have_text(["Hi Bob!"])
    expect(bob.locator("#messages .msg .author")).to_have_text(["Alice"])
    send(bob, "Hello Alice, how are things?")
    send(alice, "Great: this chat is centrifuge-js talking to tidings")
    conversation = [
        "Hi Bob!",
        "Hello Alice, how are things?",
        "Great: this chat is centrifuge-js talking to tidings",
    ]
    expect(texts(alice)).to_have_text(conversation)
    expect(texts(bob)).to_have_text(conversation)
    screenshot(alice, "chat-two-users")

    carol = open_chat(pages, hub, expect, "Carol")
    expect(texts(carol)).to_have_text(conversation)  # history, loaded on entering the room
    expect(carol.locator("#presence li")).to_have_count(3)
    for name in ("Alice", "Bob", "Carol"):
        expect(carol.locator("#presence")).to_contain_text(name)
    expect(alice.locator("#presence")).to_contain_text("Carol")
    send(carol, "Hi both, I read the history")
    conversation.append("Hi both, I read the history")
    expect(texts(alice)).to_have_text(conversation)
    expect(texts(bob)).to_have_text(conversation)
    screenshot(carol, "chat-late-joiner")
    screenshot(alice, "chat-three-users", docs="demo")

    # Rooms are separate channels.
    bob.click("#room-list button[data-room=random]")
    expect(bob.locator("#room-title")).to_have_text("# random")
    expect(bob.locator("#room-status")).to_have_attribute("data-state", "live")
    expect(texts(bob)).to_have_count(0)
    send(bob, "anyone in random?")
    expect(texts(bob)).to_have_text(["anyone in random?"])
    expect(alice.locator("#presence li")).to_have_count(2)  # Bob left general
    send(alice, "still in general")
    expect(texts(alice)).to_have_text([*conversation, "still in general"])
    expect(texts(bob)).to_have_text(["anyone in random?"])


def test_pages_reconnect_after_a_server_restart(hub: HubProcess, pages: Pages, expect: Any) -> None:
    alice = open_chat(pages, hub, expect, "Alice")
    bob = open_chat(pages, hub, expect, "Bob")
    send(alice, "before the restart")
    expect(texts(bob)).to_have_text(["before the restart"])

    hub.restart()  # SIGTERM (clients closed with 3001), then a new process on the same ports

    for page in (alice, bob):
        expect(badge(page)).to_have_attribute("data-reconnects", "1")
        expect(badge(page)).to_have_attribute("data-state", "connected")
        expect(badge(page)).to_contain_text("connected")
        expect(page.locator("#room-status")).to_have_attribute("data-state", "live")
        # The in-memory history went with the old process: the page says so, keeps what it
        # showed and reloads the new (empty) history.
        expect(page.locator("#messages")).to_contain_text("The server restarted")
        expect(page.locator("#presence li")).to_have_count(2)
    expect(alice.locator("#presence")).to_contain_text("Bob")

    send(bob, "after the restart")
    expect(texts(alice)).to_have_text(["before the restart", "after the restart"])
    expect(texts(bob)).to_have_text(["before the restart", "after the restart"])
    screenshot(alice, "server-restart")


def test_a_page_cut_off_the_network_recovers_what_it_missed(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    alice = open_chat(pages, hub, expect, "Alice")
    bob = open_chat(pages, hub, expect, "Bob")
    send(bob, "one")
    expect(texts(alice)).to_have_text(["one"])

    alice.context.set_offline(True)  # the server stays up; Alice's network goes away
    expect(badge(alice)).to_have_attribute("data-state", "connecting")
    expect(badge(alice)).to_contain_text("reconnecting")
    send(bob, "two")
    send(bob, "three")
    hub.api("publish", {"channel": "room-general", "data": {"user": "api", "text": "four"}})
    expect(texts(bob)).to_have_text(["one", "two", "three", "four"])
    expect(texts(alice)).to_have_text(["one"])
    screenshot(alice, "network-drop-offline")

    alice.context.set_offline(False)
    expect(badge(alice)).to_have_attribute("data-state", "connected")
    expect(badge(alice)).to_have_attribute("data-reconnects", "1")
    expect(texts(alice)).to_have_text(["one", "two", "three", "four"])
    expect(alice.locator("#messages")).to_contain_text("Reconnected: recovered 3 missed messages.")
    expect(badge(bob)).to_have_attribute("data-reconnects", "0")
    screenshot(alice, "network-drop-recovered")
