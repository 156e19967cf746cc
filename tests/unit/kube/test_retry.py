"""409 retries: re-run, back off with injected sleep, give up, never retry other errors."""

from __future__ import annotations

import asyncio

import pytest

from kubeshield.errors import KubeConflict, KubeNotFound
from kubeshield.kube import aretry_on_conflict, retry_on_conflict
from kubeshield.kube._retry import backoff_delays


def test_retries_conflicts_until_success():
    calls: list[int] = []
    sleeps: list[float] = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise KubeConflict("c", code=409)
        return "done"

    assert retry_on_conflict(fn, sleep=sleeps.append, rng=lambda: 0.5) == "done"
    assert len(calls) == 3 and sleeps == [0.01, 0.02]


def test_gives_up_after_attempts():
    sleeps: list[float] = []

    def fn():
        raise KubeConflict("c", code=409)

    with pytest.raises(KubeConflict):
        retry_on_conflict(fn, attempts=4, sleep=sleeps.append)
    assert len(sleeps) == 3


def test_other_errors_are_not_retried():
    sleeps: list[float] = []

    def fn():
        raise KubeNotFound("gone", code=404)

    with pytest.raises(KubeNotFound):
        retry_on_conflict(fn, sleep=sleeps.append)
    assert sleeps == []


def test_backoff_is_capped_and_jittered():
    low = list(backoff_delays(8, base=0.1, cap=1.0, rng=lambda: 0.0))
    high = list(backoff_delays(8, base=0.1, cap=1.0, rng=lambda: 1.0))
    assert len(low) == 7 and max(high) == pytest.approx(1.1) and min(low) == pytest.approx(0.09)
    assert low == sorted(low)
    with pytest.raises(ValueError):
        list(backoff_delays(0, base=0.1, cap=1.0))


def test_async_retry():
    calls: list[int] = []
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def fn():
        calls.append(1)
        if len(calls) == 1:
            raise KubeConflict("c", code=409)
        return 42

    assert asyncio.run(aretry_on_conflict(fn, sleep=sleep)) == 42
    assert len(slept) == 1
