"""The per-connection session of the client protocol, without I/O.

Theory of operation
-------------------

A :class:`Session` is fed the frames a connection delivered (:meth:`Session.receive_text`,
:meth:`Session.receive_binary`), decodes them with its :class:`~.codecs.Codec`
(JSON or Protobuf), and hands out, one at a time, the commands the
application must act on (:meth:`Session.next_event`). The application answers each
command with :meth:`Session.reply` or :meth:`Session.reply_error`, and writes what
:meth:`Session.data_to_send` returns. It never touches a socket, a clock or a task:
the I/O shell (``tidings._server``) owns those, and the node owns channels.

Rule 1: commands are handled one at a time, in the order they arrived. Until the
pending command is answered, :meth:`next_event` refuses to hand out another. This
is what makes ``connect`` take effect before the ``subscribe`` commands that the
SDKs send in the same frame.

Rule 2: the session enforces what the protocol says about *order and shape*, and
nothing about permissions. It answers on its own:

* a command before ``connect``, a second ``connect``, anything after a failed
  ``connect``, an unknown command, a missing id, an undecodable frame or an empty
  channel name: the connection is closed with 3501 (bad request);
* a binary frame on the JSON protocol: closed with 3506 (inappropriate protocol);
  the Protobuf protocol decodes frames of either type;
* a second subscribe to a channel: error 105; more than ``channel_limit``
  channels: error 106; a channel name over ``channel_max_length``, or with
  characters other than printable ASCII: error 107;
* the empty command (JSON ``{}``, Protobuf ``0x00``): a pong, closing with 3501
  when no ping was sent.

Rule 3: the state only changes through the tables below, when a command is
answered or when the connection is closed. ``CLOSED`` is final.

The tables
----------
Everything the session knows about a method is in three explicit tables, never in a
method's name looked up as a string:

* :data:`COMMANDS`, request type -> :class:`CommandSpec`: which :class:`Method` a
  decoded command is (a :class:`~.wire.Command` carries one request, and its type says
  which), and how its result is answered (the result's field in :class:`~.wire.Reply`).
  The client runs each method from its own table keyed by :class:`Method`
  (``tidings.node.client``); ``tests/node/test_client.py`` pins that every field of
  ``Command``, JSON and Protobuf, has a row here and a handler there;
* :data:`ACCEPTED_METHODS`, state -> the methods it accepts (Rule 2);
* :data:`TRANSITIONS`, (state, method) -> the state after a result or an error (Rule 3).

:attr:`Session.channels` is the one record of the connection's subscriptions: the
client reads it for permissions, the node to leave them all when the client goes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from msgspec.structs import astuple

from .codecs import JSON, Codec, fit_publication
from .codes import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    Disconnect,
    Error,
    ErrorCode,
    Unsubscribe,
)
from .wire import (
    Command,
    ConnectRequest,
    ConnectResult,
    Empty,
    ErrorBody,
    HistoryRequest,
    HistoryResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    Publication,
    PublishRequest,
    Push,
    RefreshRequest,
    RefreshResult,
    Reply,
    RPCRequest,
    RPCResult,
    SendRequest,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribePush,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribePush,
    UnsubscribeRequest,
)

__all__ = [
    "CloseConnection",
    "CommandReceived",
    "CommandSpec",
    "Method",
    "Request",
    "Result",
    "Session",
    "State",
]

ChannelRequest = (
    SubscribeRequest
    | UnsubscribeRequest
    | PublishRequest
    | PresenceRequest
    | PresenceStatsRequest
    | HistoryRequest
    | SubRefreshRequest
)
"""The requests that name a channel (``CommandSpec.channel``)."""
Request = ConnectRequest | RPCRequest | SendRequest | RefreshRequest | ChannelRequest
Result = (
    ConnectResult
    | SubscribeResult
    | Empty
    | PresenceResult
    | PresenceStatsResult
    | HistoryResult
    | RPCResult
    | RefreshResult
    | SubRefreshResult
)


class State(enum.Enum):
    CONNECTING = "connecting"  # waiting for the connect command
    CONNECTED = "connected"
    FAILED = "failed"  # connect was refused: the next command closes the connection
    CLOSED = "closed"


CONNECTING, CONNECTED, FAILED, CLOSED = State


class Method(enum.StrEnum):
    """A command method: its key on the wire, its field in ``Command`` and ``Reply``.

    A :class:`str`, so that it equals (and hashes as) that key.
    """

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    PRESENCE = "presence"
    PRESENCE_STATS = "presence_stats"
    HISTORY = "history"
    RPC = "rpc"
    SEND = "send"
    REFRESH = "refresh"
    SUB_REFRESH = "sub_refresh"


(
    CONNECT,
    SUBSCRIBE,
    UNSUBSCRIBE,
    PUBLISH,
    PRESENCE,
    PRESENCE_STATS,
    HISTORY,
    RPC,
    SEND,
    REFRESH,
    SUB_REFRESH,
) = Method


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A row of :data:`COMMANDS`: what the protocol says of one method."""

    method: Method
    channel: bool
    """The request names a channel, which Rule 2 checks."""
    answer: Callable[[int, Any], Reply] | None
    """The reply to command ``id`` with its result; None: never answered (``send``)."""


COMMANDS: Final[Mapping[type[Request], CommandSpec]] = {
    ConnectRequest: CommandSpec(CONNECT, False, lambda id, r: Reply(id=id, connect=r)),
    SubscribeRequest: CommandSpec(SUBSCRIBE, True, lambda id, r: Reply(id=id, subscribe=r)),
    UnsubscribeRequest: CommandSpec(UNSUBSCRIBE, True, lambda id, r: Reply(id=id, unsubscribe=r)),
    PublishRequest: CommandSpec(PUBLISH, True, lambda id, r: Reply(id=id, publish=r)),
    PresenceRequest: CommandSpec(PRESENCE, True, lambda id, r: Reply(id=id, presence=r)),
    PresenceStatsRequest: CommandSpec(
        PRESENCE_STATS, True, lambda id, r: Reply(id=id, presence_stats=r)
    ),
    HistoryRequest: CommandSpec(HISTORY, True, lambda id, r: Reply(id=id, history=r)),
    RPCRequest: CommandSpec(RPC, False, lambda id, r: Reply(id=id, rpc=r)),
    SendRequest: CommandSpec(SEND, False, None),
    RefreshRequest: CommandSpec(REFRESH, False, lambda id, r: Reply(id=id, refresh=r)),
    SubRefreshRequest: CommandSpec(SUB_REFRESH, True, lambda id, r: Reply(id=id, sub_refresh=r)),
}
"""Request type -> what the protocol says of its method (module docstring, "The tables")."""


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A command the application must act on, then answer (unless ``id`` is 0)."""

    id: int
    method: Method
    request: Request


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The session is over: close the WebSocket with this code and reason."""

    disconnect: Disconnect
    detail: str = ""
    """What was wrong, for the log (never sent to the client)."""


Event = CommandReceived | CloseConnection

# Which methods each state accepts; any other method closes with 3501.
ACCEPTED_METHODS: dict[State, frozenset[Method]] = {
    CONNECTING: frozenset({CONNECT}),
    CONNECTED: frozenset(Method) - {CONNECT},
    FAILED: frozenset(),
    CLOSED: frozenset(),
}

# (state, method) -> (state after a result, state after an error). Methods not
# listed leave the state as it is.
TRANSITIONS: dict[tuple[State, Method], tuple[State, State]] = {
    (CONNECTING, CONNECT): (CONNECTED, FAILED),
}

_CHANNEL_CHARACTERS = re.compile(r"[\x21-\x7e]+")
"""Channel names are printable ASCII without spaces (as Centrifugo's default)."""


class Session:
    """The client-protocol state of one connection.

    Args:
        codec: the encoding of the connection's frames (JSON by default).
        channel_limit: most channels one connection may be subscribed to (106 above).
        channel_max_length: longest channel name accepted (107 above).
        pongs: whether the client answers pings (not on unidirectional transports).
    """

    def __init__(
        self,
        codec: Codec = JSON,
        *,
        channel_limit: int = 128,
        channel_max_length: int = 255,
        pongs: bool = True,
    ) -> None:
        self.codec = codec
        self.pongs = pongs
        self.channel_limit = channel_limit
        self.channel_max_length = channel_max_length
        self.state = CONNECTING
        self.client_id = ""
        """Set from the connect result."""
        self.channels: tuple[str, ...] = ()
        """Channels this connection is subscribed to (client- and server-side), in order:
        the one record of its subscriptions (module docstring, "The tables").

        A tuple: 48 bytes for one channel where a set takes 216, and an idle
        connection is mostly this kind of thing (``bench/memprofile.py``).
        """
        self.awaiting_pong = False
        """A ping was sent and no pong came back yet."""
        self.disconnect: Disconnect | None = None
        """Why the session closed, once it has."""
        # A list, not a deque: an empty deque costs 600 bytes more, on every idle connection.
        self._commands: list[Command | CloseConnection] = []
        self._pending: CommandReceived | None = None
        self._output: list[bytes] = []

    # --- input -------------------------------------------------------------------

    def receive_text(self, frame: str | bytes) -> None:
        """Take one text frame. Then call :meth:`next_event` until it returns None."""
        if self.state is not CLOSED:
            self._receive(frame)

    def receive_binary(self, frame: bytes) -> None:
        """Take one binary frame: a batch of commands for Protobuf, 3506 for JSON."""
        if self.state is CLOSED:
            return
        if self.codec.binary:
            self._receive(frame)
        else:
            self._commands.clear()
            self._commands.append(
                _close(DISCONNECT_INAPPROPRIATE_PROTOCOL, "binary frame on the JSON protocol")
            )

    def _receive(self, frame: str | bytes) -> None:
        try:
            # str.encode fails on a lone surrogate (a ValueError too)
            commands = self.codec.decode(frame.encode() if isinstance(frame, str) else frame)
        except (ValueError, RecursionError) as exc:  # DecodeError, bad UTF-8, deep nesting
            self._commands.clear()
            self._commands.append(_bad(f"undecodable frame: {exc}"))
            return
        if not commands:
            self._commands.append(_bad("empty frame"))
            return
        self._commands.extend(commands)

    def next_event(self) -> Event | None:
        """Return the next command to act on, or None when all received ones are done.

        A :class:`CommandReceived` with ``id > 0`` must be answered with
        :meth:`reply` or :meth:`reply_error` before the next call. After a
        :class:`CloseConnection`, close the socket: nothing more comes.
        """
        if self._pending is not None:
            raise RuntimeError(f"command {self._pending.id} must be answered first")
        while self._commands and self.state is not CLOSED:
            command = self._commands.pop(0)
            if isinstance(command, CloseConnection):
                return self._closed(command)
            event = self._check(command)
            if event is None:  # answered by the session itself
                continue
            if isinstance(event, CloseConnection):
                return self._closed(event)
            if event.id and event.method is not SEND:  # a send is never answered
                self._pending = event
            return event
        return None

    # --- answers -----------------------------------------------------------------

    def reply(self, result: Result) -> None:
        """Answer the pending command with a result."""
        event = self._take_pending()
        after = TRANSITIONS.get((self.state, event.method))
        if after is not None:
            self.state = after[0]
        request = event.request
        if isinstance(result, ConnectResult):
            self.client_id = result.client
            for channel in result.subs or ():
                self._add(channel)
        elif event.method is SUBSCRIBE:
            assert isinstance(request, SubscribeRequest)
            self._add(request.channel)
        elif event.method is UNSUBSCRIBE:
            assert isinstance(request, UnsubscribeRequest)
            self._discard(request.channel)
        answer = COMMANDS[type(request)].answer
        assert answer is not None, "a send is never pending"
        fitted = _fit(self.codec, result)
        if fitted is None:
            # A recovered or historical payload the codec cannot carry (binary data
            # published over Protobuf, for a JSON client): as for a live one, 3506.
            self._commands.clear()
            self._commands.append(
                _close(DISCONNECT_INAPPROPRIATE_PROTOCOL, "a publication's data is not JSON")
            )
            return
        self._output.append(self.codec.encode(answer(event.id, fitted)))

    def reply_error(self, error: Error) -> None:
        """Answer the pending command with an error (the connection stays)."""
        event = self._take_pending()
        after = TRANSITIONS.get((self.state, event.method))
        if after is not None:
            self.state = after[1]
        self._send_error(event.id, error)

    # --- server-initiated --------------------------------------------------------

    def subscribe_server_side(self, channel: str, result: SubscribePush) -> None:
        """Tell the client it was subscribed to ``channel`` by the server."""
        self._add(channel)
        self._output.append(self.codec.encode(Reply(push=Push(channel=channel, subscribe=result))))

    def unsubscribe_server_side(self, channel: str, unsubscribe: Unsubscribe) -> None:
        """Tell the client it is no longer subscribed to ``channel``."""
        self._discard(channel)
        push = Push(channel=channel, unsubscribe=UnsubscribePush(*unsubscribe))
        self._output.append(self.codec.encode(Reply(push=push)))

    def channel_problem(self, channel: str) -> str:
        """What is wrong with a channel name (too long, characters), or ``""``."""
        if len(channel) > self.channel_max_length:
            return "channel too long"
        if not _CHANNEL_CHARACTERS.fullmatch(channel):
            return "invalid channel name"
        return ""

    def send_ping(self) -> None:
        """Queue a ping; the client must answer it (see :attr:`awaiting_pong`), unless
        it sends no pongs."""
        if self.state is CONNECTED:
            self.awaiting_pong = self.pongs
            self._output.append(self.codec.ping)

    def close(self, disconnect: Disconnect) -> None:
        """End the session (the I/O layer closes the socket with ``disconnect``)."""
        self.state = CLOSED
        self.disconnect = disconnect
        self._commands.clear()
        self._pending = None

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the messages to write, in order, each encoded by the codec."""
        output, self._output = self._output, []
        return output

    # --- internals ---------------------------------------------------------------

    def _add(self, channel: str) -> None:
        if channel not in self.channels:
            self.channels = (*self.channels, channel)

    def _discard(self, channel: str) -> None:
        self.channels = tuple(c for c in self.channels if c != channel)

    def _check(self, command: Command) -> Event | None:
        """Validate one command against the protocol rules (module docstring)."""
        # The request is the first field set after the id; its type says the method.
        request: Request
        spec: CommandSpec | None = None
        for request in astuple(command)[1:]:
            if request is not None:
                spec = COMMANDS[type(request)]
                break
        if spec is None or (command.id == 0 and spec.method is not SEND):
            if spec is None and command.id == 0:
                return self._pong()
            return _close(DISCONNECT_BAD_REQUEST, f"command {command.id}: no known method")
        method = spec.method
        if method is SEND:
            if self.state is not CONNECTED:
                return _close(DISCONNECT_BAD_REQUEST, f"send in state {self.state.value}")
        elif method not in ACCEPTED_METHODS[self.state]:
            return _close(
                DISCONNECT_BAD_REQUEST, f"{method} (id {command.id}) in state {self.state.value}"
            )
        if spec.channel:
            channel = cast(ChannelRequest, request).channel
            if not channel:
                return _close(DISCONNECT_BAD_REQUEST, f"{method} (id {command.id}): empty channel")
            problem = self.channel_problem(channel)
            if problem:
                self._send_error(command.id, Error(ErrorCode.BAD_REQUEST, problem))
                return None
            if method is SUBSCRIBE:
                if channel in self.channels:
                    self._send_error(command.id, Error(ErrorCode.ALREADY_SUBSCRIBED))
                    return None
                if len(self.channels) >= self.channel_limit:
                    self._send_error(command.id, Error(ErrorCode.LIMIT_EXCEEDED))
                    return None
        return CommandReceived(command.id, method, request)

    def _pong(self) -> Event | None:
        if not self.awaiting_pong:
            return _close(DISCONNECT_BAD_REQUEST, "pong without a ping")
        self.awaiting_pong = False
        return None

    def _closed(self, event: CloseConnection) -> CloseConnection:
        self.close(event.disconnect)
        return event

    def _take_pending(self) -> CommandReceived:
        event = self._pending
        if event is None:
            raise RuntimeError("no command is waiting for an answer")
        self._pending = None
        return event

    def _send_error(self, command_id: int, error: Error) -> None:
        body = ErrorBody(code=error.code, message=error.message, temporary=error.temporary)
        self._output.append(self.codec.encode(Reply(id=command_id, error=body)))


def _fit(codec: Codec, result: Result) -> Result | None:
    """``result`` with the payloads of its publications as ``codec`` carries them (copies
    only where a payload changes); None if one cannot be carried."""
    if isinstance(result, (HistoryResult, SubscribeResult)):
        publications: list[Publication] = []
        for publication in result.publications:
            fitted = fit_publication(codec, publication)
            if fitted is None:
                return None
            publications.append(fitted)
        if any(new is not old for new, old in zip(publications, result.publications, strict=True)):
            return msgspec.structs.replace(result, publications=publications)
    elif isinstance(result, ConnectResult) and result.subs:
        subs: dict[str, SubscribeResult] = {}
        for channel, sub in result.subs.items():
            fitted_sub = _fit(codec, sub)
            if fitted_sub is None:
                return None
            assert isinstance(fitted_sub, SubscribeResult)
            subs[channel] = fitted_sub
        if any(subs[channel] is not sub for channel, sub in result.subs.items()):
            return msgspec.structs.replace(result, subs=subs)
    return result


def _close(disconnect: Disconnect, detail: str) -> CloseConnection:
    return CloseConnection(disconnect, detail)


def _bad(detail: str) -> CloseConnection:
    return _close(DISCONNECT_BAD_REQUEST, detail)
