"""Two-stage graceful shutdown on SIGTERM/SIGINT for the plugin and the relay.

Install :class:`StopSignals` first thing, before any socket exists, so a stop request that arrives
while the process starts is never lost to the default handler (which would kill the process without
removing its socket). :func:`serve_until_signalled` then waits for the request and stops the server:

* the first signal stops accepting new RPCs and lets in-flight ones finish within ``grace`` seconds;
* a second, different signal (or the same one more than ``SIGNAL_DEBOUNCE`` seconds later) cancels
  whatever is still running at once;
* a repeat of the first signal within ``SIGNAL_DEBOUNCE`` seconds is the same request delivered twice
  (``timeout(1)``, some init systems and process-group kills do that), not a second request.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any, Protocol

from kubeshield.kms.logging import fields, get_logger

__all__ = ["DEFAULT_GRACE", "SIGNAL_DEBOUNCE", "StopSignals", "Stoppable", "serve_until_signalled"]

#: Seconds in-flight RPCs get to finish after the first stop signal.
DEFAULT_GRACE = 10.0
#: Seconds in which a repeat of the first stop signal counts as the same request.
SIGNAL_DEBOUNCE = 0.5

_log = get_logger("kms.shutdown")


class Stoppable(Protocol):
    """A started server: ``stop(grace)`` returns an event set when it has stopped."""

    def stop(self, grace: float | None) -> threading.Event: ...


class StopSignals:
    """SIGTERM/SIGINT handlers that record stop requests; installed on construction. Main thread only."""

    def __init__(self, *, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self.requested = threading.Event()
        self.forced = threading.Event()
        self._first: tuple[int, float] | None = None
        self._previous: dict[int, Any] = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first is None:
            _log.info("shutting down", extra=fields(signal=name, grace=self.grace))
            self._first = (signum, now)
            self.requested.set()
        elif self._first[0] == signum and now - self._first[1] < SIGNAL_DEBOUNCE:
            _log.info("duplicate signal ignored", extra=fields(signal=name))
        else:
            _log.warning("second signal: forcing shutdown", extra=fields(signal=name))
            self.forced.set()

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def serve_until_signalled(server: Stoppable, *, signals: StopSignals | None = None) -> int:
    """Run a started server until a stop signal, then shut it down in two stages (module docstring)."""
    signals = signals if signals is not None else StopSignals()
    try:
        while not signals.requested.wait(0.5):
            pass
        done = server.stop(signals.grace)
        while not done.wait(0.1):
            if signals.forced.is_set():
                server.stop(None)
                done.wait(5)
                break
    finally:
        signals.restore()
    _log.info("stopped")
    return 0
