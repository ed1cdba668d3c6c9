"""Wire types: what the SDKs require to be present, and what must be left out."""

from __future__ import annotations

import json

import msgspec
import pytest

from tidings.protocol.wire import (
    NO_DATA,
    ClientInfo,
    Empty,
    ErrorBody,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    Push,
    Reply,
    SubscribeResult,
    decode_frame,
    encode,
    optional_raw,
    strip_newlines,
    to_raw,
)


def test_empty_fields_are_left_out() -> None:
    assert encode(SubscribeResult()) == b"{}"
    assert encode(Reply(id=3, publish=Empty())) == b'{"id":3,"publish":{}}'


def test_fields_the_sdks_require_are_always_present() -> None:
    info = ClientInfo(user="", client="c")
    assert json.loads(encode(info)) == {"user": "", "client": "c"}
    assert json.loads(encode(PresenceResult(presence={}))) == {"presence": {}}
    assert json.loads(encode(PresenceStatsResult(num_clients=0, num_users=0))) == {
        "num_clients": 0,
        "num_users": 0,
    }
    assert json.loads(encode(HistoryResult(publications=[], epoch="", offset=0))) == {
        "publications": [],
        "epoch": "",
        "offset": 0,
    }


def test_payloads_are_embedded_as_raw_json() -> None:
    publication = Publication(data=msgspec.Raw(b'{"text":"hi"}'), offset=7)
    assert encode(Reply(push=Push(channel="chat", pub=publication))) == (
        b'{"push":{"channel":"chat","pub":{"data":{"text":"hi"},"offset":7}}}'
    )


def test_the_no_data_sentinel_is_left_out() -> None:
    assert encode(ClientInfo(user="u", client="c", conn_info=NO_DATA)) == (
        b'{"user":"u","client":"c"}'
    )


def test_error_replies_have_code_and_message() -> None:
    reply = Reply(id=4, error=ErrorBody(code=103, message="permission denied"))
    assert json.loads(encode(reply)) == {
        "id": 4,
        "error": {"code": 103, "message": "permission denied"},
    }


def test_a_frame_decodes_to_its_commands_in_order() -> None:
    commands = decode_frame(
        '{"id":1,"connect":{"name":"js"}}\n{"id":2,"subscribe":{"channel":"a","flag":1}}\r\n'
    )
    assert [c.id for c in commands] == [1, 2]
    assert commands[0].connect is not None and commands[0].connect.name == "js"
    assert commands[1].subscribe is not None and commands[1].subscribe.channel == "a"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    (command,) = decode_frame('{"id":1,"subscribe":{"channel":"a","tf":{"op":1}},"x":2}')
    assert command.subscribe is not None and command.subscribe.channel == "a"


@pytest.mark.parametrize("text", ['{"id":1,"publish":{"data":}}', '{"id":1', "[]", "1"])
def test_invalid_frames_raise_a_decode_error(text: str) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_frame(text)


def test_strip_newlines_keeps_the_document_equal() -> None:
    raw = msgspec.Raw(b'{\n  "a": [1,\r\n 2],\n  "b": "x y"\n}')
    stripped = strip_newlines(raw)
    assert b"\n" not in bytes(stripped) and b"\r" not in bytes(stripped)
    assert json.loads(bytes(stripped)) == json.loads(bytes(raw))
    compact = msgspec.Raw(b'{"a":1}')
    assert strip_newlines(compact) is compact


def test_to_raw_makes_wire_json_of_values_and_raw_without_newlines() -> None:
    assert to_raw({"text": "a\nb"}) == msgspec.Raw(b'{"text":"a\\nb"}')
    assert to_raw(None) == msgspec.Raw(b"null")
    assert to_raw(msgspec.Raw(b'{\n"a":\r\n1}')) == msgspec.Raw(b'{"a":1}')
    assert optional_raw(None) is NO_DATA
    assert optional_raw(0) == msgspec.Raw(b"0")
