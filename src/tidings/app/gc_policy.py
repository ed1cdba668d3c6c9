"""The garbage-collector policy of a process holding many long-lived connections.

Theory of operation. CPython's full (generation 2) collection walks every
tracked object. A hub with 10,000 connections tracks about 60 per connection,
and each answered ping leaves a few more long-lived ones behind (the next read,
waiting on the socket): with the default policy a full collection of 300-400 ms
then stalls every client about every 40 s (``bench/results/REPORT.md``, many
channels).

So, at each :meth:`FreezingCollector.tick` (every second), every object
that exists is moved to the permanent generation (:func:`gc.freeze`): full
collections then walk only what is newer, a few milliseconds' worth. Frozen
objects are still freed by reference counting; only reference cycles among them
wait, and those are mostly the connections that closed since. When the closed
connections reach a quarter of those open (and at least ``min_closed``), or
``max_interval`` passed, everything is unfrozen and collected once, the pause
the default policy pays every 40 s, then freezing resumes. Garbage that waits
is thus bounded by a share of the connections' own memory, and by time.

Workers (``tidings serve --workers N``) start together and see alike loads: with
fixed triggers they would all collect at the same moment, every 300 s, and every
client of the machine would stall at once (2-16 s with 100,000 connections over
6 workers). So each cycle scales both triggers by a factor the process draws
itself (its own :class:`random.Random`, seeded from the system): the first from
[0.5, 1.0], which spreads the first collections of processes started together
over half of ``max_interval``; the later ones from [0.9, 1.1], so that phases
keep drifting apart instead of lining up again (garbage waits at most 1.1 x
``max_interval``). The share is scaled too, since steady churn reaches equal
shares in equal times; a burst of closes that crosses every worker's share at
once still collects everywhere at once.

The policy is the process's (``gc`` is global): turn it off with
``gc_freeze = false`` when embedding the hub in a program that manages the
collector itself.
"""

from __future__ import annotations

import gc
import random

__all__ = ["FreezingCollector"]


class FreezingCollector:
    """Freezes surviving objects at each tick; collects everything now and then."""

    FIRST_FACTOR = (0.5, 1.0)
    """The first cycle's triggers, scaled: spreads processes started together."""
    LATER_FACTOR = (0.9, 1.1)
    """Each later cycle's: keeps their phases apart."""

    def __init__(
        self,
        *,
        min_closed: int = 256,
        closed_share: float = 0.25,
        max_interval: float = 300.0,
        seed: int | None = None,
    ) -> None:
        self.min_closed = min_closed
        self.closed_share = closed_share
        self.max_interval = max_interval
        # Its own generator, seeded from the system unless a test gives a seed:
        # processes must not draw the same factors.
        self._random = random.Random(seed)
        self.factor = self._random.uniform(*self.FIRST_FACTOR)
        """This cycle's scale of ``max_interval`` and ``closed_share``."""
        self._closed_at_full = 0
        self._last_full: float | None = None

    def tick(self, now: float, connections: int, closed: int) -> None:
        """Collect everything if it is time to, then freeze what survived.

        ``connections`` are open now; ``closed`` is a running count of those that
        closed (since any fixed point in time).
        """
        if self._last_full is None:
            self._last_full = now
            self._closed_at_full = closed
        closed_since = closed - self._closed_at_full
        threshold = max(self.min_closed, self.factor * self.closed_share * connections)
        if closed_since >= threshold or now - self._last_full >= self.factor * self.max_interval:
            gc.unfreeze()
            gc.collect()
            self._closed_at_full = closed
            self._last_full = now
            self.factor = self._random.uniform(*self.LATER_FACTOR)
        gc.freeze()

    def stop(self) -> None:
        """Give every frozen object back to the collector."""
        gc.unfreeze()
