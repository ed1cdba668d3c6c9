"""What the broker tests share (``test_contract.py`` and each broker's own): a recording
event handler in place of a node, and publications numbered ``{"n": N}``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from msgspec import Raw

from tidings import Broker, ClientInfo, HistoryOptions, Publication, StreamPosition

KEEP = HistoryOptions(size=100, ttl=60.0)


class Recorder:
    """A BrokerEventHandler that records what the broker hands to the node."""

    def __init__(self) -> None:
        self.publications: list[tuple[str, Publication]] = []
        self.excluded: list[str] = []
        self.previous: list[Publication | None] = []
        self.joins: list[tuple[str, ClientInfo]] = []
        self.leaves: list[tuple[str, ClientInfo]] = []
        self.lost: list[list[str]] = []
        self.events: list[tuple[str, str, int | str]] = []
        """("p", channel, n), ("j" or "l", channel, user): all of them, in arrival order."""

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        exclude_client: str = "",
        previous: Publication | None = None,
        epoch: str = "",
    ) -> None:
        self.publications.append((channel, publication))
        self.events.append(("p", channel, number(publication)))
        self.excluded.append(exclude_client)
        self.previous.append(previous)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))
        self.events.append(("j", channel, info.user))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self.events.append(("l", channel, info.user))

    def handle_lost(self, channels: Sequence[str]) -> None:
        self.lost.append(list(channels))

    def received(self, channel: str) -> list[tuple[int, int]]:
        """(offset, n) of the publications of ``channel``, in arrival order."""
        return [(p.offset, number(p)) for c, p in self.publications if c == channel]

    @property
    def lost_channels(self) -> set[str]:
        return {channel for report in self.lost for channel in report}


def pub(n: int, **fields: Any) -> Publication:
    """A publication of compact JSON ``{"n": n, **fields}`` (``b'{"n":1}'``)."""
    return Publication(data=Raw(msgspec.json.encode({"n": n, **fields})))


def number(publication: Publication) -> int:
    value: int = json.loads(bytes(publication.data))["n"]
    return value


def offsets(items: Iterable[Publication] | Iterable[StreamPosition]) -> list[int]:
    return [item.offset for item in items]


async def fill(
    broker: Broker, channel: str, count: int, history: HistoryOptions = KEEP
) -> list[StreamPosition]:
    """Publish ``{"n": 1}`` to ``{"n": count}`` with history; return their positions."""
    return [await broker.publish(channel, pub(n), history) for n in range(1, count + 1)]
