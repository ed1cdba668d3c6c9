"""Embed a tidings hub in your own asyncio program and publish from Python.

Run: python examples/embed.py, then connect any Centrifugo SDK to
ws://127.0.0.1:8000/connection/websocket and subscribe to "clock".
"""

import asyncio
import time

from tidings import Hub, load_config


async def main() -> None:
    config = load_config(overrides={"dev": True})  # dev: anonymous clients may subscribe
    async with Hub(config) as hub:
        print("serving", hub.url)
        while True:
            await hub.publish("clock", {"time": time.time()})
            await asyncio.sleep(1)


if __name__ == "__main__":
    asyncio.run(main())
