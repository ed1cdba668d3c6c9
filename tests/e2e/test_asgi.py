"""End to end: the FastAPI example (examples/fastapi/app.py), a hub mounted on the
application's port, under uvicorn, hypercorn and daphne, with the unmodified
centrifuge-python SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from centrifuge import Client

from ..conftest import clean_environment, free_port
from .conftest import ROOT, SRC, WAIT, ClientEvents, SubEvents, event_where, next_event, wait

EXAMPLE = ROOT / "examples" / "fastapi"
SERVERS = {
    "uvicorn": ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}"],
    "hypercorn": ["-m", "hypercorn", "app:app", "--bind", "127.0.0.1:{port}"],
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "app:app"],
}


class App:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log
        self.ws_url = base.replace("http://", "ws://") + "/realtime/connection/websocket"

    def say(self, user: str, text: str) -> dict[str, Any]:
        body = json.dumps({"user": user, "text": text}).encode()
        request = urllib.request.Request(
            f"{self.base}/say", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            result: dict[str, Any] = json.load(response)
            return result


@pytest.fixture(params=list(SERVERS))
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    port = free_port()
    command = [sys.executable, *(a.format(port=port) for a in SERVERS[request.param])]
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(EXAMPLE)])
    log = tmp_path / f"{request.param}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=EXAMPLE, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, f"{base}/realtime/health", log)
        yield App(base, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer within 20 s:\n{log.read_text()}")


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await client.disconnect()
    # The SDK closes its connections in background tasks: let them finish before the
    # loop goes away (else its sockets are garbage-collected open, a test error).
    pending = [t for c in made for t in list(getattr(c, "_background_tasks", ()))]
    if pending:
        await asyncio.wait(pending, timeout=2)


async def test_sdk_clients_get_what_a_route_and_other_clients_publish(
    app: App, clients: list[Client]
) -> None:
    subs = []
    for name in ("alice", "bob"):
        client = Client(app.ws_url, events=ClientEvents(), name=name)
        clients.append(client)
        events = SubEvents()
        sub = client.new_subscription("chat", events=events)
        await wait(client.connect(), what=f"{name} to connect")
        await wait(sub.subscribe(), what=f"{name} to subscribe")
        subs.append((sub, events))
    result = await asyncio.to_thread(app.say, "server", "hello")
    for _, events in subs:
        pub = await next_event(events.publications, what="the route's publication")
        assert pub.pub.data == {"user": "server", "text": "hello"}
        assert pub.pub.offset == result["offset"]
    (alice_sub, _), (_, bob_events) = subs
    await wait(alice_sub.publish({"user": "alice", "text": "hi bob"}))
    pub = await event_where(bob_events.publications, lambda p: p.pub.data.get("user") == "alice")
    assert pub.pub.data["text"] == "hi bob"
    presence = await wait(alice_sub.presence())
    assert {info.user for info in presence.clients.values()} == {""}  # anonymous
    assert len(presence.clients) == 2


async def test_missed_publications_are_recovered_after_a_reconnect(
    app: App, clients: list[Client]
) -> None:
    client = Client(app.ws_url, events=ClientEvents())
    clients.append(client)
    events = SubEvents()
    sub = client.new_subscription("chat", events=events)
    await wait(client.connect())
    await wait(sub.subscribe())
    await next_event(events.subscribed)
    await asyncio.to_thread(app.say, "server", "before")
    await next_event(events.publications)
    await wait(client.disconnect())
    for n in range(3):
        await asyncio.to_thread(app.say, "server", f"missed {n}")
    await wait(client.connect())
    subscribed = await next_event(events.subscribed, what="the resubscription")
    assert subscribed.was_recovering and subscribed.recovered
    texts = [(await next_event(events.publications)).pub.data["text"] for _ in range(3)]
    assert texts == ["missed 0", "missed 1", "missed 2"]
