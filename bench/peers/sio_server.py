"""python-socketio ``AsyncServer`` with rooms, on aiohttp, as its docs teach.

Clients join a room with the ``join`` event (acknowledged); the publisher
emits ``publish`` events whose data names the room (``ch``); the server emits
``msg`` to that room. With ``--redis URL`` the server uses
``socketio.AsyncRedisManager`` (the docs' way to run several servers).

    python sio_server.py --port 8765 [--redis redis://127.0.0.1:6379/0]
"""

import argparse

import socketio
from aiohttp import web


def make_app(redis_url=None):
    client_manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=client_manager)
    app = web.Application()
    sio.attach(app)

    @sio.event
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return "ok"

    @sio.event
    async def publish(sid, data):
        await sio.emit("msg", data, room=data["ch"])

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    web.run_app(make_app(args.redis), host="127.0.0.1", port=args.port, print=None, access_log=None)
