"""The "seed": the websockets docs' broadcast pattern.

A set of registered connections and ``websockets.asyncio.server.broadcast()``
(https://websockets.readthedocs.io/en/stable/topics/broadcast.html): every
connection is added to CONNECTIONS while it is open; a message sent by the
publisher (a connection on /pub) is broadcast to all of them.

    python ws_broadcast.py --port 8765 [--uvloop]
"""

import argparse
import asyncio

from websockets.asyncio.server import broadcast, serve

CONNECTIONS = set()


async def register(websocket):
    CONNECTIONS.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        CONNECTIONS.remove(websocket)


async def publisher(websocket):
    async for message in websocket:
        broadcast(CONNECTIONS, message)


async def handler(websocket):
    if websocket.request.path.startswith("/pub"):
        await publisher(websocket)
    else:
        await register(websocket)


async def main(port):
    async with serve(handler, "127.0.0.1", port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (not in the docs)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.port))
    else:
        asyncio.run(main(args.port))
