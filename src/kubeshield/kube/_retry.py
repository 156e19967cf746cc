"""Retry a read-modify-write on 409 Conflict, with capped exponential backoff and injected sleep.

The function given must *re-read* the object and re-apply the change on every call (that is what makes
the retry correct: a stale copy would conflict forever). Errors other than ``KubeConflict`` are not
retried here; ``KubeUnavailable`` is the caller's to decide.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from kubeshield.errors import KubeConflict

__all__ = ["aretry_on_conflict", "backoff_delays", "retry_on_conflict"]

T = TypeVar("T")


def backoff_delays(
    attempts: int, *, base: float, cap: float, rng: Callable[[], float] = random.random
) -> Iterator[float]:
    """``attempts - 1`` delays: base, 2*base, 4*base... capped at ``cap``, each with +-10% jitter
    (client-go's ``retry.DefaultBackoff`` shape)."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    delay = base
    for _ in range(attempts - 1):
        yield min(delay, cap) * (0.9 + 0.2 * rng())
        delay *= 2


def retry_on_conflict(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.01,
    max_delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` until it does not raise ``KubeConflict``, at most ``attempts`` times."""
    delays = backoff_delays(attempts, base=base_delay, cap=max_delay, rng=rng)
    while True:
        try:
            return fn()
        except KubeConflict:
            delay = next(delays, None)
            if delay is None:
                raise
            sleep(delay)


async def aretry_on_conflict(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    base_delay: float = 0.01,
    max_delay: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """``retry_on_conflict`` for coroutines."""
    delays = backoff_delays(attempts, base=base_delay, cap=max_delay, rng=rng)
    while True:
        try:
            return await fn()
        except KubeConflict:
            delay = next(delays, None)
            if delay is None:
                raise
            await sleep(delay)
