"""Property tests of the sans-I/O core, without a network, and the atheris fuzz target.

:class:`~tidings.protocol.session.Session` is driven by random sequences of frames (valid
commands of every type with random fields, invalid JSON, binary, empty frames, pongs)
and by random server actions (pings, server-side subscriptions, close). A simple
model application answers each :class:`CommandReceived` with ``reply`` or
``reply_error`` at random. A reference model of the protocol rules, written from the
module docstring of ``_session`` (not from its code), predicts every event and every
message written; the test checks the session against it in lockstep, and checks:

* no exception escapes (the documented ``RuntimeError`` for misuse is never triggered);
* every command with an id gets exactly one reply, unless the session closed first;
* ``channels`` is the set of channels successfully subscribed minus unsubscribed;
* the state only changes through the transition tables, and ``CLOSED`` is final.

``decode_frame`` is fuzzed with random bytes and text: only ``ValueError`` (which
``msgspec.DecodeError`` and ``UnicodeEncodeError`` are) may come out.

The last test runs ``fuzz/fuzz_decode.py`` (atheris, coverage guided) for a bounded
number of runs and fails on a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tidings import Error
from tidings.protocol.codes import Disconnect, Unsubscribe
from tidings.protocol.session import (
    ACCEPTED_METHODS,
    CLOSED,
    CONNECTED,
    CONNECTING,
    FAILED,
    TRANSITIONS,
    CloseConnection,
    CommandReceived,
    Session,
    State,
)
from tidings.protocol.wire import (
    ConnectResult,
    Empty,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    RefreshResult,
    RPCResult,
    SubRefreshResult,
    SubscribePush,
    SubscribeResult,
    decode_frame,
)

pytestmark = pytest.mark.slow  # left out of `make check`

ROOT = Path(__file__).resolve().parent.parent
FUZZ_TARGET = ROOT / "fuzz" / "fuzz_decode.py"

# The protocol, as the module docstring of ``_session`` and the reference describe it.
METHODS = (  # in the order of Command's fields: the first one set is the method
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "rpc",
    "send",
    "refresh",
    "sub_refresh",
)
CHANNEL_METHODS = frozenset(
    {"subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "sub_refresh"}
)
CLIENT_METHODS = frozenset(METHODS) - {"connect"}
DOCUMENTED_ACCEPTED = {
    CONNECTING: frozenset({"connect"}),
    CONNECTED: CLIENT_METHODS,
    FAILED: frozenset(),
    CLOSED: frozenset(),
}
"""Rule 2 of the session docstring: what each state accepts (anything else: 3501)."""
BAD_REQUEST, INAPPROPRIATE_PROTOCOL = 3501, 3506

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
channels = st.one_of(
    *[st.sampled_from(["a", "b", "c", "d"])] * 6,  # a small pool: repeats give 105 and 106
    st.sampled_from(["$private", "chat:lobby", "dm#1,2", "é", "a b", "tab\t", "", "\n"]),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20),
)
uint64 = st.integers(0, 2**63 - 1)
command_ids = st.integers(0, 29).flatmap(  # small ids repeat; 0 (pong or bad) is rare
    lambda n: st.just(0) if n == 0 else st.integers(1, 2**32 - 1) if n < 5 else st.integers(1, 6)
)

REQUESTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "connect": st.fixed_dictionaries(
        {},
        optional={
            "token": texts,
            "data": json_values,
            "name": texts,
            "version": texts,
            "subs": st.dictionaries(
                channels,
                st.fixed_dictionaries(
                    {}, optional={"recover": st.booleans(), "epoch": texts, "offset": uint64}
                ),
                max_size=2,
            ),
        },
    ),
    "subscribe": st.fixed_dictionaries(
        {"channel": channels},
        optional={
            "token": texts,
            "recover": st.booleans(),
            "epoch": texts,
            "offset": uint64,
            "data": json_values,
            "positioned": st.booleans(),
            "recoverable": st.booleans(),
            "join_leave": st.booleans(),
        },
    ),
    "unsubscribe": st.fixed_dictionaries({"channel": channels}),
    "publish": st.fixed_dictionaries({"channel": channels}, optional={"data": json_values}),
    "presence": st.fixed_dictionaries({"channel": channels}),
    "presence_stats": st.fixed_dictionaries({"channel": channels}),
    "history": st.fixed_dictionaries(
        {"channel": channels},
        optional={
            "limit": st.integers(-1, 1000),
            "since": st.none()
            | st.fixed_dictionaries({}, optional={"offset": uint64, "epoch": texts}),
            "reverse": st.booleans(),
        },
    ),
    "rpc": st.fixed_dictionaries({}, optional={"method": texts, "data": json_values}),
    "send": st.fixed_dictionaries({}, optional={"data": json_values}),
    "refresh": st.fixed_dictionaries({}, optional={"token": texts}),
    "sub_refresh": st.fixed_dictionaries({"channel": channels}, optional={"token": texts}),
}


LIKELY_METHODS = st.sampled_from(METHODS + ("subscribe",) * 8 + ("unsubscribe",) * 4 + METHODS[3:])


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    """A valid command object: usually one method, sometimes none, two, or a null one."""
    command: dict[str, Any] = {}
    if draw(st.integers(0, 49)):  # an absent id is 0
        command["id"] = draw(command_ids)
    count = draw(st.sampled_from([1] * 48 + [0, 2]))
    for method in draw(st.lists(LIKELY_METHODS, min_size=count, max_size=count)):
        command[method] = draw(REQUESTS[method])
    if draw(st.integers(0, 19)) == 0:
        command[draw(st.sampled_from(METHODS))] = None  # null is the same as absent
    if draw(st.integers(0, 19)) == 0:
        command[draw(st.sampled_from(["ping", "zzz", "method"]))] = {}  # unknown: ignored
    keys = list(command)
    order = draw(st.permutations(keys))  # the JSON key order does not matter
    return {key: command[key] for key in order}


INVALID_FRAMES = [
    '{"id":',
    "null",
    "[]",
    "42",
    '"text"',
    '{"id":-1,"connect":{}}',
    '{"id":"1","connect":{}}',
    '{"id":1.5,"connect":{}}',
    '{"id":4294967296,"connect":{}}',
    '{"id":1,"subscribe":{"channel":5}}',
    '{"id":1,"subscribe":{"channel":"a","offset":-1}}',
    '{"id":1,"connect":{"subs":[]}}',
    '{"id":1,"connect":{}} trailing',
    '{"id":1,"connect":{}}\n{"id":2,',
    '{"id":1,"subscribe":{"channel":"\\ud800"}}',
    "\ud800",  # not encodable as UTF-8
    "{'id': 1}",
    '{"id":1,"publish":{"channel":"a","data":NaN}}',
]


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(
        st.sampled_from(["valid"] * 24 + ["invalid", "empty", "binary", "mixed", "pong", "pong"])
    )
    if kind == "valid":
        batch = draw(st.lists(commands(), min_size=1, max_size=3))
        ascii_only = draw(st.booleans())
        text = "\n".join(json.dumps(c, ensure_ascii=ascii_only) for c in batch)
        return "valid", (batch, text.encode() if draw(st.booleans()) else text)
    if kind == "mixed":  # one bad line drops the whole frame
        batch = draw(st.lists(commands(), min_size=1, max_size=3))
        lines = [json.dumps(c) for c in batch]
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(INVALID_FRAMES[:14])))
        return "invalid", "\n".join(lines)
    if kind == "invalid":
        return "invalid", draw(st.sampled_from(INVALID_FRAMES))
    if kind == "empty":
        return "empty", draw(st.sampled_from(["", "\n", "  ", "\r\n", b""]))
    if kind == "binary":
        return "binary", draw(st.binary(max_size=20))
    return "pong", draw(st.sampled_from(["{}", b"{}", '{"id":0}']))


@st.composite
def actions(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["frame"] * 12 + ["frames", "ping", "ping", "server", "close"]))
    if kind == "frame":
        return "frames", [draw(frames())]
    if kind == "frames":  # several frames arrive before the application looks
        return "frames", draw(st.lists(frames(), min_size=2, max_size=3))
    if kind == "server":
        return draw(st.sampled_from(["server_subscribe", "server_unsubscribe"])), draw(channels)
    return kind, None


# --- the reference model -----------------------------------------------------------


def method_of(command: dict[str, Any]) -> str | None:
    return next((m for m in METHODS if command.get(m) is not None), None)


def printable_ascii(channel: str) -> bool:
    return bool(channel) and all("\x21" <= c <= "\x7e" for c in channel)


@dataclass
class Model:
    """What the protocol says a session does: the oracle of the lockstep test."""

    channel_limit: int
    channel_max_length: int
    state: State = CONNECTING
    channels: set[str] = field(default_factory=set)
    awaiting_pong: bool = False
    queue: deque[tuple[str, Any]] = field(default_factory=deque)
    output: list[tuple[Any, ...]] = field(default_factory=list)
    commands_with_id: Counter[int] = field(default_factory=Counter)
    """Ids of commands handled before the session closed (each needs one reply)."""

    def receive(self, kind: str, payload: Any) -> None:
        if self.state is CLOSED:
            return
        if kind == "valid":
            self.queue.extend(("command", c) for c in payload[0])
        elif kind == "invalid":
            self.queue.clear()
            self.queue.append(("close", BAD_REQUEST))
        elif kind == "empty":
            self.queue.append(("close", BAD_REQUEST))
        elif kind == "binary":
            self.queue.clear()
            self.queue.append(("close", INAPPROPRIATE_PROTOCOL))
        elif kind == "pong":
            self.queue.append(("command", {}))

    def next_event(self) -> tuple[Any, ...] | None:
        """("command", id, method, request) or ("close", code), as the session should."""
        while self.queue and self.state is not CLOSED:
            kind, item = self.queue.popleft()
            if kind == "close":
                return self.close(item)
            outcome = self.check(item)
            if outcome is not None:
                return outcome
        return None

    def check(self, command: dict[str, Any]) -> tuple[Any, ...] | None:
        command_id = command.get("id", 0)
        method = method_of(command)
        if method is None and command_id == 0:  # a pong
            if not self.awaiting_pong:
                return self.close(BAD_REQUEST)
            self.awaiting_pong = False
            return None
        if method is None or (command_id == 0 and method != "send"):
            return self.close(BAD_REQUEST)
        if method == "send" and self.state is not CONNECTED:
            return self.close(BAD_REQUEST)
        if method != "send" and method not in DOCUMENTED_ACCEPTED[self.state]:
            return self.close(BAD_REQUEST)
        request = command[method]
        if method in CHANNEL_METHODS:
            channel = request.get("channel", "")
            if not channel:
                return self.close(BAD_REQUEST)
            error = None
            if len(channel) > self.channel_max_length or not printable_ascii(channel):
                error = 107
            elif method == "subscribe" and channel in self.channels:
                error = 105
            elif method == "subscribe" and len(self.channels) >= self.channel_limit:
                error = 106
            if error is not None:
                self.commands_with_id[command_id] += 1
                self.output.append(("error", command_id, error))
                return None
        if command_id and method != "send":  # a send is never answered
            self.commands_with_id[command_id] += 1
        return ("command", command_id, method, request)

    def close(self, code: int) -> tuple[Any, ...]:
        self.state = CLOSED
        self.queue.clear()
        return ("close", code)

    def reply(self, command_id: int, method: str, request: dict[str, Any], subs: Any) -> None:
        if (self.state, method) == (CONNECTING, "connect"):
            self.state = CONNECTED
        if method == "connect" and subs:
            self.channels.update(subs)
        elif method == "subscribe":
            self.channels.add(request["channel"])
        elif method == "unsubscribe":
            self.channels.discard(request["channel"])
        self.output.append(("reply", command_id, method))

    def reply_error(self, command_id: int, method: str, code: int) -> None:
        if (self.state, method) == (CONNECTING, "connect"):
            self.state = FAILED
        self.output.append(("error", command_id, code))


def results(method: str, data: st.DataObject) -> Any:
    """A result of the right type for ``method``, with some random content."""
    if method == "connect":
        subs = data.draw(st.none() | st.lists(channels, max_size=3), label="connect subs")
        return ConnectResult(
            client="c1", version="0", subs={c: SubscribeResult() for c in subs} if subs else None
        )
    if method == "subscribe":
        return SubscribeResult(
            epoch=data.draw(texts, label="epoch"), offset=data.draw(uint64, label="offset")
        )
    return {
        "unsubscribe": lambda: Empty(),
        "publish": lambda: Empty(),
        "presence": lambda: PresenceResult(presence={}),
        "presence_stats": lambda: PresenceStatsResult(num_clients=1, num_users=1),
        "history": lambda: HistoryResult(publications=[], epoch="e", offset=0),
        "rpc": lambda: RPCResult(data=msgspec.Raw(json.dumps(data.draw(json_values)).encode())),
        "refresh": lambda: RefreshResult(client="c1"),
        "sub_refresh": lambda: SubRefreshResult(),
    }[method]()


def signature(message: bytes) -> tuple[Any, ...]:
    """What a written message is, for comparison with the model's output."""
    assert b"\n" not in message, "each message is one line"
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    if decoded == {}:
        return ("ping",)
    if "push" in decoded:
        push = decoded["push"]
        assert "id" not in decoded
        kind = "subscribe" if "subscribe" in push else "unsubscribe"
        return ("push", kind, push.get("channel", ""))  # omitted when empty
    if "error" in decoded:
        return ("error", decoded.get("id", 0), decoded["error"]["code"])
    (method,) = set(decoded) - {"id"}
    return ("reply", decoded.get("id", 0), method)


def allowed_change(before: State, after: State, answered: str | None, ok: bool) -> bool:
    """Whether the tables allow going from ``before`` to ``after``."""
    if before == after:
        return True
    if after is CLOSED:
        return before is not CLOSED
    if answered is None:
        return False
    expected = TRANSITIONS.get((before, answered))
    return expected is not None and after == expected[0 if ok else 1]


# --- the lockstep property test ---------------------------------------------------


@SETTINGS
@given(
    channel_limit=st.integers(1, 4),
    channel_max_length=st.integers(3, 16),
    opening=st.lists(st.fixed_dictionaries({"subscribe": REQUESTS["subscribe"]}), max_size=3),
    connect_first=st.integers(0, 9),
    script=st.lists(actions(), min_size=1, max_size=25),
    data=st.data(),
)
def test_random_frames_and_answers_keep_the_session_on_the_protocol_tables(
    channel_limit: int,
    channel_max_length: int,
    opening: list[dict[str, Any]],
    connect_first: int,
    script: list[tuple[str, Any]],
    data: st.DataObject,
) -> None:
    if connect_first:  # mostly, as the SDKs do: connect and subscribes in one frame
        batch = [{"id": 1, "connect": {}}] + [{"id": 2 + n, **c} for n, c in enumerate(opening)]
        text = "\n".join(json.dumps(c) for c in batch)
        script = [("frames", [("valid", (batch, text))]), *script]
    session = Session(channel_limit=channel_limit, channel_max_length=channel_max_length)
    model = Model(channel_limit, channel_max_length)
    written: list[tuple[Any, ...]] = []
    for kind, argument in script:
        before = session.state
        if kind == "frames":
            for frame_kind, payload in argument:
                frame = payload[1] if frame_kind == "valid" else payload
                if frame_kind == "binary":
                    session.receive_binary(frame)
                else:
                    session.receive_text(frame)
                model.receive(frame_kind, payload)
            assert session.state is before, "receiving alone never changes the state"
            drain(session, model, data)
        elif kind == "ping":
            session.send_ping()
            if model.state is CONNECTED:
                model.awaiting_pong = True
                model.output.append(("ping",))
        elif kind == "close":
            session.close(Disconnect(3001, "shutdown"))
            model.state = CLOSED
            model.queue.clear()
        elif model.state is CONNECTED:  # server-side (un)subscribe, only for a live client
            if kind == "server_subscribe":
                session.subscribe_server_side(argument, SubscribePush())
                model.channels.add(argument)
                model.output.append(("push", "subscribe", argument))
            else:
                session.unsubscribe_server_side(argument, Unsubscribe(2000, "server"))
                model.channels.discard(argument)
                model.output.append(("push", "unsubscribe", argument))
        if before is CLOSED:
            assert session.state is CLOSED, "CLOSED is final"
        written += [signature(m) for m in session.data_to_send()]
        assert written == model.output
        assert session.state is model.state
        assert sorted(session.channels) == sorted(model.channels)  # each channel once
        assert session.awaiting_pong == model.awaiting_pong
        assert session.state in ACCEPTED_METHODS
    # Every command with an id got exactly one reply (result or error), unless the
    # session closed before handling it: the model counts the handled ones.
    replies = Counter(entry[1] for entry in written if entry[0] in ("reply", "error"))
    assert replies == model.commands_with_id


def drain(session: Session, model: Model, data: st.DataObject) -> None:
    """Hand out every event and answer each, as the application does."""
    while True:
        before = session.state
        event = session.next_event()
        expected = model.next_event()
        if event is None:
            assert expected is None
            assert session.state is before
            return
        if isinstance(event, CloseConnection):
            assert expected == ("close", event.disconnect.code), (event, expected)
            assert session.state is CLOSED and session.disconnect == event.disconnect
            assert session.next_event() is None, "nothing more comes after a close"
            return
        assert isinstance(event, CommandReceived)
        assert expected is not None and expected[:3] == ("command", event.id, event.method)
        assert session.state is before
        if not event.id or event.method == "send":
            continue  # a send (with or without an id) is never answered
        request = expected[3]
        with_result = data.draw(st.integers(0, 9), label="answer") < 7
        if with_result:
            result = results(event.method, data)
            session.reply(result)
            subs = list(result.subs or {}) if isinstance(result, ConnectResult) else None
            model.reply(event.id, event.method, request, subs)
            ok = True
        else:
            code = data.draw(st.sampled_from([100, 103, 104, 107, 109, 111, 4000]), label="code")
            session.reply_error(Error(code))
            model.reply_error(event.id, event.method, code)
            ok = False
        assert allowed_change(before, session.state, event.method, ok)


def test_the_session_tables_are_the_documented_ones() -> None:
    assert ACCEPTED_METHODS == DOCUMENTED_ACCEPTED
    assert TRANSITIONS == {(CONNECTING, "connect"): (CONNECTED, FAILED)}


# --- crash-only fuzzing --------------------------------------------------------------

anything = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            ['{"id":1,"connect":{}}', "{}", '{"id":2,"subscribe":{"channel":"a"}}', "[", "]"]
            + ["{", "}", ",", ":", '"', "\\", '"id"', "1", "-", "\n", "null", "\ud800", "é"]
        ),
        max_size=40,
    ).map("".join),
)


@SETTINGS
@given(frame=anything)
def test_decode_frame_raises_nothing_but_value_errors_on_random_input(frame: str | bytes) -> None:
    try:
        commands = decode_frame(frame)
    except ValueError:  # msgspec.DecodeError and UnicodeEncodeError are ValueErrors
        return
    assert isinstance(commands, list)


# Over the WebSocket a text frame is always valid UTF-8 (websockets checks it), so the
# session gets str or valid UTF-8 bytes as text; invalid UTF-8 has a test of its own.
valid_text = st.one_of(
    anything.filter(lambda frame: isinstance(frame, str)),
    st.text(max_size=200)
    .map(lambda text: text.encode("utf-8", "surrogatepass"))
    .filter(lambda frame: _utf8(frame)),
)


def _utf8(frame: bytes) -> bool:
    try:
        frame.decode()
    except UnicodeDecodeError:
        return False
    return True


@SETTINGS
@given(
    inputs=st.lists(st.tuples(st.booleans(), st.one_of(anything, valid_text)), max_size=12),
    answers=st.randoms(use_true_random=False),
)
def test_random_bytes_never_make_the_session_raise(
    inputs: list[tuple[bool, str | bytes]], answers: Any
) -> None:
    session = Session(channel_limit=2, channel_max_length=8)
    for binary, frame in inputs:
        was_closed = session.state is CLOSED
        if binary:
            session.receive_binary(
                frame if isinstance(frame, bytes) else frame.encode("utf-8", "replace")
            )
        elif isinstance(frame, str) or _utf8(frame):
            session.receive_text(frame)
        else:
            continue  # invalid UTF-8 as text: test_invalid_utf8_bytes_close_with_bad_request
        while (event := session.next_event()) is not None:
            if isinstance(event, CloseConnection):
                break
            if event.id and event.method != "send":
                answer_at_random(session, event, answers.random)
        if answers.random() < 0.3:
            session.send_ping()
        for message in session.data_to_send():
            assert isinstance(json.loads(message), dict)
        if was_closed:
            assert session.state is CLOSED
        assert session.state in ACCEPTED_METHODS


def answer_at_random(session: Session, event: CommandReceived, random: Callable[[], float]) -> None:
    if random() < 0.5:
        fixed = {"connect": ConnectResult(client="c", version="0"), "subscribe": SubscribeResult()}
        session.reply(fixed.get(event.method, Empty()))  # type: ignore[arg-type]
    else:
        session.reply_error(Error(103))


# --- inputs that once crashed the session (fixed; kept as regressions) -----------------


def connected_session() -> Session:
    session = Session()
    session.receive_text('{"id":1,"connect":{}}')
    event = session.next_event()
    assert isinstance(event, CommandReceived)
    session.reply(ConnectResult(client="c", version="0"))
    session.data_to_send()
    return session


def test_a_send_with_an_id_is_not_answered_and_does_not_hold_the_next_command() -> None:
    session = connected_session()
    session.receive_text('{"id":7,"send":{"data":{}}}\n{"id":8,"subscribe":{"channel":"a"}}')
    event = session.next_event()
    assert isinstance(event, CommandReceived) and (event.id, event.method) == (7, "send")
    following = session.next_event()  # no answer owed for the send
    assert isinstance(following, CommandReceived) and following.id == 8
    assert session.data_to_send() == []


def test_deeply_nested_json_closes_with_bad_request_instead_of_raising() -> None:
    depth = 5000  # about 10 KB, well under the default 64 KiB message size
    session = connected_session()
    session.receive_text(
        '{"id":2,"publish":{"channel":"a","data":' + "[" * depth + "]" * depth + "}}"
    )
    event = session.next_event()
    assert isinstance(event, CloseConnection) and event.disconnect.code == BAD_REQUEST


def test_invalid_utf8_bytes_close_with_bad_request() -> None:
    session = connected_session()
    session.receive_text(b'{"id":2,"subscribe":{"channel":"\x8b"}}')
    event = session.next_event()
    assert isinstance(event, CloseConnection) and event.disconnect.code == BAD_REQUEST


def test_misuse_raises_the_documented_runtime_error() -> None:
    session = Session()
    with pytest.raises(RuntimeError):
        session.reply(Empty())
    session.receive_text('{"id":1,"connect":{}}\n{"id":2,"connect":{}}')
    assert isinstance(session.next_event(), CommandReceived)
    with pytest.raises(RuntimeError):
        session.next_event()  # command 1 is not answered yet


# --- the atheris target, for a bounded number of runs --------------------------------


KNOWN_BUGS = ""
"""Exceptions of known, reported src bugs the fuzzer should go past (none open)."""


def test_the_atheris_target_finds_no_crash_in_a_bounded_run(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("atheris is required under CI=true (pip install atheris)")
        pytest.skip("atheris is not installed")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # A fixed seed and a run count keep the run deterministic; the time cap bounds it
    # on slow machines.
    command = [
        sys.executable,
        str(FUZZ_TARGET),
        "-seed=1",
        "-runs=100000",
        "-max_total_time=20",
        "-max_len=4096",
        f"-dict={ROOT / 'fuzz' / 'json.dict'}",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    env = {**os.environ, "TIDINGS_FUZZ_IGNORE": KNOWN_BUGS}
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, check=False
    )
    tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("crash-"))
    assert completed.returncode == 0 and not crashes, f"fuzzer crash {crashes}:\n{tail}"
