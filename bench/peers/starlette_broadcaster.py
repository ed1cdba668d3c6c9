"""Starlette + ``broadcaster`` (memory backend), after broadcaster's README example.

A subscriber connects to /ws/{channel}: as in the README's chat room, one task
publishes what the client sends to the channel, another relays the channel's
events to the client (``broadcast.subscribe()``). The publisher connects to
/pub and sends messages naming their channel (``ch``).

    uvicorn starlette_broadcaster:app --port 8765   (run.py adds --no-access-log etc.)
"""

import contextlib
import json

import anyio
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

broadcast = Broadcast("memory://")


async def channel_ws(websocket):
    channel = websocket.path_params["channel"]
    await websocket.accept()

    async with anyio.create_task_group() as task_group:
        # run until first is complete
        async def run_channel_ws_receiver() -> None:
            await channel_ws_receiver(websocket, channel)
            task_group.cancel_scope.cancel()

        task_group.start_soon(run_channel_ws_receiver)
        await channel_ws_sender(websocket, channel)


async def channel_ws_receiver(websocket, channel):
    async for message in websocket.iter_text():
        await broadcast.publish(channel=channel, message=message)


async def channel_ws_sender(websocket, channel):
    async with broadcast.subscribe(channel=channel) as subscriber:
        async for event in subscriber:
            await websocket.send_text(event.message)


async def publisher_ws(websocket):
    await websocket.accept()
    async for message in websocket.iter_text():
        await broadcast.publish(channel=json.loads(message)["ch"], message=message)


@contextlib.asynccontextmanager
async def lifespan(app):
    await broadcast.connect()
    yield
    await broadcast.disconnect()


routes = [
    WebSocketRoute("/pub", publisher_ws),
    WebSocketRoute("/ws/{channel}", channel_ws),
]

app = Starlette(routes=routes, lifespan=lifespan)
