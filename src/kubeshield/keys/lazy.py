"""Start while the key service is down: a backend that connects when the service comes back.

``kubeshield kms serve`` must bind its socket even when Transit, AWS KMS or the PKCS#11 token cannot be
reached at that moment (a node rebooted during an outage): the apiserver then sees a plugin that is up
and *unhealthy* (Status answers UNAVAILABLE, ``/healthz`` and ``/readyz`` fail, ``/livez`` does not),
Decrypts that the emergency keyring can serve keep working, and the plugin turns healthy by itself when
the service returns, without a restart.

:func:`open_during_outage` does the one synchronous attempt to open the backend. Success returns the
backend itself (nothing changes while the service is up). An outage (``BackendUnavailable`` or
``BackendTimeout``) returns a :class:`LazyBackend` standing for it; any other error (a wrong setting,
a refused credential, a key that does not exist) is raised as before, so a mistake still stops the
plugin at start with a message that says what to fix.

A :class:`LazyBackend` that is not connected:

* ``key_id()`` and ``wrap``/``unwrap`` raise ``BackendUnavailable`` at once (they never open the
  backend themselves: the request path never waits for a connection). Break-glass, placed above, treats
  that like any outage of the primary and decrypts through the emergency keyring where it can.
* ``check_health()`` and ``refresh()`` make the next connection attempt when it is due, and report
  the outage (with the last error and when the next attempt is) otherwise. ``kms serve``'s health loop
  calls ``check_health()`` about once a second while unhealthy, so those calls drive the retries; the
  attempts themselves are spaced by :class:`Backoff` (exponential with jitter, on the injected clock).

After an attempt succeeds every call goes to the backend, as if it had been opened at start. Errors of
later attempts, whatever they are, keep the wrapper disconnected and are reported by ``check_health``:
after start the plugin never exits on its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.errors import BackendError, BackendTimeout, BackendUnavailable
from kubeshield.keys.base import Health, KeyBackend, Refreshable, Rotatable, Wrapped
from kubeshield.keys.health import safe_detail

__all__ = ["OUTAGES", "Backoff", "LazyBackend", "open_during_outage"]

#: the errors that mean "the key service cannot be reached now" (retry), not "the set-up is wrong"
OUTAGES: tuple[type[BackendError], ...] = (BackendUnavailable, BackendTimeout)

_log = logging.getLogger("kubeshield.keys.lazy")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between connection attempts: ``initial * factor**n``, capped at ``maximum``.

    Each delay is shortened by up to ``jitter`` (a fraction) from the injected ``rng`` so that the
    plugins of a cluster that lost the same key service do not retry in lock step.
    """

    initial: float = 0.5
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter < 1")

    def delay(self, failures: int, *, rng: Callable[[], float]) -> float:
        """The wait after the ``failures``-th failure in a row (1 = the first)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rng())


class LazyBackend:
    """A KeyBackend that opens the backend it stands for on a later attempt (see the module docstring)."""

    def __init__(
        self,
        opener: Callable[[], KeyBackend],
        *,
        name: str,
        first_error: BaseException | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._opener = opener
        self._backoff = backoff if backoff is not None else Backoff()
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._inner: KeyBackend | None = None
        self._closed = False
        self._attempt_lock = threading.Lock()
        self._failures = 0
        self._attempts = 0
        self._next_attempt = self._clock()
        self._last_error = "not connected yet"
        if first_error is not None:
            self._failed(first_error)

    # -- state --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._inner is not None

    @property
    def attempts(self) -> int:
        """Connection attempts made by this wrapper (the one at start, if any, not counted)."""
        return self._attempts

    @property
    def inner(self) -> KeyBackend | None:
        """The backend once connected."""
        return self._inner

    def seconds_to_next_attempt(self) -> float:
        return max(0.0, self._next_attempt - self._clock())

    def connect(self, *, force: bool = False) -> bool:
        """Make a connection attempt if one is due (or ``force``); True when connected. Never raises.

        Only one attempt runs at a time; a caller that finds one running does not wait for it.
        """
        if self._inner is not None:
            return True
        if self._closed or (not force and self._clock() < self._next_attempt):
            return False
        if not self._attempt_lock.acquire(blocking=False):
            return False
        try:
            if self._inner is not None:
                return True
            self._attempts += 1
            try:
                inner = self._opener()
            except Exception as exc:
                self._failed(exc)
                return False
            if self._closed:
                inner.close()
                return False
            self._inner = inner
            _log.warning(
                "key backend connected",
                extra={"fields": {"backend": self.name, "attempts": self._attempts, "event": "connected"}},
            )
            return True
        finally:
            self._attempt_lock.release()

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        wait = self._backoff.delay(self._failures, rng=self._rng)
        self._next_attempt = self._clock() + wait
        self._last_error = safe_detail(exc)
        _log.warning(
            "key backend not reachable; retrying",
            extra={
                "fields": {
                    "backend": self.name,
                    "error": self._last_error,
                    "retry_in_seconds": round(wait, 3),
                    "event": "connect_failed",
                }
            },
        )

    def _down(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"the {self.name} key backend is not connected ({self._last_error}); "
            f"next attempt in {self.seconds_to_next_attempt():.1f}s"
        )

    def _backend(self) -> KeyBackend:
        inner = self._inner
        if inner is None:
            raise self._down()
        return inner

    # -- KeyBackend ---------------------------------------------------------------------------------

    def key_id(self) -> str:
        return self._backend().key_id()

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        return self._backend().wrap(plaintext, aad=aad)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        return self._backend().unwrap(wrapped, aad=aad)

    def check_health(self) -> Health:
        """The backend's own round trip once connected; before that, an attempt if due, else the outage."""
        if self._inner is None and not self.connect():
            now = self._wall_clock()
            return Health(False, None, str(self._down()), now, 0.0)
        return self._backend().check_health()

    def close(self) -> None:
        self._closed = True
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    # -- optional abilities -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Refresh the backend; before it is connected, an attempt if due (True when it connected)."""
        if self._inner is None:
            return self.connect()
        inner = self._inner
        return inner.refresh() if isinstance(inner, Refreshable) else False

    def rotate(self) -> str:
        inner = self._backend()
        if not isinstance(inner, Rotatable):
            raise BackendError(f"the {self.name} backend cannot rotate its key")
        return inner.rotate()

    def __repr__(self) -> str:
        state = "connected" if self._inner is not None else "not connected"
        return f"LazyBackend({self.name!r}, {state})"


def open_during_outage(
    opener: Callable[[], KeyBackend],
    *,
    name: str,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> KeyBackend:
    """Open the backend now; during an outage return a :class:`LazyBackend` that connects later.

    Errors other than :data:`OUTAGES` are raised: they need the operator, not a retry.
    """
    try:
        return opener()
    except OUTAGES as exc:
        return LazyBackend(opener, name=name, first_error=exc, backoff=backoff, clock=clock, rng=rng)
