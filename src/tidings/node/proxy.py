"""Hooks answered by an HTTP backend (Centrifugo's proxy request/response shapes).

For backends not written in Python: each configured ``proxy.<event>_endpoint``
receives a JSON ``POST`` and answers ``{"result": {...}}``, ``{"error": {"code",
"message"}}`` or ``{"disconnect": {"code", "reason"}}``. A backend that fails or
times out makes the command fail with error 100, as in Centrifugo.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec

from ..options import ProxyOptions
from ..protocol.codes import Disconnect, DisconnectRequest, Error
from .hooks import (
    ConnectEvent,
    ConnectReply,
    DisconnectEvent,
    Hooks,
    PublishEvent,
    PublishReply,
    RefreshEvent,
    RefreshReply,
    RPCEvent,
    SubRefreshEvent,
    SubRefreshReply,
    SubscribeEvent,
    SubscribeReply,
    UnsubscribeEvent,
)

__all__ = ["HTTPProxy"]

logger = logging.getLogger("tidings.proxy")


def _common(
    event: ConnectEvent | RefreshEvent | SubscribeEvent | SubRefreshEvent | PublishEvent | RPCEvent,
) -> dict[str, str]:
    """Over what the client came (payloads are passed as JSON)."""
    return {"transport": event.transport, "protocol": event.protocol, "encoding": "json"}


class _ErrorBody(msgspec.Struct):
    code: int
    message: str = ""


class _DisconnectBody(msgspec.Struct):
    code: int
    reason: str = ""


class _ConnectResult(msgspec.Struct):
    user: str = ""
    expire_at: int | None = None
    info: Any = None
    data: Any = None
    channels: list[str] = []


class _RefreshResult(msgspec.Struct):
    expired: bool = False
    expire_at: int = 0


class _SubscribeResult(msgspec.Struct):
    info: Any = None
    data: Any = None
    expire_at: int | None = None


class _SubRefreshResult(msgspec.Struct):
    expired: bool = False
    expire_at: int = 0


class _PublishResult(msgspec.Struct):
    data: Any = None
    skip_history: bool = False


class _RPCResult(msgspec.Struct):
    data: Any = None


class _Response(msgspec.Struct):
    result: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    error: _ErrorBody | None = None
    disconnect: _DisconnectBody | None = None


def _body(
    event: RefreshEvent | SubscribeEvent | SubRefreshEvent | PublishEvent | RPCEvent,
    **fields: Any,
) -> dict[str, Any]:
    """A proxy request: who, over what, then the event's own fields."""
    return {"client": event.client, **_common(event), "user": event.user, **fields}


class HTTPProxy:
    """Calls the configured endpoints; :meth:`hooks` gives the hooks to install."""

    def __init__(self, options: ProxyOptions) -> None:
        self.options = options
        self._session: aiohttp.ClientSession | None = None

    def hooks(self) -> Hooks:
        o = self.options
        return Hooks(
            connect=self.connect if o.connect_endpoint else None,
            refresh=self.refresh if o.refresh_endpoint else None,
            subscribe=self.subscribe if o.subscribe_endpoint else None,
            sub_refresh=self.sub_refresh if o.sub_refresh_endpoint else None,
            publish=self.publish if o.publish_endpoint else None,
            rpc=self.rpc if o.rpc_endpoint else None,
            unsubscribe=self.unsubscribe if o.unsubscribe_endpoint else None,
            disconnect=self.disconnect if o.disconnect_endpoint else None,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def connect(self, event: ConnectEvent) -> ConnectReply | None:
        if event.token:
            # As in Centrifugo: a connection token authenticates on its own, and the
            # endpoint (whose answer may lack a user) is for clients without one.
            return None
        body = {
            "client": event.client,
            **_common(event),
            "name": event.name,
            "version": event.version,
            "data": event.data,
        }
        result = await self._call(
            self.options.connect_endpoint, body, _ConnectResult, event.headers
        )
        return ConnectReply(
            user=result.user,
            info=result.info,
            data=result.data,
            channels=result.channels,
            expire_at=result.expire_at,
        )

    async def refresh(self, event: RefreshEvent) -> RefreshReply:
        body = _body(event)
        result = await self._call(self.options.refresh_endpoint, body, _RefreshResult)
        return RefreshReply(expire_at=result.expire_at, expired=result.expired)

    async def subscribe(self, event: SubscribeEvent) -> SubscribeReply:
        body = _body(event, channel=event.channel, data=event.data)
        result = await self._call(self.options.subscribe_endpoint, body, _SubscribeResult)
        return SubscribeReply(info=result.info, data=result.data, expire_at=result.expire_at)

    async def sub_refresh(self, event: SubRefreshEvent) -> SubRefreshReply:
        body = _body(event, channel=event.channel)
        result = await self._call(self.options.sub_refresh_endpoint, body, _SubRefreshResult)
        return SubRefreshReply(expire_at=result.expire_at, expired=result.expired)

    async def publish(self, event: PublishEvent) -> PublishReply:
        body = _body(event, channel=event.channel, data=event.data)
        result = await self._call(self.options.publish_endpoint, body, _PublishResult)
        return PublishReply(data=result.data, skip_history=result.skip_history)

    async def rpc(self, event: RPCEvent) -> Any:
        body = _body(event, method=event.method, data=event.data)
        return (await self._call(self.options.rpc_endpoint, body, _RPCResult)).data

    async def unsubscribe(self, event: UnsubscribeEvent) -> None:
        body = {
            "client": event.client,
            "user": event.user,
            "channel": event.channel,
            "code": event.code,
            "reason": event.reason,
        }
        await self._post(self.options.unsubscribe_endpoint, body, {})

    async def disconnect(self, event: DisconnectEvent) -> None:
        body = {
            "client": event.client,
            "user": event.user,
            "code": event.code,
            "reason": event.reason,
        }
        await self._post(self.options.disconnect_endpoint, body, {})

    async def _call(
        self,
        url: str,
        body: dict[str, Any],
        result_type: type[Any],
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        response = msgspec.json.decode(await self._post(url, body, headers or {}), type=_Response)
        if response.disconnect is not None:
            disconnect = Disconnect(response.disconnect.code, response.disconnect.reason)
            raise DisconnectRequest(disconnect, f"proxy {url} disconnected the client")
        if response.error is not None:
            raise Error(response.error.code, response.error.message or None)
        if not bytes(response.result):
            return result_type()
        return msgspec.json.decode(bytes(response.result), type=result_type)

    async def _post(self, url: str, body: dict[str, Any], headers: Mapping[str, str]) -> bytes:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.options.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        forwarded = {
            name: value
            for name, value in headers.items()
            if name.lower() in {h.lower() for h in self.options.http_headers}
        }
        async with self._session.post(
            url,
            data=msgspec.json.encode(body),
            headers={"Content-Type": "application/json", **forwarded},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"proxy {url} answered HTTP {response.status}")
            return await response.read()
