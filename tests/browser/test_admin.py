"""The admin UI (``/admin/`` on the API port) in Chromium, against ``tidings serve --dev``."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from .chat import badge, open_chat, send, texts
from .conftest import ARTIFACTS, HubProcess, Pages, screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "admin"  # what --dev sets


def log_in(page: Page, hub: HubProcess, expect: Any) -> None:
    page.goto(hub.admin_url)
    expect(page.locator("#login-view")).to_be_visible()
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#dashboard-view")).to_be_visible()


def test_a_wrong_password_is_refused(hub: HubProcess, pages: Pages, expect: Any) -> None:
    page = pages.new()
    page.goto(hub.admin_url)
    page.fill("#password", "not-the-password")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_have_text("Wrong password.")
    expect(page.locator("#dashboard-view")).to_be_hidden()
    screenshot(page, "admin-wrong-password")
    assert page.request.get(f"{hub.admin_url}session").status == 401

    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#login-error")).to_be_hidden()
    page.reload()  # the session cookie keeps us in
    expect(page.locator("#dashboard-view")).to_be_visible()

    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    page.reload()
    expect(page.locator("#login-view")).to_be_visible()
    assert page.request.get(f"{hub.admin_url}session").status == 401


def test_dashboard_charts_publish_and_disconnect(
    hub: HubProcess, pages: Pages, expect: Any
) -> None:
    chat = open_chat(pages, hub, expect, "Dana", token=hub.token("dana"))
    admin = pages.new()
    log_in(admin, hub, expect)

    expect(admin.locator("#stat-connections")).to_have_text("1")
    expect(admin.locator("#nodes tbody tr")).to_have_count(1)
    expect(admin.locator("#channels tr[data-channel=room-general] td.num")).to_have_text("1")

    # Some traffic for the charts, which take a point per second.
    for i in range(4):
        send(chat, f"message {i}")
        time.sleep(0.3)
    if os.environ.get("TIDINGS_DOCS_SCREENSHOTS") == "1":  # longer charts for the README
        for i in range(30):
            send(chat, f"message {i + 4}" if i % 3 else "another one")
            time.sleep(0.1 + 0.5 * (i % 4 == 0))
    for chart in ("#chart-messages", "#chart-connections"):
        expect(admin.locator(f"{chart} canvas")).to_have_count(1)
        points = re.compile(r"^([3-9]|\d\d+)$")  # three points or more
        expect(admin.locator(chart)).to_have_attribute("data-points", points)
        assert _painted(admin, f"{chart} canvas") > 500, f"{chart} draws nothing"
    expect(admin.locator("#stat-sent-rate")).not_to_have_text("–")

    # Channel detail: its presence (Dana's connection) and history.
    client = chat.locator("#me").get_attribute("data-client")
    assert client
    admin.click("#channels tr[data-channel=room-general]")
    expect(admin.locator("#detail-channel")).to_have_text("room-general")
    dana = admin.locator(f"#detail-presence tr[data-client='{client}']")
    expect(dana).to_contain_text("dana")
    expect(dana.locator("button")).to_have_text("Disconnect")
    history = admin.locator("#detail-history li")
    expect(history.first).to_contain_text(texts(chat).last.inner_text())

    # Publish from the admin: the chat page gets it.
    admin.fill("#publish-channel", "room-general")
    admin.fill("#publish-data", '{"user": "admin", "text": "Hello from the admin"}')
    admin.click("#publish-form button[type=submit]")
    expect(admin.locator("#publish-result")).to_have_text(
        re.compile(r"^Published to room-general at offset \d+\.$")
    )
    expect(texts(chat).last).to_have_text("Hello from the admin")
    expect(admin.locator("#detail-history li").first).to_contain_text("Hello from the admin")
    admin.fill("#publish-data", "{not json")
    admin.click("#publish-form button[type=submit]")
    expect(admin.locator("#publish-result")).to_contain_text("Data is not JSON")
    admin.fill("#publish-data", '{"user": "admin", "text": "Hello from the admin"}')
    admin.evaluate("window.scrollTo(0, 0)")
    screenshot(admin, "admin-dashboard", docs="admin")
    admin.screenshot(path=str(ARTIFACTS / "admin-full.png"), full_page=True)

    # Disconnect the user "dana" (the page connected with a token for that user).
    admin.fill("#disconnect-user", "dana")
    admin.click("#disconnect-form button[type=submit]")
    result = admin.locator("#disconnect-result")
    expect(result).to_have_text("Disconnected user dana (if connected).")
    expect(badge(chat)).to_have_attribute("data-state", "disconnected")
    expect(chat.locator("#messages")).to_contain_text("Disconnected: force disconnect (3503).")
    expect(admin.locator("#stat-connections")).to_have_text("0")
    screenshot(chat, "chat-disconnected-by-admin")

    # The page's Reconnect button brings it back.
    chat.click("#conn-badge .reconnect")
    expect(badge(chat)).to_have_attribute("data-state", "connected")
    expect(admin.locator("#stat-connections")).to_have_text("1")


def _painted(page: Page, selector: str) -> int:
    """How many pixels of a canvas are not transparent."""
    count: int = page.eval_on_selector(
        selector,
        """canvas => {
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }""",
    )
    return count
