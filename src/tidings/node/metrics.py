"""Prometheus metrics of one hub, in a registry of its own (so hubs in one process don't clash).

Hot paths touch pre-bound counter children only (``metrics.sent_publication.inc(n)``,
once per fan-out, not per recipient).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..protocol.wire import METHODS

__all__ = ["Metrics"]


class Metrics:
    """The hub's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "tidings_connections", "Connected clients on this node.", registry=r
        )
        self.subscriptions = Gauge(
            "tidings_subscriptions", "Channel subscriptions on this node.", registry=r
        )
        self.channels = Gauge(
            "tidings_channels", "Channels with subscribers on this node.", registry=r
        )
        self.users = Gauge("tidings_users", "Distinct users connected to this node.", registry=r)
        self.messages_received = Counter(
            "tidings_messages_received",
            "Commands received from clients, by type.",
            ["type"],
            registry=r,
        )
        self.messages_sent = Counter(
            "tidings_messages_sent",
            "Messages queued for clients, by type (one per recipient).",
            ["type"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "tidings_bytes_sent", "Bytes written to client connections.", registry=r
        )
        self.frames_sent = Counter(
            "tidings_frames_sent", "WebSocket frames written to clients.", registry=r
        )
        self.publish_duration = Histogram(
            "tidings_publish_duration_seconds",
            "Time to publish through the broker (until it accepted the publication; "
            "without history, on Redis or NATS, until it was queued).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.disconnects = Counter(
            "tidings_disconnects", "Connections closed, by close code.", ["code"], registry=r
        )
        self.command_errors = Counter(
            "tidings_command_errors", "Command error replies, by error code.", ["code"], registry=r
        )
        self.broker_errors = Counter(
            "tidings_broker_errors", "Failed broker operations.", registry=r
        )
        self.queue_overflows = Counter(
            "tidings_queue_overflows",
            "Clients disconnected because their outgoing queue overflowed (3008).",
            registry=r,
        )
        self.received = {name: self.messages_received.labels(name) for name in METHODS}
        self.sent_publication = self.messages_sent.labels("publication")
        self.sent_join = self.messages_sent.labels("join")
        self.sent_leave = self.messages_sent.labels("leave")
        self.sent_reply = self.messages_sent.labels("reply")
        self.sent_ping = self.messages_sent.labels("ping")

    def track(
        self,
        *,
        connections: Callable[[], float],
        subscriptions: Callable[[], float],
        channels: Callable[[], float],
        users: Callable[[], float],
    ) -> None:
        """Read the gauges from these functions at each scrape."""
        self.connections.set_function(connections)
        self.subscriptions.set_function(subscriptions)
        self.channels.set_function(channels)
        self.users.set_function(users)

    def render(self) -> bytes:
        return generate_latest(self.registry)
