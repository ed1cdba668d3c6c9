"""A FastAPI application with a tidings hub mounted on its own port.

Run it under any ASGI server, from this folder:

    uvicorn app:app --port 8000          # or: hypercorn app:app, daphne app:app

SDKs connect to ws://127.0.0.1:8000/realtime/connection/websocket and may
subscribe to any channel (the config below opens everything, as ``--dev``
does); ``POST /say`` publishes to the channel ``chat`` from an ordinary route.
"""

from fastapi import FastAPI
from pydantic import BaseModel

from tidings import Hub, load_config

hub = Hub(load_config(overrides={"dev": True}))
app = FastAPI(lifespan=hub.lifespan)
app.mount("/realtime", hub.asgi())


class Message(BaseModel):
    user: str
    text: str


@app.post("/say")
async def say(message: Message) -> dict[str, int]:
    """Publish to ``chat`` in-process: no server API round trip."""
    result = await hub.publish("chat", message.model_dump())
    return {"offset": result.offset}
