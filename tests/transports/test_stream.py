"""HTTP-streaming, SSE, ``/emulation`` and the unidirectional streams, on the wire.

Raw HTTP/1.1 clients check what a browser or an SDK would get: a socket that
decodes the chunked encoding itself (the response head, every chunk, the framing
of every message, the terminating ``0\\r\\n\\r\\n``), aiohttp for the plain
requests, and ``curl -N`` for a unidirectional stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tidings import ConnectReply, Hub, make_token
from tidings.protocol import client_pb2 as pb
from tidings.transports.stream import StreamConnection

from ..conftest import SECRET, HubFactory, clean_environment, eventually, free_port
from ..sockets import send_queues
from .test_framing import varint

TIMEOUT = 5.0

HTTP_STREAM = "/connection/http_stream"
SSE = "/connection/sse"
UNI_HTTP_STREAM = "/connection/uni_http_stream"
UNI_SSE = "/connection/uni_sse"
EMULATION = "/emulation"
STREAM_PATHS = (HTTP_STREAM, SSE, UNI_HTTP_STREAM, UNI_SSE)

NO_CACHE = "private, no-cache, no-store, must-revalidate, max-age=0"
QUIET = {"join_leave": False, "force_push_join_leave": False}
"""No join/leave pushes: a stream carries only what the test waits for."""
FAST_PINGS = {"client.ping_interval": 0.4, "client.pong_timeout": 0.2}
LAST_CHUNK = b"0\r\n\r\n"

Kind = str
"""How a stream's messages are framed: ``lines`` (JSON lines, bidirectional or not),
``sse`` (``data: ...`` events) or ``proto`` (varint-delimited Protobuf replies)."""


# --- a raw HTTP/1.1 client of one stream --------------------------------------------


class Ended(Exception):
    """The stream ended (``cut``: without the last chunk) while a message was awaited."""

    def __init__(self, cut: bool) -> None:
        super().__init__("the stream was cut" if cut else "the stream ended")
        self.cut = cut


_END, _CUT = object(), object()


class Stream:
    """A request to a streaming endpoint over a plain socket, with the chunked body
    decoded here: ``wire`` keeps the body's bytes as sent, ``chunks`` its chunks, and
    a reader task parses the messages (Protobuf replies become dicts)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: Kind
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.kind = kind
        self.status = 0
        self.head: list[tuple[str, str]] = []
        self.headers: dict[str, str] = {}
        """The response headers, by lower-cased name."""
        self.text = b""
        """The body of a refusal (a response other than 200)."""
        self.wire = bytearray()
        self.chunks: list[bytes] = []
        self.received: list[dict[str, Any]] = []
        self.ended = False
        """The last chunk came, then the server closed the connection."""
        self.cut = False
        self._buffer = bytearray()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._done = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        body: bytes = b"",
        *,
        kind: Kind = "lines",
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = cls(reader, writer, kind)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        if method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        stream.status = int(status_line.split()[1])
        for field in fields:
            name, _, value = field.partition(":")
            stream.head.append((name, value.strip()))
            stream.headers[name.lower()] = value.strip()
        if stream.status != 200:
            length = int(stream.headers.get("content-length", "0"))
            async with asyncio.timeout(TIMEOUT):
                stream.text = await reader.readexactly(length)
        else:
            stream._task = asyncio.create_task(stream._pump())
        return stream

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass

    async def _pump(self) -> None:
        try:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line[:-2], 16)
                data = await self.reader.readexactly(size + 2)
                self.wire += size_line + data
                assert data.endswith(b"\r\n"), f"a chunk not ended by CRLF: {data!r}"
                if size == 0:
                    # The server closes the connection after the last chunk.
                    rest = await self.reader.read()
                    self.wire += rest
                    assert not rest, f"bytes after the last chunk: {rest!r}"
                    self.ended = True
                    self._queue.put_nowait(_END)
                    return
                payload = data[:-2]
                self.chunks.append(payload)
                if self.kind == "sse" and len(self.chunks) == 1:
                    assert payload == b"\r\n", f"an SSE stream must start with CRLF: {payload!r}"
                    continue
                self._buffer += payload
                for message in self._parse():
                    self.received.append(message)
                    self._queue.put_nowait(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.cut = True
            self._queue.put_nowait(_CUT)
        except Exception as exc:  # a framing error: the test waiting for a message fails
            self._queue.put_nowait(exc)

    def _parse(self) -> list[dict[str, Any]]:
        messages = []
        buffer = self._buffer
        while buffer:
            if self.kind == "proto":
                parsed = _read_uvarint(buffer)
                if parsed is None or len(buffer) < parsed[0] + parsed[1]:
                    break
                length, start = parsed
                reply = pb.Reply.FromString(bytes(buffer[start : start + length]))
                messages.append(MessageToDict(reply, preserving_proto_field_name=True))
                del buffer[: start + length]
            elif self.kind == "sse":
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                event = bytes(buffer[:end])
                assert event.startswith(b"data: "), f"not an SSE data event: {event!r}"
                messages.append(json.loads(event[len(b"data: ") :]))
                del buffer[: end + 2]
            else:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                messages.append(json.loads(bytes(buffer[:end])))
                del buffer[: end + 1]
        return messages

    async def message(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message; raises :class:`Ended` once the stream is over."""
        if self._done:
            raise Ended(self.cut)
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            pytest.fail(f"no message within {timeout}s (got {self.received})")
        if item is _END or item is _CUT:
            self._done = True
            raise Ended(item is _CUT)
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, dict)
        return item

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message matching ``predicate`` (the ones before it are dropped)."""
        while True:
            message = await self.message()
            if predicate(message):
                return message

    async def rest(self) -> list[dict[str, Any]]:
        """Every message until the stream ends with its last chunk."""
        messages = []
        try:
            while True:
                messages.append(await self.message())
        except Ended as ended:
            assert not ended.cut, f"the stream was cut without its last chunk: {self.wire!r}"
        return messages

    def pending(self) -> list[dict[str, Any]]:
        """The messages received and not taken yet (a quiet stream has none)."""
        items = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            assert isinstance(item, dict), f"the stream ended: {item}"
            items.append(item)
        return items


Opener = Callable[..., Awaitable[Stream]]


@pytest.fixture
async def streams() -> AsyncIterator[Opener]:
    """Open raw streams (``Stream.open``'s arguments); close them after the test."""
    opened: list[Stream] = []

    async def open_stream(port: int, path: str, body: bytes = b"", **options: Any) -> Stream:
        stream = await Stream.open(port, path, body, **options)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        await stream.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


# --- encoding helpers ------------------------------------------------------------


def _read_uvarint(data: bytes | bytearray) -> tuple[int, int] | None:
    """(value, bytes it took), or None when the varint is not complete yet."""
    value = shift = 0
    for position, byte in enumerate(data):
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position + 1
    return None


def delimited(*messages: Message) -> bytes:
    """Protobuf messages framed as the SDKs frame commands: uvarint(len) + bytes each."""
    return b"".join(varint(m.ByteSize()) + m.SerializeToString() for m in messages)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def commands(*items: dict[str, Any]) -> bytes:
    """JSON commands, one per line, as a stream's request body."""
    return "\n".join(json.dumps(item) for item in items).encode()


def cf_connect(value: Any) -> str:
    """A ``?cf_connect=`` query for a GET (a command, commands, or a ConnectRequest)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "?cf_connect=" + urllib.parse.quote(text)


def disconnect_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """The disconnect push in a message: bare (unidirectional) or in ``push``."""
    push = message.get("push", message)
    result: dict[str, Any] | None = push.get("disconnect")
    return result


def publication(message: dict[str, Any]) -> dict[str, Any] | None:
    push = message.get("push", message)
    result: dict[str, Any] | None = push.get("pub")
    return result


async def post_emulation(
    http: aiohttp.ClientSession,
    port: int,
    session: str,
    node: str,
    data: str,
    headers: dict[str, str] | None = None,
) -> int:
    """Post JSON commands to /emulation; the status."""
    body = json.dumps({"session": session, "node": node, "data": data})
    return await post(http, port, EMULATION, body.encode(), headers)


async def post(
    http: aiohttp.ClientSession,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> int:
    # aiohttp would call bytes application/octet-stream: Protobuf to the server.
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as r:
        await r.read()
        return r.status


async def watching(hub: Hub, open_stream: Opener) -> Stream:
    """A uni_http_stream subscribed to ``watch``: the bystander bad requests must not hurt."""
    watcher = await open_stream(hub.port, UNI_HTTP_STREAM, b'{"subs":{"watch":{}}}')
    connect = await watcher.message()
    assert "watch" in connect["connect"]["subs"], connect
    return watcher


async def still_served(hub: Hub, watcher: Stream) -> None:
    """The bystander is still connected and still gets publications."""
    marker = str(uuid.uuid4())
    await hub.publish("watch", {"marker": marker})
    pub = await watcher.until(lambda m: m.get("channel") == "watch")
    assert pub["pub"]["data"] == {"marker": marker}
    assert not watcher.ended and not watcher.cut


def assert_stream_head(stream: Stream, *, sse: bool) -> None:
    """The head Centrifugo answers a stream with: chunked, never cached nor buffered."""
    assert stream.status == 200, stream.text
    headers = stream.headers
    assert headers["transfer-encoding"] == "chunked"
    assert headers["cache-control"] == NO_CACHE
    assert headers["pragma"] == "no-cache"
    assert headers["expires"] == "0"
    assert headers["x-accel-buffering"] == "no"
    assert headers["connection"] == "keep-alive"
    assert "content-length" not in headers
    if sse:
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
    else:
        assert "content-type" not in headers


# --- bidirectional: HTTP-streaming (JSON and Protobuf), SSE, /emulation ------------------


@pytest.mark.slow
async def test_http_stream_json_connects_and_gets_replies_publications_and_pings(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """The connect reply names the session and the node; a subscribe posted to
    /emulation is answered on the stream; pings are ``{}`` lines; a pong through
    /emulation keeps the stream past the pong timeout."""
    hub = await make_hub(
        dev=True, **QUIET, **{"client.ping_interval": 0.6, "client.pong_timeout": 0.5}
    )
    stream = await streams(hub.port, HTTP_STREAM, commands({"id": 1, "connect": {}}))
    assert_stream_head(stream, sse=False)
    reply = await stream.message()
    assert reply["id"] == 1
    connect = reply["connect"]
    assert connect["node"] == hub.node.uid
    assert connect["pong"] is True and connect["ping"] == 1
    session = connect["session"]
    assert uuid.UUID(session) and session != connect["client"]

    subscribe = json.dumps({"id": 2, "subscribe": {"channel": "news"}})
    assert await post_emulation(http, hub.port, session, hub.node.uid, subscribe) == 204
    reply = await stream.until(lambda m: "id" in m)
    assert reply["id"] == 2 and "subscribe" in reply, reply
    await hub.publish("news", {"n": 1})
    pub = await stream.until(lambda m: "push" in m)
    assert pub["push"]["channel"] == "news" and pub["push"]["pub"]["data"] == {"n": 1}

    await stream.until(lambda m: m == {})
    assert chunk(b"{}\n") in stream.wire  # a ping is one chunk, one line
    assert await post_emulation(http, hub.port, session, hub.node.uid, "{}") == 204
    await asyncio.sleep(0.6)  # past the pong timeout of that ping
    await hub.publish("news", {"n": 2})
    pub = await stream.until(lambda m: "push" in m)
    assert pub["push"]["pub"]["data"] == {"n": 2}
    assert not stream.ended


@pytest.mark.slow
async def test_http_stream_protobuf_answers_varint_delimited_replies(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """With ``application/octet-stream`` the stream carries varint-delimited Replies
    (the ping is a lone 0x00) and /emulation takes an ``EmulationRequest`` whose data
    holds varint-delimited Commands (a pong is 0x00 too)."""
    hub = await make_hub(
        dev=True, **QUIET, **{"client.ping_interval": 0.6, "client.pong_timeout": 0.5}
    )
    binary = {"Content-Type": "application/octet-stream"}
    body = delimited(pb.Command(id=1, connect=pb.ConnectRequest(name="raw")))
    stream = await streams(hub.port, HTTP_STREAM, body, kind="proto", headers=binary)
    assert_stream_head(stream, sse=False)
    reply = await stream.message()
    assert reply["id"] == 1
    session, node = reply["connect"]["session"], reply["connect"]["node"]
    assert node == hub.node.uid and reply["connect"]["pong"] is True

    def emulation(*commands: Message) -> bytes:
        request = pb.EmulationRequest(session=session, node=node, data=delimited(*commands))
        data: bytes = request.SerializeToString()
        return data

    subscribe = pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="news"))
    assert await post(http, hub.port, EMULATION, emulation(subscribe), binary) == 204
    assert (await stream.until(lambda m: "id" in m))["id"] == 2
    await hub.publish("news", {"n": 1})
    pub = await stream.until(lambda m: "push" in m)
    assert pub["push"]["channel"] == "news"
    assert json.loads(base64.b64decode(pub["push"]["pub"]["data"])) == {"n": 1}

    await stream.until(lambda m: m == {})
    assert chunk(b"\x00") in stream.wire
    pong = pb.EmulationRequest(session=session, node=node, data=b"\x00").SerializeToString()
    assert await post(http, hub.port, EMULATION, pong, binary) == 204
    await asyncio.sleep(0.6)
    await hub.publish("news", {"n": 2})
    pub = await stream.until(lambda m: "push" in m)
    assert json.loads(base64.b64decode(pub["push"]["pub"]["data"])) == {"n": 2}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_sse_connects_by_get_or_post_and_frames_data_events(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession, method: str
) -> None:
    """SSE: ``text/event-stream``, a leading CRLF chunk, then ``data: <reply>`` events;
    the connect command comes as ``?cf_connect=`` (GET) or as the body (POST)."""
    hub = await make_hub(dev=True, **QUIET, **FAST_PINGS)
    command = {"id": 1, "connect": {"name": "sse"}}
    if method == "GET":
        stream = await streams(hub.port, SSE + cf_connect(command), method="GET", kind="sse")
    else:
        stream = await streams(hub.port, SSE, commands(command), kind="sse")
    assert_stream_head(stream, sse=True)
    reply = await stream.message()
    assert stream.chunks[0] == b"\r\n"
    assert stream.wire.startswith(chunk(b"\r\n"))
    assert stream.chunks[1].startswith(b'data: {"id":1,"connect":')
    session, node = reply["connect"]["session"], reply["connect"]["node"]
    assert node == hub.node.uid
    subscribe = json.dumps({"id": 2, "subscribe": {"channel": "news"}})
    assert await post_emulation(http, hub.port, session, node, subscribe) == 204
    reply = await stream.until(lambda m: "id" in m)
    assert reply["id"] == 2 and "subscribe" in reply, reply
    await hub.publish("news", {"n": 1})
    pub = await stream.until(lambda m: "push" in m)
    assert pub["push"]["pub"]["data"] == {"n": 1}
    await stream.until(lambda m: m == {})
    assert chunk(b"data: {}\n\n") in stream.wire


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lines", "proto", "sse"])
async def test_a_pong_through_emulation_keeps_the_stream_and_no_pong_ends_it_with_3012(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession, kind: Kind
) -> None:
    """An emulated client answers pings by posting pongs; one that does not gets a
    ``disconnect`` push 3012 and the end of its response, the other stays."""
    hub = await make_hub(dev=True, **QUIET, **FAST_PINGS)
    headers: dict[str, str] = {}
    if kind == "proto":
        body = delimited(pb.Command(id=1, connect=pb.ConnectRequest()))
        headers["Content-Type"] = "application/octet-stream"
    else:
        body = commands({"id": 1, "connect": {}})
    path = SSE if kind == "sse" else HTTP_STREAM
    silent = await streams(hub.port, path, body, kind=kind, headers=headers)
    polite = await streams(hub.port, path, body, kind=kind, headers=headers)
    connect = (await polite.message())["connect"]

    async def pong() -> int:
        if kind != "proto":
            return await post_emulation(http, hub.port, connect["session"], connect["node"], "{}")
        request = pb.EmulationRequest(session=connect["session"], node=connect["node"])
        request.data = b"\x00"
        return await post(http, hub.port, EMULATION, request.SerializeToString(), headers)

    pongs: list[int] = []

    async def answer_pings() -> None:
        while True:
            if await polite.message() == {}:
                pongs.append(await pong())

    answering = asyncio.create_task(answer_pings())
    try:
        messages = await silent.rest()
        assert disconnect_of(messages[-1]) == {"code": 3012, "reason": "no pong"}
        assert silent.wire.endswith(LAST_CHUNK)
        await asyncio.sleep(1.0)  # several ping intervals
        assert len(pongs) >= 2 and set(pongs) == {204}
        assert hub.node.num_clients == 1 and not polite.ended
    finally:
        answering.cancel()
        await asyncio.gather(answering, return_exceptions=True)


# --- unidirectional: uni_http_stream, uni_sse -----------------------------------------


@pytest.mark.slow
async def test_uni_http_stream_writes_bare_pushes_and_pings_without_pongs(
    make_hub: HubFactory, streams: Opener
) -> None:
    """A bare ``connect`` push (a session, no node, no pong), bare publications, ``{}``
    pings; a unidirectional client cannot pong, and is not disconnected for it."""
    hub = await make_hub(dev=True, **QUIET, **FAST_PINGS)
    stream = await streams(hub.port, UNI_HTTP_STREAM, b'{"name":"raw","subs":{"news":{}}}')
    assert_stream_head(stream, sse=False)
    first = await stream.message()
    assert list(first) == ["connect"]
    connect = first["connect"]
    assert "node" not in connect and "pong" not in connect
    assert uuid.UUID(connect["session"]) and connect["session"] != connect["client"]
    assert list(connect["subs"]) == ["news"]
    assert stream.wire.startswith(chunk(json.dumps(first, separators=(",", ":")).encode() + b"\n"))
    await hub.publish("news", {"n": 1})
    pub = await stream.until(lambda m: m != {})
    assert pub["channel"] == "news" and pub["pub"]["data"] == {"n": 1}
    for _ in range(2):  # two pings: past the pong timeout of the first
        await stream.until(lambda m: m == {})
    assert chunk(b"{}\n") in stream.wire
    await asyncio.sleep(0.3)
    await hub.publish("news", {"n": 2})
    pub = await stream.until(lambda m: m != {})
    assert pub["pub"]["data"] == {"n": 2}
    assert not any(disconnect_of(m) for m in stream.received)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_uni_sse_writes_bare_pushes_as_data_events(
    make_hub: HubFactory, streams: Opener, method: str
) -> None:
    """uni_sse: the SSE head and leading CRLF, then ``data: <push>`` events, bare
    pushes as for uni_http_stream; the request by ``?cf_connect=`` or as the body."""
    hub = await make_hub(dev=True, **QUIET, **FAST_PINGS)
    request: dict[str, Any] = {"subs": {"news": {}}}
    if method == "GET":
        stream = await streams(hub.port, UNI_SSE + cf_connect(request), method="GET", kind="sse")
    else:
        stream = await streams(hub.port, UNI_SSE, json.dumps(request).encode(), kind="sse")
    assert_stream_head(stream, sse=True)
    first = await stream.message()
    assert stream.chunks[0] == b"\r\n"
    assert list(first) == ["connect"] and "node" not in first["connect"]
    assert list(first["connect"]["subs"]) == ["news"]
    await hub.publish("news", {"n": 1})
    pub = await stream.until(lambda m: m != {})
    assert pub["channel"] == "news" and pub["pub"]["data"] == {"n": 1}
    assert chunk(b"data: " + json.dumps(pub, separators=(",", ":")).encode() + b"\n\n") in (
        stream.wire
    )
    await stream.until(lambda m: m == {})
    assert chunk(b"data: {}\n\n") in stream.wire


async def test_uni_sse_get_without_cf_connect_is_an_empty_connect_request(
    make_hub: HubFactory, streams: Opener
) -> None:
    """As a plain ``EventSource(url)`` opens it: no query at all."""
    hub = await make_hub(dev=True)
    stream = await streams(hub.port, UNI_SSE, method="GET", kind="sse")
    first = await stream.message()
    assert set(first) == {"connect"} and "subs" not in first["connect"]
    assert hub.node.num_clients == 1


async def test_a_uni_connect_subscribes_to_subs_where_allowed_and_never_to_private_channels(
    make_hub: HubFactory, streams: Opener
) -> None:
    """``subs`` are server-side subscriptions only where the client could subscribe
    without a token: not ``$`` channels, a closed namespace nor an unknown one."""
    hub = await make_hub(
        dev=True,
        **QUIET,
        **{
            "namespaces.closed.allow_subscribe_for_client": False,
            "namespaces.closed.allow_subscribe_for_anonymous": False,
        },
    )
    subs: dict[str, Any] = {"open": {}, "$secret": {}, "closed:x": {}, "unknown:y": {}}
    stream = await streams(hub.port, UNI_HTTP_STREAM, json.dumps({"subs": subs}).encode())
    first = await stream.message()
    assert list(first["connect"]["subs"]) == ["open"]
    assert hub.node.channels() == {"open": 1}
    for channel in ("$secret", "closed:x", "open"):
        await hub.publish(channel, {"channel": channel})
    pub = await stream.message()
    assert pub["channel"] == "open", pub
    await asyncio.sleep(0.1)
    assert stream.pending() == []


async def test_a_uni_connect_with_a_token_subscribes_to_its_channels(
    make_hub: HubFactory, streams: Opener
) -> None:
    """Without ``--dev`` nothing is open: the token's ``channels`` are subscribed, the
    ``subs`` the client names beside them are not."""
    hub = await make_hub(**{"uni_http_stream.enabled": True})
    token = make_token(SECRET, "42", channels=["news", "alerts"])
    body = json.dumps({"token": token, "subs": {"other": {}}}).encode()
    stream = await streams(hub.port, UNI_HTTP_STREAM, body)
    first = await stream.message()
    assert sorted(first["connect"]["subs"]) == ["alerts", "news"]
    assert hub.node.channels() == {"alerts": 1, "news": 1}
    await hub.publish("other", {"n": 0})
    await hub.publish("alerts", {"n": 1})
    pub = await stream.message()
    assert (pub["channel"], pub["pub"]["data"]) == ("alerts", {"n": 1})


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("a.b.c", 3500),  # invalid token
        (make_token(SECRET, "42", ttl=-60), 3005),  # expired: 109 as Centrifugo maps it
        ("", 3501),  # no credentials at all: the disconnect passes through
    ],
    ids=["invalid", "expired", "anonymous"],
)
@pytest.mark.parametrize("path", [UNI_HTTP_STREAM, UNI_SSE])
async def test_a_refused_uni_connect_is_a_disconnect_push_then_the_end(
    make_hub: HubFactory, streams: Opener, path: str, token: str, code: int
) -> None:
    """A unidirectional client cannot read error replies: a refused connect is a
    ``disconnect`` push with Centrifugo's code, and the response ends."""
    hub = await make_hub(**{"uni_http_stream.enabled": True, "uni_sse.enabled": True})
    body = json.dumps({"token": token} if token else {}).encode()
    stream = await streams(hub.port, path, body, kind="sse" if path == UNI_SSE else "lines")
    assert stream.status == 200
    messages = await stream.rest()
    assert len(messages) == 1 and list(messages[0]) == ["disconnect"], messages
    assert messages[0]["disconnect"]["code"] == code
    assert stream.wire.endswith(LAST_CHUNK)
    await eventually(lambda: hub.node.num_clients == 0 and not hub.server.clients)


async def test_curl_receives_a_publication_on_uni_http_stream(make_hub: HubFactory) -> None:
    """``curl -N`` (no output buffering) is a complete unidirectional client."""
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is required under CI=true", pytrace=False)
        pytest.skip("no curl on PATH")
    hub = await make_hub(dev=True, **QUIET)
    process = await asyncio.create_subprocess_exec(
        *(curl, "-N", "-sS", "--max-time", "20", "-H", "Content-Type: application/json"),
        *("-d", '{"subs":{"news":{}}}', f"http://127.0.0.1:{hub.port}{UNI_HTTP_STREAM}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
        assert list(first["connect"]["subs"]) == ["news"]
        await hub.publish("news", {"text": "hello curl"})
        pub = json.loads(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
        assert pub["channel"] == "news" and pub["pub"]["data"] == {"text": "hello curl"}
    finally:
        process.terminate()
        await process.wait()


# --- refusals, each leaving the other streams alone -------------------------------------


async def test_wrong_methods_get_405_with_allow(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """Each endpoint names the methods it takes; a stream open meanwhile is untouched."""
    hub = await make_hub(dev=True, **QUIET)
    watcher = await watching(hub, streams)
    cases = [
        (HTTP_STREAM, "GET", "POST, OPTIONS"),
        (HTTP_STREAM, "PUT", "POST, OPTIONS"),
        (UNI_HTTP_STREAM, "GET", "POST, OPTIONS"),
        (UNI_HTTP_STREAM, "DELETE", "POST, OPTIONS"),
        (SSE, "PUT", "GET, POST, OPTIONS"),
        (UNI_SSE, "PATCH", "GET, POST, OPTIONS"),
        (EMULATION, "GET", "POST, OPTIONS"),
        (EMULATION, "PUT", "POST, OPTIONS"),
    ]
    for path, method, allow in cases:
        async with http.request(method, f"http://127.0.0.1:{hub.port}{path}") as response:
            await response.read()
            assert (response.status, response.headers.get("Allow")) == (405, allow), (path, method)
    assert len(hub.server.clients) == 1
    await still_served(hub, watcher)


@pytest.mark.parametrize("path", [SSE, UNI_SSE, HTTP_STREAM, EMULATION])
async def test_a_head_request_gets_405_without_a_body(make_hub: HubFactory, path: str) -> None:
    """HEAD then GET /health on one connection: the 405 has no body, so the next
    bytes are the health response."""
    hub = await make_hub(dev=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(
            f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 405 ")
            following = await reader.readuntil(b"\r\n")
        assert following == b"HTTP/1.1 200 OK\r\n"
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        (HTTP_STREAM, "POST, OPTIONS"),
        (UNI_HTTP_STREAM, "POST, OPTIONS"),
        (SSE, "GET, POST, OPTIONS"),
        (UNI_SSE, "GET, POST, OPTIONS"),
        (EMULATION, "POST, OPTIONS"),
    ],
)
async def test_a_preflight_is_answered_for_allowed_origins_only(
    make_hub: HubFactory, http: aiohttp.ClientSession, path: str, methods: str
) -> None:
    """SDKs post with ``Content-Type: application/json``: a cross-origin page's
    browser asks first (OPTIONS), and needs the origin, methods and headers echoed."""
    hub = await make_hub(dev=True, allowed_origins=["https://app.example"])
    url = f"http://127.0.0.1:{hub.port}{path}"
    asked = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-requested-with",
    }
    async with http.options(url, headers=asked) as response:
        assert await response.read() == b""
        assert response.status == 204
        headers = response.headers
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert headers["Access-Control-Allow-Methods"] == methods
        assert headers["Access-Control-Max-Age"] == "300"
        assert headers["Access-Control-Allow-Headers"] == "content-type, x-requested-with"
    plain = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with http.options(url, headers=plain) as response:
        assert response.status == 204
        assert "Access-Control-Allow-Headers" not in response.headers
    async with http.options(url, headers={**asked, "Origin": "https://evil.example"}) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_disallowed_origin_gets_403_and_an_allowed_one_cors_headers(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """``allowed_origins`` guards every stream and /emulation as it guards WebSocket:
    a page of another origin opens nothing; an allowed one can read the responses."""
    hub = await make_hub(dev=True, allowed_origins=["https://app.example"], **QUIET)
    watcher = await watching(hub, streams)
    evil = {"Origin": "https://evil.example"}
    for path in STREAM_PATHS:
        for method in ("GET", "POST") if path in (SSE, UNI_SSE) else ("POST",):
            body = b"" if method == "GET" else commands({"id": 1, "connect": {}})
            target = path + cf_connect({"id": 1, "connect": {}}) if method == "GET" else path
            refused = await streams(hub.port, target, body, method=method, headers=evil)
            assert refused.status == 403, (path, method)
            assert "access-control-allow-origin" not in refused.headers
    assert await post_emulation(http, hub.port, "s", hub.node.uid, "{}", evil) == 403
    assert len(hub.server.clients) == 1

    good = {"Origin": "https://app.example"}
    stream = await streams(hub.port, HTTP_STREAM, commands({"id": 1, "connect": {}}), headers=good)
    assert_stream_head(stream, sse=False)
    assert stream.headers["access-control-allow-origin"] == "https://app.example"
    assert stream.headers["access-control-allow-credentials"] == "true"
    connect = (await stream.message())["connect"]
    async with http.post(
        f"http://127.0.0.1:{hub.port}{EMULATION}",
        data=json.dumps({"session": connect["session"], "node": connect["node"], "data": "{}"}),
        headers=good,
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    await still_served(hub, watcher)


async def test_a_body_over_the_limit_gets_413_and_one_at_the_limit_is_served(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """Each transport's ``max_request_body_size`` and ``emulation``'s: one byte over
    is 413, a body of exactly the limit is served."""
    limit = 300
    hub = await make_hub(
        dev=True,
        **QUIET,
        **{f"{name}.max_request_body_size": limit for name in ("http_stream", "sse")},
        **{f"{name}.max_request_body_size": limit for name in ("uni_http_stream", "uni_sse")},
        **{"emulation.max_request_body_size": limit},
    )
    watcher = await watching(hub, streams)

    def padded(template: str, size: int) -> bytes:
        """``template`` with its ``PAD`` grown until the body is ``size`` bytes."""
        body = template.replace("PAD", "x" * (size - len(template) + 3)).encode()
        assert len(body) == size
        return body

    bidi = '{"id":1,"connect":{"name":"PAD"}}'
    uni = '{"name":"PAD"}'
    for path, template in (
        (HTTP_STREAM, bidi),
        (SSE, bidi),
        (UNI_HTTP_STREAM, uni),
        (UNI_SSE, uni),
    ):
        kind = "sse" if path in (SSE, UNI_SSE) else "lines"
        over = await streams(hub.port, path, padded(template, limit + 1), kind=kind)
        assert over.status == 413, path
        at = await streams(hub.port, path, padded(template, limit), kind=kind)
        assert at.status == 200, (path, at.text)
        assert "connect" in await at.message(), path
    emulation = '{"session":"unknown","node":"' + hub.node.uid + '","data":"{} PAD"}'
    assert await post(http, hub.port, EMULATION, padded(emulation, limit + 1)) == 413
    assert await post(http, hub.port, EMULATION, padded(emulation, limit)) == 204
    await still_served(hub, watcher)


async def test_a_uni_connect_request_that_is_not_json_gets_400(
    make_hub: HubFactory, streams: Opener
) -> None:
    """A unidirectional request is a ConnectRequest, decoded before the stream opens:
    what is not one (or a ``cf_connect`` that is not) is refused with 400."""
    hub = await make_hub(dev=True, **QUIET)
    watcher = await watching(hub, streams)
    cases = [
        (UNI_HTTP_STREAM, "POST", b"not json"),
        (UNI_HTTP_STREAM, "POST", b"[1]"),
        (UNI_HTTP_STREAM, "POST", b'{"subs": 5}'),
        (UNI_HTTP_STREAM, "POST", b"\xff\xfe"),
        (UNI_SSE, "POST", b"{"),
        (UNI_SSE, "GET", b""),
    ]
    for path, method, body in cases:
        target = path + cf_connect("not json") if method == "GET" else path
        refused = await streams(hub.port, target, body, method=method)
        assert refused.status == 400, (path, method, body)
        assert refused.text.startswith(b"Bad connect request"), refused.text
    assert len(hub.server.clients) == 1
    await still_served(hub, watcher)


async def test_a_bidirectional_connect_that_is_not_json_gets_a_3501_push_or_400_without_one(
    make_hub: HubFactory, streams: Opener
) -> None:
    """The body is the client's first message: garbage there is a protocol error
    (a ``disconnect`` push 3501 in the stream's framing, as on WebSocket); no body at
    all is an HTTP error."""
    hub = await make_hub(dev=True, **QUIET)
    watcher = await watching(hub, streams)
    binary = {"Content-Type": "application/octet-stream"}
    cases: list[tuple[str, str, bytes, Kind, dict[str, str]]] = [
        (HTTP_STREAM, "POST", b"not json", "lines", {}),
        (HTTP_STREAM, "POST", b'{"id":1,"subscribe":{"channel":"a"}}', "lines", {}),
        (HTTP_STREAM, "POST", b"\xff\xff\xff", "proto", binary),
        (SSE, "POST", b"{", "sse", {}),
        (SSE + cf_connect("not json"), "GET", b"", "sse", {}),
    ]
    for target, method, body, kind, headers in cases:
        stream = await streams(hub.port, target, body, method=method, kind=kind, headers=headers)
        assert stream.status == 200, (target, body)
        messages = await stream.rest()
        assert len(messages) == 1, (target, body, messages)
        assert disconnect_of(messages[0]) == {"code": 3501, "reason": "bad request"}
        assert stream.wire.endswith(LAST_CHUNK)
    for target, method in ((HTTP_STREAM, "POST"), (SSE, "POST"), (SSE, "GET")):
        refused = await streams(hub.port, target, method=method)
        assert refused.status == 400, (target, method)
    await eventually(lambda: len(hub.server.clients) == 1)
    await still_served(hub, watcher)


async def test_emulation_refuses_bad_posts_and_never_reaches_another_client(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """400 for what is not a request, 404 for another node, 204 for a session that is
    not here: a guessed session (a client id, a unidirectional stream's session, one
    that ended) reaches nobody."""
    hub = await make_hub(dev=True, **QUIET)
    port, node = hub.port, hub.node.uid
    watcher = await watching(hub, streams)
    uni_session = watcher.received[0]["connect"]["session"]
    victim = await streams(port, HTTP_STREAM, commands({"id": 1, "connect": {}}))
    connect = (await victim.message())["connect"]
    session, client = connect["session"], connect["client"]
    gone = await streams(port, HTTP_STREAM, commands({"id": 1, "connect": {}}))
    gone_session = (await gone.message())["connect"]["session"]
    await gone.close()
    await eventually(lambda: hub.node.num_clients == 2, "the closed stream gone")

    def steal(n: int) -> str:
        return json.dumps({"id": n, "subscribe": {"channel": f"stolen{n}"}})

    binary = {"Content-Type": "application/octet-stream"}
    for body, headers in [
        (b"not json", {}),
        (b"[]", {}),
        (b"{}", {}),
        (json.dumps({"session": session, "node": node}).encode(), {}),
        (json.dumps({"session": session, "node": node, "data": 5}).encode(), {}),
        (b"\xff\xff\xff", binary),
        (pb.EmulationRequest(session=session, node=node).SerializeToString(), binary),
    ]:
        assert await post(http, port, EMULATION, body, headers) == 400, body
    assert await post_emulation(http, port, session, "another-node", steal(10)) == 404
    for guess in (str(uuid.uuid4()), client, uni_session, gone_session):
        assert await post_emulation(http, port, guess, node, steal(11)) == 204, guess
    proto_guess = pb.EmulationRequest(
        session=client,
        node=node,
        data=delimited(pb.Command(id=12, subscribe=pb.SubscribeRequest(channel="stolen12"))),
    )
    assert await post(http, port, EMULATION, proto_guess.SerializeToString(), binary) == 204

    # The next thing the victim gets is the answer to its own command.
    own = json.dumps({"id": 20, "subscribe": {"channel": "own"}})
    assert await post_emulation(http, port, session, node, own) == 204
    reply = await victim.message()
    assert reply["id"] == 20 and "subscribe" in reply, reply
    assert hub.node.channels() == {"watch": 1, "own": 1}
    assert watcher.pending() == []
    await still_served(hub, watcher)


async def test_the_endpoints_are_off_unless_enabled(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """Each transport has its switch; /emulation is served with http_stream or sse."""

    async def status(hub: Hub, method: str, path: str, body: bytes = b"{}") -> int:
        url = f"http://127.0.0.1:{hub.port}{path}"
        async with http.request(method, url, data=body if method == "POST" else None) as r:
            await r.read()
            return r.status

    off = await make_hub()
    for path in (*STREAM_PATHS, EMULATION):
        for method in ("GET", "POST", "OPTIONS"):
            assert await status(off, method, path) == 404, (path, method)

    uni_sse = await make_hub(**{"uni_sse.enabled": True})
    for path in (HTTP_STREAM, SSE, UNI_HTTP_STREAM, EMULATION):
        assert await status(uni_sse, "POST", path) == 404, path
    stream = await streams(uni_sse.port, UNI_SSE, method="GET", kind="sse")
    assert stream.status == 200  # refused (no anonymous clients), but served

    for name, served, unserved in (
        ("http_stream", HTTP_STREAM, SSE),
        ("sse", SSE, HTTP_STREAM),
    ):
        hub = await make_hub(**{f"{name}.enabled": True})
        assert await status(hub, "POST", unserved) == 404, name
        assert await status(hub, "POST", UNI_HTTP_STREAM) == 404, name
        assert await status(hub, "POST", EMULATION, b"garbage") == 400, name
        assert await status(hub, "OPTIONS", served) == 204, name


# --- slow readers and shutdown ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", [HTTP_STREAM, UNI_HTTP_STREAM])
async def test_a_stream_that_is_not_read_is_closed_within_the_bound_and_others_are_served(
    make_hub: HubFactory, streams: Opener, path: str
) -> None:
    """What the kernel and the transport hold for a stalled stream never passes
    ``client.queue_max_size``: it is closed with 3008 and, unable to take its last
    chunk, reset; a stream that reads gets every publication meanwhile."""
    bound = 256 * 1024
    hub = await make_hub(dev=True, **QUIET, **{"client.queue_max_size": bound})
    reader = await streams(hub.port, UNI_HTTP_STREAM, b'{"subs":{"c":{}}}')
    reader_id = (await reader.message())["connect"]["client"]
    if path == HTTP_STREAM:
        body = commands({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "c"}})
    else:
        body = b'{"subs":{"c":{}}}'
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that stopped
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", hub.port))
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        await loop.sock_sendall(sock, head.encode() + body)
        await eventually(lambda: hub.node.num_subscriptions == 2)
        (stalled,) = [c for c in hub.server.clients if c.client.id != reader_id]
        assert isinstance(stalled, StreamConnection)
        peer = sock.getsockname()[1]
        peak = 0
        for n in range(200):  # 4 MB: far more than the bound and the kernel's buffers
            await hub.publish("c", {"n": n, "p": "x" * 20000})
            pub = await reader.until(lambda m: m != {})
            assert pub["pub"]["data"]["n"] == n
            buffered = stalled.transport.get_write_buffer_size()
            peak = max(peak, sum(send_queues(hub.port, peer)) + buffered)
            if stalled.closing is not None:
                break
        closing = stalled.closing
        assert closing is not None, "the stalled stream was not found slow"
        assert closing.code == 3008
        await eventually(lambda: hub.node.num_clients == 1, "the slow client gone")
        assert bound / 2 < peak <= bound
        # Its last chunk cannot go out: the connection is reset.
        await eventually(lambda: not send_queues(hub.port, peer), timeout=5)
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(sock, 65536):
                pass
    finally:
        sock.close()
    await hub.publish("c", {"n": "after"})
    pub = await reader.until(lambda m: m != {})
    assert pub["pub"]["data"]["n"] == "after"


def _numbers(messages: list[dict[str, Any]], kind: Kind) -> list[int]:
    """The ``n`` of each publication among ``messages``."""
    numbers = []
    for message in messages:
        pub = publication(message)
        if pub is not None:
            data = pub["data"]
            if kind == "proto":  # bytes, base64 in the dict
                data = json.loads(base64.b64decode(data))
            numbers.append(data["n"])
    return numbers


async def _open_one_of_each(port: int, open_stream: Opener) -> dict[str, tuple[Stream, Kind]]:
    """One stream of every transport and framing, each subscribed to ``c``."""
    bidi = commands({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "c"}})
    proto = delimited(
        pb.Command(id=1, connect=pb.ConnectRequest()),
        pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="c")),
    )
    binary = {"Content-Type": "application/octet-stream"}
    uni: dict[str, Any] = {"subs": {"c": {}}}
    return {
        "http_stream": (await open_stream(port, HTTP_STREAM, bidi), "lines"),
        "http_stream protobuf": (
            await open_stream(port, HTTP_STREAM, proto, kind="proto", headers=binary),
            "proto",
        ),
        "sse": (
            await open_stream(port, SSE + cf_connect(bidi.decode()), method="GET", kind="sse"),
            "sse",
        ),
        "uni_http_stream": (
            await open_stream(port, UNI_HTTP_STREAM, json.dumps(uni).encode()),
            "lines",
        ),
        "uni_sse": (
            await open_stream(port, UNI_SSE + cf_connect(uni), method="GET", kind="sse"),
            "sse",
        ),
    }


async def test_stop_ends_every_stream_with_3001_after_its_queued_messages(
    make_hub: HubFactory, streams: Opener
) -> None:
    """``hub.stop()`` flushes what each stream has queued, then writes a ``disconnect``
    push 3001 in its framing and ends the response; the port is closed."""
    hub = await make_hub(dev=True, **QUIET)
    opened = await _open_one_of_each(hub.port, streams)
    await eventually(lambda: hub.node.channels().get("c") == len(opened), "every subscription")
    for n in range(5):
        await hub.publish("c", {"n": n})
    await hub.stop()
    for name, (stream, kind) in opened.items():
        messages = await stream.rest()
        assert _numbers(messages, kind) == list(range(5)), name
        assert disconnect_of(messages[-1]) == {"code": 3001, "reason": "shutdown"}, name
        assert stream.wire.endswith(LAST_CHUNK), name
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", hub.port)


@pytest.mark.slow
async def test_sigterm_of_tidings_serve_ends_every_stream_with_3001(
    streams: Opener, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The same through the CLI: SIGTERM stops ``tidings serve --dev`` cleanly (exit
    0), every stream getting its 3001 push and last chunk first."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--dev", "--port", str(port)]
            + ["--api-port", str(free_port())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=clean_environment(),
            start_new_session=True,
        )
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
        opened = await _open_one_of_each(port, streams)
        for stream, _ in opened.values():
            await stream.until(lambda m: "connect" in m)
        process.send_signal(signal.SIGTERM)
        for name, (stream, _) in opened.items():
            messages = await stream.rest()
            assert disconnect_of(messages[-1]) == {"code": 3001, "reason": "shutdown"}, name
            assert stream.wire.endswith(LAST_CHUNK), name
        code = await asyncio.to_thread(process.wait, 10)
        assert code == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- found in review ---------------------------------------------------------------


async def test_posts_racing_for_one_session_are_handled_in_order(
    make_hub: HubFactory, streams: Opener, http: aiohttp.ClientSession
) -> None:
    """An SDK subscribing to several channels at once posts them without waiting: each
    post waits for its turn (the session takes one command at a time), none fails."""
    hub = await make_hub(dev=True, **QUIET)
    stream = await streams(hub.port, HTTP_STREAM, commands({"id": 1, "connect": {}}))
    connect = (await stream.message())["connect"]
    posts = [
        post_emulation(
            http,
            hub.port,
            connect["session"],
            connect["node"],
            json.dumps({"id": n, "subscribe": {"channel": f"c{n}"}}),
        )
        for n in range(2, 12)
    ]
    assert await asyncio.gather(*posts) == [204] * 10
    replies = [await stream.until(lambda m: "id" in m) for _ in range(10)]
    assert sorted(r["id"] for r in replies) == list(range(2, 12))
    assert all("subscribe" in r for r in replies)


@pytest.mark.parametrize("path", [HTTP_STREAM, UNI_HTTP_STREAM])
async def test_a_stream_closed_while_connecting_leaves_no_client_behind(
    make_hub: HubFactory, streams: Opener, path: str
) -> None:
    """The connect hook is still thinking when the client goes away: once it answers,
    the client is not added to the node (nothing would ever remove it)."""
    hub = await make_hub(dev=True, **QUIET)
    answered = asyncio.Event()

    @hub.on_connect
    async def slow(event: Any) -> ConnectReply:
        await asyncio.sleep(0.3)
        answered.set()
        return ConnectReply(user="alice")

    body = commands({"id": 1, "connect": {}}) if path == HTTP_STREAM else b"{}"
    stream = await streams(hub.port, path, body)
    await asyncio.sleep(0.05)
    await stream.close()
    await asyncio.wait_for(answered.wait(), TIMEOUT)
    await eventually(lambda: not hub.server.clients)
    await asyncio.sleep(0.05)
    assert hub.node.num_clients == 0 and hub.node.user_clients("alice") == []


async def test_uni_subs_are_held_to_the_channel_limits(
    make_hub: HubFactory, streams: Opener
) -> None:
    hub = await make_hub(dev=True, **QUIET, **{"client.channel_limit": 3})
    subs = {"x" * 300: {}, "bad channel": {}, **{f"c{n}": {} for n in range(10)}}
    stream = await streams(hub.port, UNI_HTTP_STREAM, json.dumps({"subs": subs}).encode())
    first = await stream.message()
    assert list(first["connect"]["subs"]) == ["c0", "c1", "c2"]


async def test_a_uni_client_whose_channel_lost_publications_reconnects_with_3010(
    make_hub: HubFactory, streams: Opener
) -> None:
    """It cannot subscribe again itself (2500 would leave it without the channel): it is
    disconnected with 3010, to reconnect and recover through its subs."""
    hub = await make_hub(dev=True, **QUIET)
    stream = await streams(hub.port, UNI_HTTP_STREAM, b'{"subs":{"news":{}}}')
    await stream.message()
    hub.node.handle_lost(["news"])
    message = await stream.until(lambda m: "disconnect" in m)
    assert message["disconnect"]["code"] == 3010


@pytest.mark.parametrize("path", [UNI_HTTP_STREAM, UNI_SSE])
async def test_a_refused_uni_connect_can_be_an_http_status(
    make_hub: HubFactory, streams: Opener, path: str
) -> None:
    """With ``connect_code_to_http_response`` the response waits for the connect: a
    refusal is a plain status (401 for a bad token), an accepted one the stream."""
    name = path.rsplit("/", 1)[1]
    hub = await make_hub(
        **{f"{name}.enabled": True, f"{name}.connect_code_to_http_response": True},
        **{"client.allow_anonymous_connect_without_token": True},
        allowed_origins=["http://example.com"],
    )
    kind = "sse" if path == UNI_SSE else "lines"
    origin = {"Origin": "http://example.com"}  # a page of another origin reads the status
    refused = await streams(hub.port, path, b'{"token": "not.a.token"}', kind=kind, headers=origin)
    assert refused.status == 401 and refused.text == b"invalid token\n"
    assert refused.headers["access-control-allow-origin"] == "http://example.com"
    accepted = await streams(hub.port, path, b"{}", kind=kind)
    assert accepted.status == 200
    assert "connect" in await accepted.message()
    await eventually(lambda: hub.node.num_clients == 1)
