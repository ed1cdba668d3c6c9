"""Codecs: how the wire types become bytes, for each encoding of the client protocol.

A :class:`Codec` turns the frames a client sends into :class:`~.wire.Command`
objects, and :class:`~.wire.Reply` objects into the messages it receives. The
session, the node and the transports only ever see the codec, never the
encoding:

* one encoded *message* per reply or push (:meth:`Codec.encode`), so that the
  node can encode a publication once per codec and hand the same bytes to every
  subscriber that speaks it;
* messages joined into one frame payload (:meth:`Codec.join`) when a transport
  coalesces them;
* the ping, and the WebSocket opcode its frames travel in (:attr:`Codec.binary`).

=========  =================================  ==================================
codec      a message                          a batch
=========  =================================  ==================================
JSON       one JSON object, no newline        messages joined by ``\\n``
Protobuf   ``uvarint(len)`` + protobuf bytes  messages concatenated
=========  =================================  ==================================

Payloads (``data``, ``info``) are the application's bytes as they came: raw JSON
for JSON clients, raw bytes for Protobuf. JSON and Protobuf clients share
channels as long as payloads are JSON; :meth:`Codec.payload` gives a payload as
a client of the codec can take it, or None when it cannot take it at all
(non-JSON bytes cannot reach a JSON client: the node disconnects it with 3506).
"""

from __future__ import annotations

from typing import Final, Protocol

import msgspec

from . import protobuf
from .codes import Disconnect
from .wire import (
    Command,
    DisconnectPush,
    Publication,
    Push,
    Reply,
    decode_frame,
    encode,
    strip_newlines,
)

__all__ = [
    "JSON",
    "PROTOBUF",
    "Codec",
    "JSONCodec",
    "ProtobufCodec",
    "disconnect_push",
    "fit_publication",
]


class Codec(Protocol):
    """One encoding of the client protocol."""

    @property
    def name(self) -> str:
        """``json`` or ``protobuf``, as the HTTP proxy hooks report it."""
        ...

    @property
    def binary(self) -> bool:
        """Whether frames are binary (Protobuf) rather than text (JSON)."""
        ...

    @property
    def ping(self) -> bytes:
        """The server's ping: an empty reply, encoded."""
        ...

    def decode(self, frame: bytes) -> list[Command]:
        """The commands of one frame, in order; ``[]`` for an empty frame.

        Raises:
            ValueError: the frame is not a valid batch of commands (the
                session closes with 3501).
        """
        ...

    def encode(self, reply: Reply) -> bytes:
        """One reply or push, as one message."""
        ...

    def join(self, messages: list[bytes]) -> bytes:
        """Messages as the payload of one frame."""
        ...

    def payload(self, data: msgspec.Raw) -> msgspec.Raw | None:
        """``data`` as a client of this codec can take it; None if it cannot."""
        ...


class JSONCodec:
    """The JSON protocol: newline-delimited objects in text frames."""

    name: Final = "json"
    binary: Final = False
    ping: Final = b"{}"

    def decode(self, frame: bytes) -> list[Command]:
        return decode_frame(frame)

    def encode(self, reply: Reply) -> bytes:
        return encode(reply)

    def join(self, messages: list[bytes]) -> bytes:
        return messages[0] if len(messages) == 1 else b"\n".join(messages)

    def payload(self, data: msgspec.Raw) -> msgspec.Raw | None:
        if not data:
            return data
        try:
            _validate_json(data)
        except msgspec.DecodeError:
            return None
        return strip_newlines(data)  # raw newlines would break the line framing


class ProtobufCodec:
    """The Protobuf protocol: varint-length-delimited messages in binary frames."""

    name: Final = "protobuf"
    binary: Final = True
    ping: Final = b"\x00"

    def decode(self, frame: bytes) -> list[Command]:
        return protobuf.decode_commands(frame)

    def encode(self, reply: Reply) -> bytes:
        return protobuf.encode_reply(reply)

    def join(self, messages: list[bytes]) -> bytes:
        return messages[0] if len(messages) == 1 else b"".join(messages)

    def payload(self, data: msgspec.Raw) -> msgspec.Raw | None:
        return data


_validate_json = msgspec.json.Decoder(msgspec.Raw).decode
"""Checks that bytes are one JSON document (keeping them as they are)."""

JSON: Final = JSONCodec()
PROTOBUF: Final = ProtobufCodec()


def disconnect_push(codec: Codec, disconnect: Disconnect) -> bytes:
    """A ``disconnect`` push, for the transports that cannot close with a code of their
    own (HTTP-streaming, SSE) and the unidirectional ones, which read it before closing."""
    push = Push(disconnect=DisconnectPush(disconnect.code, disconnect.reason))
    return codec.encode(Reply(push=push))


def fit_publication(codec: Codec, publication: Publication) -> Publication | None:
    """``publication`` with its payload as ``codec`` carries it (a copy only where the
    payload changes); None if the codec cannot carry it (3506 for the client)."""
    data = codec.payload(publication.data)
    if data is None:
        return None
    if data is publication.data:
        return publication
    return msgspec.structs.replace(publication, data=data)
