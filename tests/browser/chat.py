"""Helpers to drive the demo chat page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

    from .conftest import HubProcess, Pages


def open_chat(
    pages: Pages,
    hub: HubProcess,
    expect: Any,
    name: str,
    room: str = "general",
    *,
    prompt: bool = False,
    token: str = "",
) -> Page:
    """A new user (browser context) in ``room``, connected and live; named by the prompt or URL.

    Anonymous, unless given a connection ``token``.
    """
    page = pages.new()
    if token:
        page.goto(f"{hub.url}?name={quote(name)}&token={quote(token)}#{room}")
    elif prompt:
        page.goto(f"{hub.url}#{room}")
        expect(page.locator("#name-overlay")).to_be_visible()
        page.fill("#name-input", name)
        page.click("#name-form button[type=submit]")
        expect(page.locator("#name-overlay")).to_be_hidden()
    else:
        page.goto(f"{hub.url}?name={quote(name)}#{room}")
    expect(page.locator("#conn-badge")).to_have_attribute("data-state", "connected")
    expect(page.locator("#room-status")).to_have_attribute("data-state", "live")
    return page


def send(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page: Page) -> Locator:
    """The texts of the chat messages shown, in order."""
    return page.locator("#messages .msg .text")


def badge(page: Page) -> Locator:
    return page.locator("#conn-badge")
