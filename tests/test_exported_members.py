"""The public names of ``tidings``: adding or removing one is a deliberate change."""

import tidings


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(tidings) if not name.startswith("_")}
    modules = {"patterns", "protocol", "options", "brokers", "node", "transports", "api", "app"}
    assert set(tidings.__all__) == public - modules | {"__version__"}


def test_the_public_names_are_these() -> None:
    assert sorted(tidings.__all__) == sorted(
        [
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
    )
