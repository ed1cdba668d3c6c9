"""The seed's registration pattern with rooms: one set of connections per room.

The "seed" (ws_broadcast.py) is the websockets docs' broadcast pattern: a set of
the registered connections and ``websockets.asyncio.server.broadcast()``
(https://websockets.readthedocs.io/en/stable/topics/broadcast.html). With
channels it becomes a dict room -> set of connections: a subscriber connects to
/<room> and is registered in that room's set while it is open; the publisher
(a connection on /pub) sends messages naming their room (``ch``), each is
broadcast to that room's set only.

    python ws_rooms.py --port 8765 [--uvloop]
"""

import argparse
import asyncio
import json

from websockets.asyncio.server import broadcast, serve

ROOMS = {}


async def register(websocket, room):
    connections = ROOMS.setdefault(room, set())
    connections.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        connections.remove(websocket)
        if not connections:
            del ROOMS[room]


async def publisher(websocket):
    async for message in websocket:
        room = json.loads(message)["ch"]
        broadcast(ROOMS.get(room, ()), message)


async def handler(websocket):
    path = websocket.request.path
    if path.startswith("/pub"):
        await publisher(websocket)
    else:
        await register(websocket, path.lstrip("/"))


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
