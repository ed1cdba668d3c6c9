"""WebSocket framing on the wire, checked byte by byte with a client of our own.

A plain asyncio socket speaks the handshake and hand-built RFC 6455 frames (masked
unless a test says otherwise), so that every test states what goes over TCP and
nothing about the server's internals: the handshake, fragmentation and control
frames, the newline-delimited JSON and varint-delimited Protobuf batches, and the
close codes for each kind of bad input (RFC 6455 §7.4.1 and the Centrifugo codes of
docs ``client-protocol.md`` and ``protocol-extensions.md`` §1).

Where the server *fails* the connection (1002, 1007, 1009) it closes TCP right after
its close frame (RFC 6455 §7.1.7); where it *closes* it normally (3501, 3502, 3012)
it waits for the client's close frame, then closes TCP (§7.1.1). Either way nothing
follows its close frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tidings.protocol import client_pb2 as pb

from ..conftest import HubFactory

TIMEOUT = 5.0
"""Bound of every wait for the server."""

PATH = "/connection/websocket"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing."""

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

QUIET = {"join_leave": False, "force_push_join_leave": False}
"""Hub options that keep join/leave pushes out of the replies the tests count."""


# --- frames ------------------------------------------------------------------------------


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame. ``rsv`` is the 3 reserved bits (RSV1 = 4); ``length`` overrides
    the declared payload length (to announce more than is sent)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    declared = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        head = bytes((first, mask_bit | declared))
    elif declared < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + mask(payload, key)


def mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3: XOR with the 4-byte key, repeated."""
    if not payload:
        return b""
    stream = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")
    return masked.to_bytes(len(payload), "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass(frozen=True)
class Frame:
    """A frame the server sent."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0

    @property
    def close(self) -> tuple[int, str]:
        """Code and reason of a close frame."""
        assert self.opcode == OP_CLOSE, self
        assert len(self.payload) >= 2, f"close frame without a status code: {self.payload!r}"
        (code,) = struct.unpack("!H", self.payload[:2])
        return code, self.payload[2:].decode()


# --- HTTP and the raw connection ---------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    """Lower-cased names; repeated fields joined with ", "."""
    body: bytes = b""


def handshake_request(
    key: str,
    *,
    method: str = "GET",
    path: str = PATH,
    protocols: Sequence[str] = (),
    omit: Sequence[str] = (),
    extra: dict[str, str] | None = None,
) -> bytes:
    """An opening handshake (RFC 6455 §4.1) without the headers named in ``omit``."""
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    if protocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    headers.update(extra or {})
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name not in omit]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_of(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class RawSocket:
    """A TCP connection to the hub, read and written at the byte level."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> HttpResponse:
        """Read one HTTP response head, and its body when it has a Content-Length."""
        async with asyncio.timeout(TIMEOUT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            protocol, status, *_ = status_line.split(" ", 2)
            assert protocol == "HTTP/1.1", status_line
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            body = b""
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
        return HttpResponse(int(status), headers, body)

    async def send(self, opcode: int, payload: bytes = b"", **options: Any) -> None:
        await self.write(client_frame(opcode, payload, **options))

    async def frame(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame from the server, whatever its kind. Server frames are never
        masked (RFC 6455 §5.1)."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not second & 0x80, "a server frame is masked"
            payload = await self.reader.readexactly(length)
        return Frame(first & 0x0F, payload, fin=bool(first & 0x80), rsv=(first >> 4) & 0x7)

    async def data_frame(self) -> Frame:
        """The next complete data frame (the server never fragments its messages here)."""
        frame = await self.frame()
        assert frame.opcode in (OP_TEXT, OP_BINARY), f"expected a data frame, got {frame}"
        assert frame.fin and frame.rsv == 0, frame
        return frame

    async def json(self) -> list[dict[str, Any]]:
        """The messages of the next text frame: JSON objects joined by single newlines."""
        frame = await self.data_frame()
        assert frame.opcode == OP_TEXT, f"the JSON protocol uses text frames: {frame}"
        lines = frame.payload.split(b"\n")
        assert all(lines), f"an empty line or a trailing newline: {frame.payload!r}"
        messages = [json.loads(line) for line in lines]
        assert all(isinstance(m, dict) for m in messages), messages
        return messages

    async def json_until_id(self, last: int) -> list[dict[str, Any]]:
        """Messages until the reply with id ``last``, pushes included."""
        messages: list[dict[str, Any]] = []
        while not any(m.get("id") == last for m in messages):
            messages += await self.json()
        return messages

    async def replies(self) -> list[pb.Reply]:
        """The Protobuf replies of the next binary frame."""
        frame = await self.data_frame()
        assert frame.opcode == OP_BINARY, f"the Protobuf protocol uses binary frames: {frame}"
        return [parse_reply(message) for message in split_delimited(frame.payload)]

    async def replies_until_id(self, last: int) -> list[pb.Reply]:
        replies: list[pb.Reply] = []
        while not any(r.id == last for r in replies):
            replies += await self.replies()
        return replies

    async def close_frame(self) -> tuple[int, str]:
        """The server's close frame: code and reason. Nothing else may come first."""
        frame = await self.frame()
        assert frame.fin and frame.rsv == 0, frame
        return frame.close

    async def eof(self) -> None:
        """The server closes TCP, and sends nothing more before it does."""
        async with asyncio.timeout(TIMEOUT):
            rest = await self.reader.read()
        assert rest == b"", f"bytes after the close frame: {rest!r}"

    async def closed_normally(self) -> tuple[int, str]:
        """The server starts a closing handshake: its close frame, ours back, then EOF."""
        code, reason = await self.close_frame()
        await self.send(OP_CLOSE, close_payload(code))
        await self.eof()
        return code, reason

    async def failed(self) -> int:
        """The server fails the connection: its close frame, then EOF without waiting
        for ours (RFC 6455 §7.1.7). Returns the close code."""
        code, _ = await self.close_frame()
        await self.eof()
        return code


@dataclass
class Dialer:
    """Opens raw connections to hubs; the fixture closes them all."""

    sockets: list[RawSocket] = field(default_factory=list)

    async def tcp(self, port: int) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = RawSocket(reader, writer)
        self.sockets.append(sock)
        return sock

    async def http(self, port: int, request: bytes) -> tuple[RawSocket, HttpResponse]:
        sock = await self.tcp(port)
        await sock.write(request)
        return sock, await sock.response()

    async def websocket(
        self, port: int, protocols: Sequence[str] = (), path: str = PATH
    ) -> tuple[RawSocket, HttpResponse]:
        key = new_key()
        request = handshake_request(key, path=path, protocols=protocols)
        sock, response = await self.http(port, request)
        assert response.status == 101, response
        assert response.headers["sec-websocket-accept"] == accept_of(key)
        return sock, response

    async def json_client(self, port: int) -> RawSocket:
        """A JSON connection that sent connect and got its reply."""
        sock, _ = await self.websocket(port)
        await sock.send(OP_TEXT, b'{"id":1,"connect":{}}')
        (reply,) = await sock.json()
        assert reply["id"] == 1 and "connect" in reply, reply
        return sock

    async def protobuf_client(self, port: int) -> RawSocket:
        """A Protobuf connection that sent connect and got its reply."""
        sock, _ = await self.websocket(port, ["centrifuge-protobuf"])
        await sock.send(OP_BINARY, delimited(command(1, CONNECT)))
        (reply,) = await sock.replies()
        assert reply.id == 1 and reply.HasField("connect"), reply
        return sock


@pytest.fixture
async def dial(make_hub: HubFactory) -> AsyncIterator[Dialer]:
    """Raw connections, closed before the hubs stop."""
    dialer = Dialer()
    yield dialer
    for sock in dialer.sockets:
        sock.writer.close()
        try:
            await sock.writer.wait_closed()
        except OSError:  # reset by the server: closed all the same
            pass


# --- Protobuf by hand ----------------------------------------------------------------------

# Field numbers of Command (protocol-extensions.md §1.3) and of the requests used here.
CONNECT, SUBSCRIBE, PUBLISH = 4, 5, 7
LEN, VARINT = 2, 0


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value = shift = 0
    while True:
        assert position < len(data), f"truncated varint in {data!r}"
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, value: bytes) -> bytes:
    return tag(number, LEN) + varint(len(value)) + value


def command(id: int, method: int, request: bytes = b"") -> bytes:
    """``Command{id, <method>: request}``, encoded."""
    return tag(1, VARINT) + varint(id) + length_delimited(method, request)


def delimited(*messages: bytes) -> bytes:
    """Messages as one Protobuf frame: each prefixed with its varint length."""
    return b"".join(varint(len(message)) + message for message in messages)


def prefixed_messages(payload: bytes) -> list[tuple[bytes, bytes]]:
    """A server frame's messages, each with its length prefix; the lengths must account
    for every byte."""
    messages: list[tuple[bytes, bytes]] = []
    position = 0
    while position < len(payload):
        start = position
        length, position = read_varint(payload, position)
        assert position + length <= len(payload), f"length {length} past the end: {payload!r}"
        messages.append((payload[start:position], payload[position : position + length]))
        position += length
    assert messages, "an empty binary frame"
    return messages


def split_delimited(payload: bytes) -> list[bytes]:
    return [message for _, message in prefixed_messages(payload)]


def parse_reply(message: bytes) -> pb.Reply:
    reply = pb.Reply()
    reply.ParseFromString(message)
    return reply


def test_the_hand_encoder_gives_the_worked_bytes_of_the_reference() -> None:
    # protocol-extensions.md §1.2: Command{id:1, connect:{token:"T", name:"py"}}, framed.
    connect = length_delimited(1, b"T") + length_delimited(4, b"py")
    assert delimited(command(1, CONNECT, connect)) == bytes.fromhex(
        "0b 08 01 22 07 0a 01 54 22 02 70 79"
    )
    assert varint(300) == b"\xac\x02" and read_varint(b"\xac\x02", 0) == (300, 2)


# --- handshake -----------------------------------------------------------------------------


async def test_handshake_is_101_with_the_accept_key_and_no_subprotocol_means_json(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    key = new_key()
    sock, response = await dial.http(hub.port, handshake_request(key))
    assert response.status == 101
    assert response.headers["upgrade"].lower() == "websocket"
    assert "upgrade" in response.headers["connection"].lower()
    assert response.headers["sec-websocket-accept"] == accept_of(key)
    assert "sec-websocket-protocol" not in response.headers
    assert "sec-websocket-extensions" not in response.headers  # none offered
    await sock.send(OP_TEXT, b'{"id":1,"connect":{}}')
    (reply,) = await sock.json()
    assert reply["id"] == 1 and reply["connect"]["client"]


async def test_the_protobuf_subprotocol_is_echoed_and_selects_binary_protobuf(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, response = await dial.websocket(hub.port, ["centrifuge-protobuf"])
    assert response.headers["sec-websocket-protocol"] == "centrifuge-protobuf"
    await sock.send(OP_BINARY, delimited(command(1, CONNECT)))
    (reply,) = await sock.replies()
    assert reply.id == 1 and reply.connect.client


async def test_the_json_subprotocol_is_echoed_and_selects_json(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, response = await dial.websocket(hub.port, ["centrifuge-json"])
    assert response.headers["sec-websocket-protocol"] == "centrifuge-json"
    await sock.send(OP_TEXT, b'{"id":1,"connect":{}}')
    (reply,) = await sock.json()
    assert reply["id"] == 1 and reply["connect"]["client"]


async def test_both_subprotocols_offered_echo_exactly_one_of_them_and_frames_follow_it(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, response = await dial.websocket(hub.port, ["centrifuge-json", "centrifuge-protobuf"])
    chosen = response.headers["sec-websocket-protocol"]
    assert chosen in ("centrifuge-json", "centrifuge-protobuf")
    if chosen == "centrifuge-json":
        await sock.send(OP_TEXT, b'{"id":1,"connect":{}}')
        (message,) = await sock.json()
        assert message["id"] == 1
    else:
        await sock.send(OP_BINARY, delimited(command(1, CONNECT)))
        (reply,) = await sock.replies()
        assert reply.id == 1


async def test_the_legacy_format_query_selects_protobuf_without_a_protocol_header(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, response = await dial.websocket(hub.port, path=f"{PATH}?format=protobuf")
    assert "sec-websocket-protocol" not in response.headers
    await sock.send(OP_BINARY, delimited(command(1, CONNECT)))
    (reply,) = await sock.replies()
    assert reply.id == 1 and reply.HasField("connect")


BAD_HANDSHAKES: dict[str, bytes] = {
    "post": handshake_request(new_key(), method="POST"),
    "no-upgrade": handshake_request(new_key(), omit=["Upgrade"]),
    "upgrade-not-websocket": handshake_request(new_key(), extra={"Upgrade": "h2c"}),
    "no-connection-upgrade": handshake_request(new_key(), omit=["Connection"]),
    "no-upgrade-no-connection": handshake_request(new_key(), omit=["Upgrade", "Connection"]),
    "no-key": handshake_request(new_key(), omit=["Sec-WebSocket-Key"]),
    "key-not-16-bytes": handshake_request(base64.b64encode(b"short").decode()),
    "no-version": handshake_request(new_key(), omit=["Sec-WebSocket-Version"]),
}


@pytest.mark.parametrize("request_bytes", BAD_HANDSHAKES.values(), ids=BAD_HANDSHAKES.keys())
async def test_a_bad_handshake_gets_a_4xx_and_the_port_still_serves_health_and_websockets(
    make_hub: HubFactory, dial: Dialer, request_bytes: bytes
) -> None:
    hub = await make_hub(dev=True)
    _, response = await dial.http(hub.port, request_bytes)
    assert 400 <= response.status < 500, response
    assert "sec-websocket-accept" not in response.headers
    _, health = await dial.http(hub.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
    await dial.json_client(hub.port)


async def test_an_unsupported_version_gets_a_4xx_naming_version_13(
    make_hub: HubFactory, dial: Dialer
) -> None:
    # RFC 6455 §4.2.2 (4): an error code *and* a Sec-WebSocket-Version header listing
    # the versions the server understands.
    hub = await make_hub(dev=True)
    request = handshake_request(new_key(), extra={"Sec-WebSocket-Version": "8"})
    _, response = await dial.http(hub.port, request)
    assert 400 <= response.status < 500, response
    versions = response.headers.get("sec-websocket-version", "")
    assert "13" in [v.strip() for v in versions.split(",")], response


# --- fragmentation, control frames, batches ------------------------------------------------


async def test_a_connect_in_three_fragments_with_a_ping_between_them_gets_pong_then_reply(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, _ = await dial.websocket(hub.port)
    message = b'{"id":1,"connect":{"name":"fragmented"}}'
    await sock.write(
        client_frame(OP_TEXT, message[:7], fin=False)
        + client_frame(OP_CONTINUATION, message[7:20], fin=False)
        + client_frame(OP_PING, b"between fragments")
    )
    # The ping is answered before the message is complete (RFC 6455 §5.4, §5.5.2).
    assert await sock.frame() == Frame(OP_PONG, b"between fragments")
    await sock.send(OP_CONTINUATION, message[20:])
    (reply,) = await sock.json()
    assert reply["id"] == 1 and reply["connect"]["client"]


async def test_two_json_commands_in_one_frame_get_two_replies_as_newline_joined_lines(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **QUIET)
    sock, _ = await dial.websocket(hub.port)
    await sock.send(OP_TEXT, b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"a"}}')
    # However the server groups them into frames, each frame is whole JSON lines (checked
    # by ``json()``): one message alone, several joined by single "\n", none trailing.
    replies = await sock.json_until_id(2)
    assert [r["id"] for r in replies] == [1, 2]
    assert "connect" in replies[0] and "subscribe" in replies[1]


async def test_a_single_trailing_newline_after_the_json_commands_is_accepted(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **QUIET)
    sock, _ = await dial.websocket(hub.port)
    await sock.send(OP_TEXT, b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"a"}}\n')
    replies = await sock.json_until_id(2)
    assert [r["id"] for r in replies] == [1, 2]
    assert "error" not in replies[1]


async def test_a_burst_of_publications_comes_as_newline_joined_text_frames(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **QUIET)
    sock = await dial.json_client(hub.port)
    await sock.send(OP_TEXT, b'{"id":2,"subscribe":{"channel":"burst"}}')
    await sock.json_until_id(2)
    for n in range(30):
        await hub.publish("burst", {"n": n})
    pushes: list[dict[str, Any]] = []
    while len(pushes) < 30:
        pushes += await sock.json()  # asserts the "\n" joining, whatever the grouping
    assert [p["push"]["pub"]["data"]["n"] for p in pushes] == list(range(30))


# --- RFC 6455 errors -----------------------------------------------------------------------


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock = await dial.json_client(hub.port)
    await sock.send(OP_TEXT, b'{"id":2,"subscribe":{"channel":"\xff\xfe"}}')
    assert await sock.failed() == 1007


async def test_invalid_utf8_split_across_fragments_closes_with_1007(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock = await dial.json_client(hub.port)
    # "é" is C3 A9: a valid sequence split over two fragments is fine; C3 then 28 is not.
    await sock.write(
        client_frame(OP_TEXT, b'{"id":2,"subscribe":{"channel":"\xc3', fin=False)
        + client_frame(OP_CONTINUATION, b'("}}')
    )
    assert await sock.failed() == 1007


PROTOCOL_ERRORS: dict[str, bytes] = {
    "unmasked-text-frame": client_frame(
        OP_TEXT, b'{"id":2,"subscribe":{"channel":"a"}}', masked=False
    ),
    "unmasked-ping": client_frame(OP_PING, b"x", masked=False),
    "rsv1-set": client_frame(OP_TEXT, b"{}", rsv=0b100),
    "rsv2-set": client_frame(OP_TEXT, b"{}", rsv=0b010),
    "rsv3-set": client_frame(OP_TEXT, b"{}", rsv=0b001),
    "opcode-3-reserved-data": client_frame(0x3, b"{}"),
    "opcode-0xb-reserved-control": client_frame(0xB, b""),
    "continuation-without-start": client_frame(OP_CONTINUATION, b"{}"),
    "new-message-inside-fragmented-one": client_frame(OP_TEXT, b'{"id":2,', fin=False)
    + client_frame(OP_TEXT, b"{}"),
    "fragmented-ping": client_frame(OP_PING, b"x", fin=False),
    "ping-over-125-bytes": client_frame(OP_PING, b"x" * 126),
    "close-with-1-byte-payload": client_frame(OP_CLOSE, b"\x03"),
    "close-with-code-1005": client_frame(OP_CLOSE, close_payload(1005)),
    "close-with-code-999": client_frame(OP_CLOSE, close_payload(999)),
}


@pytest.mark.parametrize("frames", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_a_protocol_violation_closes_with_1002(
    make_hub: HubFactory, dial: Dialer, frames: bytes
) -> None:
    hub = await make_hub(dev=True)
    sock = await dial.json_client(hub.port)
    await sock.write(frames)
    assert await sock.failed() == 1002


async def test_a_frame_announcing_more_than_max_message_size_closes_with_1009_at_once(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **{"client.max_message_size": 1024})
    sock = await dial.json_client(hub.port)
    # Only the header and a few bytes: the server must not wait for the 1 MiB announced.
    await sock.write(client_frame(OP_TEXT, b'{"id":2,', length=1 << 20))
    assert await sock.failed() == 1009


async def test_a_frame_just_over_max_message_size_closes_with_1009_and_one_at_it_passes(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **QUIET, **{"client.max_message_size": 1024})
    sock = await dial.json_client(hub.port)
    head = b'{"id":2,"subscribe":{"channel":"a"}}'
    at_limit = head + b" " * (1024 - len(head))  # trailing whitespace: still one command
    await sock.send(OP_TEXT, at_limit)
    (reply,) = await sock.json()
    assert reply["id"] == 2 and "error" not in reply
    await sock.send(OP_TEXT, at_limit + b" ")
    assert await sock.failed() == 1009


async def test_fragments_adding_up_to_more_than_max_message_size_close_with_1009(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **{"client.max_message_size": 1024})
    sock = await dial.json_client(hub.port)
    await sock.write(
        client_frame(OP_TEXT, b" " * 600, fin=False)
        + client_frame(OP_CONTINUATION, b" " * 600, fin=False)
    )
    assert await sock.failed() == 1009


# --- closing handshakes --------------------------------------------------------------------


async def test_a_client_close_1000_with_a_reason_is_answered_with_1000_then_tcp_closes(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock = await dial.json_client(hub.port)
    await sock.send(OP_CLOSE, close_payload(1000, "done here"))
    code, _ = await sock.close_frame()
    assert code == 1000  # RFC 6455 §5.5.1: the status code received, echoed
    await sock.eof()


async def test_a_client_close_without_a_status_is_answered_then_tcp_closes(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock = await dial.json_client(hub.port)
    await sock.send(OP_CLOSE)
    frame = await sock.frame()
    assert frame.opcode == OP_CLOSE, frame
    if frame.payload:  # an empty close answers one, or 1000; 1005 never goes on the wire
        assert frame.close[0] == 1000, frame
    await sock.eof()


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"",
        b"\n",
        b"[1,2]",
        b'{"id":1,"connect":{}}\n\n{"id":2,"subscribe":{"channel":"a"}}',
    ],
    ids=["garbage", "empty-frame", "only-a-newline", "json-array", "empty-line-between"],
)
async def test_undecodable_json_closes_with_3501_bad_request(
    make_hub: HubFactory, dial: Dialer, frame: bytes
) -> None:
    hub = await make_hub(dev=True)
    sock, _ = await dial.websocket(hub.port)
    await sock.send(OP_TEXT, frame)
    # The valid connect before an empty line may be answered, nothing after that line
    # (client-protocol.md: an empty line is a decode error, 3501).
    while True:
        next_frame = await sock.frame()
        if next_frame.opcode == OP_CLOSE:
            break
        assert next_frame.opcode == OP_TEXT and frame.startswith(b'{"id":1'), next_frame
        replies = [json.loads(line) for line in next_frame.payload.split(b"\n")]
        assert all(r.get("id") == 1 for r in replies), f"answered past the empty line: {replies}"
    assert next_frame.close == (3501, "bad request")
    await sock.send(OP_CLOSE, close_payload(3501))
    await sock.eof()


async def test_no_connect_within_the_stale_delay_closes_with_3502_stale(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **{"client.stale_close_delay": 0.2})
    sock, _ = await dial.websocket(hub.port)
    assert await sock.closed_normally() == (3502, "stale")


# --- Protobuf on the wire ------------------------------------------------------------------


async def test_a_protobuf_connect_gets_one_length_prefixed_reply_in_a_binary_frame(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, _ = await dial.websocket(hub.port, ["centrifuge-protobuf"])
    framed = delimited(command(1, CONNECT))
    assert framed == b"\x04\x08\x01\x22\x00"  # Command{id:1, connect:{}}
    await sock.send(OP_BINARY, framed)
    frame = await sock.data_frame()
    assert frame.opcode == OP_BINARY
    length, start = read_varint(frame.payload, 0)
    assert start + length == len(frame.payload), "a single message, even alone, is prefixed"
    reply = parse_reply(frame.payload[start:])
    assert reply.id == 1 and reply.HasField("connect") and not reply.HasField("error")
    assert reply.connect.client and reply.connect.ping == 25 and reply.connect.pong


async def test_two_protobuf_commands_in_one_frame_get_two_length_prefixed_replies(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **QUIET)
    sock, _ = await dial.websocket(hub.port, ["centrifuge-protobuf"])
    subscribe = command(2, SUBSCRIBE, length_delimited(1, b"news"))
    await sock.send(OP_BINARY, delimited(command(1, CONNECT), subscribe))
    replies = await sock.replies_until_id(2)  # split_delimited checks every byte
    assert [r.id for r in replies] == [1, 2]
    assert replies[0].HasField("connect") and replies[1].HasField("subscribe")


async def test_protobuf_messages_of_128_bytes_and_more_take_a_multi_byte_length(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **QUIET)
    sock, _ = await dial.websocket(hub.port, ["centrifuge-protobuf"])
    connect = command(1, CONNECT, length_delimited(4, b"n" * 150))  # a long ConnectRequest.name
    subscribe = command(2, SUBSCRIBE, length_delimited(1, b"big"))
    framed = delimited(connect, subscribe)
    assert framed[0] & 0x80, "the connect command's length takes two bytes"
    await sock.send(OP_BINARY, framed)
    replies = await sock.replies_until_id(2)
    assert [r.id for r in replies] == [1, 2] and not any(r.HasField("error") for r in replies)
    # A publication of 300 bytes, both ways: the command and the push are over 127 bytes.
    data = json.dumps({"pad": "x" * 300}).encode()
    publish = command(3, PUBLISH, length_delimited(1, b"big") + length_delimited(2, data))
    await sock.send(OP_BINARY, delimited(publish))
    got: list[tuple[bytes, pb.Reply]] = []
    while not (any(r.id == 3 for _, r in got) and any(r.HasField("push") for _, r in got)):
        frame = await sock.data_frame()
        got += [(prefix, parse_reply(m)) for prefix, m in prefixed_messages(frame.payload)]
    ((prefix, push),) = [(p, r) for p, r in got if r.HasField("push")]
    assert push.push.channel == "big" and push.push.pub.data == data
    length, end = read_varint(prefix, 0)
    assert length >= 128 and end == len(prefix) >= 2, prefix


@pytest.mark.slow
async def test_protobuf_server_pings_are_the_byte_0_and_pongs_keep_the_connection(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **{"client.ping_interval": 0.3, "client.pong_timeout": 0.15})
    sock = await dial.protobuf_client(hub.port)
    for _ in range(3):  # past several pong timeouts
        ping = await sock.frame(timeout=2.0)
        assert (ping.opcode, ping.payload) == (OP_BINARY, b"\x00"), ping
        await sock.send(OP_BINARY, b"\x00")  # the empty Command: a pong
    await asyncio.sleep(0.2)  # longer than pong_timeout
    await sock.send(OP_BINARY, delimited(command(2, SUBSCRIBE, length_delimited(1, b"alive"))))
    while True:
        frame = await sock.data_frame()
        if frame.payload == b"\x00":
            await sock.send(OP_BINARY, b"\x00")
            continue
        replies = [parse_reply(m) for m in split_delimited(frame.payload)]
        if any(r.id == 2 for r in replies):
            break
    (reply,) = [r for r in replies if r.id == 2]
    assert reply.HasField("subscribe")


@pytest.mark.slow
async def test_a_protobuf_client_that_does_not_pong_is_closed_with_3012(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True, **{"client.ping_interval": 0.3, "client.pong_timeout": 0.15})
    sock = await dial.protobuf_client(hub.port)
    ping = await sock.frame(timeout=2.0)
    assert (ping.opcode, ping.payload) == (OP_BINARY, b"\x00")
    assert await sock.closed_normally() == (3012, "no pong")


@pytest.mark.parametrize(
    "payload",
    [b"\x80", b"\xff\xff\xff", b"\x05\x08\x02", b"\x04\x08\x02\x2a\x00\x09", b""],
    ids=[
        "truncated-varint",
        "truncated-long-varint",
        "length-past-frame-end",
        "second-length-past-frame-end",
        "empty-binary-frame",
    ],
)
async def test_bad_protobuf_framing_closes_with_3501_bad_request(
    make_hub: HubFactory, dial: Dialer, payload: bytes
) -> None:
    hub = await make_hub(dev=True)
    sock = await dial.protobuf_client(hub.port)
    await sock.send(OP_BINARY, payload)
    assert await sock.closed_normally() == (3501, "bad request")


async def test_a_text_frame_on_protobuf_is_decoded_as_protobuf_and_answered_in_binary(
    make_hub: HubFactory, dial: Dialer
) -> None:
    # protocol-extensions.md §1.1: "On input the frame type is ignored; bytes are decoded
    # with the negotiated codec." 04 08 01 22 00 is valid UTF-8, so a text frame may hold it.
    hub = await make_hub(dev=True)
    sock, _ = await dial.websocket(hub.port, ["centrifuge-protobuf"])
    await sock.send(OP_TEXT, delimited(command(1, CONNECT)))
    (reply,) = await sock.replies()
    assert reply.id == 1 and reply.HasField("connect")


async def test_json_in_a_text_frame_on_protobuf_is_not_json_but_bad_protobuf_3501(
    make_hub: HubFactory, dial: Dialer
) -> None:
    hub = await make_hub(dev=True)
    sock, _ = await dial.websocket(hub.port, ["centrifuge-protobuf"])
    await sock.send(OP_TEXT, b'{"id":1,"connect":{}}')
    assert await sock.closed_normally() == (3501, "bad request")
