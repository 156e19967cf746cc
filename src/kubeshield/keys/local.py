"""The ``local`` key backend: KEKs from a keyring file (:mod:`kubeshield.keys.keyring`) on this machine.

Wrapped ciphertext layout (what ``wrap`` returns and ``unwrap`` accepts)::

    0x01 || fingerprint(8, raw) || nonce(12) || AES-256-GCM ciphertext || tag(16)

    AAD = b"kubeshield/local/v1\\x00" + key_id.encode("ascii") + b"\\x00" + aad

A 32-byte seed gives a 69-byte blob. ``fingerprint`` is the 8 bytes whose hex ends the key_id, so a
blob names its KEK even without a key_id: ``unwrap`` with ``key_id == ""`` (KMS v1) selects the KEK by
fingerprint; with a key_id it selects by key_id and also requires the fingerprint to match. An
unknown key_id raises ``KeyNotFound``; every other failure raises the opaque ``InvalidCiphertext()``.

Reloading: ``refresh()`` costs one ``stat`` when nothing changed (inode, mtime_ns, ctime_ns and size
are compared). When the file changed it is re-read with the passphrase given at construction; if that
fails the old keys stay in use and ``KeyringError`` is raised for the caller to log. The file is the
source of truth: a reload that drops a version drops it here too.

Threads: the key set is one immutable snapshot swapped under a lock, so ``wrap``/``unwrap`` from many
gRPC threads see either the old or the new set, never a mix.

Key memory, honestly: Python cannot reliably erase secrets. ``bytes`` are immutable, base64/JSON
decoding and OpenSSL make copies, and the garbage collector frees memory without overwriting it.
``close()`` drops every reference we hold so the keys become unreachable, nothing more. Protect the
process instead: no core dumps (``RLIMIT_CORE=0``, ``PR_SET_DUMPABLE``), encrypted or no swap, and a
non-root user that only this service runs as; for keys that must never be in this process's memory
use a remote backend (pkcs11, transit, awskms, tpm, custody).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.config.settings import LocalSettings
from kubeshield.errors import BackendUnavailable, InvalidCiphertext, KeyNotFound
from kubeshield.keys.base import Health, KeyVersionInfo, Wrapped
from kubeshield.keys.health import round_trip
from kubeshield.keys.keyring import Argon2Params, FileStamp, Keyring, KeyringFile, KeySealer, fingerprint
from kubeshield.keys.passphrase import read_passphrase

__all__ = ["WRAP_FORMAT", "LocalKeyBackend"]

WRAP_FORMAT = 0x01
_AAD_LABEL = b"kubeshield/local/v1\x00"
_FP = 8
_NONCE = 12
_TAG = 16
_HEADER = 1 + _FP + _NONCE


@dataclass(frozen=True, slots=True)
class _KeySet:
    """One immutable view of the keyring: what wrap/unwrap use."""

    primary: str
    by_key_id: Mapping[str, AESGCM]
    by_fingerprint: Mapping[bytes, str]
    versions: tuple[KeyVersionInfo, ...]
    stamp: FileStamp
    keyring_id: str
    versions_digest: str

    @classmethod
    def of(cls, keyring: Keyring) -> _KeySet:
        by_key_id: dict[str, AESGCM] = {}
        by_fp: dict[bytes, str] = {}
        infos: list[KeyVersionInfo] = []
        for v in keyring.info.versions:
            key = keyring.keys[v.version]
            by_key_id[v.key_id] = AESGCM(key)
            by_fp[fingerprint(key)] = v.key_id
            infos.append(KeyVersionInfo(v.version, v.key_id, v.created_timestamp, v.state))
        return cls(
            keyring.info.primary.key_id,
            by_key_id,
            by_fp,
            tuple(infos),
            keyring.stamp,
            keyring.info.keyring_id,
            keyring.info.versions_digest,
        )


def _aad(key_id: str, aad: bytes) -> bytes:
    return _AAD_LABEL + key_id.encode("ascii") + b"\x00" + aad


class LocalKeyBackend:
    """KEKs from a local keyring file. Implements KeyBackend, Rotatable, Refreshable and Exportable.

    ``sealer`` opens (and keeps writing) a TPM-sealed keyring instead of a passphrase-protected one
    (:mod:`kubeshield.keys.keyring`); :class:`kubeshield.keys.tpm.TpmKeyBackend` is this class with a
    TPM sealer. The wrap format and key_ids are the same either way.
    """

    name = "local"

    def __init__(
        self,
        *,
        path: str | Path,
        passphrase: bytes | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        argon2: Argon2Params | None = None,
        sealer: KeySealer | None = None,
    ) -> None:
        self._file = KeyringFile(path, clock=clock, rng=rng, argon2=argon2, sealer=sealer)
        self._passphrase = passphrase
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._keys: _KeySet | None = _KeySet.of(self._file.load(passphrase))

    @classmethod
    def create(
        cls,
        *,
        path: str | Path,
        passphrase: bytes | None = None,
        force: bool = False,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        argon2: Argon2Params | None = None,
        sealer: KeySealer | None = None,
    ) -> LocalKeyBackend:
        """Create a new keyring file (refusing to replace one unless ``force``) and open it."""
        KeyringFile(path, clock=clock, rng=rng, argon2=argon2, sealer=sealer).create(
            passphrase=passphrase, force=force
        )
        return cls(path=path, passphrase=passphrase, clock=clock, rng=rng, argon2=argon2, sealer=sealer)

    @classmethod
    def from_settings(
        cls, settings: LocalSettings, *, environ: Mapping[str, str] | None = None
    ) -> LocalKeyBackend:
        """Open the keyring named by ``keys.local`` (passphrase from its file or the environment)."""
        passphrase = read_passphrase(passphrase_file=settings.passphrase_file, environ=environ)
        return cls(path=settings.keyring, passphrase=passphrase)

    @property
    def path(self) -> Path:
        return self._file.path

    def _current(self) -> _KeySet:
        keys = self._keys
        if keys is None:
            raise BackendUnavailable("the local key backend is closed")
        return keys

    # --- KeyBackend --------------------------------------------------------------------------------

    def key_id(self) -> str:
        return self._current().primary

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        """Encrypt ``plaintext`` under the primary KEK (layout in the module docstring)."""
        if not isinstance(plaintext, bytes):
            raise TypeError("plaintext must be bytes")
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        keys = self._current()
        key_id = keys.primary
        nonce = self._rng(_NONCE)
        if len(nonce) != _NONCE:
            raise TypeError(f"rng must return {_NONCE} bytes")
        sealed = keys.by_key_id[key_id].encrypt(nonce, plaintext, _aad(key_id, aad))
        fp = bytes.fromhex(key_id.rsplit(":", 1)[1])
        return Wrapped(ciphertext=bytes([WRAP_FORMAT]) + fp + nonce + sealed, key_id=key_id)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        """Decrypt a ``Wrapped`` from ``wrap``; ``key_id == ""`` selects the KEK by fingerprint."""
        if not isinstance(wrapped, Wrapped):
            raise TypeError("wrapped must be a Wrapped")
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        keys = self._current()
        blob = wrapped.ciphertext
        if wrapped.key_id and wrapped.key_id not in keys.by_key_id:
            raise KeyNotFound("key_id is not in this keyring")
        if not isinstance(blob, bytes) or len(blob) < _HEADER + _TAG or blob[0] != WRAP_FORMAT:
            raise InvalidCiphertext()
        fp = blob[1 : 1 + _FP]
        key_id = keys.by_fingerprint.get(fp)
        if key_id is None or (wrapped.key_id and key_id != wrapped.key_id):
            raise InvalidCiphertext()
        try:
            return keys.by_key_id[key_id].decrypt(blob[1 + _FP : _HEADER], blob[_HEADER:], _aad(key_id, aad))
        except InvalidTag:
            raise InvalidCiphertext() from None

    def check_health(self) -> Health:
        """Wrap and unwrap a random value (:func:`kubeshield.keys.health.round_trip`). Never raises."""
        return round_trip(self, clock=self._clock, rng=self._rng)

    def close(self) -> None:
        """Drop every reference to key material (see the module docstring for what this can't do)."""
        with self._lock:
            self._keys = None
            self._passphrase = None

    # --- Rotatable / Refreshable / Exportable ------------------------------------------------------

    def rotate(self) -> str:
        """Add a new primary KEK version to the file (under its lock) and switch to it."""
        with self._lock:
            self._current()
            keyring = self._file.rotate(passphrase=self._passphrase)
            self._keys = _KeySet.of(keyring)
            return keyring.info.primary.key_id

    def refresh(self) -> bool:
        """Reload if the file changed; True when the primary key_id changed. Keeps old keys on error."""
        with self._lock:
            old = self._current()
            if self._file.stamp() == old.stamp:
                return False
            new = _KeySet.of(self._file.load(self._passphrase))
            self._keys = new
            return new.primary != old.primary

    def versions(self) -> list[KeyVersionInfo]:
        return list(self._current().versions)

    # --- identity (public, for comparing nodes; see kubeshield.keys.keyring) ----------------------

    def keyring_id(self) -> str:
        """The ``keyringId`` of the keyring now in use (follows a reload). No I/O."""
        return self._current().keyring_id

    def versions_digest(self) -> str:
        """:attr:`~kubeshield.keys.keyring.KeyringInfo.versions_digest` of the versions now in use."""
        return self._current().versions_digest
