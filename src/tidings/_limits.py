"""Rate limits: a token bucket, and origin matching for the WebSocket handshake."""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["OriginCheck", "TokenBucket"]


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
