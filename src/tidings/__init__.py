"""tidings: a real-time messaging hub for Python.

It speaks the Centrifugo client protocol (so the existing Centrifugo SDKs
connect to it unmodified) and its server API. The layers, each a subpackage,
with what they export re-exported here:

* ``protocol``: wire types, codes, codecs and the per-connection session state
  machine; no asyncio, no I/O;
* ``node``: channels, fan-out, permissions, tokens, hooks, limits and metrics of
  one process, and the client that glues a session to the node; no sockets;
* ``brokers``: the broker interfaces and their implementations (memory, Redis),
  chosen by the scheme of ``broker.url``;
* ``transports``: the client port (WebSocket, static files);
* ``api``: the server API's methods, served over HTTP, and publishers for
  processes that are not a hub;
* ``app``: the application shell: the embeddable :class:`Hub` that builds and
  owns the layers, the config loader, the CLI, logging and the gc policy;
* ``options``: the configuration schema every layer reads;
* ``patterns``: the websockets application patterns, for building on the
  ``websockets`` asyncio API directly.

``docs/design.md`` walks through them.
"""

from .__about__ import __version__
from .api.publisher import AsyncPublisher, Publisher
from .api.server_api import NodeInfo
from .app.config import load_config
from .app.hub import Hub
from .brokers.base import (
    Broker,
    BrokerEventHandler,
    HistoryOptions,
    NodeRegistry,
    PresenceManager,
    PresenceStats,
)
from .brokers.memory import MemoryBroker
from .brokers.nats import NatsBroker
from .brokers.redis import RedisBroker, RedisClusterBroker
from .node.auth import make_token
from .node.hooks import (
    ConnectEvent,
    ConnectReply,
    DisconnectEvent,
    MessageEvent,
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
from .options import ChannelOptions, ClientOptions, Config, ConfigError
from .protocol.codes import Disconnect, DisconnectRequest, Error, ErrorCode, Unsubscribe
from .protocol.wire import ClientInfo, Publication, StreamPosition

__all__ = [
    "AsyncPublisher",
    "Broker",
    "BrokerEventHandler",
    "ChannelOptions",
    "ClientInfo",
    "ClientOptions",
    "Config",
    "ConfigError",
    "ConnectEvent",
    "ConnectReply",
    "Disconnect",
    "DisconnectEvent",
    "DisconnectRequest",
    "Error",
    "ErrorCode",
    "HistoryOptions",
    "NodeRegistry",
    "Hub",
    "MemoryBroker",
    "NatsBroker",
    "MessageEvent",
    "NodeInfo",
    "PresenceManager",
    "PresenceStats",
    "Publisher",
    "Publication",
    "PublishEvent",
    "PublishReply",
    "RPCEvent",
    "RefreshEvent",
    "RedisBroker",
    "RedisClusterBroker",
    "RefreshReply",
    "StreamPosition",
    "SubRefreshEvent",
    "SubRefreshReply",
    "SubscribeEvent",
    "SubscribeReply",
    "Unsubscribe",
    "UnsubscribeEvent",
    "__version__",
    "load_config",
    "make_token",
]
