"""Rate limits: a token bucket, turns per loop iteration, origin matching."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

__all__ = ["OriginCheck", "TokenBucket", "Turns"]


class TokenBucket:
    """Allows ``rate`` events per second on average, in bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Turns:
    """At most ``per_iteration`` callers go on per event-loop iteration; the others
    wait for the next ones, in arrival order.

    A reconnect storm makes thousands of clients hand over their handshakes and
    commands at once. Handled all in one iteration, they would hold the loop for a
    second or more, and nothing else (a health probe, a publication, a ping) would
    get a turn meanwhile. The same work in slices keeps the loop responsive and
    costs no more in total; below the quota, :meth:`take` does not wait.
    """

    def __init__(self, per_iteration: int) -> None:
        self.per_iteration = per_iteration
        self._used = 0
        self._waiters: deque[Callable[[], object]] = deque()
        self._next: asyncio.Handle | None = None

    def call(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` now if a turn is free, else in a later iteration.

        The connection layer's form: a handshake waiting for its turn holds no
        task, only its place in the queue.
        """
        if self._free_turn():
            callback()
        else:
            self._waiters.append(callback)

    async def take(self) -> None:
        if self._free_turn():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(functools.partial(_wake, waiter))
        await waiter

    def _free_turn(self) -> bool:
        """Use a turn of this iteration if one is free and nobody waits for one."""
        if self._used < self.per_iteration and not self._waiters:
            self._used += 1
            self._schedule()  # the next iteration starts counting anew
            return True
        return False

    def _schedule(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._new_iteration)

    def _new_iteration(self) -> None:
        self._next = None
        self._used = 0
        while self._waiters and self._used < self.per_iteration:
            if self._waiters.popleft()() is not False:  # False: a cancelled waiter
                self._used += 1
        if self._waiters or self._used:
            self._schedule()


def _wake(waiter: asyncio.Future[None]) -> bool:
    if waiter.done():  # cancelled: nothing to wake, no turn used
        return False
    waiter.set_result(None)
    return True


class OriginCheck:
    """Which browser pages may open a WebSocket (the ``Origin`` header).

    No patterns: only requests without an Origin (non-browser clients) and pages
    served from the same host. Patterns use ``*`` wildcards (``https://*.example.com``,
    ``*`` for any).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._regex = (
            re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))
            if patterns
            else None
        )

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.lower()
        if self._regex is not None:
            return self._regex.match(origin) is not None
        return host is not None and urlsplit(origin).netloc == host.lower()
