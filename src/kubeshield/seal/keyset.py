"""The set of sealing keys a process can unseal with, and the order in which it tries them.

sealed-secrets keeps no key id in a sealed value, so its ``HybridDecrypt`` tries every private key (in
Go's random map order). kubeshield keeps the format and tries keys in a better order:

1. the key named by the SealedSecret's ``kubeshield.io/sealing-key`` annotation (a *hint*: the public
   ``SHA256:`` fingerprint of the key ``kubeshield seal`` used; bitnami's tools ignore it, and a wrong or
   forged hint only costs the tries sealed-secrets would have made anyway);
2. the key that opened another value of the same object (values of one object are sealed together);
3. every other key, newest first (most objects are sealed with the current key).

Opening a value costs one RSA private-key operation per key tried, so with 20 keys and no hint an
old value costs up to 20 operations where a hinted one costs 1 (bench/seal_bench.py measures it).

A key decrypts through a :class:`SessionKeyDecrypter`: an in-memory RSA key (:class:`MemoryDecrypter`,
the private half unwrapped from the key backend at start) or a PKCS#11 token (``kubeshield.seal.token``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeshield.errors import InvalidCiphertext
from kubeshield.seal import _hybrid
from kubeshield.seal.certs import fingerprint

__all__ = ["HINT_ANNOTATION", "KeySet", "MemoryDecrypter", "Opened", "SealingKey", "SessionKeyDecrypter"]

#: SealedSecret metadata annotation naming the (public) fingerprint of the key that sealed its values
HINT_ANNOTATION = "kubeshield.io/sealing-key"


class SessionKeyDecrypter(Protocol):
    """Something that can undo the RSA-OAEP(SHA-256, label) of one session key."""

    def decrypt_session_key(self, rsa_ciphertext: bytes, *, label: bytes) -> bytes:
        """The 32-byte session key, or ``InvalidCiphertext``."""
        ...


@dataclass(frozen=True, slots=True)
class MemoryDecrypter:
    """An RSA private key held in this process's memory."""

    private_key: rsa.RSAPrivateKey = field(repr=False)

    def decrypt_session_key(self, rsa_ciphertext: bytes, *, label: bytes) -> bytes:
        if len(rsa_ciphertext) != (self.private_key.key_size + 7) // 8:
            raise InvalidCiphertext()
        try:
            return self.private_key.decrypt(rsa_ciphertext, _hybrid.oaep(label))
        except ValueError:
            raise InvalidCiphertext() from None


@dataclass(frozen=True, slots=True)
class SealingKey:
    """One sealing key: its certificate, and (when this process may unseal) a decrypter."""

    certificate: x509.Certificate
    decrypter: SessionKeyDecrypter | None = field(default=None, repr=False, compare=False)
    public_key: rsa.RSAPublicKey = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        key = self.certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError("a sealing key must be RSA")
        object.__setattr__(self, "public_key", key)
        object.__setattr__(self, "fingerprint", fingerprint(key))

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class Opened:
    """A value that unsealed, and the fingerprint of the key that opened it."""

    plaintext: bytes = field(repr=False)
    fingerprint: str


class KeySet:
    """Sealing keys ordered by certificate NotBefore (``--key-order-priority CertNotBefore``)."""

    def __init__(self, keys: Iterable[SealingKey]) -> None:
        ordered = sorted(keys, key=lambda k: k.not_before)
        self._keys: tuple[SealingKey, ...] = tuple(ordered)
        self._by_fp = {k.fingerprint: k for k in ordered}
        self._lock = threading.Lock()
        self.rsa_operations = 0  # how many private-key operations were tried (for the benchmark)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> tuple[SealingKey, ...]:
        """Oldest first."""
        return self._keys

    @property
    def latest(self) -> SealingKey:
        """The key new values are sealed with: the one with the newest NotBefore."""
        if not self._keys:
            raise LookupError("the key set is empty")
        return self._keys[-1]

    def get(self, fp: str) -> SealingKey | None:
        return self._by_fp.get(fp)

    def _order(self, prefer: Sequence[str]) -> list[SealingKey]:
        seen: set[str] = set()
        out: list[SealingKey] = []
        for fp in prefer:
            key = self._by_fp.get(fp)
            if key is not None and fp not in seen and key.decrypter is not None:
                seen.add(fp)
                out.append(key)
        for key in reversed(self._keys):
            fp = key.fingerprint
            if fp not in seen and key.decrypter is not None:
                seen.add(fp)
                out.append(key)
        return out

    def open(self, blob: bytes, *, label: bytes, prefer: Sequence[str] = (), trial: bool = True) -> Opened:
        """Unseal one value, trying ``prefer`` first; ``trial=False`` tries only the ``prefer`` keys.

        Raises the opaque ``InvalidCiphertext`` when no key opens it.
        """
        parts = _hybrid.split(blob)
        candidates = self._order(prefer)
        if not trial:
            allowed = set(prefer)
            candidates = [k for k in candidates if k.fingerprint in allowed]
        for key in candidates:
            decrypter = key.decrypter
            if decrypter is None:  # pragma: no cover - _order skips them
                continue
            with self._lock:
                self.rsa_operations += 1
            try:
                session_key = decrypter.decrypt_session_key(parts.rsa_ciphertext, label=label)
            except InvalidCiphertext:
                continue
            try:
                plaintext = _hybrid.open_session(session_key, parts.aes_ciphertext)
            except InvalidCiphertext:
                continue
            return Opened(plaintext=plaintext, fingerprint=key.fingerprint)
        raise InvalidCiphertext()
