"""The Protobuf encoding of the client protocol: frames of commands in, replies out.

Pure functions, no I/O. Both directions are framed the same way: each message is
``uvarint(len) ‖ message bytes``, and a frame holds one or more of them. An empty
:class:`~.wire.Reply` is zero bytes, so the server ping is the frame ``b"\\x00"``, and
so is the client's pong (an empty ``Command``).

The messages are those of ``client.proto`` (the SDKs' field numbers), converted
directly to and from the msgspec wire types the JSON codec uses, so the rest of
tidings never sees a protobuf object. ``bytes`` fields are :class:`msgspec.Raw` on
our side (:data:`~.wire.NO_DATA` when empty): payloads pass through untouched.

Decoding is strict: anything but a well-formed batch of commands raises
:class:`ValueError` naming the problem, and the session closes with 3501. That
includes fields tidings does not know (or a known field number with the wrong wire
type, which protobuf keeps as an unknown field too) anywhere in a command, and
``Command.ping`` (field 11), which Centrifugo rejects as well.

Both directions call upb as little as possible, because each call from Python
costs a few hundred nanoseconds: decoding lists the fields set in one call per
message (``ListFields``) rather than asking for each, and encoding assigns fields
on the sub-messages in place (which also marks them present) and serializes once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from msgspec import Raw, Struct

from . import client_pb2 as pb
from .wire import (
    ClientInfo,
    Command,
    ConnectRequest,
    ConnectResult,
    FilterNode,
    HistoryRequest,
    KeyedItem,
    PresenceRequest,
    PresenceStatsRequest,
    Publication,
    PublishRequest,
    Push,
    RefreshRequest,
    Reply,
    RPCRequest,
    SendRequest,
    StreamPosition,
    SubRefreshRequest,
    SubscribeRecovery,
    SubscribeRequest,
    SubscribeResult,
    TrackBatch,
    UnsubscribeRequest,
)

__all__ = ["decode_commands", "encode_reply"]

_MAX_OFFSET: Final = 2**63 - 1
"""The largest offset or version the wire types take (``wire.Uint64``), as in JSON."""

_MAX_VARINT_BYTES: Final = 10


# --- Commands (client -> server) ---------------------------------------------------


def decode_commands(frame: bytes) -> list[Command]:
    """Varint-length-delimited protobuf Commands -> the same msgspec wire.Command objects
    the JSON codec produces.

    ``b""`` gives ``[]`` (the caller closes with 3501); ``b"\\x00"`` is one empty
    command (a pong).

    Raises:
        ValueError: a truncated or overlong length varint, a length running past the
            end of the frame, a message that does not parse (bad wire format, invalid
            UTF-8 in a string, nesting deeper than 100), unknown fields or fields of
            the wrong wire type in any nested message, ``Command.ping``, or an offset
            above ``2**63 - 1``.
    """
    commands: list[Command] = []
    end = len(frame)
    position = 0
    while position < end:
        start = position
        length = frame[position]
        position += 1
        if length & 0x80:
            length, position = _read_varint(frame, start)
        stop = position + length
        if stop > end:
            raise ValueError(
                f"message length {length} at byte {start} runs past the end of the frame "
                f"({end - position} bytes left)"
            )
        commands.append(_command(frame[position:stop], start))
        position = stop
    return commands


def _read_varint(frame: bytes, start: int) -> tuple[int, int]:
    """The uvarint at ``start`` and the position after it."""
    value = 0
    shift = 0
    position = start
    end = min(len(frame), start + _MAX_VARINT_BYTES)
    while position < end:
        byte = frame[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    if position - start >= _MAX_VARINT_BYTES:
        raise ValueError(f"length varint at byte {start} is longer than 10 bytes")
    raise ValueError(f"truncated length varint at byte {start}")


_parse_command: Final = pb.Command.FromString


def _command(data: bytes, start: int) -> Command:
    try:
        message = _parse_command(data)
    except DecodeError as exc:
        raise ValueError(f"invalid Command at byte {start}: {exc}") from None
    # Unknown fields can hide at any depth. Serializing counts them and
    # DiscardUnknownFields() is recursive (into maps and repeated fields too), so the
    # size drops exactly when there were some. Two serializations inside upb cost
    # less than walking the tree from Python with UnknownFieldSet.
    size = message.ByteSize()
    message.DiscardUnknownFields()
    if message.ByteSize() != size:
        raise ValueError(
            f"Command at byte {start} has unknown fields or fields of the wrong wire type"
        )
    kwargs: dict[str, Any] = {}
    for field, value in message.ListFields():
        number = field.number
        if number == 1:
            kwargs["id"] = value
        elif number == 11:
            raise ValueError(f"Command at byte {start}: the ping request (field 11) is rejected")
        else:
            name, convert = _REQUESTS[number]
            kwargs[name] = convert(value)
    return Command(**kwargs)


_Converters = dict[str, Callable[[Any], Any]]
"""Field name -> how its protobuf value becomes the wire value (absent: as is)."""


def _fields(message: Any, converters: _Converters) -> dict[str, Any]:
    """The fields set in ``message``, as keyword arguments of the wire type.

    Field names are the same on both sides (``tests/protocol/test_protobuf.py``
    checks it), and only fields set are listed, so a ``bytes`` value is never empty.
    """
    kwargs: dict[str, Any] = {}
    for field, value in message.ListFields():
        name = field.name
        convert = converters.get(name)
        kwargs[name] = value if convert is None else convert(value)
    return kwargs


def _request(wire: type[Struct], converters: _Converters) -> Callable[[Any], Any]:
    def convert(message: Any) -> Any:
        return wire(**_fields(message, converters))

    return convert


def _offset(offset: int) -> int:
    if offset > _MAX_OFFSET:
        raise ValueError(f"offset {offset} is above 2**63 - 1")
    return offset


def _recovery(request: pb.SubscribeRequest) -> SubscribeRecovery:
    """An entry of ``connect.subs``: only the position matters there."""
    return SubscribeRecovery(
        recover=request.recover, epoch=request.epoch, offset=_offset(request.offset)
    )


def _filter(node: pb.FilterNode) -> FilterNode:
    # The depth is bounded by the parser's recursion limit (100 nested messages).
    return FilterNode(**_fields(node, _FILTER))


_encode_json: Final = msgspec.json.Encoder().encode


def _tags_filter(node: pb.FilterNode) -> Raw:
    """``subscribe.tf``, as the JSON codec leaves it: a FilterNode as raw JSON."""
    return Raw(_encode_json(_filter(node)))


def _since(position: pb.StreamPosition) -> StreamPosition:
    return StreamPosition(offset=_offset(position.offset), epoch=position.epoch)


def _track(batch: pb.TrackBatch) -> TrackBatch:
    items = [KeyedItem(key=item.key, version=_offset(item.version)) for item in batch.items]
    return TrackBatch(signature=batch.signature, items=items)


_FILTER: Final[_Converters] = {
    "vals": list,
    "nodes": lambda nodes: [_filter(node) for node in nodes],
}
_DATA: Final[_Converters] = {"data": Raw}

_REQUESTS: Final[dict[int, tuple[str, Callable[[Any], Any]]]] = {
    4: (
        "connect",
        _request(
            ConnectRequest,
            {
                "data": Raw,
                "subs": lambda subs: {channel: _recovery(sub) for channel, sub in subs.items()},
                "headers": dict,
            },
        ),
    ),
    5: (
        "subscribe",
        _request(SubscribeRequest, {"data": Raw, "offset": _offset, "tf": _tags_filter}),
    ),
    6: ("unsubscribe", _request(UnsubscribeRequest, {})),
    7: ("publish", _request(PublishRequest, _DATA)),
    8: ("presence", _request(PresenceRequest, {})),
    9: ("presence_stats", _request(PresenceStatsRequest, {})),
    10: (
        "history",
        _request(HistoryRequest, {"since": _since}),
    ),
    12: ("send", _request(SendRequest, _DATA)),
    13: ("rpc", _request(RPCRequest, _DATA)),
    14: ("refresh", _request(RefreshRequest, {})),
    15: (
        "sub_refresh",
        _request(
            SubRefreshRequest,
            {"track": lambda batches: [_track(batch) for batch in batches], "untrack": list},
        ),
    ),
}
"""Command field number -> (wire field name, converter of the request). 1 is the id, 11 ping."""


# --- Replies (server -> client) ------------------------------------------------------

_PREFIXES: Final = tuple(bytes((length,)) for length in range(0x80))
"""The one-byte length prefixes, for messages under 128 bytes."""


def encode_reply(reply: Reply) -> bytes:
    """One wire.Reply -> varint length prefix + protobuf bytes (an empty Reply -> b"\\x00",
    the ping). Always prefixed, even alone in a frame; messages of a batch are concatenated.
    """
    body: bytes = _reply(reply).SerializeToString()
    length = len(body)
    if length < 0x80:
        return _PREFIXES[length] + body
    return _varint(length) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Assigning a field of a sub-message (even a zero value) marks the sub-message
# present, as reading it does not; SetInParent() marks one that gets no field.


def _reply(reply: Reply) -> pb.Reply:
    message = pb.Reply()
    if reply.id:
        message.id = reply.id
    if reply.push is not None:  # the hot path: one encoding per publication
        _push(message.push, reply.push)
    if reply.error is not None:
        error = message.error
        error.code = reply.error.code
        error.message = reply.error.message
        error.temporary = reply.error.temporary
    if reply.connect is not None:
        _connect_result(message.connect, reply.connect)
    if reply.subscribe is not None:
        _subscribe_result(message.subscribe, reply.subscribe)
    if reply.unsubscribe is not None:
        message.unsubscribe.SetInParent()
    if reply.publish is not None:
        message.publish.SetInParent()
    if reply.presence is not None:
        presence = message.presence
        presence.SetInParent()
        entries = presence.presence
        for client, info in reply.presence.presence.items():
            _client_info(entries[client], info)
    if reply.presence_stats is not None:
        stats = message.presence_stats
        stats.num_clients = reply.presence_stats.num_clients
        stats.num_users = reply.presence_stats.num_users
    if reply.history is not None:
        history = message.history
        history.epoch = reply.history.epoch
        history.offset = reply.history.offset
        add = history.publications.add
        for publication in reply.history.publications:
            _publication(add(), publication)
    if reply.rpc is not None:
        message.rpc.data = bytes(reply.rpc.data)
    if reply.refresh is not None:
        refresh = message.refresh
        refresh.client = reply.refresh.client
        refresh.version = reply.refresh.version
        refresh.expires = reply.refresh.expires
        refresh.ttl = reply.refresh.ttl
    if reply.sub_refresh is not None:
        sub_refresh = message.sub_refresh
        sub_refresh.expires = reply.sub_refresh.expires
        sub_refresh.ttl = reply.sub_refresh.ttl
    return message


def _push(message: pb.Push, push: Push) -> None:
    message.channel = push.channel
    if push.pub is not None:
        _publication(message.pub, push.pub)
    if push.join is not None:
        _client_info(message.join.info, push.join.info)
    if push.leave is not None:
        _client_info(message.leave.info, push.leave.info)
    if push.unsubscribe is not None:
        unsubscribe = message.unsubscribe
        unsubscribe.code = push.unsubscribe.code
        unsubscribe.reason = push.unsubscribe.reason
    if push.subscribe is not None:
        subscribe = message.subscribe
        subscribe.recoverable = push.subscribe.recoverable
        subscribe.epoch = push.subscribe.epoch
        subscribe.offset = push.subscribe.offset
        subscribe.positioned = push.subscribe.positioned
        subscribe.data = bytes(push.subscribe.data)
    if push.message is not None:
        message.message.data = bytes(push.message.data)
    if push.connect is not None:
        _connect_result(message.connect, push.connect)
    if push.disconnect is not None:
        disconnect = message.disconnect
        disconnect.code = push.disconnect.code
        disconnect.reason = push.disconnect.reason
    if push.refresh is not None:
        refresh = message.refresh
        refresh.expires = push.refresh.expires
        refresh.ttl = push.refresh.ttl


def _publication(message: pb.Publication, publication: Publication) -> None:
    message.data = bytes(publication.data)
    message.offset = publication.offset
    if publication.info is not None:
        _client_info(message.info, publication.info)
    if publication.tags:
        message.tags.update(publication.tags)
    if publication.delta:
        message.delta = True


def _client_info(message: pb.ClientInfo, info: ClientInfo) -> None:
    message.user = info.user
    message.client = info.client
    message.conn_info = bytes(info.conn_info)
    message.chan_info = bytes(info.chan_info)


def _subscribe_result(message: pb.SubscribeResult, result: SubscribeResult) -> None:
    message.expires = result.expires
    message.ttl = result.ttl
    message.recoverable = result.recoverable
    message.epoch = result.epoch
    if result.publications:
        add = message.publications.add
        for publication in result.publications:
            _publication(add(), publication)
    message.recovered = result.recovered
    message.offset = result.offset
    message.positioned = result.positioned
    message.data = bytes(result.data)
    message.was_recovering = result.was_recovering
    message.delta = result.delta


def _connect_result(message: pb.ConnectResult | pb.Connect, result: ConnectResult) -> None:
    """A connect reply, or a connect push (the same fields in a message of its own)."""
    message.client = result.client
    message.version = result.version
    message.expires = result.expires
    message.ttl = result.ttl
    message.data = bytes(result.data)
    if result.subs:
        subs = message.subs
        for channel, sub in result.subs.items():
            _subscribe_result(subs[channel], sub)
    message.ping = result.ping
    message.pong = result.pong
    message.session = result.session
    message.node = result.node
