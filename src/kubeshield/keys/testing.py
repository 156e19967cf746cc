"""Test doubles for the layers above key custody.

``InMemoryBackend`` is a real AES-256-GCM backend whose KEK versions live only in memory, with switches
to make the next calls fail, so the KMS service and its callers can be tested without files or
servers. It is public (like httpx's ``MockTransport``) but must never be used in production: it keeps
no key after the process ends.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import BackendError, InvalidCiphertext, KeyNotFound
from kubeshield.keys.base import Health, KeyVersionInfo, Wrapped
from kubeshield.keys.health import round_trip

__all__ = ["InMemoryBackend"]

_NONCE = 12


class InMemoryBackend:
    """AES-256-GCM KEKs kept in memory. ``ciphertext = nonce(12) || GCM(pt, aad=key_id || 0 || aad)``."""

    name = "memory"

    def __init__(self, *, rng: Callable[[int], bytes] = os.urandom, clock: Callable[[], float] = time.time):
        self._rng = rng
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self._order: list[str] = []
        self._created: dict[str, float] = {}
        self.fail_next_wrap: BackendError | None = None
        self.fail_next_unwrap: BackendError | None = None
        self.fail_health: BackendError | None = None
        self.wrap_calls = 0
        self.unwrap_calls = 0
        self.rotate()

    def rotate(self) -> str:
        with self._lock:
            material = self._rng(32)
            version = len(self._order) + 1
            fingerprint = hashlib.sha256(b"kubeshield-memory-kek\x00" + material).hexdigest()[:16]
            key_id = f"memory:v{version}:{fingerprint}"
            self._keys[key_id] = material
            self._order.append(key_id)
            self._created[key_id] = self._clock()
            return key_id

    def key_id(self) -> str:
        return self._order[-1]

    def versions(self) -> list[KeyVersionInfo]:
        last = len(self._order) - 1
        return [
            KeyVersionInfo(i + 1, kid, self._created[kid], "primary" if i == last else "active")
            for i, kid in enumerate(self._order)
        ]

    def forget(self, key_id: str) -> None:
        """Drop one KEK version (as a retired key would be)."""
        with self._lock:
            self._keys.pop(key_id, None)

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        self.wrap_calls += 1
        if self.fail_next_wrap is not None:
            exc, self.fail_next_wrap = self.fail_next_wrap, None
            raise exc
        key_id = self.key_id()
        nonce = self._rng(_NONCE)
        ct = AESGCM(self._keys[key_id]).encrypt(nonce, plaintext, key_id.encode() + b"\x00" + aad)
        return Wrapped(ciphertext=nonce + ct, key_id=key_id)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        self.unwrap_calls += 1
        if self.fail_next_unwrap is not None:
            exc, self.fail_next_unwrap = self.fail_next_unwrap, None
            raise exc
        candidates = [wrapped.key_id] if wrapped.key_id else list(reversed(self._order))
        for key_id in candidates:
            material = self._keys.get(key_id)
            if material is None:
                if wrapped.key_id:
                    raise KeyNotFound("unknown key_id")
                continue
            blob = wrapped.ciphertext
            if len(blob) < _NONCE + 16:
                raise InvalidCiphertext()
            try:
                return AESGCM(material).decrypt(blob[:_NONCE], blob[_NONCE:], key_id.encode() + b"\x00" + aad)
            except InvalidTag:
                continue
        raise InvalidCiphertext()

    def check_health(self) -> Health:
        start = self._clock()
        if self.fail_health is not None:
            return Health(False, None, f"{type(self.fail_health).__name__}", start, 0.0)
        return round_trip(self, clock=self._clock, rng=self._rng)

    def close(self) -> None:
        self._keys.clear()
