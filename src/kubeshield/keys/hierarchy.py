"""The local-KEK hierarchy: one remote call per local KEK instead of one per DEK seed.

:class:`HierarchicalBackend` wraps a remote :class:`~kubeshield.keys.base.KeyBackend` (Transit, AWS
KMS, PKCS#11...). It generates a 32-byte *local KEK* in memory, has the remote wrap it once, and then
wraps DEK seeds locally with AES-256-GCM. The remote-wrapped local KEK travels with every ciphertext in
an annotation, so any replica can recover it with one remote unwrap; after that it is cached (keyed by
the wrapped bytes, LRU-bounded) and decrypts need no remote call at all, even while the remote is down.
This is the idea of the ``local-kek.kms.kubernetes.io`` annotation in the Kubernetes KMS v2 reference
plugin.

Local wrap (``Wrapped.ciphertext``), built in :meth:`HierarchicalBackend.wrap`::

    offset  size        field
    0       1           format version, 0x01
    1       12          GCM nonce, random
    13      len(pt)+16  AES-256-GCM(local KEK, nonce, pt, aad = b"kubeshield-local-kek-v1\\x00" || aad)

so a 32-byte seed gives 61 bytes. ``Wrapped.key_id`` is the remote key_id that wrapped the local KEK
(which is also what :meth:`key_id` reports, so Status and Encrypt agree).

Annotations (stored in plaintext by kube-apiserver; they hold only remote ciphertext, no secret)::

    local-kek.kubeshield.io   the remote's Wrapped.ciphertext of the 32-byte local KEK, made with
                              remote.wrap(local_kek, aad=b"kubeshield-local-kek-v1")
    <remote's own annotations> any annotations the remote returned for that wrap, passed back to it

With Transit the whole map is about 110 bytes, far below the KMS limit of 32 KiB (checked on every wrap).

A local KEK is replaced when it is ``max_age`` seconds old, after ``max_uses`` wraps, or when the
remote's key_id changes (so a remote rotation shows up in new ciphertexts at once). Old local KEKs stay
decryptable through their annotation. Replacing a local KEK needs the remote; decrypting with a cached
one does not. Limits worth knowing: a remote KEK version retired in the key service stops cached local
KEKs only when they leave the cache (restart, eviction, :meth:`HierarchicalBackend.clear_cache`); the
hierarchy needs annotations, so it is for KMS v2 only (KMS v1 keeps no annotations). Key material
cannot be wiped from Python memory; the cache and :meth:`close` drop every reference.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import BackendError, ContractViolation, InvalidCiphertext, InvalidRequest
from kubeshield.keys.base import Health, KeyBackend, Refreshable, Rotatable, Wrapped

__all__ = ["LOCAL_KEK_ANNOTATION", "HierarchicalBackend", "HierarchyStats"]

LOCAL_KEK_ANNOTATION = "local-kek.kubeshield.io"

_VERSION = 0x01
_NONCE = 12
_TAG = 16
_KEK_SIZE = 32
_LOCAL_AAD = b"kubeshield-local-kek-v1\x00"
_KEK_AAD = b"kubeshield-local-kek-v1"
_MAX_ANNOTATIONS = 32 * 1024


@dataclass(frozen=True, slots=True)
class HierarchyStats:
    """Counters for metrics and benchmarks (no secrets)."""

    remote_wraps: int
    remote_unwraps: int
    cache_hits: int
    cached_keks: int
    local_keks_created: int


@dataclass(slots=True)
class _LocalKek:
    aead: AESGCM
    remote: Wrapped  # the remote's wrap of this local KEK
    created: float
    uses: int = 0


@dataclass(frozen=True, slots=True)
class _Cached:
    aead: AESGCM
    key_id: str


class HierarchicalBackend:
    """A KeyBackend that wraps DEK seeds with in-memory local KEKs, themselves wrapped by ``remote``."""

    def __init__(
        self,
        remote: KeyBackend,
        *,
        max_age: float = 24 * 3600.0,
        max_uses: int = 100_000,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.name = f"{remote.name}+local-kek"
        self._remote = remote
        self._max_age = max_age
        self._max_uses = max_uses
        self._cache_size = cache_size
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()  # the current local KEK
        self._cache_lock = threading.Lock()  # the decrypt cache
        self._fetch_lock = threading.Lock()  # one remote unwrap at a time (no thundering herd)
        self._current: _LocalKek | None = None
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._remote_wraps = 0
        self._remote_unwraps = 0
        self._cache_hits = 0
        self._created = 0

    # -- KeyBackend ---------------------------------------------------------------------------------

    def key_id(self) -> str:
        return self._remote.key_id()

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        """Wrap ``plaintext`` locally; see the module docstring for the byte layout."""
        if not isinstance(plaintext, bytes):
            raise TypeError("plaintext must be bytes")
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        if not plaintext:
            raise InvalidRequest("plaintext must not be empty")
        with self._lock:
            kek = self._usable_kek()
            kek.uses += 1
        nonce = self._rng(_NONCE)
        if len(nonce) != _NONCE:
            raise ValueError("rng returned the wrong number of bytes")
        ciphertext = bytes([_VERSION]) + nonce + kek.aead.encrypt(nonce, plaintext, _LOCAL_AAD + aad)
        annotations = {**kek.remote.annotations, LOCAL_KEK_ANNOTATION: kek.remote.ciphertext}
        if _annotation_size(annotations) > _MAX_ANNOTATIONS:
            raise ContractViolation("hierarchy annotations would exceed 32 KiB")
        return Wrapped(ciphertext=ciphertext, key_id=kek.remote.key_id, annotations=annotations)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        if not isinstance(wrapped, Wrapped):
            raise TypeError("wrapped must be a Wrapped")
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        blob = wrapped.ciphertext
        wrapped_kek = wrapped.annotations.get(LOCAL_KEK_ANNOTATION)
        if len(blob) < 1 + _NONCE + _TAG or blob[0] != _VERSION or not isinstance(wrapped_kek, bytes):
            raise InvalidCiphertext()
        if not wrapped_kek:
            raise InvalidCiphertext()
        aead = self._kek_for(wrapped_kek, wrapped)
        try:
            return aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _LOCAL_AAD + aad)
        except InvalidTag:
            raise InvalidCiphertext() from None

    def check_health(self) -> Health:
        """The remote's health: a new local KEK, and any cold decrypt, need it."""
        return self._remote.check_health()

    def close(self) -> None:
        self.clear_cache()
        self._remote.close()

    # -- optional abilities, delegated --------------------------------------------------------------

    def refresh(self) -> bool:
        """Refresh the remote (if it can); a new remote key_id gives a new local KEK on the next wrap."""
        if isinstance(self._remote, Refreshable):
            return self._remote.refresh()
        return False

    def rotate(self) -> str:
        """Rotate the remote KEK (if it can) and start a new local KEK. Return the new key_id."""
        if not isinstance(self._remote, Rotatable):
            raise BackendError(f"the {self._remote.name} backend cannot rotate its key")
        key_id = self._remote.rotate()
        self.rotate_local()
        return key_id

    def rotate_local(self) -> None:
        """Start a new local KEK on the next wrap (the old one stays decryptable)."""
        with self._lock:
            self._current = None

    def clear_cache(self) -> None:
        """Forget every cached local KEK (the next decrypt of each needs the remote again)."""
        with self._lock:
            self._current = None
        with self._cache_lock:
            self._cache.clear()

    def stats(self) -> HierarchyStats:
        with self._cache_lock:
            cached = len(self._cache)
        return HierarchyStats(
            self._remote_wraps, self._remote_unwraps, self._cache_hits, cached, self._created
        )

    # -- internals ----------------------------------------------------------------------------------

    def _usable_kek(self) -> _LocalKek:
        """The current local KEK, replaced first when it is too old, too used, or of an old remote key."""
        kek = self._current
        now = self._clock()
        if (
            kek is None
            or kek.uses >= self._max_uses
            or not 0 <= now - kek.created < self._max_age
            or kek.remote.key_id != self._remote.key_id()
        ):
            kek = self._new_kek(now)
            self._current = kek
        return kek

    def _new_kek(self, now: float) -> _LocalKek:
        material = self._rng(_KEK_SIZE)
        if len(material) != _KEK_SIZE:
            raise ValueError("rng returned the wrong number of bytes")
        self._remote_wraps += 1
        remote = self._remote.wrap(material, aad=_KEK_AAD)
        if LOCAL_KEK_ANNOTATION in remote.annotations:
            raise ContractViolation(f"the remote backend uses the reserved annotation {LOCAL_KEK_ANNOTATION}")
        aead = AESGCM(material)
        self._created += 1
        self._remember(remote.ciphertext, _Cached(aead, remote.key_id))
        return _LocalKek(aead=aead, remote=remote, created=now)

    def _kek_for(self, wrapped_kek: bytes, wrapped: Wrapped) -> AESGCM:
        cached = self._lookup(wrapped_kek, wrapped.key_id)
        if cached is not None:
            return cached
        with self._fetch_lock:
            cached = self._lookup(wrapped_kek, wrapped.key_id)
            if cached is not None:
                return cached
            rest = {k: v for k, v in wrapped.annotations.items() if k != LOCAL_KEK_ANNOTATION}
            self._remote_unwraps += 1
            material = self._remote.unwrap(Wrapped(wrapped_kek, wrapped.key_id, rest), aad=_KEK_AAD)
            if len(material) != _KEK_SIZE:
                raise InvalidCiphertext()
            aead = AESGCM(material)
            if wrapped.key_id or not self._known(wrapped_kek):
                self._remember(wrapped_kek, _Cached(aead, wrapped.key_id))
            return aead

    def _known(self, wrapped_kek: bytes) -> bool:
        with self._cache_lock:
            return wrapped_kek in self._cache

    def _lookup(self, wrapped_kek: bytes, key_id: str) -> AESGCM | None:
        with self._cache_lock:
            entry = self._cache.get(wrapped_kek)
            if entry is None:
                return None
            if key_id and entry.key_id and key_id != entry.key_id:
                return None  # not the key_id this KEK came with: let the remote judge it
            self._cache.move_to_end(wrapped_kek)
            self._cache_hits += 1
            return entry.aead

    def _remember(self, wrapped_kek: bytes, entry: _Cached) -> None:
        with self._cache_lock:
            self._cache[wrapped_kek] = entry
            self._cache.move_to_end(wrapped_kek)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _annotation_size(annotations: Mapping[str, bytes]) -> int:
    return sum(len(k.encode()) + len(v) for k, v in annotations.items())
