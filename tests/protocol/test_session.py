"""The sans-I/O session: frames in, events and bytes out. No sockets, no loop."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from msgspec import Raw

from tidings import Error, ErrorCode
from tidings.protocol import client_pb2
from tidings.protocol.codecs import JSON, PROTOBUF, Codec
from tidings.protocol.session import (
    ACCEPTED_METHODS,
    CLOSED,
    COMMANDS,
    CONNECTED,
    CONNECTING,
    FAILED,
    CloseConnection,
    CommandReceived,
    Method,
    Session,
)
from tidings.protocol.wire import (
    Command,
    ConnectResult,
    Empty,
    HistoryResult,
    Publication,
    Reply,
    SubscribePush,
    SubscribeResult,
)


def frame(*commands: dict[str, Any]) -> str:
    return "\n".join(json.dumps(c) for c in commands)


def sent(session: Session) -> list[dict[str, Any]]:
    return [json.loads(data) for data in session.data_to_send()]


def connected(**kwargs: Any) -> Session:
    session = Session(**kwargs)
    session.receive_text(frame({"id": 1, "connect": {}}))
    event = session.next_event()
    assert isinstance(event, CommandReceived) and event.method == "connect"
    session.reply(ConnectResult(client="c1", version="0"))
    session.data_to_send()
    return session


def close_code(event: object) -> int:
    assert isinstance(event, CloseConnection), event
    return event.disconnect.code


def test_connect_is_handed_out_and_its_reply_connects() -> None:
    session = Session()
    session.receive_text(frame({"id": 1, "connect": {"token": "t", "name": "js"}}))
    event = session.next_event()
    assert isinstance(event, CommandReceived)
    assert (event.id, event.method, event.request.token) == (1, "connect", "t")  # type: ignore[union-attr]
    assert session.state is CONNECTING
    session.reply(ConnectResult(client="abc", version="1", ping=25, pong=True))
    assert session.state is CONNECTED
    assert session.client_id == "abc"
    assert sent(session) == [
        {"id": 1, "connect": {"client": "abc", "version": "1", "ping": 25, "pong": True}}
    ]


def test_commands_of_one_frame_are_handed_out_in_order_one_at_a_time() -> None:
    session = Session()
    session.receive_text(
        frame(
            {"id": 1, "connect": {}},
            {"id": 2, "subscribe": {"channel": "a"}},
            {"id": 3, "subscribe": {"channel": "b"}},
        )
    )
    first = session.next_event()
    assert isinstance(first, CommandReceived) and first.id == 1
    with pytest.raises(RuntimeError, match="must be answered"):
        session.next_event()
    session.reply(ConnectResult(client="c", version="0"))
    second = session.next_event()
    assert isinstance(second, CommandReceived) and second.id == 2
    session.reply(SubscribeResult())
    third = session.next_event()
    assert isinstance(third, CommandReceived) and third.id == 3
    session.reply(SubscribeResult())
    assert session.next_event() is None
    assert session.channels == ("a", "b")


def test_a_command_before_connect_closes_with_bad_request() -> None:
    session = Session()
    session.receive_text(frame({"id": 1, "subscribe": {"channel": "a"}}))
    assert close_code(session.next_event()) == 3501
    assert session.state is CLOSED
    assert session.next_event() is None


def test_a_second_connect_closes_with_bad_request() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "connect": {}}))
    assert close_code(session.next_event()) == 3501


def test_a_refused_connect_leaves_the_session_failed_and_the_next_command_closes_it() -> None:
    session = Session()
    session.receive_text(frame({"id": 1, "connect": {"token": "old"}}, {"id": 2, "publish": {}}))
    assert isinstance(session.next_event(), CommandReceived)
    session.reply_error(Error(ErrorCode.TOKEN_EXPIRED))
    assert session.state is FAILED
    assert sent(session) == [{"id": 1, "error": {"code": 109, "message": "token expired"}}]
    assert close_code(session.next_event()) == 3501


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"id": 1, "connect": {}',
        '{"id": -1, "connect": {}}',
        '{"id": 4294967296, "connect": {}}',
        '{"id": "1", "connect": {}}',
        '{"id": 1, "connect": {"token": 5}}',
        "[1, 2]",
        "",
        "\n\n",
    ],
)
def test_undecodable_or_empty_frames_close_with_bad_request(text: str) -> None:
    session = Session()
    session.receive_text(text)
    assert close_code(session.next_event()) == 3501


def test_a_bad_line_drops_the_whole_frame() -> None:
    session = Session()
    session.receive_text('{"id":1,"connect":{}}\nnot json')
    assert close_code(session.next_event()) == 3501


def test_a_binary_frame_closes_with_inappropriate_protocol() -> None:
    session = connected()
    session.receive_binary(b"\x00\x01")
    assert close_code(session.next_event()) == 3506


def test_an_unknown_method_closes_with_bad_request() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "ping": {}}))
    assert close_code(session.next_event()) == 3501


def test_a_command_without_id_closes_with_bad_request() -> None:
    session = connected()
    session.receive_text(frame({"subscribe": {"channel": "a"}}))
    assert close_code(session.next_event()) == 3501


def test_send_needs_no_id_and_gets_no_reply() -> None:
    session = connected()
    session.receive_text(frame({"send": {"data": {"typing": True}}}))
    event = session.next_event()
    assert isinstance(event, CommandReceived) and (event.id, event.method) == (0, "send")
    assert session.next_event() is None  # nothing pending: no reply is owed
    assert sent(session) == []


def test_send_before_connect_closes() -> None:
    session = Session()
    session.receive_text(frame({"send": {"data": {}}}))
    assert close_code(session.next_event()) == 3501


@pytest.mark.parametrize("method", ["subscribe", "publish", "presence", "history", "unsubscribe"])
def test_an_empty_channel_closes_with_bad_request(method: str) -> None:
    session = connected()
    session.receive_text(frame({"id": 2, method: {"channel": ""}}))
    assert close_code(session.next_event()) == 3501


def test_a_too_long_channel_gets_error_107_and_the_connection_stays() -> None:
    session = connected(channel_max_length=5)
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "abcdef"}}))
    assert session.next_event() is None
    assert sent(session) == [{"id": 2, "error": {"code": 107, "message": "channel too long"}}]
    assert session.state is CONNECTED


def test_a_second_subscribe_to_a_channel_gets_error_105() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "a"}}))
    assert isinstance(session.next_event(), CommandReceived)
    session.reply(SubscribeResult())
    session.data_to_send()
    session.receive_text(frame({"id": 3, "subscribe": {"channel": "a"}}))
    assert session.next_event() is None
    assert sent(session) == [{"id": 3, "error": {"code": 105, "message": "already subscribed"}}]


def test_subscribing_past_the_channel_limit_gets_error_106() -> None:
    session = connected(channel_limit=2)
    for index, channel in enumerate(["a", "b"], start=2):
        session.receive_text(frame({"id": index, "subscribe": {"channel": channel}}))
        assert isinstance(session.next_event(), CommandReceived)
        session.reply(SubscribeResult())
    session.data_to_send()
    session.receive_text(frame({"id": 9, "subscribe": {"channel": "c"}}))
    assert session.next_event() is None
    assert sent(session) == [{"id": 9, "error": {"code": 106, "message": "limit exceeded"}}]


def test_a_failed_subscribe_leaves_the_channel_free() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "a"}}))
    assert isinstance(session.next_event(), CommandReceived)
    session.reply_error(Error(ErrorCode.PERMISSION_DENIED))
    assert session.channels == ()
    assert session.state is CONNECTED


def test_unsubscribe_frees_the_channel() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "a"}}))
    session.next_event()
    session.reply(SubscribeResult())
    session.receive_text(frame({"id": 3, "unsubscribe": {"channel": "a"}}))
    session.next_event()
    session.reply(Empty())
    assert session.channels == ()
    assert sent(session)[-1] == {"id": 3, "unsubscribe": {}}


def test_a_pong_answers_a_ping() -> None:
    session = connected()
    session.send_ping()
    assert session.awaiting_pong
    assert session.data_to_send() == [b"{}"]
    session.receive_text("{}")
    assert session.next_event() is None
    assert not session.awaiting_pong
    assert session.state is CONNECTED


def test_a_pong_without_a_ping_closes_with_bad_request() -> None:
    session = connected()
    session.receive_text("{}")
    assert close_code(session.next_event()) == 3501


def test_a_second_pong_for_one_ping_closes() -> None:
    session = connected()
    session.send_ping()
    session.receive_text("{}\n{}")
    assert close_code(session.next_event()) == 3501


def test_no_ping_is_sent_before_connect() -> None:
    session = Session()
    session.send_ping()
    assert session.data_to_send() == []
    assert not session.awaiting_pong


def test_server_side_subscribe_and_unsubscribe_pushes() -> None:
    session = connected()
    session.subscribe_server_side("news", SubscribePush(recoverable=True, epoch="e"))
    from tidings.protocol.codes import UNSUBSCRIBE_SERVER

    session.unsubscribe_server_side("news", UNSUBSCRIBE_SERVER)
    assert sent(session) == [
        {"push": {"channel": "news", "subscribe": {"recoverable": True, "epoch": "e"}}},
        {
            "push": {
                "channel": "news",
                "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
            }
        },
    ]
    assert session.channels == ()


def test_connect_result_subs_count_as_subscribed_channels() -> None:
    session = Session()
    session.receive_text(frame({"id": 1, "connect": {}}))
    session.next_event()
    session.reply(ConnectResult(client="c", version="0", subs={"news": SubscribeResult()}))
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "news"}}))
    assert session.next_event() is None
    assert sent(session)[-1]["error"]["code"] == 105


def test_nothing_is_handed_out_after_close() -> None:
    session = connected()
    from tidings.protocol.codes import DISCONNECT_SHUTDOWN

    session.close(DISCONNECT_SHUTDOWN)
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "a"}}))
    assert session.next_event() is None
    assert session.state is CLOSED


def test_answering_with_nothing_pending_is_an_error() -> None:
    session = connected()
    with pytest.raises(RuntimeError):
        session.reply(Empty())
    with pytest.raises(RuntimeError):
        session.reply_error(Error(ErrorCode.INTERNAL))


def test_error_replies_mark_temporary_errors() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "publish": {"channel": "a", "data": {}}}))
    session.next_event()
    session.reply_error(Error(ErrorCode.INTERNAL))
    assert sent(session) == [
        {"id": 2, "error": {"code": 100, "message": "internal server error", "temporary": True}}
    ]


# --- the table of commands ----------------------------------------------------------


def _request_types_of_command() -> dict[str, type[Any]]:
    """Command's method fields and the request type each holds (``X | None``)."""
    hints = typing.get_type_hints(Command)
    return {
        name: next(t for t in typing.get_args(hint) if t is not type(None))
        for name, hint in hints.items()
        if name != "id"
    }


def test_every_method_field_of_command_is_a_row_named_after_it() -> None:
    fields = _request_types_of_command()
    assert len(COMMANDS) == len(fields) == len(Method)
    for name, request_type in fields.items():
        assert COMMANDS[request_type].method == name
        assert COMMANDS[request_type].method is Method(name)


def test_every_protobuf_command_field_is_a_row_except_the_ping_it_rejects() -> None:
    fields = client_pb2.Command.DESCRIPTOR.fields_by_name
    assert set(fields) - {"id", "ping"} == set(Method)
    by_method = {spec.method: request_type for request_type, spec in COMMANDS.items()}
    for method in Method:  # the same request message, by name
        assert fields[method].message_type.name == by_method[method].__name__


def test_each_answer_puts_the_result_in_the_reply_field_of_its_method() -> None:
    replies = Reply.__struct_fields__
    for spec in COMMANDS.values():
        if spec.answer is None:
            assert spec.method is Method.SEND and spec.method not in replies
            continue
        result = object()
        reply = spec.answer(7, result)
        assert reply.id == 7
        assert [f for f in replies if getattr(reply, f) is not None] == ["id", spec.method]
        assert getattr(reply, spec.method) is result
        assert spec.method in client_pb2.Reply.DESCRIPTOR.fields_by_name


def test_the_channel_column_marks_the_requests_that_have_a_channel() -> None:
    for request_type, spec in COMMANDS.items():
        assert spec.channel == ("channel" in request_type.__struct_fields__), spec.method


def test_every_method_is_accepted_in_some_state() -> None:
    assert frozenset().union(*ACCEPTED_METHODS.values()) == set(Method)


@pytest.mark.parametrize("method", list(Method))
def test_each_method_is_handed_out_as_itself_with_its_request_in_json_and_protobuf(
    method: Method,
) -> None:
    (request_type,) = (t for t, spec in COMMANDS.items() if spec.method is method)
    channel = {"channel": "a"} if COMMANDS[request_type].channel else {}
    for codec in (JSON, PROTOBUF):
        session = Session(codec)
        receive = session.receive_binary if codec.binary else session.receive_text
        if method is not Method.CONNECT:
            receive(encoded(codec, 1, Method.CONNECT, {}))
            assert isinstance(session.next_event(), CommandReceived)
            session.reply(ConnectResult(client="c", version="0"))
        receive(encoded(codec, 2, method, channel))
        event = session.next_event()
        assert isinstance(event, CommandReceived), (codec.name, event)
        assert (event.id, event.method, type(event.request)) == (2, method, request_type)
        assert getattr(event.request, "channel", "a") == "a"


def encoded(codec: Codec, command_id: int, method: Method, request: dict[str, str]) -> bytes:
    """A frame of one command, as an SDK of ``codec`` sends it."""
    if codec is JSON:
        return json.dumps({"id": command_id, method: request}).encode()
    message = client_pb2.Command(id=command_id)
    getattr(message, method).SetInParent()
    for field, value in request.items():
        setattr(getattr(message, method), field, value)
    data = message.SerializeToString()
    return bytes([len(data)]) + data


# -- payloads in replies: what a JSON client can carry --------------------------------------


def _history(*data: bytes) -> HistoryResult:
    publications = [Publication(data=Raw(d), offset=n + 1) for n, d in enumerate(data)]
    return HistoryResult(publications=publications, epoch="e", offset=len(data))


def test_history_with_a_binary_payload_closes_a_json_session_with_3506() -> None:
    session = connected()
    session.receive_text(frame({"id": 2, "history": {"channel": "c"}}))
    assert isinstance(session.next_event(), CommandReceived)
    session.reply(_history(b'{"a":1}', b"\x00\xffbinary"))
    assert session.data_to_send() == []  # nothing that would break the client's framing
    assert close_code(session.next_event()) == 3506


def test_recovered_payloads_lose_raw_newlines_for_a_json_session_only() -> None:
    stored = SubscribeResult(
        recovered=True, publications=_history(b'{"a":\n1}', b"{}").publications
    )
    session = connected()
    session.receive_text(frame({"id": 2, "subscribe": {"channel": "c"}}))
    assert isinstance(session.next_event(), CommandReceived)
    session.reply(stored)
    (reply,) = sent(session)
    assert [p["data"] for p in reply["subscribe"]["publications"]] == [{"a": 1}, {}]
    assert stored.publications[0].data == Raw(b'{"a":\n1}')  # the broker's copy is untouched


def test_a_protobuf_session_carries_binary_payloads_in_history() -> None:
    session = Session(PROTOBUF)
    session.receive_binary(
        encoded(PROTOBUF, 1, Method.CONNECT, {})
        + encoded(PROTOBUF, 2, Method.HISTORY, {"channel": "c"})
    )
    assert isinstance(session.next_event(), CommandReceived)
    session.reply(ConnectResult(client="c1", version="0"))
    assert isinstance(session.next_event(), CommandReceived)
    session.reply(_history(b"\x00\xffbinary"))
    *_, data = session.data_to_send()
    reply = client_pb2.Reply()
    reply.ParseFromString(data[1:])  # one length byte
    assert reply.history.publications[0].data == b"\x00\xffbinary"
