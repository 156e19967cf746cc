"""The one gate every PKCS#11 call of this process passes: a lock with a bounded wait and a queue cap.

Private to :mod:`kubeshield.keys.pkcs11`, and free of the SDK so it can be tested on its own.

Why a gate and not a plain lock: python-pkcs11 initialises the module without locking callbacks, so
calls into it must be serialised (see "Threads" in :mod:`kubeshield.keys.pkcs11`). A plain lock makes
every caller wait for as long as the token takes: one hung HSM call (a network HSM that stopped
answering, a USB token that was pulled) then holds every gRPC worker that needs the token, until none
is left for anything else. The gate bounds both:

* a caller waits at most ``timeout`` seconds for the token, then gets
  :class:`~kubeshield.errors.BackendTimeout` (gRPC DEADLINE_EXCEEDED);
* at most ``max_waiting`` callers wait at once; the next one is refused at once with
  :class:`~kubeshield.errors.BackendUnavailable` (gRPC UNAVAILABLE), so a queue never builds up.

The call that holds the gate cannot be interrupted (a PKCS#11 call is a blocking C call), so a hung
token still holds one thread; every other caller is bounded. The gate is re-entrant for the thread
that holds it (a backend method that calls another one does not wait on itself).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kubeshield.errors import BackendTimeout, BackendUnavailable

__all__ = ["TokenGate"]


class TokenGate:
    """A re-entrant lock whose waits are bounded in time and in number (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """How many callers wait for the gate now."""
        return self._waiting

    def held_by_me(self) -> bool:
        return self._owner == threading.get_ident()

    @contextmanager
    def hold(self, *, timeout: float, max_waiting: int) -> Iterator[None]:
        """Hold the gate for the ``with`` block; raise instead of waiting longer or in a longer queue."""
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self._lock.acquire(blocking=False):
            acquired = True
        else:
            with self._state:
                if self._waiting >= max_waiting:
                    raise BackendUnavailable(
                        f"the PKCS#11 token is busy: {self._waiting} calls are already waiting for it"
                    )
                self._waiting += 1
            try:
                acquired = self._lock.acquire(timeout=timeout)
            finally:
                with self._state:
                    self._waiting -= 1
        if not acquired:
            raise BackendTimeout(f"the PKCS#11 token did not become free within {timeout:g}s")
        self._owner, self._depth = me, 1
        try:
            yield
        finally:
            self._owner, self._depth = None, 0
            self._lock.release()
