"""A raw WebSocket client's view of the protocol, shared by the tests that drive the
hub with ``websockets`` clients instead of an SDK: frames split into messages, and
the close code the server chose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

TIMEOUT = 5.0
"""Bound of every wait for the server."""


async def receive(ws: ClientConnection) -> list[dict[str, Any]]:
    """One frame, split into its messages."""
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, str), "the JSON protocol uses text frames"
    return [json.loads(line) for line in frame.split("\n")]


async def receive_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first message matching ``predicate``; the ones before it are dropped."""
    while True:
        for message in await receive(ws):
            if predicate(message):
                return message


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; return its close code and reason."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason
