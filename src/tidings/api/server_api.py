"""The server API: what a backend can ask of the hub, as Python methods.

:class:`ServerAPI` is the API's one implementation. The HTTP API
(:mod:`tidings.api.http`) decodes requests, calls these methods and encodes what
they return; an embedding program calls them directly on its
:class:`~tidings.Hub`, which is a :class:`ServerAPI`. They need the node, the
configuration and the broker, never a socket.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from msgspec import Raw

from ..__about__ import __version__
from ..brokers.base import Broker, ControlBus, NodeRegistry, PresenceStats
from ..node.channels import channel_options
from ..node.client import Client
from ..node.control import Control
from ..node.metrics import Metrics
from ..node.node import Node
from ..options import Config
from ..protocol.codes import DISCONNECT_FORCE_NO_RECONNECT, Disconnect, Error, ErrorCode
from ..protocol.wire import NO_DATA, ClientInfo, Publication, StreamPosition, to_raw

__all__ = ["NodeInfo", "ServerAPI"]

logger = logging.getLogger("tidings.api")


class _UserCommand(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A server API command about a user's connections, as it travels between nodes."""

    user: str
    client: str = ""


class _Subscribe(_UserCommand, frozen=True, kw_only=True):
    channel: str
    info: Raw | None = None
    data: Raw | None = None
    recover_since: StreamPosition | None = None


class _Unsubscribe(_UserCommand, frozen=True, kw_only=True):
    channel: str


class _Disconnect(_UserCommand, frozen=True, kw_only=True):
    code: int
    reason: str
    whitelist: list[str] = []


class _Refresh(_UserCommand, frozen=True, kw_only=True):
    expired: bool = False
    expire_at: int | None = None
    info: Raw | None = None


class _Send(_UserCommand, frozen=True, kw_only=True):
    data: Raw


_COMMANDS: dict[str, type[_UserCommand]] = {
    command.__name__: command
    for command in (_Subscribe, _Unsubscribe, _Disconnect, _Refresh, _Send)
}


class NodeInfo(msgspec.Struct, frozen=True):
    """One node of the hub, as the ``info`` API reports it."""

    uid: str
    name: str
    version: str
    num_clients: int
    num_users: int
    num_channels: int
    num_subs: int
    uptime: int


class ServerAPI:
    """The server API's methods over one node.

    Args:
        config: the hub's configuration (namespaces and their options).
        node: this process's node.
        broker: the node's broker; other nodes are listed when it is a
            :class:`~tidings.NodeRegistry`.
        metrics: the node's metrics.
        name: this node's name in ``info``.
    """

    def __init__(
        self, config: Config, node: Node[Client], broker: Broker, metrics: Metrics, name: str
    ) -> None:
        self.config = config
        self.node = node
        self.broker = broker
        self.metrics = metrics
        self.uid = node.uid
        self.control = Control(
            node.uid,
            broker if isinstance(broker, ControlBus) else None,
            broker if isinstance(broker, NodeRegistry) else None,
        )
        """Control messages to the other nodes (and theirs to this one)."""
        for op, command_type in _COMMANDS.items():
            self.control.on(op, self._remote(command_type))
        self.name = name
        self._started_at = time.monotonic()

    async def ready(self) -> bool:
        """Whether the broker answers."""
        try:
            await asyncio.wait_for(self.node.history("__ready__", limit=0), 2.0)
        except Exception:
            return False
        return True

    # --- server API --------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        skip_history: bool = False,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        exclude_client: str = "",
        delta: bool = False,
    ) -> StreamPosition:
        """Publish ``data`` (any JSON-serialisable value, or :class:`msgspec.Raw`).

        Returns the publication's position (offset 0 when the channel keeps no
        history). The same ``idempotency_key`` within 5 minutes publishes once;
        ``exclude_client`` is a client id that does not receive this publication.
        With ``delta``, subscribers with delta compression may get a patch against
        the previous publication (the channel needs history).

        Raises:
            tidings.Error: 102 for an unknown namespace, 107 for an empty channel.
        """
        _check_channel(channel)
        options = channel_options(self.config, channel)
        return await self.node.publish(
            channel,
            to_raw(data),
            options,
            tags=tags,
            skip_history=skip_history,
            idempotency_key=idempotency_key,
            exclude_client=exclude_client,
            delta=delta,
        )

    async def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        skip_history: bool = False,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        exclude_client: str = "",
        delta: bool = False,
    ) -> list[StreamPosition | Error]:
        """Publish the same data to several channels; each gets a position or its error."""
        raw = to_raw(data)

        async def one(channel: str) -> StreamPosition | Error:
            try:
                return await self.publish(
                    channel,
                    raw,
                    skip_history=skip_history,
                    tags=tags,
                    idempotency_key=idempotency_key,
                    exclude_client=exclude_client,
                    delta=delta,
                )
            except Error as error:
                return error

        return list(await asyncio.gather(*(one(channel) for channel in channels)))

    async def subscribe(
        self,
        user: str,
        channel: str,
        *,
        client: str = "",
        info: Any = None,
        data: Any = None,
        recover_since: StreamPosition | None = None,
    ) -> None:
        """Subscribe the user's connections (or one, ``client``) to ``channel``."""
        _check_channel(channel)
        channel_options(self.config, channel)  # 102 before touching anyone
        command = _Subscribe(
            user=user,
            client=client,
            channel=channel,
            info=to_raw(info) if info is not None else None,
            data=to_raw(data) if data is not None else None,
            recover_since=recover_since,
        )
        await self._everywhere(command)

    async def unsubscribe(self, user: str, channel: str, *, client: str = "") -> None:
        """Unsubscribe the user's connections (or one) from ``channel`` (push code 2000)."""
        _check_channel(channel)
        await self._everywhere(_Unsubscribe(user=user, client=client, channel=channel))

    async def disconnect(
        self,
        user: str,
        *,
        client: str = "",
        whitelist: Iterable[str] = (),
        disconnect: Disconnect = DISCONNECT_FORCE_NO_RECONNECT,
    ) -> None:
        """Close the user's connections (or one), except the ``whitelist`` client ids."""
        command = _Disconnect(
            user=user,
            client=client,
            whitelist=list(whitelist),
            code=disconnect.code,
            reason=disconnect.reason,
        )
        await self._everywhere(command)

    async def refresh(
        self,
        user: str,
        *,
        client: str = "",
        expired: bool = False,
        expire_at: int | None = None,
        info: Any = None,
    ) -> None:
        """Extend the user's connections to ``expire_at``, or end them (3005) if ``expired``."""
        command = _Refresh(
            user=user,
            client=client,
            expired=expired,
            expire_at=expire_at,
            info=to_raw(info) if info is not None else None,
        )
        await self._everywhere(command)

    async def send(self, user: str, data: Any, *, client: str = "") -> None:
        """Push ``data`` to the user's connections (or one, ``client``) alone: a
        ``message`` push, which the SDKs hand to their ``message`` event handler."""
        await self._everywhere(_Send(user=user, client=client, data=to_raw(data)))

    # The commands about a user's connections run here, then on every other node
    # (control messages), where the user may be connected too.

    async def _everywhere(self, command: _UserCommand) -> None:
        await self._apply(command)
        if command.client and self._targets(command.user, command.client):
            return  # that one connection is here
        try:
            await self.control.broadcast(type(command).__name__, command)
        except Exception as exc:
            logger.exception("%s: the other nodes could not be told", type(command).__name__)
            raise Error(ErrorCode.INTERNAL) from exc

    async def _apply(self, command: _UserCommand) -> None:
        """Run a command on this node's connections of the user."""
        for target in self._targets(command.user, command.client):
            if isinstance(command, _Subscribe):
                await target.subscribe_by_server(
                    command.channel,
                    info=command.info if command.info is not None else NO_DATA,
                    data=command.data if command.data is not None else NO_DATA,
                    recover_since=command.recover_since,
                )
            elif isinstance(command, _Unsubscribe):
                await target.unsubscribe_by_server(command.channel)
            elif isinstance(command, _Disconnect):
                if target.id not in command.whitelist:
                    target.disconnect(Disconnect(command.code, command.reason))
            elif isinstance(command, _Refresh):
                target.refresh_by_server(
                    expired=command.expired, expire_at=command.expire_at, info=command.info
                )
            elif isinstance(command, _Send):
                target.send_message(command.data)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        self._check_feature(channel, "presence")
        return await self.node.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        self._check_feature(channel, "presence")
        return await self.node.presence_stats(channel)

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> tuple[Sequence[Publication], StreamPosition]:
        """Read history: ``limit`` 0 gives only the stream position, -1 up to the maximum."""
        self._check_feature(channel, "history")
        if reverse and since is not None and since.offset == 0:
            raise Error(ErrorCode.BAD_REQUEST, "reverse history needs since.offset")
        return await self.node.history(channel, limit=limit, since=since, reverse=reverse)

    async def history_remove(self, channel: str) -> None:
        self._check_feature(channel, "history")
        await self.node.remove_history(channel)

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Active channels and their subscriber counts, filtered by a glob ``pattern``."""
        channels = self.node.channels()
        if not pattern:
            return channels
        matcher = _glob(pattern)
        return {name: count for name, count in channels.items() if matcher(name)}

    async def info(self) -> list[NodeInfo]:
        """Every live node: this one, and the others announced through the broker."""
        local = self._node_info()
        if not isinstance(self.broker, NodeRegistry):
            return [local]
        others = [
            info
            for info in (
                msgspec.json.decode(raw, type=NodeInfo) for raw in await self.broker.nodes()
            )
            if info.uid != self.uid
        ]
        return [local, *sorted(others, key=lambda info: info.name)]

    def _node_info(self) -> NodeInfo:
        node = self.node
        return NodeInfo(
            uid=self.uid,
            name=self.name,
            version=__version__,
            num_clients=node.num_clients,
            num_users=node.num_users,
            num_channels=node.num_channels,
            num_subs=node.num_subscriptions,
            uptime=int(time.monotonic() - self._started_at),
        )

    def _remote(self, command_type: type[_UserCommand]) -> Callable[[Raw], Awaitable[None]]:
        """The handler of another node's command: run it here."""

        async def handle(args: Raw) -> None:
            await self._apply(msgspec.json.decode(args, type=command_type))

        return handle

    def _targets(self, user: str, client: str) -> list[Client]:
        clients = self.node.user_clients(user)
        return [c for c in clients if c.id == client] if client else clients

    def _check_feature(self, channel: str, feature: str) -> None:
        _check_channel(channel)
        options = channel_options(self.config, channel)
        enabled = options.presence if feature == "presence" else options.history_enabled
        if not enabled:
            raise Error(ErrorCode.NOT_AVAILABLE)


def _check_channel(channel: str) -> None:
    if not channel:
        raise Error(ErrorCode.BAD_REQUEST, "channel required")


def _glob(pattern: str) -> Callable[[str], bool]:
    """A matcher for a gobwas-style glob: ``*``, ``?``, ``[...]`` and ``{a,b}``."""
    alternatives = re.split(r"(\{[^{}]*\})", pattern)
    regex = "".join(
        "(?:" + "|".join(fnmatch.translate(a)[4:-3] for a in part[1:-1].split(",")) + ")"
        if part.startswith("{") and part.endswith("}")
        else fnmatch.translate(part)[4:-3]
        for part in alternatives
        if part
    )
    compiled = re.compile(f"(?s:{regex})\\Z")
    return lambda name: compiled.match(name) is not None
