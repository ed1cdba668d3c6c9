"""One connected client: its session, its identity, and the commands it sends.

:class:`Client` glues a sans-I/O :class:`~tidings._session.Session` to the
:class:`~tidings._node.Node`: it checks tokens and permissions, runs each command
against the node and writes the answers through a :class:`Transport`. It knows
no socket either; the server shell provides the transport.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from msgspec import Raw

from . import __about__
from ._auth import ConnectToken, InvalidToken, SubscribeToken, TokenExpired, TokenVerifier
from ._channels import channel_options, is_private, is_user_limited, user_allowed
from ._codes import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_EXPIRED,
    DISCONNECT_INVALID_TOKEN,
    Disconnect,
    DisconnectRequest,
    Error,
    ErrorCode,
)
from ._config import ChannelOptions, Config
from ._node import Node, Recovery
from ._protocol import (
    NO_DATA,
    ClientInfo,
    ConnectRequest,
    ConnectResult,
    Empty,
    HistoryRequest,
    HistoryResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    RefreshRequest,
    RefreshResult,
    StreamPosition,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
)
from ._session import CloseConnection, CommandReceived, Result, Session

__all__ = ["Client", "Transport"]

logger = logging.getLogger("tidings.client")
_T = TypeVar("_T", bound="ConnectToken | SubscribeToken")


class Transport(Protocol):
    """Where a client's messages go: the server shell's side of a connection."""

    def write(self, data: bytes) -> None:
        """Queue one message (one JSON object, no newline). Must not block."""
        ...

    def close(self, disconnect: Disconnect) -> None:
        """Close the connection with this code once queued messages are written."""
        ...


@dataclass(slots=True)
class _ChannelGrant:
    """What a client holds in a channel it subscribed to."""

    options: ChannelOptions
    chan_info: Raw
    expire_at: int = 0


class Client:
    """A connected client, driven by the frames its connection receives."""

    def __init__(
        self,
        node: Node,
        config: Config,
        transport: Transport,
        *,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.transport = transport
        self.verifier = verifier or TokenVerifier.from_config(config)
        self.session = Session(
            channel_limit=config.client.channel_limit,
            channel_max_length=config.client.channel_max_length,
        )
        self.id = str(uuid.uuid4())
        self.user = ""
        self.conn_info = NO_DATA
        self.expire_at = 0
        self.closed = False
        self._grants: dict[str, _ChannelGrant] = {}
        self._held: list[bytes] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.user!r}>"

    # --- input from the connection -----------------------------------------------

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
            await self._handle(event)
            self._flush()

    async def _handle(self, event: CommandReceived) -> None:
        handler = getattr(self, f"_on_{event.method}")
        try:
            result: Result | None = await handler(event.request)
        except Error as error:
            if event.id:
                self.session.reply_error(error)
            return
        except DisconnectRequest as exc:
            self._log_bad_input(exc.disconnect, f"{event.method}: {exc.detail}")
            self.disconnect(exc.disconnect)
            return
        except Exception:
            logger.exception("client %s: %s failed", self.id, event.method)
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
        if self._expiry is not None:
            self._expiry.cancel()
        self.transport.close(disconnect)

    def send_ping(self) -> bool:
        """Send a ping; return False if the previous one is still unanswered."""
        if self.session.awaiting_pong:
            return False
        self.session.send_ping()
        self._flush()
        return True

    async def cleanup(self) -> None:
        """Leave every channel; call once the connection is gone."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        await self.node.remove_client(self)

    def _log_bad_input(self, disconnect: Disconnect, detail: str) -> None:
        logger.warning(
            "client %s (user %r) disconnected: %d %s: %s",
            self.id,
            self.user,
            disconnect.code,
            disconnect.reason,
            detail,
        )

    # --- commands ----------------------------------------------------------------

    async def _on_connect(self, request: ConnectRequest) -> ConnectResult | None:
        channels: tuple[str, ...] = ()
        if request.token:
            token = self._verify(self.verifier.verify_connect, request.token)
            self.user, self.conn_info = token.user, token.info
            self.expire_at, channels = token.expire_at, token.channels
        elif not self.config.client.allow_anonymous_connect_without_token:
            raise DisconnectRequest(DISCONNECT_BAD_REQUEST, "client credentials not found")
        ttl = self._ttl(self.expire_at)
        server_side = {channel: channel_options(self.config, channel) for channel in channels}

        self.node.add_client(self)
        self._held = []  # pushes wait until the connect reply is written
        try:
            subs = await self._subscribe_server_side(server_side, request)
        except BaseException:
            self._held = None
            raise
        if self.expire_at:
            self._schedule_expiry()
        client = self.config.client
        self.session.reply(
            ConnectResult(
                client=self.id,
                version=__about__.__version__,
                expires=bool(self.expire_at),
                ttl=ttl,
                subs=subs or None,
                ping=max(1, round(client.ping_interval)),
                pong=True,
            )
        )
        held, self._held = self._held, None
        self._flush()
        for data in held:
            self.deliver(data)
        return None

    async def _subscribe_server_side(
        self, channels: dict[str, ChannelOptions], request: ConnectRequest
    ) -> dict[str, SubscribeResult]:
        """Subscribe to the token's channels, recovering where ``connect.subs`` says."""
        results: dict[str, SubscribeResult] = {}
        for channel, options in channels.items():
            recover = request.subs.get(channel)
            recovery = Recovery(
                recover=recover is not None and recover.recover,
                position=StreamPosition(recover.offset, recover.epoch)
                if recover
                else StreamPosition(),
            )
            self._grants[channel] = _ChannelGrant(options, NO_DATA)
            await self.node.subscribe(
                self,
                channel,
                options,
                info=self._info(channel),
                recovery=recovery,
                push_join_leave=options.force_push_join_leave,
                reply=functools.partial(results.__setitem__, channel),
            )
        return results

    async def _on_refresh(self, request: RefreshRequest) -> RefreshResult:
        if not request.token:
            raise DisconnectRequest(DISCONNECT_BAD_REQUEST, "refresh without a token")
        try:
            token = self.verifier.verify_connect(request.token)
        except TokenExpired:
            raise DisconnectRequest(DISCONNECT_EXPIRED, "refresh with an expired token") from None
        except InvalidToken as exc:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, str(exc)) from None
        if token.user != self.user:
            raise DisconnectRequest(DISCONNECT_INVALID_TOKEN, "refresh token of another user")
        self.expire_at = token.expire_at
        ttl = self._ttl(self.expire_at)
        self._schedule_expiry()
        return RefreshResult(
            client=self.id,
            version=__about__.__version__,
            expires=bool(self.expire_at),
            ttl=ttl,
        )

    async def _on_subscribe(self, request: SubscribeRequest) -> None:
        channel = request.channel
        options = channel_options(self.config, channel)
        chan_info, expire_at = NO_DATA, 0
        if request.token:
            token = self._verify_subscribe(request.token, channel)
            chan_info, expire_at = token.info, token.expire_at
        elif is_private(channel):
            raise Error(ErrorCode.PERMISSION_DENIED)
        elif is_user_limited(channel, options):
            if not user_allowed(channel, self.user):
                raise Error(ErrorCode.PERMISSION_DENIED)
        elif not self._allowed(
            options.allow_subscribe_for_client, options.allow_subscribe_for_anonymous
        ):
            raise Error(ErrorCode.PERMISSION_DENIED)
        ttl = self._ttl(expire_at)
        self._grants[channel] = _ChannelGrant(options, chan_info, expire_at)
        push_join_leave = options.force_push_join_leave or (
            request.join_leave and options.join_leave and self._may_see_presence(channel, options)
        )

        def reply(result: SubscribeResult) -> None:
            if expire_at:
                result.expires, result.ttl = True, ttl
            self.session.reply(result)
            self._flush()

        try:
            await self.node.subscribe(
                self,
                channel,
                options,
                info=self._info(channel),
                recovery=Recovery(
                    recover=request.recover,
                    position=StreamPosition(request.offset, request.epoch),
                    recoverable=request.recoverable,
                    positioned=request.positioned,
                ),
                push_join_leave=push_join_leave,
                reply=reply,
            )
        except BaseException:
            self._grants.pop(channel, None)
            raise

    async def _on_sub_refresh(self, request: SubRefreshRequest) -> SubRefreshResult:
        grant = self._grants.get(request.channel)
        if grant is None or request.channel not in self.session.channels:
            raise Error(ErrorCode.PERMISSION_DENIED)
        if not request.token:
            raise Error(ErrorCode.BAD_REQUEST)
        token = self._verify_subscribe(request.token, request.channel)
        grant.expire_at = token.expire_at
        return SubRefreshResult(expires=bool(token.expire_at), ttl=self._ttl(token.expire_at))

    async def _on_unsubscribe(self, request: UnsubscribeRequest) -> Empty:
        self._grants.pop(request.channel, None)
        await self.node.unsubscribe(self, request.channel)
        return Empty()

    async def _on_publish(self, request: PublishRequest) -> Empty:
        channel = request.channel
        options = channel_options(self.config, channel)
        subscribed = channel in self.session.channels
        if not (
            self._allowed(options.allow_publish_for_client, options.allow_publish_for_anonymous)
            or (subscribed and options.allow_publish_for_subscriber)
        ):
            raise Error(ErrorCode.PERMISSION_DENIED)
        if not bytes(request.data):
            raise Error(ErrorCode.BAD_REQUEST, "publish needs data")
        await self.node.publish(channel, request.data, options, info=self._info(channel))
        return Empty()

    async def _on_presence(self, request: PresenceRequest) -> PresenceResult:
        self._check_presence(request.channel)
        return PresenceResult(presence=await self.node.presence(request.channel))

    async def _on_presence_stats(self, request: PresenceStatsRequest) -> PresenceStatsResult:
        self._check_presence(request.channel)
        stats = await self.node.presence_stats(request.channel)
        return PresenceStatsResult(num_clients=stats.num_clients, num_users=stats.num_users)

    async def _on_history(self, request: HistoryRequest) -> HistoryResult:
        channel = request.channel
        options = channel_options(self.config, channel)
        if not options.history_enabled:
            raise Error(ErrorCode.NOT_AVAILABLE)
        if not self._may(channel, options, "history"):
            raise Error(ErrorCode.PERMISSION_DENIED)
        if request.reverse and request.since is not None and request.since.offset == 0:
            raise Error(ErrorCode.BAD_REQUEST, "reverse history needs since.offset")
        publications, top = await self.node.history(
            channel, limit=request.limit, since=request.since, reverse=request.reverse
        )
        return HistoryResult(publications=list(publications), epoch=top.epoch, offset=top.offset)

    async def _on_rpc(self, request: object) -> None:
        raise Error(ErrorCode.METHOD_NOT_FOUND)

    async def _on_send(self, request: object) -> None:
        return None  # no handler for asynchronous messages yet: dropped, as Centrifugo does

    # --- checks ------------------------------------------------------------------

    def _verify_subscribe(self, token: str, channel: str) -> SubscribeToken:
        claims = self._verify(self.verifier.verify_subscribe, token)
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

    def _allowed(self, for_client: bool, for_anonymous: bool) -> bool:
        """Centrifugo's rule: anonymous clients need the ``_for_anonymous`` option too."""
        return for_client and (bool(self.user) or for_anonymous)

    def _may(self, channel: str, options: ChannelOptions, what: str) -> bool:
        for_client = getattr(options, f"allow_{what}_for_client")
        for_subscriber = getattr(options, f"allow_{what}_for_subscriber")
        for_anonymous = getattr(options, f"allow_{what}_for_anonymous")
        if not self.user and not for_anonymous:
            return False
        return bool(for_client or (for_subscriber and channel in self._grants))

    def _may_see_presence(self, channel: str, options: ChannelOptions) -> bool:
        return self._may(channel, options, "presence")

    def _check_presence(self, channel: str) -> None:
        options = channel_options(self.config, channel)
        if not options.presence:
            raise Error(ErrorCode.NOT_AVAILABLE)
        if not self._may(channel, options, "presence"):
            raise Error(ErrorCode.PERMISSION_DENIED)

    def _info(self, channel: str) -> ClientInfo:
        grant = self._grants.get(channel)
        return ClientInfo(
            user=self.user,
            client=self.id,
            conn_info=self.conn_info,
            chan_info=grant.chan_info if grant is not None else NO_DATA,
        )

    @staticmethod
    def _ttl(expire_at: int) -> int:
        return max(0, int(expire_at - time.time())) if expire_at else 0

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.expire_at:
            # The SDK refreshes before the token expires; after a grace period
            # without a refresh the connection is closed (3005).
            delay = self.expire_at - time.time() + self.config.client.expired_close_delay
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self.disconnect, DISCONNECT_EXPIRED
            )
