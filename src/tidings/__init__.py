"""tidings: a real-time messaging hub for Python.

It speaks the Centrifugo client protocol over WebSocket (on the ``websockets``
library), so the existing Centrifugo SDKs connect to it unmodified. The pieces,
each in its own private module and re-exported here:

* ``_protocol`` and ``_session``: the wire format and the per-connection state
  machine, without I/O;
* ``_node`` and ``_broker``/``_memory``: channels, fan-out, presence and history
  over a broker;
* ``_client``: tokens, permissions and commands of one connected client;
* ``_server`` and ``_hub``: the asyncio shell and the embeddable :class:`Hub`;
* ``patterns``: the websockets application patterns the server is built from.
"""

from .__about__ import __version__
from ._auth import make_token
from ._broker import Broker, BrokerEventHandler, HistoryOptions, PresenceManager, PresenceStats
from ._codes import Disconnect, Error, ErrorCode, Unsubscribe
from ._config import ChannelOptions, ClientOptions, Config, ConfigError, load_config
from ._hub import Hub
from ._memory import MemoryBroker
from ._protocol import ClientInfo, Publication, StreamPosition

__all__ = [
    "Broker",
    "BrokerEventHandler",
    "ChannelOptions",
    "ClientInfo",
    "ClientOptions",
    "Config",
    "ConfigError",
    "Disconnect",
    "Error",
    "ErrorCode",
    "HistoryOptions",
    "Hub",
    "MemoryBroker",
    "PresenceManager",
    "PresenceStats",
    "Publication",
    "StreamPosition",
    "Unsubscribe",
    "__version__",
    "load_config",
    "make_token",
]
