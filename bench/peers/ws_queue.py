"""The websockets docs' per-connection queue, with consumer and producer tasks.

From https://websockets.readthedocs.io/en/stable/topics/broadcast.html ("Per-client
queues") and the "consumer and producer" pattern of the docs' patterns page:
each connection gets an ``asyncio.Queue``; a producer task relays what is put
in it to the client, a consumer task reads what the client sends (a publisher,
connected on /pub, sends the messages to broadcast). ``broadcast()`` puts each
message in every queue.

    python ws_queue.py --port 8765
"""

import argparse
import asyncio

from websockets.asyncio.server import serve

CLIENTS = set()


def broadcast(message):
    for queue in CLIENTS:
        queue.put_nowait(message)


async def consumer_handler(websocket):
    async for message in websocket:
        if websocket.request.path.startswith("/pub"):
            broadcast(message)


async def producer_handler(websocket, queue):
    while True:
        message = await queue.get()
        await websocket.send(message)


async def handler(websocket):
    queue = asyncio.Queue()
    if not websocket.request.path.startswith("/pub"):
        CLIENTS.add(queue)
    consumer_task = asyncio.create_task(consumer_handler(websocket))
    producer_task = asyncio.create_task(producer_handler(websocket, queue))
    try:
        done, pending = await asyncio.wait(
            [consumer_task, producer_task], return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
    finally:
        CLIENTS.discard(queue)


async def main(port):
    async with serve(handler, "127.0.0.1", port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    asyncio.run(main(parser.parse_args().port))
