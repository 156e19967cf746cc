"""The PKCS#11 token gate: bounded wait, bounded queue, re-entrant for its holder (no SDK needed)."""

from __future__ import annotations

import threading

import pytest

from kubeshield.errors import BackendTimeout, BackendUnavailable
from kubeshield.keys._pkcs11_gate import TokenGate

GENEROUS = 30.0  # a deadlock detector, not a timing assertion


def _hold_in_thread(gate: TokenGate) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """A thread that holds the gate (a hung token call) until ``release`` is set."""
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with gate.hold(timeout=GENEROUS, max_waiting=4):
            held.set()
            release.wait(GENEROUS)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert held.wait(GENEROUS)
    return held, release, thread


def test_a_free_gate_is_taken_at_once_and_is_reentrant() -> None:
    gate = TokenGate()
    with gate.hold(timeout=0.01, max_waiting=0):
        assert gate.held_by_me()
        with gate.hold(timeout=0.01, max_waiting=0):  # the holder never waits on itself
            assert gate.held_by_me()
        assert gate.held_by_me()
    assert not gate.held_by_me()


def test_a_busy_gate_times_out_with_backend_timeout() -> None:
    gate = TokenGate()
    _, release, thread = _hold_in_thread(gate)
    try:
        with pytest.raises(BackendTimeout, match=r"did not become free within 0\.05s"):
            with gate.hold(timeout=0.05, max_waiting=4):
                pass
        assert gate.waiting == 0
    finally:
        release.set()
        thread.join(GENEROUS)
    with gate.hold(timeout=0.05, max_waiting=4):
        pass


def test_the_queue_is_capped_and_the_next_caller_is_refused_at_once() -> None:
    gate = TokenGate()
    _, release, holder = _hold_in_thread(gate)
    waiting = threading.Event()
    outcomes: list[str] = []

    def waiter() -> None:
        waiting.set()
        try:
            with gate.hold(timeout=GENEROUS, max_waiting=1):
                outcomes.append("got it")
        except BackendTimeout:
            outcomes.append("timeout")

    first = threading.Thread(target=waiter, daemon=True)
    first.start()
    assert waiting.wait(GENEROUS)
    while gate.waiting < 1:  # until the first waiter is in the queue
        threading.Event().wait(0.001)
    try:
        with pytest.raises(BackendUnavailable, match="1 calls are already waiting"):
            with gate.hold(timeout=GENEROUS, max_waiting=1):
                pass
    finally:
        release.set()
        holder.join(GENEROUS)
        first.join(GENEROUS)
    assert outcomes == ["got it"]
