"""The Protobuf codec (``tidings.protocol.protobuf``) against an independent oracle.

The oracle is centrifuge-python: its own generated classes (``centrifuge.protocol.
client_pb2``, from the real ``client.proto``) and its codec's framing. Commands are
built and framed with them and must decode to the right wire objects; replies
encoded by tidings must parse with them, with no unknown field, to the same values
as the wire objects they came from. The conversions in this file are generic (by
field name, driven by the descriptors and by ``msgspec.inspect``), so they share no
code with the codec under test, and a field added to a wire type later is covered
(or fails loudly) without touching the tests.

The worked bytes of ``shared/reference/protocol-extensions.md`` §1.2 are checked byte
for byte.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import centrifuge.protocol.client_pb2 as sdk
import msgspec
import msgspec.inspect as mi
import pytest
from centrifuge.codecs import _ProtobufCodec, _varint_encode
from centrifuge.filter import Filter
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.strategies import SearchStrategy
from msgspec import Raw, Struct

from tidings.protocol import client_pb2 as ours, wire
from tidings.protocol.protobuf import decode_commands, encode_reply
from tidings.protocol.wire import (
    NO_DATA,
    ClientInfo,
    Command,
    ConnectRequest,
    ConnectResult,
    DisconnectPush,
    Empty,
    ErrorBody,
    FilterNode,
    HistoryRequest,
    HistoryResult,
    Join,
    KeyedItem,
    Leave,
    MessagePush,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    Publication,
    PublishRequest,
    Push,
    RefreshPush,
    RefreshRequest,
    RefreshResult,
    Reply,
    RPCRequest,
    RPCResult,
    SendRequest,
    StreamPosition,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribePush,
    SubscribeRecovery,
    SubscribeRequest,
    SubscribeResult,
    TrackBatch,
    UnsubscribePush,
    UnsubscribeRequest,
)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- generic helpers (the oracle side) -----------------------------------------------


def frame(*messages: Message) -> bytes:
    """Messages framed as the SDK frames commands: uvarint(len) + bytes, concatenated."""
    out = b""
    for message in messages:
        body = message.SerializeToString()
        out += _varint_encode(len(body)) + body
    return out


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def wire_to_message(value: Struct, message: Message) -> Message:
    """Set a protobuf message's fields from a wire struct, by name (the test's encoder)."""
    message.SetInParent()
    for name in value.__struct_fields__:
        item = getattr(value, name)
        field = message.DESCRIPTOR.fields_by_name.get(name)
        if field is None:  # newer than the SDK's classes: only a zero value fits
            assert not item, f"{message.DESCRIPTOR.name} has no field {name}"
            continue
        if item is None:
            continue
        if isinstance(item, Raw) and field.message_type is not None:  # raw JSON of a message
            if len(item):
                kind = RAW_JSON_MESSAGES[field.message_type.name]
                wire_to_message(msgspec.json.decode(bytes(item), type=kind), getattr(message, name))
        elif isinstance(item, Raw):
            if len(item):
                setattr(message, name, bytes(item))
        elif is_map(field):
            target = getattr(message, name)
            valued = field.message_type.fields_by_name["value"].message_type is not None
            for key, entry in item.items():
                if valued:
                    wire_to_message(entry, target[key])
                else:
                    target[key] = entry
        elif field.is_repeated:
            if field.message_type is not None:
                for entry in item:
                    wire_to_message(entry, getattr(message, name).add())
            else:
                getattr(message, name).extend(item)
        elif field.message_type is not None:
            wire_to_message(item, getattr(message, name))
        else:
            setattr(message, name, item)
    return message


def message_to_plain(message: Message) -> dict[str, Any]:
    """The fields set in a protobuf message, as plain values (bytes stay bytes)."""
    plain: dict[str, Any] = {}
    for field, value in message.ListFields():
        if is_map(field):
            valued = field.message_type.fields_by_name["value"].message_type is not None
            plain[field.name] = {
                key: message_to_plain(entry) if valued else entry for key, entry in value.items()
            }
        elif field.is_repeated:
            plain[field.name] = [
                message_to_plain(entry) if field.message_type is not None else entry
                for entry in value
            ]
        elif field.message_type is not None:
            plain[field.name] = message_to_plain(value)
        else:
            plain[field.name] = value
    return plain


def wire_to_plain(value: Struct) -> dict[str, Any]:
    """A wire struct as proto3 sees it: zero scalars and empty payloads are absent, a
    struct that is not ``None`` is present (even empty)."""
    plain: dict[str, Any] = {}
    for name in value.__struct_fields__:
        item = getattr(value, name)
        if item is None:
            continue
        if isinstance(item, Raw):
            if len(item):
                plain[name] = bytes(item)
        elif isinstance(item, Struct):
            plain[name] = wire_to_plain(item)
        elif isinstance(item, dict):
            if item:
                plain[name] = {
                    k: wire_to_plain(v) if isinstance(v, Struct) else v for k, v in item.items()
                }
        elif isinstance(item, list):
            if item:
                plain[name] = [wire_to_plain(v) if isinstance(v, Struct) else v for v in item]
        elif item:
            plain[name] = item
    return plain


def sdk_replies(data: bytes) -> list[sdk.Reply]:
    """Parse a frame of replies with the SDK's classes, failing on any unknown field."""
    replies = []
    position = 0
    while position < len(data):
        length, position = _read_uvarint(data, position)
        reply = sdk.Reply.FromString(data[position : position + length])
        position += length
        size = reply.ByteSize()
        reply.DiscardUnknownFields()
        assert reply.ByteSize() == size, "the SDK sees fields it does not know"
        replies.append(reply)
    assert position == len(data)
    return replies


def _read_uvarint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def raw(text: str) -> Raw:
    return Raw(text.encode())


def tags_filter_json(node: FilterNode) -> Raw:
    """``SubscribeRequest.tf`` as the JSON codec leaves it: the filter as raw JSON."""
    return Raw(msgspec.json.encode(node))


RAW_JSON_MESSAGES: dict[str, type[Struct]] = {"FilterNode": FilterNode}
"""Message fields that the wire types keep as raw JSON (``tf``), by message name."""


# --- 1. the worked bytes of the reference, §1.2 -------------------------------------------

CONNECT_FRAME = bytes.fromhex("0b 08 01 22 07 0a 01 54 22 02 70 79")
SUBSCRIBE_FRAME = bytes.fromhex("0a 08 02 2a 06 0a 04 6e 65 77 73")


def test_worked_command_frames_decode() -> None:
    connect = Command(id=1, connect=ConnectRequest(token="T", name="py"))
    assert decode_commands(CONNECT_FRAME) == [connect]
    assert decode_commands(CONNECT_FRAME + SUBSCRIBE_FRAME) == [
        connect,
        Command(id=2, subscribe=SubscribeRequest(channel="news")),
    ]


def test_worked_connect_reply_encodes_byte_for_byte() -> None:
    reply = Reply(id=1, connect=ConnectResult(client="c1", version="6", ping=25, pong=True))
    assert encode_reply(reply) == bytes.fromhex("0f 08 01 2a 0b 0a 02 63 31 12 01 36 38 19 40 01")


def test_worked_push_encodes_byte_for_byte() -> None:
    reply = Reply(push=Push(channel="news", pub=Publication(data=raw('{"x":1}'), offset=5)))
    assert encode_reply(reply) == bytes.fromhex(
        "15 22 13 12 04 6e 65 77 73 22 0b 22 07 7b 22 78 22 3a 31 7d 30 05"
    )


def test_worked_error_reply_encodes_byte_for_byte() -> None:
    reply = Reply(id=3, error=ErrorBody(code=103, message="permission denied"))
    encoded = encode_reply(reply)
    assert encoded.startswith(bytes.fromhex("19 08 03 12 15 08 67 12 11"))
    assert encoded == bytes.fromhex("19 08 03 12 15 08 67 12 11") + b"permission denied"


def test_ping_pong_and_empty_frames() -> None:
    assert encode_reply(Reply()) == b"\x00"  # the server ping
    assert decode_commands(b"\x00") == [Command()]  # the client pong
    assert decode_commands(b"\x00\x00") == [Command(), Command()]
    assert decode_commands(b"") == []


# --- 2. commands built by the SDK -----------------------------------------------------------


def test_the_sdk_codec_commands_decode_to_the_wire_objects() -> None:
    """Commands as centrifuge-python's client builds them (dicts, ParseDict, its framing)."""
    data = base64.b64encode(b'{"hello":"world"}')
    tags_filter = Filter.all(
        Filter.eq("ticker", "AAPL"), Filter.negate(Filter.is_in("venue", ["x", "y"]))
    )
    commands = [
        {
            "id": 1,
            "connect": {
                "token": "jwt",
                "data": data,
                "name": "python",
                "version": "0.7.0",
                "subs": {"srv": {"recover": True, "offset": 12, "epoch": "xD5R"}},
            },
        },
        {
            "id": 2,
            "subscribe": {
                "channel": "news",
                "token": "sub-jwt",
                "data": data,
                "positioned": True,
                "recoverable": True,
                "join_leave": True,
                "recover": True,
                "epoch": "e1",
                "offset": 9007199254740993,
                "flag": 3,
                "delta": "fossil",
                "tf": tags_filter.node,
            },
        },
        {"id": 3, "publish": {"channel": "chat", "data": data}},
        {"id": 4, "rpc": {"method": "m", "data": data}},
        {"send": {"data": data}},
        {"id": 5, "history": {"channel": "h", "limit": -1, "since": {"offset": 3, "epoch": "e"}}},
        {"id": 6, "history": {"channel": "h", "reverse": True}},
        {"id": 7, "presence": {"channel": "p"}},
        {"id": 8, "presence_stats": {"channel": "p"}},
        {"id": 9, "unsubscribe": {"channel": "news"}},
        {"id": 10, "refresh": {"token": "new"}},
        {"id": 11, "sub_refresh": {"channel": "$private", "token": "t"}},
        {},
    ]
    payload = raw('{"hello":"world"}')
    expected = [
        Command(
            id=1,
            connect=ConnectRequest(
                token="jwt",
                data=payload,
                name="python",
                version="0.7.0",
                subs={"srv": SubscribeRecovery(recover=True, offset=12, epoch="xD5R")},
            ),
        ),
        Command(
            id=2,
            subscribe=SubscribeRequest(
                channel="news",
                token="sub-jwt",
                data=payload,
                positioned=True,
                recoverable=True,
                join_leave=True,
                recover=True,
                epoch="e1",
                offset=9007199254740993,
                flag=3,
                delta="fossil",
                tf=tags_filter_json(
                    FilterNode(
                        op="and",
                        nodes=[
                            FilterNode(key="ticker", cmp="eq", val="AAPL"),
                            FilterNode(
                                op="not",
                                nodes=[FilterNode(key="venue", cmp="in", vals=["x", "y"])],
                            ),
                        ],
                    )
                ),
            ),
        ),
        Command(id=3, publish=PublishRequest(channel="chat", data=payload)),
        Command(id=4, rpc=RPCRequest(method="m", data=payload)),
        Command(send=SendRequest(data=payload)),
        Command(
            id=5,
            history=HistoryRequest(
                channel="h", limit=-1, since=StreamPosition(offset=3, epoch="e")
            ),
        ),
        Command(id=6, history=HistoryRequest(channel="h", reverse=True)),
        Command(id=7, presence=PresenceRequest(channel="p")),
        Command(id=8, presence_stats=PresenceStatsRequest(channel="p")),
        Command(id=9, unsubscribe=UnsubscribeRequest(channel="news")),
        Command(id=10, refresh=RefreshRequest(token="new")),
        Command(id=11, sub_refresh=SubRefreshRequest(channel="$private", token="t")),
        Command(),
    ]
    assert decode_commands(_ProtobufCodec.encode_commands(commands)) == expected


def test_an_absent_payload_is_the_no_data_instance() -> None:
    """``omit_defaults`` compares by identity: an empty payload must be NO_DATA itself."""
    (publish, connect) = decode_commands(
        frame(
            sdk.Command(id=9, publish=sdk.PublishRequest(channel="c")),
            sdk.Command(id=1, connect=sdk.ConnectRequest()),
        )
    )
    assert publish.publish is not None and publish.publish.data is NO_DATA
    assert connect.connect is not None and connect.connect.data is NO_DATA
    assert wire.encode(publish) == b'{"id":9,"publish":{"channel":"c"}}'


def test_the_same_commands_in_json_decode_to_equal_objects() -> None:
    """For JSON payloads both codecs give equal wire objects (and equal JSON re-encodings)."""
    json_frame = (
        b'{"id":1,"connect":{"token":"t","data":{"a":[1,2]},"name":"js","version":"5",'
        b'"subs":{"s":{"recover":true,"epoch":"e","offset":4}},"headers":{"X-A":"b"},"flag":1}}\n'
        b'{"id":2,"subscribe":{"channel":"c","delta":"fossil","flag":3,"tf":{"op":"or","nodes":'
        b'[{"key":"k","cmp":"ex"},{"key":"n","cmp":"gte","val":"10"}]}}}\n'
        b'{"id":3,"history":{"channel":"c","limit":10,"since":{"offset":2,"epoch":"x"},"reverse":true}}'
    )
    from_json = wire.decode_frame(json_frame)
    messages = [wire_to_message(command, sdk.Command()) for command in from_json]
    from_protobuf = decode_commands(frame(*messages))
    assert from_protobuf == from_json
    assert [wire.encode(c) for c in from_protobuf] == [wire.encode(c) for c in from_json]


def test_fields_newer_than_the_sdk_classes_decode() -> None:
    """Protocol v0.19 fields (map subscriptions, tracking) the SDK's classes predate."""
    command = ours.Command(
        id=4,
        subscribe=ours.SubscribeRequest(
            channel="m", type=1, phase=2, cursor="cur", limit=50, asc=True, flag=1
        ),
    )
    publish = ours.Command(
        id=5,
        publish=ours.PublishRequest(channel="m", data=b"\x00\xff", type=1, key="k", removed=True),
    )
    track = ours.Command(
        id=6,
        sub_refresh=ours.SubRefreshRequest(
            channel="m",
            type=1,
            track=[ours.TrackBatch(signature="sig", items=[ours.KeyedItem(key="a", version=3)])],
            untrack=["b", "c"],
        ),
    )
    headers = ours.Command(id=7, connect=ours.ConnectRequest(headers={"a": "1"}, flag=2))
    assert decode_commands(frame(command, publish, track, headers)) == [
        Command(
            id=4,
            subscribe=SubscribeRequest(
                channel="m", type=1, phase=2, cursor="cur", limit=50, asc=True, flag=1
            ),
        ),
        Command(
            id=5,
            publish=PublishRequest(
                channel="m", data=Raw(b"\x00\xff"), type=1, key="k", removed=True
            ),
        ),
        Command(
            id=6,
            sub_refresh=SubRefreshRequest(
                channel="m",
                type=1,
                track=[TrackBatch(signature="sig", items=[KeyedItem(key="a", version=3)])],
                untrack=["b", "c"],
            ),
        ),
        Command(id=7, connect=ConnectRequest(headers={"a": "1"}, flag=2)),
    ]


def test_binary_payloads_pass_through_untouched() -> None:
    blob = bytes(range(256))
    (command,) = decode_commands(frame(sdk.Command(id=1, publish=sdk.PublishRequest(data=blob))))
    assert command.publish is not None and bytes(command.publish.data) == blob
    reply = Reply(push=Push(channel="b", pub=Publication(data=Raw(blob))))
    (parsed,) = sdk_replies(encode_reply(reply))
    assert parsed.push.pub.data == blob


# --- 2. replies parsed by the SDK ------------------------------------------------------------

INFO = ClientInfo(user="u", client="c", conn_info=raw('{"n":1}'), chan_info=raw('"ch"'))
PUB = Publication(data=raw('{"x":1}'), info=INFO, offset=2**63 - 1, tags={"t": "v", "e": ""})

REPLIES: dict[str, Reply] = {
    "error": Reply(id=3, error=ErrorBody(code=111, message="too many requests", temporary=True)),
    "error zero": Reply(id=3, error=ErrorBody(code=0, message="")),
    "push pub": Reply(push=Push(channel="news", pub=PUB)),
    "push pub empty": Reply(push=Push(channel="news", pub=Publication(data=NO_DATA))),
    "push join": Reply(push=Push(channel="c", join=Join(info=INFO))),
    "push leave": Reply(push=Push(channel="c", leave=Leave(info=ClientInfo(user="", client="")))),
    "push unsubscribe": Reply(push=Push(channel="c", unsubscribe=UnsubscribePush(2501, "expired"))),
    "push subscribe": Reply(
        push=Push(
            channel="c",
            subscribe=SubscribePush(
                recoverable=True, epoch="e", offset=7, positioned=True, data=raw("[1]")
            ),
        )
    ),
    "push subscribe empty": Reply(push=Push(channel="c", subscribe=SubscribePush())),
    "push message": Reply(push=Push(message=MessagePush(data=raw('"hi"')))),
    "push connect": Reply(
        push=Push(
            connect=ConnectResult(
                client="c1",
                version="1",
                data=raw("{}"),
                subs={"srv": SubscribeResult(epoch="e", offset=3), "empty": SubscribeResult()},
                expires=True,
                ttl=60,
                ping=25,
                session="s",
                node="n",
            )
        )
    ),
    "push disconnect": Reply(push=Push(disconnect=DisconnectPush(code=3001, reason="shutdown"))),
    "push refresh": Reply(push=Push(refresh=RefreshPush(expires=True, ttl=30))),
    "push refresh empty": Reply(push=Push(refresh=RefreshPush())),
    "connect": Reply(
        id=1,
        connect=ConnectResult(
            client="c1",
            version="6",
            expires=True,
            ttl=3600,
            data=raw('{"welcome":true}'),
            subs={
                "srv": SubscribeResult(
                    recoverable=True,
                    epoch="e",
                    offset=5,
                    publications=[PUB, Publication(data=raw("2"), offset=5)],
                    recovered=True,
                    positioned=True,
                    was_recovering=True,
                )
            },
            ping=25,
            pong=True,
        ),
    ),
    "subscribe": Reply(
        id=2,
        subscribe=SubscribeResult(
            expires=True,
            ttl=10,
            recoverable=True,
            epoch="Xy1z",
            publications=[Publication(data=raw('{"song":"A"}'), offset=17)],
            recovered=True,
            offset=17,
            positioned=True,
            data=raw('"d"'),
            was_recovering=True,
        ),
    ),
    "subscribe empty": Reply(id=2, subscribe=SubscribeResult()),
    "unsubscribe": Reply(id=3, unsubscribe=Empty()),
    "publish": Reply(id=4, publish=Empty()),
    "presence": Reply(
        id=5, presence=PresenceResult(presence={"c1": INFO, "c2": ClientInfo(user="", client="c2")})
    ),
    "presence empty": Reply(id=5, presence=PresenceResult(presence={})),
    "presence_stats": Reply(id=6, presence_stats=PresenceStatsResult(num_clients=3, num_users=2)),
    "presence_stats zero": Reply(
        id=6, presence_stats=PresenceStatsResult(num_clients=0, num_users=0)
    ),
    "history": Reply(
        id=7, history=HistoryResult(publications=[PUB, PUB], epoch="e", offset=2**63 - 1)
    ),
    "history empty": Reply(id=7, history=HistoryResult(publications=[], epoch="", offset=0)),
    "rpc": Reply(id=8, rpc=RPCResult(data=raw('{"ok":1}'))),
    "rpc empty": Reply(id=8, rpc=RPCResult()),
    "refresh": Reply(
        id=9, refresh=RefreshResult(client="c1", version="6", expires=True, ttl=2**32 - 1)
    ),
    "sub_refresh": Reply(id=10, sub_refresh=SubRefreshResult(expires=True, ttl=5)),
    "sub_refresh empty": Reply(id=10, sub_refresh=SubRefreshResult()),
    "ping": Reply(),
}


@pytest.mark.parametrize("name", REPLIES)
def test_every_reply_variant_parses_with_the_sdk_classes_to_its_values(name: str) -> None:
    reply = REPLIES[name]
    (parsed,) = sdk_replies(encode_reply(reply))
    assert message_to_plain(parsed) == wire_to_plain(reply)
    # And as the SDK's client sees it: its codec, MessageToDict with proto field names.
    (as_dict,) = _ProtobufCodec.decode_replies(encode_reply(reply))
    assert set(as_dict) == set(wire_to_plain(reply))


def test_reply_values_as_the_sdk_client_reads_them() -> None:
    data = encode_reply(REPLIES["push pub"]) + encode_reply(REPLIES["connect"])
    push, connect = _ProtobufCodec.decode_replies(data)
    assert push == {
        "push": {
            "channel": "news",
            "pub": {
                "data": base64.b64encode(b'{"x":1}').decode(),
                "info": {
                    "user": "u",
                    "client": "c",
                    "conn_info": base64.b64encode(b'{"n":1}').decode(),
                    "chan_info": base64.b64encode(b'"ch"').decode(),
                },
                "offset": str(2**63 - 1),
                "tags": {"t": "v", "e": ""},
            },
        }
    }
    assert connect["id"] == 1 and connect["connect"]["pong"] is True
    assert connect["connect"]["subs"]["srv"]["was_recovering"] is True
    assert len(connect["connect"]["subs"]["srv"]["publications"]) == 2


def test_a_batch_of_replies_is_the_messages_concatenated() -> None:
    replies = list(REPLIES.values())
    batch = b"".join(encode_reply(reply) for reply in replies)
    parsed = sdk_replies(batch)
    assert [message_to_plain(p) for p in parsed] == [wire_to_plain(r) for r in replies]
    assert len(_ProtobufCodec.decode_replies(batch)) == len(replies)


@pytest.mark.parametrize("size", [0, 1, 120, 127, 128, 300, 16_383, 16_384, 70_000])
def test_long_messages_get_a_multi_byte_length(size: int) -> None:
    reply = Reply(push=Push(channel="c", pub=Publication(data=Raw(b"x" * size))))
    encoded = encode_reply(reply)
    length, position = _read_uvarint(encoded, 0)
    assert length == len(encoded) - position
    assert position == len(_varint_encode(length))
    (parsed,) = sdk_replies(encoded)
    assert parsed.push.pub.data == b"x" * size


# --- field names: the codec converts by name --------------------------------------------

REQUEST_TYPES: dict[type[Struct], str] = {
    ConnectRequest: "ConnectRequest",
    SubscribeRequest: "SubscribeRequest",
    UnsubscribeRequest: "UnsubscribeRequest",
    PublishRequest: "PublishRequest",
    PresenceRequest: "PresenceRequest",
    PresenceStatsRequest: "PresenceStatsRequest",
    HistoryRequest: "HistoryRequest",
    RPCRequest: "RPCRequest",
    SendRequest: "SendRequest",
    RefreshRequest: "RefreshRequest",
    SubRefreshRequest: "SubRefreshRequest",
    FilterNode: "FilterNode",
    StreamPosition: "StreamPosition",
    TrackBatch: "TrackBatch",
    KeyedItem: "KeyedItem",
}


@pytest.mark.parametrize("wire_type", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_each_request_field_of_the_proto_has_a_wire_field_of_that_name(
    wire_type: type[Struct],
) -> None:
    descriptor = ours.DESCRIPTOR.message_types_by_name[REQUEST_TYPES[wire_type]]
    assert set(descriptor.fields_by_name) == set(wire_type.__struct_fields__)


def test_the_command_fields_are_the_wire_methods_plus_ping() -> None:
    assert set(ours.Command.DESCRIPTOR.fields_by_name) == {"id", "ping", *wire.METHODS}


def test_our_proto_has_the_numbers_and_types_of_the_sdk_classes() -> None:
    """Every field the SDK's generated classes know has the same number and type here."""
    for name, theirs in sdk.DESCRIPTOR.message_types_by_name.items():
        mine = ours.DESCRIPTOR.message_types_by_name[name]
        for field in theirs.fields:
            same = mine.fields_by_name[field.name]
            assert (same.number, same.type, same.is_repeated) == (
                field.number,
                field.type,
                field.is_repeated,
            ), f"{name}.{field.name}"


# --- 3. properties -------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
RAW = st.one_of(st.just(NO_DATA), st.binary(min_size=1, max_size=24).map(Raw))

_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
}


def strategy_for(
    kind: mi.Type, field: FieldDescriptor, depth: int, strict: bool
) -> SearchStrategy[Any]:
    """Values of a wire field's type that the protobuf field can carry."""
    if isinstance(kind, mi.UnionType):
        (inner,) = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        return st.none() if depth > 5 else st.none() | strategy_for(inner, field, depth, strict)
    if isinstance(kind, mi.StructType):
        return struct_strategy(kind, field.message_type, depth + 1, strict)
    if isinstance(kind, mi.DictType):
        value = field.message_type.fields_by_name["value"]
        return st.dictionaries(
            TEXT, strategy_for(kind.value_type, value, depth + 1, strict), max_size=2
        )
    if isinstance(kind, mi.ListType):
        if depth >= 4:
            return st.builds(list)
        return st.lists(strategy_for(kind.item_type, field, depth + 1, strict), max_size=2)
    if isinstance(kind, mi.StrType):
        return TEXT
    if isinstance(kind, mi.BoolType):
        return st.booleans()
    if isinstance(kind, mi.RawType) and field.message_type is not None:  # raw JSON of a message
        node = structs(RAW_JSON_MESSAGES[field.message_type.name], field.message_type, strict)
        return st.just(NO_DATA) | node.map(lambda value: Raw(msgspec.json.encode(value)))
    if isinstance(kind, mi.RawType):
        return RAW
    assert isinstance(kind, mi.IntType), kind
    low, high = _INT_RANGES[field.type]
    low = low if kind.ge is None else max(low, kind.ge)
    high = high if kind.le is None else min(high, kind.le)
    return st.integers(low, high)


def struct_strategy(
    kind: mi.StructType, descriptor: Descriptor, depth: int, strict: bool
) -> SearchStrategy[Any]:
    """Wire structs, with random values in the fields ``descriptor`` has; the others keep
    their default, unless ``strict``: then every wire field must be in the descriptor."""
    fields = {}
    for wire_field in kind.fields:
        field = descriptor.fields_by_name.get(wire_field.name)
        if field is None:
            assert not strict and not wire_field.required, (
                f"{descriptor.name} has no field {wire_field.name}"
            )
            continue
        fields[wire_field.name] = strategy_for(wire_field.type, field, depth, strict)
    return st.builds(kind.cls, **fields)


def structs(wire_type: type[Struct], descriptor: Descriptor, strict: bool) -> SearchStrategy[Any]:
    info = mi.type_info(wire_type)
    assert isinstance(info, mi.StructType)
    return struct_strategy(info, descriptor, 0, strict)


@SETTINGS
@given(replies=st.lists(structs(Reply, sdk.Reply.DESCRIPTOR, False), min_size=1, max_size=3))
@pytest.mark.slow
def test_any_reply_parses_with_the_sdk_classes_to_its_values(replies: list[Reply]) -> None:
    parsed = sdk_replies(b"".join(encode_reply(reply) for reply in replies))
    assert [message_to_plain(p) for p in parsed] == [wire_to_plain(r) for r in replies]


@SETTINGS
@given(reply=structs(Reply, ours.Reply.DESCRIPTOR, True))
@pytest.mark.slow
def test_every_field_of_every_reply_is_encoded(reply: Reply) -> None:
    """Strict: a wire field without a protobuf field, or one the encoder forgets, fails."""
    encoded = encode_reply(reply)
    length, position = _read_uvarint(encoded, 0)
    assert position + length == len(encoded)
    parsed = ours.Reply.FromString(encoded[position:])
    assert message_to_plain(parsed) == wire_to_plain(reply)


@SETTINGS
@given(commands=st.lists(structs(Command, sdk.Command.DESCRIPTOR, False), max_size=3))
@pytest.mark.slow
def test_any_command_the_sdk_classes_encode_decodes_to_the_same_wire_object(
    commands: list[Command],
) -> None:
    data = frame(*(wire_to_message(command, sdk.Command()) for command in commands))
    assert decode_commands(data) == commands


@SETTINGS
@given(commands=st.lists(structs(Command, ours.Command.DESCRIPTOR, True), max_size=3))
@pytest.mark.slow
def test_any_command_with_every_field_round_trips(commands: list[Command]) -> None:
    data = frame(*(wire_to_message(command, ours.Command()) for command in commands))
    assert decode_commands(data) == commands


def _decodes_or_value_error(data: bytes) -> None:
    try:
        commands = decode_commands(data)
    except ValueError:
        return
    assert isinstance(commands, list)
    assert all(isinstance(command, Command) for command in commands)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_any_bytes_decode_or_raise_value_error(data: bytes) -> None:
    _decodes_or_value_error(data)


VALID_FRAME = frame(
    wire_to_message(
        Command(
            id=1,
            connect=ConnectRequest(
                token="t", data=raw("{}"), subs={"s": SubscribeRecovery(offset=3)}
            ),
        ),
        sdk.Command(),
    ),
    wire_to_message(
        Command(
            id=2,
            subscribe=SubscribeRequest(
                channel="c",
                tf=tags_filter_json(FilterNode(op="and", nodes=[FilterNode(key="k", vals=["a"])])),
            ),
        ),
        sdk.Command(),
    ),
    sdk.Command(id=3, history=sdk.HistoryRequest(channel="h", since=sdk.StreamPosition(offset=1))),
)


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID_FRAME) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(0, len(VALID_FRAME)),
)
def test_mutated_valid_frames_decode_or_raise_value_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(VALID_FRAME)
    for position, byte in edits:
        data[position] = byte
    _decodes_or_value_error(bytes(data))
    _decodes_or_value_error(bytes(data[:cut]))


# --- 3. what must be rejected ---------------------------------------------------------------


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One encoded field: tag, then the payload (length-prefixed for wire type 2)."""
    tag = _varint_encode(number << 3 | wire_type)
    return tag + (_varint_encode(len(payload)) + payload if wire_type == 2 else payload)


def _delimited(message: bytes) -> bytes:
    return _varint_encode(len(message)) + message


def _nested_filter(depth: int) -> bytes:
    """A subscribe ``tf`` whose nodes nest ``depth`` levels deep."""
    node = b""
    for _ in range(depth):
        node = _field(6, 2, node)
    return node


CONNECT = _field(4, 2, _field(1, 2, b"t"))

INVALID: dict[str, tuple[bytes, str]] = {
    "truncated varint": (b"\x80", "truncated"),
    "truncated varint after a command": (b"\x00\xff\xff", "truncated"),
    "overlong varint": (b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    "length past the frame": (b"\x05\x08\x01", "past the end"),
    "length past the frame after a command": (b"\x00\x02\x08", "past the end"),
    "huge length": (_varint_encode(2**64 - 1) + b"\x08\x01", "past the end"),
    "truncated field inside": (_delimited(b"\x22\x05\x0a"), "invalid Command"),
    "truncated varint inside": (_delimited(b"\x08\x80"), "invalid Command"),
    "field number zero": (_delimited(b"\x00\x01"), "invalid Command"),
    "end group without start": (_delimited(b"\x0c"), "invalid Command"),
    "unknown top-level field": (_delimited(b"\x08\x01" + _field(20, 0, b"\x01")), "unknown"),
    "reserved field": (_delimited(_field(2, 0, b"\x01")), "unknown"),
    "unknown field in connect": (
        _delimited(_field(4, 2, _field(1, 2, b"t") + _field(99, 0, b"\x01"))),
        "unknown",
    ),
    "unknown field in a connect.subs value": (
        _delimited(
            _field(4, 2, _field(3, 2, _field(1, 2, b"ch") + _field(2, 2, _field(4, 0, b"\x01"))))
        ),
        "unknown",
    ),
    "unknown field deep in a filter": (
        _delimited(
            _field(5, 2, _field(13, 2, _field(6, 2, _field(6, 2, _field(9, 5, b"\x00" * 4)))))
        ),
        "unknown",
    ),
    "unknown field in history.since": (
        _delimited(_field(10, 2, _field(8, 2, _field(3, 1, b"\x00" * 8)))),
        "unknown",
    ),
    "unknown group": (_delimited(b"\x08\x01" + b"\xa3\x01\xa4\x01"), "unknown"),
    "id as length-delimited": (_delimited(_field(1, 2, b"x")), "unknown"),
    "connect as varint": (_delimited(_field(4, 0, b"\x01")), "unknown"),
    "channel as fixed32": (_delimited(_field(5, 2, _field(1, 5, b"abcd"))), "unknown"),
    "invalid UTF-8 in a channel": (_delimited(_field(5, 2, _field(1, 2, b"\xff"))), "UTF-8"),
    "invalid UTF-8 in a map key": (
        _delimited(_field(4, 2, _field(6, 2, _field(1, 2, b"\xc3") + _field(2, 2, b"v")))),
        "UTF-8",
    ),
    "surrogate in a token": (_delimited(_field(4, 2, _field(1, 2, b"\xed\xa0\x80"))), "UTF-8"),
    "ping request": (_delimited(b"\x08\x01" + _field(11, 2, b"")), "ping"),
    "ping request among others": (
        _delimited(CONNECT) + _delimited(_field(11, 2, b"")),
        "ping",
    ),
    "offset above 2**63 - 1": (
        _delimited(_field(5, 2, _field(7, 0, _varint_encode(2**63)))),
        "offset",
    ),
    "since offset above 2**63 - 1": (
        _delimited(_field(10, 2, _field(8, 2, _field(1, 0, _varint_encode(2**64 - 1))))),
        "offset",
    ),
    "connect.subs offset above 2**63 - 1": (
        _delimited(_field(4, 2, _field(3, 2, _field(2, 2, _field(7, 0, _varint_encode(2**63)))))),
        "offset",
    ),
    "filter nested past the parser's limit": (
        _delimited(_field(5, 2, _field(13, 2, _nested_filter(200)))),
        "invalid Command",
    ),
}


@pytest.mark.parametrize("name", INVALID)
def test_bad_input_raises_value_error_naming_the_problem(name: str) -> None:
    data, words = INVALID[name]
    with pytest.raises(ValueError, match=words) as raised:
        decode_commands(data)
    assert type(raised.value) is ValueError


def test_a_command_the_sdk_sends_with_ping_is_rejected() -> None:
    with pytest.raises(ValueError, match="ping"):
        decode_commands(frame(sdk.Command(id=1, ping=sdk.PingRequest())))


def test_nesting_within_the_parser_limit_is_accepted() -> None:
    (command,) = decode_commands(_delimited(_field(5, 2, _field(13, 2, _nested_filter(90)))))
    assert command.subscribe is not None
    node: FilterNode | None = msgspec.json.decode(bytes(command.subscribe.tf), type=FilterNode)
    depth = 0
    while node is not None and node.nodes:
        node, depth = node.nodes[0], depth + 1
    assert depth == 90


def test_non_canonical_but_valid_encodings_are_accepted() -> None:
    """Explicit zero values, repeated singular fields, long varints: still no unknown field."""
    id_zero = _field(1, 0, b"\x00")
    twice = _field(5, 2, _field(1, 2, b"a")) + _field(5, 2, _field(2, 2, b"t"))
    long_varint = _field(1, 0, b"\x87\x80\x00")  # 7, in three bytes
    assert decode_commands(_delimited(id_zero) + _delimited(twice) + _delimited(long_varint)) == [
        Command(),
        Command(subscribe=SubscribeRequest(channel="a", token="t")),
        Command(id=7),
    ]


def test_only_value_errors_escape_and_the_json_of_decoded_commands_is_valid() -> None:
    (command,) = decode_commands(CONNECT_FRAME)
    assert json.loads(wire.encode(command)) == {"id": 1, "connect": {"token": "T", "name": "py"}}
