"""The deep health check every backend runs: a real wrap/unwrap round trip of a random value.

``round_trip`` never raises. Its ``detail`` is safe to log, show on ``/healthz`` and put in a Status
error: for the errors whose messages kubeshield writes itself (``BackendError``, ``ConfigError``,
``KeyringError``) it is ``"<Type>: <message>"`` (those messages never hold secrets or response bodies,
by the contract in :mod:`kubeshield.errors`); ``InvalidCiphertext`` is just its name; anything else (an
SDK's or the standard library's exception, whose text we do not control) is only its type name.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable

from kubeshield.errors import BackendError, ConfigError, KeyringError
from kubeshield.keys.base import Health, KeyBackend

__all__ = ["HEALTH_AAD", "round_trip", "safe_detail"]

#: The aad health probes are wrapped under (never used for real data).
HEALTH_AAD = b"kubeshield/health"


def safe_detail(exc: BaseException) -> str:
    """A description of ``exc`` that holds no secret (see the module docstring)."""
    if isinstance(exc, (BackendError, ConfigError, KeyringError)):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def round_trip(
    backend: KeyBackend,
    *,
    clock: Callable[[], float] = time.time,
    rng: Callable[[int], bytes] = os.urandom,
    before: Callable[[], object] | None = None,
) -> Health:
    """Wrap 32 random bytes with ``backend`` and unwrap them again; ``before`` runs first (a refresh)."""
    start = clock()
    try:
        if before is not None:
            before()
        probe = rng(32)
        wrapped = backend.wrap(probe, aad=HEALTH_AAD)
        if not hmac.compare_digest(backend.unwrap(wrapped, aad=HEALTH_AAD), probe):
            return Health(False, None, "the round trip returned different bytes", start, clock() - start)
    except Exception as exc:
        return Health(False, None, safe_detail(exc), start, clock() - start)
    return Health(True, wrapped.key_id, "ok", start, clock() - start)
