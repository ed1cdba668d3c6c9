"""The real centrifuge-js SDK, as a browser loads it, in Chromium against a ``tidings serve`` hub.

The page is a static one (``sdk_page/json.html`` or ``protobuf.html``) served by a small HTTP
server of this module, with the SDK's own browser bundle from
``tests/e2e/js/node_modules/centrifuge/dist/`` (``centrifuge.js`` speaks JSON,
``centrifuge.protobuf.js`` Protobuf). The hub is a real ``python -m tidings serve --config``
subprocess whose ``allowed_origins`` admits exactly the page's origin, as a deployment would.
The page's ``window.H`` (``sdk_page/harness.js``) drives the SDK; the server API publishes from
here, and the assertions are made here, on what the SDK handed to the page. Every test runs
over both bundles, and checks that the WebSocket frames were of that protocol (text or binary).

Without ``node_modules`` (``npm ci`` in ``tests/e2e/js``) the tests are skipped, except under
``CI=true`` where they fail, as without Chromium.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import ARTIFACTS, ROOT, TOKEN_SECRET, HubProcess, Pages, _unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, WebSocket

SDK_DIST = ROOT / "tests" / "e2e" / "js" / "node_modules" / "centrifuge" / "dist"
PAGE_DIR = Path(__file__).resolve().parent / "sdk_page"
API_KEY = "browser-sdk-api-key"
PROTOCOLS = ["json", "protobuf"]
Record = dict[str, Any]


# ---------------------------------------------------------------------------
# The page's origin: a static server for the harness and the SDK bundles
# ---------------------------------------------------------------------------


class _PageHandler(SimpleHTTPRequestHandler):
    """``sdk_page/`` files, and ``/sdk/<bundle>`` from the SDK's ``dist/``."""

    def translate_path(self, path: str) -> str:
        if path.startswith("/sdk/"):
            return str(SDK_DIST / Path(path.split("?", 1)[0]).name)
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # keep pytest's output for failures


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """``http://127.0.0.1:PORT``, serving the pages until the module's tests are done."""
    for bundle in ("centrifuge.js", "centrifuge.protobuf.js"):
        if not (SDK_DIST / bundle).exists():
            _unavailable(f"no {bundle} in {SDK_DIST} (run make test, or npm ci in tests/e2e/js)")
    handler = functools.partial(_PageHandler, directory=str(PAGE_DIR))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------


def config(origin: str) -> str:
    """A namespace per scenario; only the page's origin may open WebSockets."""
    text = f"""
    token_hmac_secret_key = "{TOKEN_SECRET}"
    allowed_origins = ["{origin}"]

    [http_api]
    key = "{API_KEY}"

    [namespaces.delta]
    history_size = 20
    history_ttl = 60
    force_recovery = true
    allowed_delta_types = ["fossil"]
    delta_publish = true
    allow_subscribe_for_client = true

    [namespaces.market]
    allow_subscribe_for_client = true
    allow_tags_filter = true

    [namespaces.cache]
    # More history than one publication: stream recovery would give back every missed one.
    history_size = 10
    history_ttl = 60
    force_recovery = true
    force_recovery_mode = "cache"
    allow_subscribe_for_client = true

    [namespaces.rec]
    history_size = 100
    history_ttl = 300
    force_recovery = true
    allow_subscribe_for_client = true
    """
    return dedent(text).lstrip()


class Hub(HubProcess):
    """``tidings serve --config`` with this module's config, the server API at hand."""

    def __init__(self, config_text: str, log: Path) -> None:
        config_path = log.with_suffix(".toml")
        config_path.write_text(config_text)
        super().__init__(log, ["--config", str(config_path), "--host", "127.0.0.1"], API_KEY)

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def api(self, method: str, body: Record) -> Any:
        """A server API call; its ``result`` (an ``error`` fails the test)."""
        reply = super().api(method, body)
        assert "error" not in reply, f"server API {method} {body}: {reply}"
        return reply.get("result")

    def publish(self, channel: str, data: Any, **fields: Any) -> Record:
        result: Record = self.api("publish", {"channel": channel, "data": data, **fields})
        return result


@pytest.fixture(scope="module")
def hub(browser: Browser, site: str) -> Iterator[Hub]:
    """One hub for the module's tests (each test has channels of its own); it stands in
    for conftest's ``--dev`` hub, which admits any origin."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "test_sdk.hub.log"
    log.unlink(missing_ok=True)
    process = Hub(config(site), log)
    process.start()
    try:
        yield process
    finally:
        process.stop()


# ---------------------------------------------------------------------------
# The SDK in a page
# ---------------------------------------------------------------------------


class SDKPage:
    """A page with one bundle of the SDK loaded; its WebSocket frames are kept."""

    def __init__(self, page: Page, protocol: str, hub: Hub) -> None:
        self.page = page
        self.protocol = protocol
        self.hub = hub
        self.frames: list[str | bytes] = []
        self.page_errors: list[str] = []
        page.on("websocket", self._on_websocket)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _on_websocket(self, ws: WebSocket) -> None:
        # A lambda: Playwright tags the handler, which a builtin method cannot take.
        ws.on("framereceived", lambda payload: self.frames.append(payload))

    def js(self, script: str, arg: Any = None) -> Any:
        """Evaluate ``script`` (a function of ``arg``) in the page and return its JSON value."""
        return self.page.evaluate(script, arg)

    def connect(self, user: str) -> Record:
        self.js("([url, token]) => H.newClient(url, token)", [self.hub.url, self.hub.token(user)])
        connected: Record = self.js("() => H.connect()")
        return connected

    def subscribe(self, channel: str, options: Record | None = None) -> Record:
        subscribed: Record = self.js("([c, o]) => H.subscribe(c, o)", [channel, options or {}])
        return subscribed

    def subscribed(self, channel: str) -> Record:
        again: Record = self.js("(c) => H.subscribed(c)", channel)
        return again

    def publications(self, channel: str, count: int) -> list[Record]:
        got: list[Record] = self.js("([c, n]) => H.publications(c, n)", [channel, count])
        return got

    def extra(self, channel: str) -> list[Record]:
        """Publications beyond those taken (after a short wait): should be none."""
        got: list[Record] = self.js("(c) => H.extra(c)", channel)
        return got

    def disconnect(self) -> Record:
        states: Record = self.js("() => H.disconnect()")
        return states

    def reconnect(self) -> None:
        self.js("() => H.connect()")

    @property
    def encoding(self) -> str:
        """How the SDK hands payloads over: objects over JSON, bytes over Protobuf."""
        return "json" if self.protocol == "json" else "bytes"

    def check_wire(self) -> None:
        """The bundle spoke its protocol (text frames or binary) and the page threw nothing."""
        assert self.frames, "no WebSocket frame received"
        kind = str if self.protocol == "json" else bytes
        assert all(isinstance(frame, kind) for frame in self.frames), self.frames[:3]
        assert self.page_errors == []


@pytest.fixture(params=PROTOCOLS)
def sdk(request: pytest.FixtureRequest, hub: Hub, pages: Pages, site: str) -> Iterator[SDKPage]:
    """A fresh page (browser context) with the bundle of ``protocol`` loaded."""
    protocol: str = request.param
    page = pages.new()
    opened = SDKPage(page, protocol, hub)
    page.goto(f"{site}/{protocol}.html")
    page.wait_for_function("() => window.Centrifuge && window.H")
    assert opened.js("() => H.protocol") == protocol
    yield opened
    opened.js("() => H.client && H.client.disconnect()")


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def documents(count: int) -> list[Record]:
    """Versions of a ~4 KiB JSON document, each with one (ASCII) field changed."""
    first = {
        "id": "inventory",
        "items": [
            {
                "sku": f"SKU-{k:04d}",
                "name": f"Crème brûlée n°{k} ✓",
                "qty": k % 7,
                "price": round(1.25 * k, 2),
                "flags": {"fresh": k % 2 == 0, "vegan": False},
            }
            for k in range(36)
        ],
    }
    versions = [first]
    for n in range(1, count):
        doc = copy.deepcopy(versions[-1])
        doc["items"][n * 5]["qty"] += 100 * n
        versions.append(doc)
    return versions


def test_fossil_deltas_decode_to_the_published_documents(hub: Hub, sdk: SDKPage) -> None:
    """Six versions of a 4 KiB document, published with delta: the SDK gets the first in
    full and five Fossil patches, and hands over exactly the published objects (whose text
    is not all ASCII). A change whose patch cuts a UTF-8 character (é to è) decodes too: the
    Protobuf SDK gets the patch, the JSON one (patches travel as JSON strings) the document."""
    channel = f"delta:doc-{sdk.protocol}"
    docs = documents(6)
    assert 3800 < len(json.dumps(docs[0], ensure_ascii=False).encode()) < 4600
    sdk.connect("dora")
    subscribed = sdk.subscribe(channel, {"delta": "fossil"})
    assert subscribed["recoverable"] is True, subscribed

    for doc in docs:
        hub.publish(channel, doc)
    got = sdk.publications(channel, len(docs))
    assert [p["data"] for p in got] == docs
    assert [p["offset"] for p in got] == [1, 2, 3, 4, 5, 6]
    assert {p["encoding"] for p in got} == {sdk.encoding}
    stats = sdk.js("(c) => H.deltaStats(c)", channel)
    assert (stats["numPublications"], stats["numFullPayloads"], stats["numDeltaPayloads"]) == (
        6,
        1,
        5,
    ), stats
    # Five patches of a few dozen bytes instead of five 4 KiB documents.
    assert stats["compressionRatio"] > 0.6, stats

    accented = copy.deepcopy(docs[-1])
    accented["items"][3]["name"] = accented["items"][3]["name"].replace("é", "è")
    hub.publish(channel, accented)
    [pub] = sdk.publications(channel, 1)
    assert pub["data"] == accented and pub["offset"] == 7
    stats = sdk.js("(c) => H.deltaStats(c)", channel)
    full, patches = (2, 5) if sdk.protocol == "json" else (1, 6)
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (full, patches), stats
    assert sdk.extra(channel) == []
    sdk.check_wire()


def test_fossil_deltas_after_recovery(hub: Hub, sdk: SDKPage) -> None:
    """Publications missed while disconnected come back as a chain (the first in full),
    and the live ones after them patch against the last recovered one: all decode."""
    channel = f"delta:recover-{sdk.protocol}"
    docs = documents(6)
    sdk.connect("dora")
    sdk.subscribe(channel, {"delta": "fossil"})
    for doc in docs[:2]:
        hub.publish(channel, doc)
    assert [p["data"] for p in sdk.publications(channel, 2)] == docs[:2]

    states = sdk.disconnect()
    assert states["subs"][channel] == "subscribing", states
    for doc in docs[2:5]:
        hub.publish(channel, doc)
    sdk.reconnect()
    again = sdk.subscribed(channel)
    assert (again["wasRecovering"], again["recovered"]) == (True, True), again
    recovered = sdk.publications(channel, 3)
    assert [p["data"] for p in recovered] == docs[2:5]
    assert [p["offset"] for p in recovered] == [3, 4, 5]

    hub.publish(channel, docs[5])
    [live] = sdk.publications(channel, 1)
    assert (live["data"], live["offset"]) == (docs[5], 6)
    stats = sdk.js("(c) => H.deltaStats(c)", channel)
    # Full: the first live one and the first recovered one (protocol-extensions §4.2).
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (2, 4), stats
    assert sdk.extra(channel) == []
    sdk.check_wire()


def test_a_tags_filter_delivers_exactly_the_matching_publications(hub: Hub, sdk: SDKPage) -> None:
    """``tagsFilter`` goes to the server (``tf``): only publications whose tags pass it are
    sent, with their tags, in order; the others never reach the page."""
    channel = f"market:quotes-{sdk.protocol}"
    big_move = {"op": "and", "nodes": [
        {"key": "ticker", "cmp": "in", "vals": ["AAPL", "MSFT"]},
        {"key": "price", "cmp": "gte", "val": "100"},
    ]}  # fmt: skip
    end = {"key": "ticker", "cmp": "eq", "val": "END"}
    sdk.connect("fay")
    sdk.subscribe(channel, {"tagsFilter": {"op": "or", "nodes": [big_move, end]}})

    published: list[dict[str, str]] = [
        {"ticker": "AAPL", "price": "150"},
        {"ticker": "MSFT", "price": "99.5"},
        {"ticker": "IBM", "price": "200"},
        {"ticker": "MSFT", "price": "100"},
        {"ticker": "AAPL"},
        {"ticker": "aapl", "price": "300"},
        {"ticker": "END"},
    ]
    for n, tags in enumerate(published):
        hub.publish(channel, {"n": n}, tags=tags)
    matching = [0, 3, 6]
    got = sdk.publications(channel, len(matching))
    assert [(p["data"], p["tags"]) for p in got] == [({"n": n}, published[n]) for n in matching]
    assert {p["encoding"] for p in got} == {sdk.encoding}
    assert sdk.extra(channel) == []
    sdk.check_wire()


def test_cache_recovery_gives_the_latest_publication_after_a_reconnect(
    hub: Hub, sdk: SDKPage
) -> None:
    """In ``cache`` mode a resubscribing client gets only the channel's latest publication,
    not every one it missed (the history holds them all); none when it already has it."""
    channel = f"cache:state-{sdk.protocol}"
    hub.publish(channel, {"v": 0})
    sdk.connect("cai")
    first = sdk.subscribe(channel)
    assert first["recoverable"] is True and first["wasRecovering"] is False, first
    assert first["streamPosition"]["offset"] == 1, first
    epoch = first["streamPosition"]["epoch"]
    assert epoch
    hub.publish(channel, {"v": 1})
    [live] = sdk.publications(channel, 1)
    assert (live["data"], live["offset"]) == ({"v": 1}, 2)

    sdk.disconnect()
    for v in (2, 3, 4):
        hub.publish(channel, {"v": v})
    sdk.reconnect()
    again = sdk.subscribed(channel)
    assert (again["wasRecovering"], again["recovered"], again["hasRecoveredPublications"]) == (
        True,
        True,
        True,
    ), again
    # As Centrifugo, the result carries the position asked from (protocol-extensions §5.1);
    # the SDK moves on with the publication (the next reconnect shows it).
    assert again["streamPosition"] == {"offset": 2, "epoch": epoch}, again
    [latest] = sdk.publications(channel, 1)
    assert (latest["data"], latest["offset"], latest["encoding"]) == ({"v": 4}, 5, sdk.encoding)
    assert sdk.extra(channel) == []

    # Nothing new while away: recovered from offset 5, with nothing to hand over.
    sdk.disconnect()
    sdk.reconnect()
    same = sdk.subscribed(channel)
    assert (same["recovered"], same["hasRecoveredPublications"]) == (True, False), same
    assert same["streamPosition"] == {"offset": 5, "epoch": epoch}, same
    assert sdk.extra(channel) == []
    hub.publish(channel, {"v": 5})
    [after] = sdk.publications(channel, 1)
    assert (after["data"], after["offset"]) == ({"v": 5}, 6)
    sdk.check_wire()


def test_get_state_after_error_112_for_an_unrecoverable_position(hub: Hub, sdk: SDKPage) -> None:
    """With ``getState`` the SDK subscribes with flag bit 2: the stale position it first
    gives is refused with 112, so it asks ``getState`` again and recovers from the top."""
    channel = f"rec:state-{sdk.protocol}"
    hub.publish(channel, {"n": 1})
    top = hub.api("history", {"channel": channel, "limit": 0})
    top = {"offset": top["offset"], "epoch": top["epoch"]}
    sdk.connect("eve")
    result = sdk.js(
        """async ([channel, top]) => {
            let calls = 0;
            H.newSub(channel, {
                getState: async () => {
                    calls += 1;
                    // First a position of another epoch (an outdated cache), then the top.
                    return calls === 1 ? { offset: 5, epoch: 'stale' } : top;
                },
            });
            const subscribed = await H.subscribe(channel);
            return { calls, subscribed };
        }""",
        [channel, top],
    )
    assert result["calls"] == 2, result
    subscribed = result["subscribed"]
    assert (subscribed["wasRecovering"], subscribed["recovered"]) == (True, True), subscribed
    assert subscribed["streamPosition"] == top, subscribed

    hub.publish(channel, {"n": 2})
    [pub] = sdk.publications(channel, 1)
    assert (pub["data"], pub["offset"]) == ({"n": 2}, top["offset"] + 1)
    assert sdk.extra(channel) == []  # {"n": 1} was in the state, not sent again
    sdk.check_wire()
