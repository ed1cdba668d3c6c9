"""Coverage-guided fuzzing of the frame decoders and the session state machine (atheris).

Each input is used three times:

1. as one WebSocket text frame for :func:`tidings.protocol.wire.decode_frame`, which may
   only raise :class:`ValueError` (``msgspec.DecodeError``, ``UnicodeEncodeError``);
2. split on NUL bytes into frames fed to a :class:`tidings.protocol.session.Session` (the
   first byte of each says: binary frame, server ping, text frame as ``str``, text
   frame as bytes), whose commands a model application answers with a result or an
   error (a deterministic function of the input). Nothing may raise, ``CLOSED`` is
   final and every message written is one JSON object;
3. whole, as one binary frame for :func:`tidings.protocol.protobuf.decode_commands`
   (varint-delimited Protobuf commands), which may only raise :class:`ValueError`
   and otherwise returns a list of :class:`~tidings.protocol.wire.Command`.

Any other exception is a crash: libFuzzer writes the input as ``crash-<sha1>``.
``TIDINGS_FUZZ_IGNORE=UnicodeDecodeError,RecursionError`` (class names) lets the
fuzzer go past known, reported bugs.

    python fuzz/fuzz_decode.py -max_total_time=600 fuzz/corpus   # make fuzz
    python fuzz/fuzz_decode.py crash-<sha1>                      # replay one input

When the corpus directory is empty, a few seed frames are written to it first: JSON
sessions (``SEEDS``) and Protobuf frames (``PROTOBUF_SEEDS``, written as they are).
"""

from __future__ import annotations

import json
import os
import random
import sys
import zlib

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.protocol.codes import Error
    from tidings.protocol.protobuf import decode_commands
    from tidings.protocol.session import ACCEPTED_METHODS, CLOSED, CloseConnection, Session
    from tidings.protocol.wire import (
        Command,
        ConnectResult,
        Empty,
        HistoryResult,
        PresenceResult,
        PresenceStatsResult,
        RefreshResult,
        RPCResult,
        SubRefreshResult,
        SubscribeResult,
        decode_frame,
    )

RESULTS = {
    "connect": lambda: ConnectResult(client="c", version="0", subs={"srv": SubscribeResult()}),
    "subscribe": lambda: SubscribeResult(epoch="e", offset=1),
    "unsubscribe": Empty,
    "publish": Empty,
    "presence": lambda: PresenceResult(presence={}),
    "presence_stats": lambda: PresenceStatsResult(num_clients=0, num_users=0),
    "history": lambda: HistoryResult(publications=[], epoch="e", offset=0),
    "rpc": RPCResult,
    "refresh": RefreshResult,
    "sub_refresh": SubRefreshResult,
}

FRAME_SEPARATOR = b"\x00"
"""Frames of one input are separated by NUL; the first byte of each picks what it is."""

SEEDS = [
    [b'{"id":1,"connect":{"token":"t","name":"js"}}'],
    [
        b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:a","recover":true,'
        b'"offset":3,"epoch":"e"}}\n{"id":3,"publish":{"channel":"chat:a","data":{"x":[1,2]}}}',
        b'{"id":4,"history":{"channel":"a","limit":10,"since":{"offset":1,"epoch":"e"},'
        b'"reverse":true}}\n{"id":5,"presence":{"channel":"a"}}',
    ],
    [
        b'{"id":1,"connect":{}}',
        b'{"id":6,"rpc":{"method":"m","data":null}}\n{"send":{"data":"x"}}\n'
        b'{"id":7,"refresh":{"token":"t"}}\n{"id":8,"sub_refresh":{"channel":"$p","token":"t"}}',
        b'{"id":9,"unsubscribe":{"channel":"a"}}\n{"id":10,"presence_stats":{"channel":"a"}}',
        b"{}",
    ],
    [b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"a"}}', b"", b"{}", b"{}"],
]
"""Each seed: frames, written as text frames (first byte 3) separated by NUL."""

PROTOBUF_SEEDS = [
    # connect + subscribe (the reference's worked bytes)
    bytes.fromhex("0b080122070a0154220270790a08022a060a046e657773"),
    # pong, then connect with data, subs and headers
    bytes.fromhex("00230801221f12077b2261223a317d1a0c0a017312071801320165380332060a0168120176"),
    # subscribe with delta, flag and a tags filter
    bytes.fromhex(
        "3708032a330a0163180138076206666f7373696c6a200a03616e64320a1201741a02657122017632"
        "0d12016e1a02696e2a01312a01327003"
    ),
    # every other method
    bytes.fromhex(
        "0b08043a070a0163120200ff1b080552170a016338ffffffffffffffffff01420508011201654801"
        "0a08066a060a013112016d0562030a01780b08077a070a02247012017407080842030a0163070809"
        "4a030a016307080a32030a016307080b72030a0174"
    ),
]
"""Each seed: one binary frame of varint-delimited Protobuf commands, written as is."""


def feed_session(data: bytes) -> None:
    chunks = data.split(FRAME_SEPARATOR)
    rng = random.Random(zlib.crc32(data))  # answers: a deterministic function of the input
    session = Session(channel_limit=1 + len(chunks) % 4, channel_max_length=4 + len(data) % 29)
    for chunk in chunks:
        was_closed = session.state is CLOSED
        kind, frame = (chunk[0] % 8, chunk[1:]) if chunk else (3, b"")
        if kind == 0:
            session.receive_binary(frame)
        elif kind == 1:
            session.send_ping()
        elif kind == 2:
            session.receive_text(frame.decode("utf-8", "surrogateescape"))  # may be unencodable
        else:
            session.receive_text(frame)
        while (event := session.next_event()) is not None:
            if isinstance(event, CloseConnection):
                break
            if not event.id or event.method == "send":
                continue  # a send is never answered
            if rng.random() < 0.7:
                session.reply(RESULTS[event.method]())  # type: ignore[operator]
            else:
                session.reply_error(Error(rng.randint(100, 112)))
        for message in session.data_to_send():
            if b"\n" in message or not isinstance(json.loads(message), dict):
                raise AssertionError(f"not one JSON object: {message!r}")
        if was_closed and session.state is not CLOSED:
            raise AssertionError("left CLOSED")
        if session.state not in ACCEPTED_METHODS:
            raise AssertionError(f"unknown state {session.state}")


IGNORED = frozenset(filter(None, os.environ.get("TIDINGS_FUZZ_IGNORE", "").split(",")))
"""Exception class names not counted as crashes: known, reported bugs (see the README)."""


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    try:
        try:
            decode_frame(data)
        except ValueError:
            pass
        feed_session(data)
        try:
            commands = decode_commands(data)
        except ValueError:
            pass
        else:
            if not all(isinstance(command, Command) for command in commands):
                raise AssertionError(f"not a list of commands: {commands!r}")
    except Exception as exc:
        if type(exc).__name__ not in IGNORED:
            raise


def seed(argv: list[str]) -> None:
    """Write the seed frames into an empty corpus directory given on the command line."""
    for arg in argv[1:]:
        if not arg.startswith("-") and os.path.isdir(arg) and not os.listdir(arg):
            for number, frames in enumerate(SEEDS):
                with open(os.path.join(arg, f"seed-{number}"), "wb") as file:
                    file.write(FRAME_SEPARATOR.join(b"\x03" + frame for frame in frames))
            for number, frame in enumerate(PROTOBUF_SEEDS):
                with open(os.path.join(arg, f"seed-protobuf-{number}"), "wb") as file:
                    file.write(frame)


def main() -> None:
    seed(sys.argv)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
