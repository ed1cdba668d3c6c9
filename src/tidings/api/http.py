"""The server HTTP API (compatible with Centrifugo's and the ``cent`` library), on aiohttp.

A thin layer: each ``POST /api/<method>`` decodes its request into a typed
struct, calls the :class:`~tidings.api.server_api.ServerAPI` method of the same name, and encodes
the result as ``{"result": ...}`` or ``{"error": {"code", "message"}}``. The
same port serves ``/metrics``, ``/health``, ``/ready`` and the OpenAPI
description at ``/api/openapi.json``.

Auth: ``X-API-Key: <key>``, ``Authorization: apikey <key>`` or ``?api_key=``;
a missing or wrong key gets HTTP 401 with an empty body.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import operator
import secrets
import time
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from msgspec import Raw, Struct

from ..__about__ import __version__
from .._docstrings import field_docs
from ..protocol.codes import Disconnect, Error, ErrorCode
from ..protocol.wire import NO_DATA, ClientInfo, Publication, StreamPosition
from ..transports.static import BUILD_HINT, StaticFiles, is_built
from .server_api import NodeInfo, ServerAPI

__all__ = ["APIServer", "create_app", "openapi"]

logger = logging.getLogger("tidings.api")


class _Request(Struct, omit_defaults=True, forbid_unknown_fields=False):
    pass


class _Result(Struct, omit_defaults=True):
    pass


# --- requests ------------------------------------------------------------------------


class _PublishFields(_Request, kw_only=True):
    """What publish and broadcast share."""

    data: Raw = NO_DATA
    """The JSON payload subscribers get (this or ``b64data`` is required)."""
    b64data: str = ""
    """The payload in base64; it must decode to JSON (clients here speak JSON)."""
    skip_history: bool = False
    """Deliver without keeping the publication in the channel's history."""
    tags: dict[str, str] | None = None
    """String key-value pairs sent with the publication; subscription filters match on them."""
    idempotency_key: str = ""
    """A publication repeating the key of one in the last 5 minutes is not published
    again (the first one's position is returned)."""
    exclude_client: str = ""
    """A client ID that does not get this publication (say, its author)."""
    delta: bool = False
    """Subscribers with delta compression may get it as a patch against the
    previous publication (the channel needs history)."""


class PublishRequest(_PublishFields, kw_only=True):
    """Publish to one channel."""

    channel: str


class BroadcastRequest(_PublishFields, kw_only=True):
    """Publish the same payload to several channels."""

    channels: list[str]


class SubscribeRequest(_Request):
    """Subscribe a user's connections to a channel (server-side subscription)."""

    user: str
    channel: str
    info: Raw = NO_DATA
    """JSON attached to the subscription (``chan_info``)."""
    b64info: str = ""
    """``info`` in base64 (of JSON)."""
    client: str = ""
    """Only this connection of the user."""
    session: str = ""
    """Accepted for compatibility with Centrifugo; unused."""
    data: Raw = NO_DATA
    """JSON sent to the client with the subscription."""
    b64data: str = ""
    """``data`` in base64 (of JSON)."""
    recover_since: StreamPosition | None = None
    """Recover the publications after this position."""


class UnsubscribeRequest(_Request):
    """Unsubscribe a user's connections from a channel (unsubscribe code 2000)."""

    user: str
    channel: str
    client: str = ""
    """Only this connection of the user."""
    session: str = ""
    """Accepted for compatibility with Centrifugo; unused."""


class DisconnectCode(Struct):
    """A close code and reason."""

    code: int = 0
    """3000-4999; codes 3500-3999 and 4500-4999 tell clients not to reconnect."""
    reason: str = ""
    """At most 123 bytes."""


class DisconnectRequest(_Request):
    """Close a user's connections."""

    user: str
    client: str = ""
    """Only this connection of the user."""
    session: str = ""
    """Accepted for compatibility with Centrifugo; unused."""
    whitelist: list[str] = []
    """Client IDs to keep connected."""
    disconnect: DisconnectCode | None = None
    """The close code and reason; by default 3503 (force disconnect, no reconnect)."""


class RefreshRequest(_Request):
    """Extend (or end) a user's connections, as a token refresh would."""

    user: str
    client: str = ""
    """Only this connection of the user."""
    session: str = ""
    """Accepted for compatibility with Centrifugo; unused."""
    expired: bool = False
    """End the connections (3005) instead."""
    expire_at: int | None = None
    """New expiry (Unix time; 0: never)."""
    info: Raw = NO_DATA
    """New connection info (``conn_info``)."""


class SendRequest(_Request):
    """Push data to a user's connections alone (a ``message`` push; tidings' own method)."""

    user: str
    data: Raw
    """The message (any JSON)."""
    client: str = ""
    """Only this connection of the user."""


class ChannelRequest(_Request):
    channel: str


class HistoryRequest(_Request):
    """Read a channel's history."""

    channel: str
    limit: int = 0
    """Most publications to return: 0 gives only the stream position, -1 up to
    ``history_max_publication_limit``."""
    since: StreamPosition | None = None
    """Only publications after this position."""
    reverse: bool = False
    """Newest first."""


class ChannelsRequest(_Request):
    """List the channels with subscribers on this node."""

    pattern: str = ""
    """A glob (``*``, ``?``, ``[...]``, ``{a,b}``) channel names must match; empty: all."""


class InfoRequest(_Request):
    pass


class BatchRequest(_Request):
    """Several API calls in one request."""

    commands: list[dict[str, Raw]]
    """Each ``{"<method>": {...request...}}``."""
    parallel: bool = False
    """Run the commands concurrently rather than in order."""


# --- results -------------------------------------------------------------------------


class PublishResult(_Result):
    """Where the publication went in the channel's stream."""

    offset: int = 0
    """Its offset (0 when the channel keeps no history)."""
    epoch: str = ""


class ErrorBody(Struct):
    """Why a call failed: a client protocol error code (107 bad request, 102 unknown
    channel, 108 not available, ...) and its message."""

    code: int
    message: str


class PublishResponse(_Result):
    result: PublishResult | None = None
    error: ErrorBody | None = None


class BroadcastResult(_Result):
    responses: list[PublishResponse]


class EmptyResult(_Result):
    pass


class PresenceResult(Struct):
    presence: dict[str, ClientInfo]


class PresenceStatsResult(Struct):
    num_clients: int
    num_users: int


class HistoryResult(Struct):
    """Publications and the stream's current position."""

    publications: list[Publication]
    offset: int
    """Offset of the stream's last publication."""
    epoch: str


class ChannelInfo(Struct):
    """One channel of the ``channels`` answer."""

    num_clients: int
    """Subscribers of the channel on this node."""


class ChannelsResult(Struct):
    channels: dict[str, ChannelInfo]


class InfoResult(Struct):
    nodes: list[NodeInfo]


# --- methods: decode, call the hub, encode ---------------------------------------------

Method = Callable[[ServerAPI, Any], Awaitable[Struct]]


def _payload(data: Raw, b64data: str, name: str = "data") -> Raw:
    """``data`` as given, or ``b64data`` when it decodes to JSON (the protocol here is JSON)."""
    if b64data:
        try:
            decoded = base64.b64decode(b64data, validate=True)
            msgspec.json.decode(decoded)
        except (ValueError, msgspec.DecodeError):  # binascii.Error is a ValueError
            raise Error(
                ErrorCode.BAD_REQUEST, f"b64{name} must be base64 of JSON (no binary on JSON)"
            ) from None
        return Raw(decoded)
    return data


async def _publish(hub: ServerAPI, req: PublishRequest) -> PublishResult:
    data = _payload(req.data, req.b64data)
    if not bytes(data):
        raise Error(ErrorCode.BAD_REQUEST, "data required")
    position = await hub.publish(
        req.channel,
        data,
        skip_history=req.skip_history,
        tags=req.tags,
        idempotency_key=req.idempotency_key,
        exclude_client=req.exclude_client,
        delta=req.delta,
    )
    return PublishResult(offset=position.offset, epoch=position.epoch)


async def _broadcast(hub: ServerAPI, req: BroadcastRequest) -> BroadcastResult:
    data = _payload(req.data, req.b64data)
    if not bytes(data):
        raise Error(ErrorCode.BAD_REQUEST, "data required")
    if not req.channels:
        raise Error(ErrorCode.BAD_REQUEST, "channels required")
    outcomes = await hub.broadcast(
        req.channels,
        data,
        skip_history=req.skip_history,
        tags=req.tags,
        idempotency_key=req.idempotency_key,
        exclude_client=req.exclude_client,
        delta=req.delta,
    )
    return BroadcastResult(
        responses=[
            PublishResponse(error=ErrorBody(o.code, o.message))
            if isinstance(o, Error)
            else PublishResponse(result=PublishResult(offset=o.offset, epoch=o.epoch))
            for o in outcomes
        ]
    )


async def _subscribe(hub: ServerAPI, req: SubscribeRequest) -> EmptyResult:
    _require_user(req.user)
    await hub.subscribe(
        req.user,
        req.channel,
        client=req.client,
        info=_present(_payload(req.info, req.b64info, "info")),
        data=_present(_payload(req.data, req.b64data)),
        recover_since=req.recover_since,
    )
    return EmptyResult()


async def _unsubscribe(hub: ServerAPI, req: UnsubscribeRequest) -> EmptyResult:
    _require_user(req.user)
    await hub.unsubscribe(req.user, req.channel, client=req.client)
    return EmptyResult()


async def _disconnect(hub: ServerAPI, req: DisconnectRequest) -> EmptyResult:
    _require_user(req.user)
    if req.disconnect is not None and req.disconnect.code:
        code = req.disconnect.code
        if not (3000 <= code <= 4999):
            raise Error(ErrorCode.BAD_REQUEST, "disconnect.code must be in 3000-4999")
        if len(req.disconnect.reason.encode()) > 123:
            raise Error(ErrorCode.BAD_REQUEST, "disconnect.reason must fit in 123 bytes")
        await hub.disconnect(
            req.user,
            client=req.client,
            whitelist=req.whitelist,
            disconnect=Disconnect(code, req.disconnect.reason),
        )
    else:
        await hub.disconnect(req.user, client=req.client, whitelist=req.whitelist)
    return EmptyResult()


async def _refresh(hub: ServerAPI, req: RefreshRequest) -> EmptyResult:
    _require_user(req.user)
    await hub.refresh(
        req.user,
        client=req.client,
        expired=req.expired,
        expire_at=req.expire_at,
        info=_present(req.info),
    )
    return EmptyResult()


async def _presence(hub: ServerAPI, req: ChannelRequest) -> PresenceResult:
    return PresenceResult(presence=await hub.presence(req.channel))


async def _presence_stats(hub: ServerAPI, req: ChannelRequest) -> PresenceStatsResult:
    stats = await hub.presence_stats(req.channel)
    return PresenceStatsResult(num_clients=stats.num_clients, num_users=stats.num_users)


async def _history(hub: ServerAPI, req: HistoryRequest) -> HistoryResult:
    publications, top = await hub.history(
        req.channel, limit=req.limit, since=req.since, reverse=req.reverse
    )
    return HistoryResult(publications=list(publications), offset=top.offset, epoch=top.epoch)


async def _history_remove(hub: ServerAPI, req: ChannelRequest) -> EmptyResult:
    await hub.history_remove(req.channel)
    return EmptyResult()


async def _channels(hub: ServerAPI, req: ChannelsRequest) -> ChannelsResult:
    channels = await hub.channels(req.pattern)
    return ChannelsResult(channels={name: ChannelInfo(n) for name, n in channels.items()})


async def _info(hub: ServerAPI, req: InfoRequest) -> InfoResult:
    return InfoResult(nodes=await hub.info())


def _require_user(user: str) -> None:
    if not user:
        raise Error(ErrorCode.BAD_REQUEST, "user required")


async def _send(hub: ServerAPI, req: SendRequest) -> EmptyResult:
    _require_user(req.user)
    await hub.send(req.user, req.data, client=req.client)
    return EmptyResult()


def _present(data: Raw) -> Raw | None:
    return data if bytes(data) else None


METHODS: dict[str, tuple[type[Struct], Method, type[Struct]]] = {
    "publish": (PublishRequest, _publish, PublishResult),
    "broadcast": (BroadcastRequest, _broadcast, BroadcastResult),
    "subscribe": (SubscribeRequest, _subscribe, EmptyResult),
    "unsubscribe": (UnsubscribeRequest, _unsubscribe, EmptyResult),
    "disconnect": (DisconnectRequest, _disconnect, EmptyResult),
    "refresh": (RefreshRequest, _refresh, EmptyResult),
    "send": (SendRequest, _send, EmptyResult),
    "presence": (ChannelRequest, _presence, PresenceResult),
    "presence_stats": (ChannelRequest, _presence_stats, PresenceStatsResult),
    "history": (HistoryRequest, _history, HistoryResult),
    "history_remove": (ChannelRequest, _history_remove, EmptyResult),
    "channels": (ChannelsRequest, _channels, ChannelsResult),
    "info": (InfoRequest, _info, InfoResult),
}
"""method name -> (request type, implementation, result type)."""

_decoders = {name: msgspec.json.Decoder(spec[0]) for name, spec in METHODS.items()}
_encoder = msgspec.json.Encoder()


class _Reply(Struct, omit_defaults=True):
    result: Any = None
    error: ErrorBody | None = None


async def call(hub: ServerAPI, method: str, body: bytes) -> _Reply:
    """Run one API method on a JSON body: the result, or the error to report."""
    _, implementation, _ = METHODS[method]
    try:
        request = _decoders[method].decode(body)
    except msgspec.ValidationError as exc:
        return _Reply(error=ErrorBody(ErrorCode.BAD_REQUEST, f"bad request: {exc}"))
    try:
        return _Reply(result=await implementation(hub, request))
    except Error as error:
        return _Reply(error=ErrorBody(error.code, error.message))
    except Exception:
        logger.exception("API %s failed", method)
        return _Reply(error=ErrorBody(ErrorCode.INTERNAL, "internal server error"))


# --- the aiohttp application ---------------------------------------------------------------

_HUB = web.AppKey("hub", ServerAPI)
_KEY = web.AppKey("key", str)
_INSECURE = web.AppKey("insecure", bool)


def create_app(hub: ServerAPI) -> web.Application:
    """The API application: mount it on its own (internal) port."""
    app = web.Application(client_max_size=hub.config.http_api.max_body_size)
    app[_HUB] = hub
    app[_KEY] = hub.config.http_api.key
    app[_INSECURE] = hub.config.http_api.insecure
    if not app[_KEY] and not app[_INSECURE]:
        logger.warning("http_api.key is not set: the server API refuses every call (401)")
    app.router.add_get("/api/openapi.json", _openapi)
    app.router.add_post("/api/batch", _batch)
    app.router.add_post("/api/{method}", _method)
    if hub.config.admin.password:
        Admin(hub).mount(app)
    # Said once at start rather than as a 404 later: a package built without Node has neither.
    unbuilt = [
        name
        for name, app_name, wanted in (
            ("the demo app", "demo", hub.config.demo),
            ("the admin UI", "admin", bool(hub.config.admin.password)),
        )
        if wanted and not is_built(app_name)
    ]
    if unbuilt:
        missing = " and ".join(unbuilt)
        logger.warning("%s: not in this package, not served (%s)", missing, BUILD_HINT)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    return app


def _authorized(request: web.Request) -> bool:
    app = request.app
    expected = app[_KEY]
    if not expected:
        return app[_INSECURE]  # insecure opens only an API without a key: a key is checked
    given = request.headers.get("X-API-Key", "")
    if not given:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "apikey" else ""
    if not given:
        given = request.query.get("api_key", "")
    return hmac.compare_digest(given.encode(), expected.encode())


async def _read_json(request: web.Request) -> bytes | web.Response:
    body = await request.read()
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return web.Response(status=400, text=f"invalid JSON: {exc}\n")
    return body


def _json(data: Any) -> web.Response:
    return web.Response(body=_encoder.encode(data), content_type="application/json")


async def _method(request: web.Request) -> web.StreamResponse:
    method = request.match_info["method"]
    if method not in METHODS:
        raise web.HTTPNotFound(text=f"unknown API method {method!r}\n")
    if not _authorized(request):
        return web.Response(status=401)
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    return _json(await call(request.app[_HUB], method, body))


class _BatchReply(Struct, omit_defaults=True):
    error: ErrorBody | None = None


async def _batch(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return web.Response(status=401)
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    try:
        batch = msgspec.json.decode(body, type=BatchRequest)
    except msgspec.ValidationError as exc:
        return _json(_Reply(error=ErrorBody(ErrorCode.BAD_REQUEST, f"bad request: {exc}")))
    hub = request.app[_HUB]

    async def one(command: dict[str, Raw]) -> dict[str, Any]:
        if len(command) != 1 or next(iter(command)) not in METHODS:
            return {"error": ErrorBody(ErrorCode.METHOD_NOT_FOUND, "method not found")}
        ((method, params),) = command.items()
        reply = await call(hub, method, bytes(params))
        return {"error": reply.error} if reply.error is not None else {method: reply.result}

    if batch.parallel:
        replies = await asyncio.gather(*(one(command) for command in batch.commands))
    else:
        replies = [await one(command) for command in batch.commands]
    # A batch answers at the top level, without the result envelope (as cent expects).
    return _json({"replies": list(replies)})


async def _metrics(request: web.Request) -> web.StreamResponse:
    data = request.app[_HUB].metrics.render()
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def _health(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


async def _ready(request: web.Request) -> web.StreamResponse:
    if await request.app[_HUB].ready():
        return _json({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def _openapi(request: web.Request) -> web.StreamResponse:
    return _json(openapi())


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the server API, built from the request/result types."""
    types: list[Any] = []
    for request_type, _, result_type in METHODS.values():
        types += [request_type, result_type]
    types += [BatchRequest, ErrorBody]
    twins: dict[type, Any] = {}
    schemas, components = msgspec.json.schema_components(
        [_schema_twin(kind, twins) for kind in types], ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, Any] = {}
    for name, (request_type, _, result_type) in METHODS.items():
        paths[f"/api/{name}"] = _operation(
            name,
            refs[request_type],
            {
                "type": "object",
                "properties": {
                    "result": refs[result_type],
                    "error": refs[ErrorBody],
                },
                "additionalProperties": False,
            },
        )
    paths["/api/batch"] = _operation(
        "batch",
        refs[BatchRequest],
        {
            "type": "object",
            "properties": {
                "replies": {"type": "array", "items": {"type": "object"}},
                "error": refs[ErrorBody],
            },
            "additionalProperties": False,
        },
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidings server API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"apiKey": []}],
    }


def _schema_twin(kind: Any, twins: dict[type, Any]) -> Any:
    """``kind`` with every ``Raw`` default turned into a factory, for schema generation.

    The wire types default payloads to the :data:`NO_DATA` instance (``omit_defaults``
    needs that identity), but msgspec cannot write a ``Raw`` default into a schema.
    The twin keeps the docstrings, which msgspec writes as descriptions: the class's,
    and each field's (the string under it in the source: :func:`.field_docs`).
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if args:
        twin_args = tuple(_schema_twin(arg, twins) for arg in args)
        if origin in (types.UnionType, typing.Union):
            return functools.reduce(operator.or_, twin_args)
        return origin[twin_args]
    if not (isinstance(kind, type) and issubclass(kind, Struct)):
        return kind
    if kind not in twins:
        twins[kind] = None  # recursion guard; no wire type refers to itself
        fields: list[Any] = []
        docs = field_docs(kind)
        for info in msgspec.structs.fields(kind):
            field_type = _schema_twin(info.type, twins)
            if info.name in docs:
                field_type = typing.Annotated[field_type, msgspec.Meta(description=docs[info.name])]
            if info.default is NO_DATA:
                absent = msgspec.field(default_factory=lambda: NO_DATA)
                fields.append((info.encode_name, field_type, absent))
            elif info.default is not msgspec.NODEFAULT:
                fields.append((info.encode_name, field_type, info.default))
            elif info.default_factory is not msgspec.NODEFAULT:
                default = msgspec.field(default_factory=info.default_factory)
                fields.append((info.encode_name, field_type, default))
            else:
                fields.append((info.encode_name, field_type))
        twin = msgspec.defstruct(kind.__name__, fields, kw_only=True)
        twin.__doc__ = kind.__doc__
        twins[kind] = twin
    return twins[kind]


def _operation(name: str, request: Any, response: Any) -> dict[str, Any]:
    return {
        "post": {
            "operationId": name,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request}},
            },
            "responses": {
                "200": {
                    "description": "The result, or an error with its code",
                    "content": {"application/json": {"schema": response}},
                },
                "400": {
                    "description": "The body is not JSON",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": {"description": "Missing or wrong API key (empty body)"},
            },
        }
    }


class _LoginThrottle:
    """Slows down password guessing: after 5 failures a client waits, doubling each time."""

    FREE_FAILURES = 5
    MAX_BLOCK = 300.0

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}

    def blocked_for(self, who: str) -> float:
        failures, until = self._failures.get(who, (0, 0.0))
        return max(0.0, until - time.monotonic())

    def failed(self, who: str) -> None:
        failures, _ = self._failures.get(who, (0, 0.0))
        failures += 1
        block = 0.0
        if failures >= self.FREE_FAILURES:
            block = min(self.MAX_BLOCK, 2.0 ** (failures - self.FREE_FAILURES))
        self._failures[who] = (failures, time.monotonic() + block)
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, who: str) -> None:
        self._failures.pop(who, None)


class Admin:
    """The admin UI: a password login with a signed session cookie, and the API behind it.

    Everything the UI does goes through the server API methods (``/admin/api/<method>``,
    the same implementation as ``/api/<method>``), authorised by the session cookie.
    """

    COOKIE = "tidings_admin"

    def __init__(self, hub: ServerAPI) -> None:
        self.hub = hub
        options = hub.config.admin
        self.password = options.password
        self.secret = (options.secret or secrets.token_hex(32)).encode()
        self.session_ttl = options.session_ttl
        self.throttle = _LoginThrottle()
        self.files = StaticFiles("admin")

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/admin", self._redirect)
        app.router.add_post("/admin/login", self._login)
        app.router.add_post("/admin/logout", self._logout)
        app.router.add_get("/admin/session", self._session)
        app.router.add_get("/admin/api/stats", self._stats)
        app.router.add_post("/admin/api/{method}", self._method)
        app.router.add_get("/admin/{path:.*}", self._file)

    def _cookie(self) -> str:
        expires = str(int(time.time() + self.session_ttl))
        signature = hmac.new(self.secret, expires.encode(), "sha256").hexdigest()
        return f"{expires}.{signature}"

    def _signed_in(self, request: web.Request) -> bool:
        expires, _, signature = request.cookies.get(self.COOKIE, "").partition(".")
        expected = hmac.new(self.secret, expires.encode(), "sha256").hexdigest()
        return (
            hmac.compare_digest(signature.encode(), expected.encode())
            and expires.isdigit()
            and int(expires) > time.time()
        )

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/admin/")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        static = self.files.get(path)
        if static is None and not path.startswith("assets/"):
            static = self.files.get("")  # the single-page app handles its own routes
        if static is None:
            raise web.HTTPNotFound(text=f"admin UI not in this package ({BUILD_HINT})\n")
        headers = {"Content-Type": static.content_type, "Cache-Control": static.cache_control}
        return web.Response(body=static.body, headers=headers)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        who = request.remote or "?"
        wait = self.throttle.blocked_for(who)
        if wait > 0:
            return web.json_response(
                {"error": "too many attempts, try again later"},
                status=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        try:
            body = await request.json()
            password = body.get("password", "") if isinstance(body, dict) else ""
        except ValueError:
            password = ""
        if not isinstance(password, str) or not hmac.compare_digest(
            password.encode(), self.password.encode()
        ):
            self.throttle.failed(who)
            logger.warning("admin login failed from %s", who)
            return web.json_response({"error": "wrong password"}, status=401)
        self.throttle.succeeded(who)
        response = web.json_response({"ok": True})
        response.set_cookie(
            self.COOKIE,
            self._cookie(),
            max_age=int(self.session_ttl),
            path="/admin",
            httponly=True,
            samesite="Strict",
        )
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        response = web.json_response({"ok": True})
        response.del_cookie(self.COOKIE, path="/admin")
        return response

    async def _session(self, request: web.Request) -> web.StreamResponse:
        if not self._signed_in(request):
            return web.json_response({"ok": False}, status=401)
        return web.json_response({"ok": True})

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        if not self._signed_in(request):
            return web.json_response({"error": "login required"}, status=401)
        hub = self.hub
        metrics = hub.metrics
        nodes = await hub.info()
        return _json(
            {
                "time": time.time(),
                "nodes": nodes,
                "connections": sum(node.num_clients for node in nodes),
                "subscriptions": sum(node.num_subs for node in nodes),
                "channels": hub.node.channels(),
                "messages_sent": _total(metrics.messages_sent),
                "messages_received": _total(metrics.messages_received),
            }
        )

    async def _method(self, request: web.Request) -> web.StreamResponse:
        if not self._signed_in(request):
            return web.json_response({"error": "login required"}, status=401)
        if request.content_type != "application/json":
            # A cross-site form cannot send JSON without a preflight: no CSRF this way.
            return web.json_response({"error": "JSON only"}, status=415)
        method = request.match_info["method"]
        if method not in METHODS:
            raise web.HTTPNotFound(text=f"unknown API method {method!r}\n")
        body = await _read_json(request)
        if isinstance(body, web.Response):
            return body
        return _json(await call(self.hub, method, body))


def _total(counter: Any) -> float:
    """The sum of a labelled counter over its labels."""
    return float(
        sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


class APIServer:
    """Runs the API application on ``http_api.host``/``http_api.port``."""

    def __init__(self, hub: ServerAPI, *, reuse_port: bool = False) -> None:
        self.hub = hub
        self.reuse_port = reuse_port
        self._runner = web.AppRunner(create_app(hub), access_log=None)
        self._site: web.TCPSite | None = None
        self.port = 0

    async def start(self) -> None:
        options = self.hub.config.http_api
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, options.host, options.port, reuse_port=self.reuse_port or None
        )
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else options.port
        logger.info("server API on http://%s:%d/api", options.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
