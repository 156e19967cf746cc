"""Bounded memo of *successful* signature checks, so collateral shared by many quotes (the same TCB info,
QE identity, CRLs and PCK chain) is not re-verified on every call.

A signature check is a pure function of (signed bytes, signature, public key, algorithm); the key is
SHA-256 over all four, and only successes are remembered, so a bad signature is checked every time
and nothing an attacker sends can make a later check pass. Every time-dependent check (validity,
nextUpdate) is still made on every call. ``set_size(0)`` turns it off (the benchmark's cold column).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["checked", "set_size"]

_lock = threading.Lock()
_seen: OrderedDict[bytes, None] = OrderedDict()
_size = 4096


def set_size(size: int) -> None:
    """Bound the memo to ``size`` entries (0 disables it and forgets everything)."""
    global _size
    with _lock:
        _size = max(0, size)
        _seen.clear()


def checked(kind: str, parts: tuple[bytes, ...], verify: Callable[[], None]) -> None:
    """Run ``verify`` (which raises when the signature is invalid) unless this exact check passed before."""
    h = hashlib.sha256(kind.encode())
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    key = h.digest()
    with _lock:
        if key in _seen:
            _seen.move_to_end(key)
            return
    verify()
    with _lock:
        if _size:
            _seen[key] = None
            while len(_seen) > _size:
                _seen.popitem(last=False)
