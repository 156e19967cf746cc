"""Token buckets keyed by a string (a client address, a ``namespace:serviceaccount``), bounded in memory.

``allow(key)`` takes one token from ``key``'s bucket (``rate`` tokens/s, at most ``burst`` saved up) and
returns ``(True, 0.0)``, or ``(False, seconds)`` until the next token. At most ``max_keys`` buckets are
kept (least recently used ones go first, which only ever makes a limit more generous). Clock injected.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate, self._burst, self._max = float(rate), float(burst), max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, float]:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                ok, wait = True, 0.0
            else:
                self._buckets[key] = (tokens, now)
                ok, wait = False, (1.0 - tokens) / self._rate
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return ok, wait
