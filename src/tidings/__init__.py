"""tidings: a real-time messaging hub for Python.

It speaks the Centrifugo client protocol over WebSocket (on the ``websockets``
library), so the existing Centrifugo SDKs connect to it unmodified. The pieces,
each in its own private module and re-exported here:

* ``_protocol`` and ``_session``: the wire format and the per-connection state
  machine, without I/O;
* ``_node`` and ``_broker``/``_memory``: channels, fan-out, presence and history
  over a broker;
* ``_client``: tokens, permissions, hooks and commands of one connected client;
* ``_hooks``: the events and replies of application hooks;
* ``_server`` and ``_hub``: the asyncio shell and the embeddable :class:`Hub`,
  whose methods are the server API; ``_api`` serves them over HTTP (aiohttp);
* ``patterns``: the websockets application patterns the server is built from.
"""

from .__about__ import __version__
from ._auth import make_token
from ._broker import (
    Broker,
    BrokerEventHandler,
    HistoryOptions,
    NodeRegistry,
    PresenceManager,
    PresenceStats,
)
from ._codes import Disconnect, DisconnectRequest, Error, ErrorCode, Unsubscribe
from ._config import ChannelOptions, ClientOptions, Config, ConfigError, load_config
from ._hooks import (
    ConnectEvent,
    ConnectReply,
    DisconnectEvent,
    PublishEvent,
    PublishReply,
    RefreshEvent,
    RefreshReply,
    RPCEvent,
    SubscribeEvent,
    SubscribeReply,
    UnsubscribeEvent,
)
from ._hub import Hub, NodeInfo
from ._memory import MemoryBroker
from ._protocol import ClientInfo, Publication, StreamPosition
from ._publisher import AsyncPublisher, Publisher
from ._redis import RedisBroker

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
    "RefreshReply",
    "StreamPosition",
    "SubscribeEvent",
    "SubscribeReply",
    "Unsubscribe",
    "UnsubscribeEvent",
    "__version__",
    "load_config",
    "make_token",
]
