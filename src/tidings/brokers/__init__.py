"""Brokers: how publications, history and presence travel between nodes.

:mod:`~tidings.brokers.base` holds the interfaces the node uses
(:class:`~tidings.Broker`, :class:`~tidings.PresenceManager`,
:class:`~tidings.NodeRegistry`); each other module implements them. A broker is
chosen by the scheme of ``broker.url`` through :data:`BROKERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..options import BrokerOptions
from .base import Broker
from .memory import MemoryBroker
from .nats import NatsBroker
from .redis import RedisBroker, RedisClusterBroker

__all__ = ["BROKERS", "make_broker"]


def _memory(options: BrokerOptions) -> Broker:
    return MemoryBroker(history_meta_ttl=options.history_meta_ttl)


def _redis(options: BrokerOptions) -> Broker:
    return RedisBroker(
        options.url,
        prefix=options.prefix,
        shards=options.pubsub_shards,
        presence_ttl=options.presence_ttl,
        history_meta_ttl=options.history_meta_ttl,
    )


def _nats(options: BrokerOptions) -> Broker:
    return NatsBroker(
        options.url,
        prefix=options.prefix,
        presence_ttl=options.presence_ttl,
        history_meta_ttl=options.history_meta_ttl,
    )


def _redis_cluster(options: BrokerOptions) -> Broker:
    return RedisClusterBroker(
        options.url,
        prefix=options.prefix,
        presence_ttl=options.presence_ttl,
        history_meta_ttl=options.history_meta_ttl,
    )


BROKERS: dict[str, Callable[[BrokerOptions], Broker]] = {
    "memory": _memory,
    "nats": _nats,
    "redis": _redis,
    "rediss": _redis,
    "redis+cluster": _redis_cluster,
    "unix": _redis,
}
"""Broker factories by the scheme of ``broker.url`` (``memory`` has no ``://``)."""


def make_broker(options: BrokerOptions) -> Broker:
    """The broker ``options.url`` names.

    Raises:
        ValueError: for a scheme no broker serves.
    """
    scheme = options.url.partition("://")[0] if "://" in options.url else options.url
    factory = BROKERS.get(scheme)
    if factory is None:
        known = ", ".join(sorted(BROKERS))
        raise ValueError(f"broker.url {options.url!r}: unknown scheme (known: {known})")
    return factory(options)
