"""The Channels tutorial's chat consumer, reduced to fan-out.

A subscriber connects to /ws/<channel>/ and is added to the group of that name
(``channel_layer.group_add``); the publisher connects to /pub/ and each message
it sends is ``group_send`` to the group its ``ch`` names; every consumer of the
group gets the event and sends the text to its client.
"""

import json

from channels.generic.websocket import AsyncWebsocketConsumer


class ChannelConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.group_name = self.scope["url_route"]["kwargs"]["channel"]
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def bench_message(self, event):
        await self.send(text_data=event["text"])


class PublisherConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        group = json.loads(text_data)["ch"]
        await self.channel_layer.group_send(group, {"type": "bench.message", "text": text_data})
