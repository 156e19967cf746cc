"""The sealed credential store: cluster credentials at rest, encrypted, for the agent to load.

Where: ``$XDG_DATA_HOME/kubeshield/access/`` (else ``~/.local/share/kubeshield/access/``), a directory
made 0700; the store is one file, ``credentials.sealed``, 0600, replaced atomically
(:func:`kubeshield.keys.files.write_private_atomic`: temp file, fsync, rename, fsync of the directory).

How it is sealed: a fresh random 256-bit data key encrypts the credentials with AES-256-GCM. The data
key itself is wrapped either

* by a kubeshield :class:`~kubeshield.keys.base.KeyBackend` (the ``keys:`` section of ``--config``:
  local keyring, PKCS#11, Transit, AWS KMS, TPM, custody), with the header as associated data; or
* by AES-256-GCM under a key derived from a passphrase with Argon2id (RFC 9106; the parameters and a
  random 16-byte salt are in the header, so they can be raised later without breaking old stores).

File layout (JSON text, so that a person can see what it is; every binary field is base64)::

    {"format": "kubeshield-access-store", "version": 1,
     "protection": {"kind": "passphrase", "kdf": "argon2id", "salt": B64, "iterations": 3,
                    "lanes": 4, "memoryKiB": 65536, "check": B64}
                 | {"kind": "backend", "keyId": "<KEK key_id>", "annotations": {name: B64}},
     "wrappedKey": B64,        # passphrase: nonce(12) || AES-GCM(kek, data key, aad=A)
                               # backend:    KeyBackend.wrap(data key, aad=A).ciphertext
     "nonce": B64, "ciphertext": B64}   # AES-GCM(data key, JSON list of credentials, aad=B)

``A`` is the canonical JSON (sorted keys, no spaces) of ``{format, version, protection}``, ``B`` that of
``{format, version, protection, wrappedKey}`` (for a backend, ``protection`` there is just
``{"kind": "backend"}``: its keyId and annotations are the backend's to check, and a changed one fails
its unwrap): every header field is authenticated, a changed one makes the store unreadable.

``check`` is HMAC-SHA256(passphrase key, fixed label): a passphrase whose key does not match it is
:class:`~kubeshield.errors.WrongPassphrase` (so is a changed salt or cost: the key differs); every other
failure to open a store, a changed body, nonce, wrapped key or format field, a backend's refusal, a
malformed file, is the one opaque :class:`~kubeshield.errors.InvalidCiphertext`. A key service that
cannot be reached raises its own ``BackendError`` (that says nothing about the store's bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from kubeshield.access.agent_protocol import ProtocolError, credential_from_wire, credential_to_wire
from kubeshield.access.credential import ClusterCredential
from kubeshield.errors import ConfigError, InvalidCiphertext, KeyNotFound, KubeshieldError, WrongPassphrase
from kubeshield.keys.base import KeyBackend, Wrapped
from kubeshield.keys.files import exclusive_lock, write_private_atomic

__all__ = [
    "STORE_FILE",
    "Argon2Params",
    "CredentialStore",
    "StoreKey",
    "default_store_dir",
]

STORE_FILE = "credentials.sealed"
_FORMAT = "kubeshield-access-store"
_VERSION = 1
_MAX_STORE_BYTES = 16 * 1024 * 1024
_NONCE = 12


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost. The default follows RFC 9106's second recommendation (64 MiB, 3 passes)."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.lanes < 1 or self.memory_kib < 8 * self.lanes:
            raise ValueError("Argon2id parameters out of range")


class StoreKey:
    """What seals and opens a store: a passphrase or a KeyBackend, exactly one. Holds no repr secret."""

    def __init__(
        self,
        *,
        passphrase: bytes | None = None,
        backend: KeyBackend | None = None,
        argon2: Argon2Params | None = None,
    ) -> None:
        if (passphrase is None) == (backend is None):
            raise ValueError("give a passphrase or a key backend, exactly one")
        if passphrase is not None and not passphrase:
            raise ValueError("the passphrase is empty")
        self._passphrase = passphrase
        self.backend = backend
        self.argon2 = argon2 or Argon2Params()

    @property
    def kind(self) -> str:
        return "passphrase" if self._passphrase is not None else "backend"

    def __repr__(self) -> str:
        return f"StoreKey(kind={self.kind})"

    def _derive(self, salt: bytes, params: Argon2Params) -> bytes:
        assert self._passphrase is not None
        kdf = Argon2id(
            salt=salt,
            length=32,
            iterations=params.iterations,
            lanes=params.lanes,
            memory_cost=params.memory_kib,
        )
        return kdf.derive(self._passphrase)

    def wrap(self, data_key: bytes) -> tuple[dict[str, Any], bytes]:
        """(protection header, wrapped data key)."""
        if self.backend is not None:
            protection: dict[str, Any] = {"kind": "backend"}
            wrapped = self.backend.wrap(data_key, aad=_canonical(_head(protection)))
            # what unwrap needs besides the ciphertext; a changed value fails the backend's own check
            protection["keyId"] = wrapped.key_id
            protection["annotations"] = {k: _b64(v) for k, v in sorted(wrapped.annotations.items())}
            return protection, wrapped.ciphertext
        params = self.argon2
        salt = os.urandom(16)
        protection = {
            "kind": "passphrase",
            "kdf": "argon2id",
            "salt": _b64(salt),
            "iterations": params.iterations,
            "lanes": params.lanes,
            "memoryKiB": params.memory_kib,
        }
        kek = self._derive(salt, params)
        protection["check"] = _b64(_passphrase_check(kek))
        nonce = os.urandom(_NONCE)
        return protection, nonce + AESGCM(kek).encrypt(nonce, data_key, _canonical(_head(protection)))

    def unwrap(self, protection: Mapping[str, Any], wrapped_key: bytes) -> bytes:
        kind = protection.get("kind")
        aad = _canonical(_head(_authenticated(protection)))
        if kind == "backend":
            if self.backend is None:
                raise ConfigError(
                    "this store is sealed with a key backend: give --config with a keys: section"
                )
            key_id = protection.get("keyId")
            annotations = protection.get("annotations")
            if not isinstance(key_id, str) or not isinstance(annotations, dict):
                raise InvalidCiphertext()
            try:
                return self.backend.unwrap(
                    Wrapped(
                        ciphertext=wrapped_key,
                        key_id=key_id,
                        annotations={str(k): _unb64(v) for k, v in annotations.items()},
                    ),
                    aad=aad,
                )
            except (InvalidCiphertext, KeyNotFound):  # another key, or changed bytes: the same answer
                raise InvalidCiphertext() from None
        if kind != "passphrase":
            raise InvalidCiphertext()
        if self._passphrase is None:
            raise ConfigError("this store is sealed with a passphrase: give --passphrase-file (or the env)")
        try:
            if protection.get("kdf") != "argon2id":
                raise InvalidCiphertext()
            params = Argon2Params(
                iterations=_int(protection.get("iterations")),
                lanes=_int(protection.get("lanes")),
                memory_kib=_int(protection.get("memoryKiB")),
            )
            if params.memory_kib > 4 * 1024 * 1024 or params.iterations > 64:
                raise InvalidCiphertext()  # a header asking for absurd work is not ours
            salt = _unb64(protection.get("salt"))
        except ValueError:
            raise InvalidCiphertext() from None
        try:
            check = _unb64(protection.get("check"))
        except ValueError:
            raise InvalidCiphertext() from None
        kek = self._derive(salt, params)
        if not hmac.compare_digest(check, _passphrase_check(kek)):
            raise WrongPassphrase()
        if len(wrapped_key) <= _NONCE:
            raise InvalidCiphertext()
        try:
            return AESGCM(kek).decrypt(wrapped_key[:_NONCE], wrapped_key[_NONCE:], aad)
        except InvalidTag:
            raise InvalidCiphertext() from None


def default_store_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/kubeshield/access`` (else ``~/.local/share/kubeshield/access``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "kubeshield" / "access"


class CredentialStore:
    """The store in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE

    def __repr__(self) -> str:
        return f"CredentialStore({str(self.directory)!r})"

    def exists(self) -> bool:
        return self.path.exists()

    def protection_kind(self) -> str | None:
        """``"passphrase"`` or ``"backend"`` for an existing store (from its header), else None."""
        if not self.exists():
            return None
        kind = self._read_document().get("protection", {}).get("kind")
        return kind if kind in ("passphrase", "backend") else None

    def _ensure_directory(self) -> None:
        if self.directory.exists():
            info = os.lstat(self.directory)
            if not stat.S_ISDIR(info.st_mode):
                raise ConfigError(f"store directory {self.directory} is not a directory")
            if info.st_uid != os.geteuid():
                raise ConfigError(
                    f"store directory {self.directory} belongs to uid {info.st_uid}, not to you"
                )
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise ConfigError(
                    f"store directory {self.directory} is mode {stat.S_IMODE(info.st_mode):04o}; "
                    f"it must be 0700 (chmod 700 {self.directory})"
                )
            return
        self.directory.mkdir(mode=0o700, parents=True)
        os.chmod(self.directory, 0o700)

    def _read_document(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ConfigError(
                f"no credential store at {self.path}: import a kubeconfig first (kubeshield access import)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the credential store: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise ConfigError(f"{self.path} is mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600")
            raw = fh.read(_MAX_STORE_BYTES + 1)
        if len(raw) > _MAX_STORE_BYTES:
            raise InvalidCiphertext()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidCiphertext() from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise InvalidCiphertext()
        if document.get("version") != _VERSION:
            raise InvalidCiphertext()
        if not isinstance(document.get("protection"), dict):
            raise InvalidCiphertext()
        return document

    def load(self, key: StoreKey) -> list[ClusterCredential]:
        """Every credential in the store. See the module docstring for the errors."""
        document = self._read_document()
        protection = document["protection"]
        try:
            wrapped_key = _unb64(document.get("wrappedKey"))
            nonce = _unb64(document.get("nonce"))
            ciphertext = _unb64(document.get("ciphertext"))
        except ValueError:
            raise InvalidCiphertext() from None
        data_key = key.unwrap(protection, wrapped_key)
        if len(data_key) != 32 or len(nonce) != _NONCE:
            raise InvalidCiphertext()
        aad = _canonical({**_head(_authenticated(protection)), "wrappedKey": document["wrappedKey"]})
        try:
            plaintext = AESGCM(data_key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise InvalidCiphertext() from None
        try:
            entries = json.loads(plaintext)
            if not isinstance(entries, list):
                raise InvalidCiphertext()
            return [credential_from_wire(entry, field=f"credentials[{i}]") for i, entry in enumerate(entries)]
        except (ValueError, ProtocolError):
            raise InvalidCiphertext() from None

    def save(self, credentials: Sequence[ClusterCredential], key: StoreKey) -> None:
        """Seal ``credentials`` (replacing what the store held), then read the file back and check it."""
        names = [c.context for c in credentials]
        if len(set(names)) != len(names):
            raise ValueError("two credentials for the same context")
        self._ensure_directory()
        data_key = AESGCM.generate_key(bit_length=256)
        protection, wrapped_key = key.wrap(data_key)
        document: dict[str, Any] = {**_head(protection), "wrappedKey": _b64(wrapped_key)}
        aad = _canonical({**_head(_authenticated(protection)), "wrappedKey": document["wrappedKey"]})
        nonce = os.urandom(_NONCE)
        body = json.dumps([credential_to_wire(c) for c in credentials], separators=(",", ":")).encode()
        document["nonce"] = _b64(nonce)
        document["ciphertext"] = _b64(AESGCM(data_key).encrypt(nonce, body, aad))
        with exclusive_lock(self.path):
            write_private_atomic(self.path, json.dumps(document, indent=1).encode() + b"\n")
        back = {_fingerprint(c) for c in self.load(key)}
        if back != {_fingerprint(c) for c in credentials}:  # pragma: no cover - a disk that lies
            raise KubeshieldError(f"{self.path}: the sealed store did not read back as written")

    def upsert(self, credentials: Sequence[ClusterCredential], key: StoreKey) -> list[str]:
        """Add or replace ``credentials`` by context; returns the contexts the store holds afterwards."""
        current = self.load(key) if self.exists() else []
        incoming = {c.context: c for c in credentials}
        merged = [c for c in current if c.context not in incoming] + list(incoming.values())
        self.save(merged, key)
        return [c.context for c in merged]

    def remove(self, contexts: Sequence[str], key: StoreKey) -> list[str]:
        """Drop ``contexts`` from the store; returns the contexts left."""
        kept = [c for c in self.load(key) if c.context not in set(contexts)]
        self.save(kept, key)
        return [c.context for c in kept]


def _fingerprint(c: ClusterCredential) -> tuple[Any, ...]:
    return (c.context, c.server, c.ca_pem, c.tls_server_name, c.client_cert_pem, c.client_key_pem, c.token,
            c.expires_at, c.subject)  # fmt: skip


def _passphrase_check(kek: bytes) -> bytes:
    """Tells a wrong passphrase from a damaged store. It reveals nothing the wrapped key does not:
    either lets a guess be checked offline, at the cost of one Argon2id derivation."""
    return hmac.new(kek, b"kubeshield access store: passphrase check", hashlib.sha256).digest()


def _authenticated(protection: Mapping[str, Any]) -> dict[str, Any]:
    """The protection fields under the AEAD's associated data (a backend's keyId and annotations are
    not: they are the backend's own business, and a changed one fails its unwrap)."""
    if protection.get("kind") == "backend":
        return {"kind": "backend"}
    return dict(protection)


def _head(protection: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": _FORMAT, "version": _VERSION, "protection": dict(protection)}


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not an integer")
    return value
