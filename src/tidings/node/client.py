"""One connected client: its session, its identity, and the commands it sends.

:class:`Client` glues a sans-I/O :class:`~tidings.protocol.session.Session` to the
:class:`~tidings.node.node.Node`: it checks tokens, permissions and hooks, runs each
command against the node and writes the answers through a :class:`Transport`.
It knows no socket either; the server shell provides the transport.

Each method runs from one explicit table, ``_COMMANDS`` (at the end of this module):
:class:`~tidings.protocol.session.Method` -> its handler, and the channel options that
permit it where Centrifugo has some (``allow_<feature>_for_client``, ``_for_subscriber``,
``_for_anonymous``; :meth:`Client._may` applies them). ``tests/node/test_client.py``
pins that every method of the protocol has a row.

The client's subscriptions are recorded once, in ``session.channels`` (in order): the
session puts a channel there when its subscribe is answered or pushed (or the connect
reply lists it) and takes it out when its unsubscribe is answered or pushed. The node
leaves them all when the client goes (:meth:`~tidings.node.node.Node.remove_client`),
and keeps what a subscription needs (options, the client's info in the channel) in its
own entry. A subscription the node made but the record never got (the connection ended
while it was in progress, or the connect that asked for it failed) is left at once, by
the code that asked for it (:meth:`Client._join`, ``_subscribe_server_side``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeVar

import msgspec
from msgspec import Raw

from .. import __about__
from ..options import ChannelOptions, Config
from ..protocol.codecs import JSON, Codec
from ..protocol.codes import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CONNECTION_LIMIT,
    DISCONNECT_EXPIRED,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_INSUFFICIENT_STATE,
    DISCONNECT_INVALID_TOKEN,
    DISCONNECT_NO_PONG,
    DISCONNECT_NOT_AVAILABLE,
    DISCONNECT_STALE,
    DISCONNECT_SUBSCRIPTION_EXPIRED,
    DISCONNECT_TOO_MANY_REQUESTS,
    UNSUBSCRIBE_INSUFFICIENT_STATE,
    UNSUBSCRIBE_SERVER,
    UNSUBSCRIBE_SUBSCRIPTION_EXPIRED,
    Disconnect,
    DisconnectRequest,
    Error,
    ErrorCode,
    Unsubscribe,
)
from ..protocol.delta import DELTA_TYPES
from ..protocol.filters import FilterError, TagsFilter, parse_filter
from ..protocol.session import (
    CONNECT,
    CONNECTED,
    CONNECTING,
    HISTORY,
    PRESENCE,
    PRESENCE_STATS,
    PUBLISH,
    REFRESH,
    RPC,
    SEND,
    SUB_REFRESH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    CloseConnection,
    CommandReceived,
    Method,
    Result,
    Session,
)
from ..protocol.wire import (
    NO_DATA,
    ClientInfo,
    ConnectRequest,
    ConnectResult,
    Empty,
    HistoryRequest,
    HistoryResult,
    MessagePush,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    Push,
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
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    optional_raw,
    to_raw,
)
from .auth import ConnectToken, InvalidToken, SubscribeToken, TokenExpired, TokenVerifier
from .channels import channel_options, is_private, is_user_limited, user_allowed
from .control import Control
from .hooks import (
    ConnectEvent,
    DisconnectEvent,
    Hooks,
    MessageEvent,
    PublishEvent,
    RefreshEvent,
    RPCEvent,
    SubRefreshEvent,
    SubscribeEvent,
    UnsubscribeEvent,
)
from .limits import TokenBucket, Turns
from .metrics import Metrics
from .node import Node, Recovery, encode_push

__all__ = ["Client", "Context", "Transport"]

logger = logging.getLogger("tidings.client")
_T = TypeVar("_T", bound="ConnectToken | SubscribeToken")

UNSUBSCRIBE_CLIENT = Unsubscribe(0, "unsubscribe called")
"""Internal code for hooks: the client unsubscribed itself (never sent)."""
UNSUBSCRIBE_DISCONNECT = Unsubscribe(1, "disconnect")
"""Internal code for hooks: the subscription ended with the connection (never sent)."""
SUBSCRIBE_REJECT_UNRECOVERED: Final = 2
"""Subscribe ``flag`` bit: an unrecoverable position is error 112."""


class Transport(Protocol):
    """Where a client's messages go: the server shell's side of a connection."""

    def write(self, data: bytes) -> None:
        """Queue one message (one JSON object, no newline). Must not block."""
        ...

    def close(self, disconnect: Disconnect) -> None:
        """Close the connection with this code once queued messages are written."""
        ...


@dataclass(frozen=True, slots=True)
class Context:
    """What every client of a hub shares."""

    node: Node[Client]
    config: Config
    verifier: TokenVerifier
    hooks: Hooks = field(default_factory=Hooks)
    metrics: Metrics = field(default_factory=Metrics)
    turns: Turns = field(default_factory=lambda: Turns(TURNS_PER_ITERATION))
    """Shared by handshakes and received messages: see :class:`~tidings._limits.Turns`."""
    control: Control | None = None
    """Messages to the other nodes (``/emulation`` posts for their sessions)."""


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

TURNS_PER_ITERATION = 64
"""Clients whose message is handled in one event-loop iteration, at most (~20 ms
of work at a storm's connect + subscribe with recovery)."""


class Client:
    """A connected client, driven by the frames its connection receives."""

    def __init__(
        self,
        context: Context,
        transport: Transport,
        *,
        codec: Codec = JSON,
        headers: Mapping[str, str] | None = None,
        transport_name: str = "websocket",
        session_id: str = "",
        emulated: bool = False,
        unidirectional: bool = False,
    ) -> None:
        """``session_id``: the session of an emulated (HTTP-streaming, SSE) or
        unidirectional connection, sent in the connect reply (with this node's id when
        ``emulated``: ``/emulation`` posts name both)."""
        self.context = context
        self.node = context.node
        self.config = context.config
        self.hooks = context.hooks
        self.metrics = context.metrics
        self.transport = transport
        self.headers: Mapping[str, str] = headers or _NO_HEADERS
        self.session = Session(
            codec,
            channel_limit=self.config.client.channel_limit,
            channel_max_length=self.config.client.channel_max_length,
            pongs=not unidirectional,
        )
        self.transport_name = transport_name
        """``websocket``, ``http_stream``, ``sse``, ``uni_websocket``, ... (for hooks)."""
        self.session_id = session_id
        self.emulated = emulated
        self.id = str(uuid.uuid4())
        self.user = ""
        self.conn_info = NO_DATA
        self.expire_at = 0
        self.closed = False
        self._held: list[bytes] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._sub_tokens: dict[str, int] | None = None
        """Channel -> expiry (0: none) of the token of each subscription made with one:
        the subscriptions ``sub_refresh`` applies to."""
        self._sub_leases: dict[str, int] | None = None
        """Channel -> expiry the subscribe hook gave: the sub_refresh hook extends it."""
        self._sub_expiry_timer: asyncio.TimerHandle | None = None
        self._server_side: set[str] | None = None
        """Channels the server subscribed this client to (made on first use)."""
        self._background: set[asyncio.Task[None]] | None = None  # made on first use
        # Heartbeat deadlines (loop time; see heartbeat()).
        self.due = math.inf
        self._ping_at = self._pong_at = self._stale_at = math.inf
        rate = self.config.client.command_rate_limit
        self._commands = TokenBucket(rate, 2 * rate) if rate > 0 else None
        self._rejected = 0

    @property
    def codec(self) -> Codec:
        return self.session.codec

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this client is subscribed to: the session's record of them."""
        return self.session.channels

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.user!r}>"

    # --- input from the connection -----------------------------------------------

    async def receive(self, message: str | bytes) -> None:
        """Take one message as ``websockets`` gives it: text as str, binary as bytes."""
        await self.context.turns.take()
        if isinstance(message, str):
            await self.receive_text(message)
        else:
            await self.receive_binary(message)

    async def receive_text(self, frame: str | bytes) -> None:
        self.session.receive_text(frame)
        await self._process()

    async def receive_binary(self, frame: bytes) -> None:
        self.session.receive_binary(frame)
        await self._process()

    async def _process(self) -> None:
        while not self.closed:
            event = self.session.next_event()
            # What the session answered by itself (105, 106, 107) goes out too.
            self._flush()
            if event is None:
                break
            if isinstance(event, CloseConnection):
                self._log_bad_input(event.disconnect, event.detail)
                self.disconnect(event.disconnect)
                break
            self.metrics.received[event.method].inc()
            if self._commands is not None and not self._commands.take():
                self._too_many(event)
                continue
            self._rejected = 0
            await self._handle(event)
            if event.id and event.method is not SEND:
                self.metrics.sent_reply.inc()
            self._flush()

    def _too_many(self, event: CommandReceived) -> None:
        """Over the command rate: error 111, and 3013 for a client that keeps going."""
        self._rejected += 1
        if self._rejected > max(10.0, self.config.client.command_rate_limit):
            self._log_bad_input(DISCONNECT_TOO_MANY_REQUESTS, "over the command rate limit")
            self.disconnect(DISCONNECT_TOO_MANY_REQUESTS)
            return
        self.metrics.command_errors.labels(str(ErrorCode.TOO_MANY_REQUESTS)).inc()
        if event.id:
            self.session.reply_error(Error(ErrorCode.TOO_MANY_REQUESTS))
            self._flush()

    async def _handle(self, event: CommandReceived) -> None:
        try:
            result = await _COMMANDS[event.method].handler(self, event.request)
        except Error as error:
            self.metrics.command_errors.labels(str(error.code)).inc()
            if event.id:
                self.session.reply_error(error)
            return
        except DisconnectRequest as exc:
            self._log_bad_input(exc.disconnect, f"{event.method}: {exc.detail}")
            self.disconnect(exc.disconnect)
            return
        except Exception:
            logger.exception("client %s: %s failed", self.id, event.method)
            self.metrics.command_errors.labels(str(ErrorCode.INTERNAL)).inc()
            if event.id:
                self.session.reply_error(Error(ErrorCode.INTERNAL))
            return
        if event.id and result is not None:
            self.session.reply(result)

    # --- output ------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        """Queue a push from the node (encoded once for all its subscribers)."""
        if self._held is not None:
            self._held.append(data)
        elif not self.closed:
            self.transport.write(data)

    def _flush(self) -> None:
        for data in self.session.data_to_send():
            self.transport.write(data)

    def disconnect(self, disconnect: Disconnect) -> None:
        """Close the connection (idempotent)."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        self.session.close(disconnect)
        self._cancel_timers()
        self.transport.close(disconnect)

    def send_ping(self) -> bool:
        """Send a ping; return False if the previous one is still unanswered, or if
        the client is not connected (yet, or any more)."""
        if self.session.awaiting_pong or self.session.state is not CONNECTED:
            return False
        self.session.send_ping()
        self.metrics.sent_ping.inc()
        self._flush()
        return True

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it is done (cancelled on cleanup)."""
        if self._background is None:
            self._background = set()
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- heartbeat: pings, the pong deadline, the stale check ----------------------
    # Deadlines, not loop timers: the server's periodic tick reads ``due`` and sets a
    # timer calling heartbeat() only for the clients due before its next tick (two
    # timers per client would cost ~1 KiB of every idle connection).

    def start_heartbeat(self, now: float) -> None:
        """Set the first deadlines; ``now`` is the loop's time."""
        options = self.config.client
        # The first ping is randomized to spread the pings of clients that
        # connected together (say, after a restart), and the later ones keep
        # their spread (each is ping_interval after the previous one). Never
        # later than ping_interval: the client waits only so long, plus a margin.
        self._ping_at = now + random.uniform(options.ping_interval / 2, options.ping_interval)
        self._stale_at = now + options.stale_close_delay
        self.due = min(self._ping_at, self._stale_at)

    def heartbeat(self, now: float) -> None:
        """Act on the deadlines passed by ``now``: stale (3502), no pong (3012), ping."""
        if self.closed:
            self.due = math.inf
            return
        if now >= self._stale_at:
            self._stale_at = math.inf
            if self.session.state is CONNECTING:
                self.disconnect(DISCONNECT_STALE)
                return
        if now >= self._pong_at:
            self._pong_at = math.inf
            if self.session.awaiting_pong:
                self.disconnect(DISCONNECT_NO_PONG)
                return
        if now >= self._ping_at:
            options = self.config.client
            self._ping_at = now + options.ping_interval
            if self.send_ping() and self.session.pongs:
                self._pong_at = now + options.pong_timeout
        self.due = min(self._ping_at, self._pong_at, self._stale_at)

    async def cleanup(self, code: int, reason: str) -> None:
        """Leave every channel and tell the hooks; call once the connection is gone.

        ``code``/``reason`` say how the connection ended when the server did not
        close it itself (the peer's close code, or 1006).
        """
        if self.session.disconnect is not None:
            code, reason = self.session.disconnect
        self.closed = True
        self._cancel_timers()
        for task in self._background or ():
            task.cancel()
        self.metrics.disconnects.labels(str(code)).inc()
        channels = self.session.channels
        await self.node.remove_client(self)
        if not self.session.client_id:
            return  # never connected: nothing to tell the hooks
        for channel in channels:
            await self._unsubscribed(channel, UNSUBSCRIBE_DISCONNECT)
        if self.hooks.disconnect is not None:
            await self._observe(
                self.hooks.disconnect(DisconnectEvent(self.id, self.user, code, reason))
            )

    def _log_bad_input(self, disconnect: Disconnect, detail: str) -> None:
        logger.warning(
            "client %s (user %r) disconnected: %d %s: %s",
            self.id,
            self.user,
            disconnect.code,
            disconnect.reason,
            detail,
            extra={"client": self.id, "user": self.user},
        )

    # --- commands ----------------------------------------------------------------

    async def _on_connect(self, request: ConnectRequest) -> None:
        channels: list[str] = []
        authenticated = False
        if request.token:
            token = self._verify(self.context.verifier.verify_connect, request.token)
            self.user, self.conn_info = token.user, token.info
            self.expire_at, channels = token.expire_at, list(token.channels)
            authenticated = True
        connect_data = NO_DATA
        if self.hooks.connect is not None:
            reply = await self.hooks.connect(
                ConnectEvent(
                    client=self.id,
                    user=self.user,
                    token=request.token,
                    data=_decode(request.data),
                    name=request.name,
                    version=request.version,
                    headers=self.headers,
                    channels=tuple(channels),
                    protocol=self.codec.name,
                    transport=self.transport_name,
                )
            )
            if reply is not None:
                if reply.user is not None:
                    self.user, authenticated = reply.user, True
                if reply.info is not None:
                    self.conn_info = to_raw(reply.info)
                if reply.data is not None:
                    connect_data = to_raw(reply.data)
                if reply.expire_at is not None:
                    self.expire_at = reply.expire_at
                channels += [c for c in reply.channels if c not in channels]
        self.headers = _NO_HEADERS  # only the connect hook sees them: free them
        if not authenticated and not self.config.client.allow_anonymous_connect_without_token:
            raise DisconnectRequest(DISCONNECT_BAD_REQUEST, "client credentials not found")
        limit = self.config.client.user_connection_limit
        if limit and self.user and len(self.node.user_clients(self.user)) >= limit:
            raise DisconnectRequest(DISCONNECT_CONNECTION_LIMIT, f"user {self.user!r} at limit")
        if not self.session.pongs:
            # A unidirectional client cannot subscribe: the channels it names in
            # ``subs`` are subscribed for it where it could subscribe without a token
            # (up to client.channel_limit in all).
            room = self.config.client.channel_limit - len(channels)
            named = [c for c in request.subs if c not in channels and self._open_to(c)]
            channels += named[: max(0, room)]
        server_side = {channel: channel_options(self.config, channel) for channel in channels}

        if self.closed:  # the connection ended while the hooks were asked
            return
        self.node.add_client(self)
        self._held = []  # pushes wait until the connect reply is written
        try:
            subs = await self._subscribe_server_side(server_side, request)
        except BaseException:
            self._held = None
            raise
        if self.closed:  # the connection ended meanwhile: nothing to answer
            self._held = None
            return
        # With a refresh hook the server extends the connection itself, so the
        # client is not asked to refresh (no expires/ttl), as in Centrifugo.
        client_refreshes = bool(self.expire_at) and self.hooks.refresh is None
        self._schedule_expiry()
        self.session.reply(
            ConnectResult(
                client=self.id,
                version=__about__.__version__,
                expires=client_refreshes,
                ttl=self._ttl(self.expire_at) if client_refreshes else 0,
                data=connect_data,
                subs=subs or None,
                ping=max(1, round(self.config.client.ping_interval)),
                pong=self.session.pongs,
                session=self.session_id,
                node=self.node.uid if self.emulated else "",
            )
        )
        self._mark_server_side(subs)
        held, self._held = self._held, None
        self._flush()
        for data in held:
            self.deliver(data)

    async def _subscribe_server_side(
        self, channels: dict[str, ChannelOptions], request: ConnectRequest
    ) -> dict[str, SubscribeResult]:
        """Subscribe to the token's channels, recovering where ``connect.subs`` says.

        The connect reply records them in the session. When it is not to come (a
        subscribe failed, or the connection ended), those subscribed so far are left.
        """
        results: dict[str, SubscribeResult] = {}
        try:
            for channel, options in channels.items():
                if self.closed:
                    break
                recover = request.subs.get(channel)
                recovery = Recovery(
                    recover=recover is not None and recover.recover,
                    position=StreamPosition(recover.offset, recover.epoch)
                    if recover
                    else StreamPosition(),
                )
                await self.node.subscribe(
                    self,
                    channel,
                    options,
                    info=self._info(),
                    recovery=recovery,
                    push_join_leave=options.force_push_join_leave,
                    reply=functools.partial(results.__setitem__, channel),
                )
        finally:
            if self.closed or len(results) < len(channels):  # no connect reply to come
                await self._leave(results)
        return results

    async def _on_refresh(self, request: RefreshRequest) -> RefreshResult:
        if not request.token:
            raise DisconnectRequest(DISCONNECT_BAD_REQUEST, "refresh without a token")
        try:
            token = self.context.verifier.verify_connect(request.token)
        except TokenExpired:
            raise DisconnectRequest(DISCONNECT_EXPIRED, "refresh with an expired token") from None
        except InvalidToken as exc:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, str(exc)) from None
        if token.user != self.user:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, "refresh token of another user")
        self.expire_at = token.expire_at
        self._schedule_expiry()
        return RefreshResult(
            client=self.id,
            version=__about__.__version__,
            expires=bool(self.expire_at),
            ttl=self._ttl(self.expire_at),
        )

    def _open_to(self, channel: str) -> bool:
        """Whether this client may subscribe to ``channel`` without a token, by the
        channel's options (not where a subscribe hook decides)."""
        if self.hooks.subscribe is not None or self.session.channel_problem(channel):
            return False
        try:
            options = channel_options(self.config, channel)
        except Error:
            return False  # an unknown namespace
        if is_private(channel):
            return False
        if is_user_limited(channel, options):
            return user_allowed(channel, self.user)
        return self._may(SUBSCRIBE, options, subscribed=False)

    async def _on_subscribe(self, request: SubscribeRequest) -> None:
        channel = request.channel
        options = channel_options(self.config, channel)
        chan_info, expire_at, data, lease = NO_DATA, 0, NO_DATA, 0
        if request.token:
            token = self._verify_subscribe(request.token, channel)
            chan_info, expire_at = token.info, token.expire_at
        elif is_private(channel):
            raise Error(ErrorCode.PERMISSION_DENIED)
        elif is_user_limited(channel, options):
            if not user_allowed(channel, self.user):
                raise Error(ErrorCode.PERMISSION_DENIED)
        elif self.hooks.subscribe is not None:
            event = SubscribeEvent(
                self.id,
                self.user,
                channel,
                _decode(request.data),
                self.codec.name,
                transport=self.transport_name,
            )
            decision = await self.hooks.subscribe(event)
            if decision is not None:
                chan_info, data = optional_raw(decision.info), optional_raw(decision.data)
                lease = decision.expire_at or 0
        elif not self._may(SUBSCRIBE, options, subscribed=False):
            raise Error(ErrorCode.PERMISSION_DENIED)
        tags_filter = None
        if bytes(request.tf) not in (b"", b"null"):
            if not options.allow_tags_filter:
                raise Error(ErrorCode.BAD_REQUEST, "tags filter not allowed in this channel")
            try:
                tags_filter = parse_filter(bytes(request.tf))
            except FilterError as exc:
                raise Error(ErrorCode.BAD_REQUEST, str(exc)) from None
        if request.delta and request.delta not in DELTA_TYPES:
            raise DisconnectRequest(DISCONNECT_BAD_REQUEST, f"unknown delta type {request.delta!r}")
        # Not negotiated (silently) where the channel does not allow it, and never
        # with a filter: a filtered client's previous publication is not the stream's.
        delta = request.delta in options.allowed_delta_types and tags_filter is None
        push_join_leave = options.force_push_join_leave or (
            request.join_leave
            and options.join_leave
            and self._may(PRESENCE, options, subscribed=True)
        )

        def reply(result: SubscribeResult) -> None:
            if self.closed:
                return  # nothing to answer or record: _join leaves the channel
            if expire_at:
                result.expires, result.ttl = True, self._ttl(expire_at)
            self._record_sub_token(channel, expire_at if request.token else None)
            self._record_lease(channel, lease or None)
            result.data = data
            self.session.reply(result)
            self._flush()

        await self._join(
            channel,
            options,
            chan_info=chan_info,
            recovery=Recovery(
                recover=request.recover,
                position=StreamPosition(request.offset, request.epoch),
                recoverable=request.recoverable and options.allow_recovery,
                positioned=request.positioned and options.allow_positioning,
                reject_unrecovered=bool(request.flag & SUBSCRIBE_REJECT_UNRECOVERED),
            ),
            push_join_leave=push_join_leave,
            tags_filter=tags_filter,
            delta=delta,
            reply=reply,
        )

    async def _join(
        self,
        channel: str,
        options: ChannelOptions,
        *,
        chan_info: Raw,
        recovery: Recovery,
        push_join_leave: bool,
        tags_filter: tuple[TagsFilter, bytes] | None = None,
        delta: bool = False,
        reply: Callable[[SubscribeResult], None],
    ) -> None:
        """Subscribe on the node; ``reply`` records the subscription in the session.

        A reply that finds the client closed records nothing: the subscription is left
        here, since the client's cleanup leaves only the channels of the record.
        """
        try:
            await self.node.subscribe(
                self,
                channel,
                options,
                info=self._info(chan_info),
                recovery=recovery,
                push_join_leave=push_join_leave,
                tags_filter=tags_filter,
                delta=delta,
                reply=reply,
            )
        finally:
            if self.closed and channel not in self.session.channels:
                await self._leave((channel,))

    async def _leave(self, channels: Iterable[str]) -> None:
        """Leave channels the node subscribed this client to but the record lacks."""
        for channel in channels:
            await self.node.unsubscribe(self, channel)

    async def _on_sub_refresh(self, request: SubRefreshRequest) -> SubRefreshResult:
        if request.channel not in self.session.channels:
            raise Error(ErrorCode.PERMISSION_DENIED)
        if self._sub_tokens is None or request.channel not in self._sub_tokens:
            # Server-side, or subscribed without a token: nothing to refresh (Centrifugo).
            raise DisconnectRequest(DISCONNECT_BAD_REQUEST, "sub_refresh without a sub token")
        if not request.token:
            raise Error(ErrorCode.BAD_REQUEST)
        try:
            token = self._verify_subscribe(request.token, request.channel)
        except Error as exc:
            if exc.code != ErrorCode.TOKEN_EXPIRED:
                raise
            # Too late to refresh: as centrifugal/centrifuge#627 settled.
            raise DisconnectRequest(
                DISCONNECT_SUBSCRIPTION_EXPIRED, "subscription token expired"
            ) from None
        self._record_sub_token(request.channel, token.expire_at)
        return SubRefreshResult(expires=bool(token.expire_at), ttl=self._ttl(token.expire_at))

    async def _on_unsubscribe(self, request: UnsubscribeRequest) -> Empty:
        self._forget_expiries(request.channel)
        if request.channel in self.session.channels:
            await self.node.unsubscribe(self, request.channel)
            await self._unsubscribed(request.channel, UNSUBSCRIBE_CLIENT)
        return Empty()

    async def _on_publish(self, request: PublishRequest) -> Empty:
        channel = request.channel
        options = channel_options(self.config, channel)
        data, skip_history = request.data, False
        if not bytes(data):
            raise Error(ErrorCode.BAD_REQUEST, "publish needs data")
        if self.hooks.publish is not None:
            reply = await self.hooks.publish(
                PublishEvent(
                    self.id,
                    self.user,
                    channel,
                    _decode(data),
                    self.codec.name,
                    transport=self.transport_name,
                )
            )
            if reply is not None:
                if reply.data is not None:
                    data = to_raw(reply.data)
                skip_history = reply.skip_history
        elif not self._may(PUBLISH, options, channel in self.session.channels):
            raise Error(ErrorCode.PERMISSION_DENIED)
        # The client's info in the channel, if it is subscribed: the node's subscription has it.
        subscribed = self.node.subscription_info(self.id, channel)
        info = self._info(subscribed.chan_info if subscribed is not None else NO_DATA)
        await self.node.publish(channel, data, options, info=info, skip_history=skip_history)
        return Empty()

    async def _on_presence(self, request: PresenceRequest) -> PresenceResult:
        self._check_presence(PRESENCE, request.channel)
        return PresenceResult(presence=await self.node.presence(request.channel))

    async def _on_presence_stats(self, request: PresenceStatsRequest) -> PresenceStatsResult:
        self._check_presence(PRESENCE_STATS, request.channel)
        stats = await self.node.presence_stats(request.channel)
        return PresenceStatsResult(num_clients=stats.num_clients, num_users=stats.num_users)

    async def _on_history(self, request: HistoryRequest) -> HistoryResult:
        channel = request.channel
        options = channel_options(self.config, channel)
        if not options.history_enabled:
            raise Error(ErrorCode.NOT_AVAILABLE)
        if not self._may(HISTORY, options, channel in self.session.channels):
            raise Error(ErrorCode.PERMISSION_DENIED)
        if request.reverse and request.since is not None and request.since.offset == 0:
            raise Error(ErrorCode.BAD_REQUEST, "reverse history needs since.offset")
        publications, top = await self.node.history(
            channel, limit=request.limit, since=request.since, reverse=request.reverse
        )
        return HistoryResult(publications=list(publications), epoch=top.epoch, offset=top.offset)

    async def _on_rpc(self, request: RPCRequest) -> RPCResult:
        if self.hooks.rpc is None:
            raise Error(ErrorCode.METHOD_NOT_FOUND)
        result = await self.hooks.rpc(
            RPCEvent(
                self.id,
                self.user,
                request.method,
                _decode(request.data),
                self.codec.name,
                transport=self.transport_name,
            )
        )
        return RPCResult(data=optional_raw(result))

    async def _on_send(self, request: SendRequest) -> None:
        if self.hooks.message is None:
            # As in Centrifugo: else the client would never learn its messages go nowhere.
            raise DisconnectRequest(DISCONNECT_NOT_AVAILABLE, "send without a message hook")
        await self.hooks.message(
            MessageEvent(
                self.id,
                self.user,
                _decode(request.data),
                self.codec.name,
                transport=self.transport_name,
            )
        )

    def send_message(self, data: Raw) -> None:
        """Push ``data`` to this connection alone: a ``message`` push (SDKs' ``message``
        event)."""
        self.deliver(self.codec.encode(Reply(push=Push(message=MessagePush(data=data)))))

    # --- server-side operations (server API) -------------------------------------

    async def subscribe_by_server(
        self,
        channel: str,
        *,
        info: Raw = NO_DATA,
        data: Raw = NO_DATA,
        recover_since: StreamPosition | None = None,
    ) -> None:
        """Subscribe this client to ``channel`` and tell it with a subscribe push.

        Publications recovered from ``recover_since`` follow the push.
        """
        if channel in self.session.channels or self.closed:
            return
        options = channel_options(self.config, channel)

        def reply(result: SubscribeResult) -> None:
            if self.closed:
                return  # nothing to push or record: _join leaves the channel
            push = SubscribePush(
                recoverable=result.recoverable,
                epoch=result.epoch,
                offset=result.offset,
                positioned=result.positioned,
                data=data,
            )
            self.session.subscribe_server_side(channel, push)
            self._flush()
            self._mark_server_side((channel,))
            for publication in result.publications:
                encoded = encode_push(self.codec, Push(channel=channel, pub=publication))
                if encoded is None:
                    self.disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL)
                    return
                self.deliver(encoded)

        await self._join(
            channel,
            options,
            chan_info=info,
            recovery=Recovery(
                recover=recover_since is not None, position=recover_since or StreamPosition()
            ),
            push_join_leave=options.force_push_join_leave,
            reply=reply,
        )

    async def unsubscribe_by_server(
        self, channel: str, unsubscribe: Unsubscribe = UNSUBSCRIBE_SERVER
    ) -> None:
        """Drop this client's subscription to ``channel`` and tell it."""
        if channel not in self.session.channels or self.closed:
            return
        self._forget_expiries(channel)
        if self._server_side is not None:
            self._server_side.discard(channel)
        await self.node.unsubscribe(self, channel)
        self.session.unsubscribe_server_side(channel, unsubscribe)
        self._flush()
        await self._unsubscribed(channel, unsubscribe)

    def _mark_server_side(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if self._server_side is None:
                self._server_side = set()
            self._server_side.add(channel)

    def resubscribe(self, channel: str) -> None:
        """The node dropped the subscription (publications may be lost): tell the client.

        The unsubscribe push with code 2500 goes out before anything else the
        node sends: SDKs subscribe again, recovering from their last position
        where the channel keeps history.
        """
        if self.closed:
            return
        if channel not in self.session.channels:
            if self._held is not None:
                # Lost while the connect subscribes it (server-side): the reply would
                # list a channel that no longer delivers. The client connects again.
                self.disconnect(DISCONNECT_INSUFFICIENT_STATE)
            return
        if not self.session.pongs or (self._server_side and channel in self._server_side):
            # The client cannot subscribe to it again itself: it reconnects (3010) and
            # the server subscribes it, recovering from the positions it sends.
            self.disconnect(DISCONNECT_INSUFFICIENT_STATE)
            return
        self._forget_expiries(channel)
        self.session.unsubscribe_server_side(channel, UNSUBSCRIBE_INSUFFICIENT_STATE)
        self._flush()
        task = asyncio.ensure_future(self._unsubscribed(channel, UNSUBSCRIBE_INSUFFICIENT_STATE))
        self._keep(task)

    def refresh_by_server(
        self, *, expired: bool = False, expire_at: int | None = None, info: Raw | None = None
    ) -> None:
        """Extend (or end, with ``expired``) the connection; replace its info."""
        if expired:
            self.disconnect(DISCONNECT_EXPIRED)
            return
        if info is not None:
            self.conn_info = info
        if expire_at is not None:
            self.expire_at = expire_at
            self._schedule_expiry()

    # --- checks ------------------------------------------------------------------

    def _verify_subscribe(self, token: str, channel: str) -> SubscribeToken:
        claims = self._verify(self.context.verifier.verify_subscribe, token)
        if claims.channel != channel:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, "token for another channel")
        if claims.user != self.user:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, "token for another user")
        if claims.client and claims.client != self.id:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, "token for another client")
        return claims

    def _verify(self, verify: Callable[[str], _T], token: str) -> _T:
        """Check a token: expired gives error 109, invalid closes with 3500."""
        try:
            claims = verify(token)
        except TokenExpired:
            raise Error(ErrorCode.TOKEN_EXPIRED) from None
        except InvalidToken as exc:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, str(exc)) from None
        if claims.expire_at and claims.expire_at <= time.time():
            raise Error(ErrorCode.TOKEN_EXPIRED)
        return claims

    def _may(self, method: Method, options: ChannelOptions, subscribed: bool) -> bool:
        """Centrifugo's rule, from the method's options (``_COMMANDS``): allowed for
        clients, or for subscribers when ``subscribed``; anonymous clients need the
        ``_for_anonymous`` option too."""
        allow = _COMMANDS[method].allow
        assert allow is not None, f"{method} has no permission options"
        for_client, for_subscriber, for_anonymous = allow(options)
        if not self.user and not for_anonymous:
            return False
        return for_client or (for_subscriber and subscribed)

    def _check_presence(self, method: Method, channel: str) -> None:
        options = channel_options(self.config, channel)
        if not options.presence:
            raise Error(ErrorCode.NOT_AVAILABLE)
        if not self._may(method, options, channel in self.session.channels):
            raise Error(ErrorCode.PERMISSION_DENIED)

    def _info(self, chan_info: Raw = NO_DATA) -> ClientInfo:
        """This client's info, with ``chan_info`` for a channel."""
        return ClientInfo(
            user=self.user, client=self.id, conn_info=self.conn_info, chan_info=chan_info
        )

    async def _unsubscribed(self, channel: str, unsubscribe: Unsubscribe) -> None:
        if self.hooks.unsubscribe is not None:
            event = UnsubscribeEvent(self.id, self.user, channel, *unsubscribe)
            await self._observe(self.hooks.unsubscribe(event))

    async def _observe(self, call: Awaitable[None]) -> None:
        """Run an observing hook: what it raises is logged, never sent to the client."""
        try:
            await call
        except Exception:
            logger.exception("hook failed for client %s", self.id)

    # --- expiry ------------------------------------------------------------------

    @staticmethod
    def _ttl(expire_at: int) -> int:
        # Whole seconds on both sides, as Centrifugo counts (not one second short).
        return max(0, expire_at - int(time.time())) if expire_at else 0

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if not self.expire_at or self.closed:
            return
        loop = asyncio.get_running_loop()
        if self.hooks.refresh is not None:
            delay = self.expire_at - time.time()
            self._expiry = loop.call_later(max(0.0, delay), self._refresh_by_hook)
        else:
            # The SDK refreshes before the token expires; after a grace period
            # without a refresh the connection is closed (3005).
            delay = self.expire_at - time.time() + self.config.client.expired_close_delay
            self._expiry = loop.call_later(max(0.0, delay), self.disconnect, DISCONNECT_EXPIRED)

    def _record_sub_token(self, channel: str, expire_at: int | None) -> None:
        """Record the subscription's token and its expiry (0: none); None: the
        subscription has no token."""
        self._sub_tokens = _recorded(self._sub_tokens, channel, expire_at)
        self._schedule_sub_expiry()

    def _record_lease(self, channel: str, expire_at: int | None) -> None:
        """Record the expiry the subscribe (or sub_refresh) hook gave; None: none."""
        self._sub_leases = _recorded(self._sub_leases, channel, expire_at)
        self._schedule_sub_expiry()

    def _forget_expiries(self, channel: str) -> None:
        """The subscription ended (or is the server's now): nothing of it expires."""
        self._record_sub_token(channel, None)
        self._record_lease(channel, None)

    def _schedule_sub_expiry(self) -> None:
        if self._sub_expiry_timer is not None:
            self._sub_expiry_timer.cancel()
            self._sub_expiry_timer = None
        # The SDK refreshes a subscription token before it expires (sub_refresh); after
        # a grace period without one, the subscription ends. A lease is due at once.
        grace = self.config.client.expired_sub_close_delay
        dues = [at + grace for at in (self._sub_tokens or {}).values() if at]
        dues += (self._sub_leases or {}).values()
        if not dues or self.closed:
            return
        self._sub_expiry_timer = asyncio.get_running_loop().call_later(
            max(0.0, min(dues) - time.time()), self._end_expired_subscriptions
        )

    def _end_expired_subscriptions(self) -> None:
        """Unsubscribe (2501) the subscriptions whose token lapsed (SDKs subscribe again
        with a new token), and ask the sub_refresh hook about the leases that are due."""
        self._sub_expiry_timer = None
        now = time.time()
        late = now - self.config.client.expired_sub_close_delay
        for channel, expire_at in list((self._sub_tokens or {}).items()):
            if expire_at and expire_at <= late:
                assert self._sub_tokens is not None
                del self._sub_tokens[channel]  # not due again while it is being ended
                self._keep(
                    asyncio.ensure_future(
                        self.unsubscribe_by_server(channel, UNSUBSCRIBE_SUBSCRIPTION_EXPIRED)
                    )
                )
        for channel, expire_at in list((self._sub_leases or {}).items()):
            if expire_at <= now:
                assert self._sub_leases is not None
                del self._sub_leases[channel]
                self._keep(asyncio.ensure_future(self._refresh_lease(channel)))
        self._schedule_sub_expiry()

    async def _refresh_lease(self, channel: str) -> None:
        """Extend a hook-given expiry by the sub_refresh hook, or end the subscription."""
        reply = None
        if self.hooks.sub_refresh is not None:
            event = SubRefreshEvent(
                self.id, self.user, channel, self.codec.name, transport=self.transport_name
            )
            try:
                reply = await self.hooks.sub_refresh(event)
            except Exception:
                logger.exception("sub_refresh hook failed for client %s", self.id)
        if channel not in self.session.channels or self.closed:
            return  # gone meanwhile
        # None, expired, or an expiry that is not in the future ends the subscription.
        if reply is None or reply.expired or 0 < reply.expire_at <= time.time():
            await self.unsubscribe_by_server(channel, UNSUBSCRIBE_SUBSCRIPTION_EXPIRED)
        elif reply.expire_at:
            self._record_lease(channel, reply.expire_at)

    def _cancel_timers(self) -> None:
        for timer in (self._expiry, self._sub_expiry_timer):
            if timer is not None:
                timer.cancel()

    def _refresh_by_hook(self) -> None:
        task = asyncio.ensure_future(self._run_refresh_hook())
        self._keep(task)

    async def _run_refresh_hook(self) -> None:
        assert self.hooks.refresh is not None
        try:
            reply = await self.hooks.refresh(
                RefreshEvent(self.id, self.user, self.codec.name, transport=self.transport_name)
            )
        except Exception:
            logger.exception("refresh hook failed for client %s", self.id)
            reply = None
        # None, expired, or an expiry that is not in the future ends the connection.
        if reply is None or reply.expired or 0 < reply.expire_at <= time.time():
            self.disconnect(DISCONNECT_EXPIRED)
            return
        self.expire_at = reply.expire_at
        self._schedule_expiry()


def _recorded(
    expiries: dict[str, int] | None, channel: str, expire_at: int | None
) -> dict[str, int] | None:
    """``expiries`` with ``channel`` set to ``expire_at``, or dropped when None (made on
    first use: most clients have none)."""
    if expire_at is None:
        if expiries is not None:
            expiries.pop(channel, None)
        return expiries
    if expiries is None:
        expiries = {}
    expiries[channel] = expire_at
    return expiries


def _decode(data: Raw) -> Any:
    """Application JSON as Python values, for hooks (``None`` when absent).

    A Protobuf client's payload need not be JSON: the hook then gets its bytes.
    """
    if not data:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return bytes(data)


# --- the table of commands ---------------------------------------------------------

_Allow = tuple[bool, bool, bool]
"""A channel feature's permission options: for clients, subscribers, anonymous clients."""


def _allow_subscribe(options: ChannelOptions) -> _Allow:
    return options.allow_subscribe_for_client, False, options.allow_subscribe_for_anonymous


def _allow_publish(options: ChannelOptions) -> _Allow:
    return (
        options.allow_publish_for_client,
        options.allow_publish_for_subscriber,
        options.allow_publish_for_anonymous,
    )


def _allow_presence(options: ChannelOptions) -> _Allow:
    return (
        options.allow_presence_for_client,
        options.allow_presence_for_subscriber,
        options.allow_presence_for_anonymous,
    )


def _allow_history(options: ChannelOptions) -> _Allow:
    return (
        options.allow_history_for_client,
        options.allow_history_for_subscriber,
        options.allow_history_for_anonymous,
    )


@dataclass(frozen=True, slots=True)
class _Command:
    """A row of :data:`_COMMANDS`: how a client runs one method."""

    handler: Callable[[Client, Any], Awaitable[Result | None]]
    """Its result is the answer; None: answered already (connect, subscribe) or never (send)."""
    allow: Callable[[ChannelOptions], _Allow] | None = None
    """The channel options that permit it (:meth:`Client._may`), where there are some."""


_COMMANDS: Final[Mapping[Method, _Command]] = {
    CONNECT: _Command(Client._on_connect),
    SUBSCRIBE: _Command(Client._on_subscribe, _allow_subscribe),
    UNSUBSCRIBE: _Command(Client._on_unsubscribe),
    PUBLISH: _Command(Client._on_publish, _allow_publish),
    PRESENCE: _Command(Client._on_presence, _allow_presence),
    PRESENCE_STATS: _Command(Client._on_presence_stats, _allow_presence),
    HISTORY: _Command(Client._on_history, _allow_history),
    RPC: _Command(Client._on_rpc),
    SEND: _Command(Client._on_send),
    REFRESH: _Command(Client._on_refresh),
    SUB_REFRESH: _Command(Client._on_sub_refresh),
}
"""Method -> its handler and permission (module docstring)."""
