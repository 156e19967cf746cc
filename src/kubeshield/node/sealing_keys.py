"""The node sealing key: versioned 32-byte root secrets, each stored only wrapped by a kubeshield key backend.

File (JSON, mode 0600, written atomically; ``node.sealingKeys`` in the config)::

    {"kind": "KubeshieldNodeSealingKeys", "formatVersion": 1,
     "keys": [{"version": 1, "created": "2026-01-02T03:04:05Z", "state": "primary",
               "keyId": "<the backend's key_id>", "wrapped": "<base64 of the backend's ciphertext>",
               "annotations": {"<name>": "<base64>"}, "publicKey": "<base64url of the X25519 key>"}]}

The root of version ``v`` is wrapped by the ``keys:`` backend (local keyring, PKCS#11, OpenBao Transit,
AWS KMS, TPM, custody) with ``aad = b"kubeshield/node/sealing-key\\x00v<v>"``, so the file alone opens
nothing, and a wrapped root cannot be moved to another version number. ``publicKey`` is derived from the
root (:func:`kubeshield.node.sealed.derive_public_key`) and is checked against it on every load. The newest
version is ``primary`` (new values are sealed with it); older versions stay ``active`` (they still open).

``SealingKeys`` holds the unwrapped roots in memory (the same honesty as the local backend: Python cannot
erase them; ``close`` only drops references) and reloads the file when it changes (``refresh``), keeping
the old set when a reload fails.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubeshield.errors import ConfigError, InvalidRequest, KeyNotFound, KeyringError
from kubeshield.keys.base import KeyBackend, Wrapped
from kubeshield.keys.files import exclusive_lock, write_private_atomic
from kubeshield.node.identity import Binding
from kubeshield.node.sealed import (
    SealedValue,
    derive_public_key,
    open_sealed,
    seal_to_public,
    seal_with_root,
)

__all__ = ["PUBLIC_KIND", "PublicSealingKey", "SealingKeyFile", "SealingKeyInfo", "SealingKeys"]

KIND = "KubeshieldNodeSealingKeys"
PUBLIC_KIND = "KubeshieldNodeSealingPublicKey"
_AAD = b"kubeshield/node/sealing-key\x00v"
_MAX_FILE = 1 << 20


def _aad(version: int) -> bytes:
    return _AAD + str(version).encode("ascii")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SealingKeyInfo:
    """Public description of one sealing-key version (no secret)."""

    version: int
    created: str
    state: str  # "primary" | "active"
    key_id: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class PublicSealingKey:
    """The X25519 public half of one version: enough to seal offline (``kubeshield node seal --public-key``).

    JSON form: ``{"kind": "KubeshieldNodeSealingPublicKey", "keyVersion": N, "x25519": "<base64url>"}``.
    """

    key_version: int
    raw: bytes

    def to_json(self) -> str:
        doc = {"kind": PUBLIC_KIND, "keyVersion": self.key_version, "x25519": _b64url(self.raw)}
        return json.dumps(doc, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "public key") -> PublicSealingKey:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("kind") != PUBLIC_KIND:
                raise ValueError
            version, raw = doc["keyVersion"], _unb64url(str(doc["x25519"]))
            if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
                raise ValueError
            if len(raw) != 32 or set(doc) != {"kind", "keyVersion", "x25519"}:
                raise ValueError
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ConfigError(
                f"{source}: not a kubeshield node sealing public key ({PUBLIC_KIND} JSON)"
            ) from None
        return cls(version, raw)

    def seal(self, plaintext: bytes, *, binding: Binding, rng: Callable[[int], bytes] = os.urandom) -> str:
        return seal_to_public(
            plaintext, binding=binding, public_key=self.raw, key_version=self.key_version, rng=rng
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    info: SealingKeyInfo
    wrapped: Wrapped


class SealingKeys:
    """Unwrapped roots of every version, the primary one sealing. Thread-safe; ``refresh`` reloads."""

    def __init__(
        self,
        roots: dict[int, bytes],
        infos: list[SealingKeyInfo],
        *,
        reload: Callable[[], tuple[dict[int, bytes], list[SealingKeyInfo]] | None] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not roots:
            raise KeyringError("the node sealing-key file holds no key version")
        self._lock = threading.Lock()
        self._roots, self._infos = dict(roots), list(infos)
        self._reload = reload
        self._rng = rng

    @property
    def primary_version(self) -> int:
        return max(self._roots)

    def versions(self) -> list[SealingKeyInfo]:
        return list(self._infos)

    def public_key(self, version: int | None = None) -> PublicSealingKey:
        with self._lock:
            version = version if version is not None else max(self._roots)
            root = self._roots.get(version)
        if root is None:
            raise KeyNotFound(f"node sealing key version {version} is not held here")
        return PublicSealingKey(version, derive_public_key(root))

    def seal(self, plaintext: bytes, *, binding: Binding) -> str:
        """Mode 0x01 with the primary version."""
        with self._lock:
            version = max(self._roots)
            root = self._roots[version]
        return seal_with_root(plaintext, binding=binding, root=root, key_version=version, rng=self._rng)

    def open(self, value: SealedValue) -> bytes:
        """Open a parsed value. ``KeyNotFound`` names a version not held; every other failure is opaque."""
        with self._lock:
            root = self._roots.get(value.key_version)
        if root is None:
            raise KeyNotFound(
                f"sealed with node sealing key version {value.key_version}, which is not held here"
            )
        return open_sealed(value, root=root)

    def refresh(self) -> bool:
        """Reload when the file changed; True when the key set changed. Raises when a reload fails."""
        if self._reload is None:
            return False
        loaded = self._reload()
        if loaded is None:
            return False
        roots, infos = loaded
        with self._lock:
            changed = set(roots) != set(self._roots)
            self._roots, self._infos = roots, infos
        return changed

    def close(self) -> None:
        with self._lock:
            self._roots = {}


class SealingKeyFile:
    """The sealing-key file at ``path``. ``create``/``rotate`` need the key backend; ``info`` does not."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.path = Path(path)
        self._clock, self._rng = clock, rng

    # --- reading ------------------------------------------------------------------------------------

    def _read(self) -> list[_Entry]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyringError(
                f"{self.path}: no node sealing-key file; create one with `kubeshield node keys init`"
            ) from None
        except OSError as exc:
            raise KeyringError(
                f"{self.path}: cannot open the node sealing-key file: {exc.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(_MAX_FILE + 1)
        if len(data) > _MAX_FILE:
            raise KeyringError(f"{self.path}: the node sealing-key file is larger than {_MAX_FILE} bytes")
        return self._parse(data)

    def _parse(self, data: bytes) -> list[_Entry]:
        where = f"{self.path}"
        try:
            doc = json.loads(data)
        except ValueError:
            raise KeyringError(f"{where}: not JSON (not a node sealing-key file)") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("formatVersion") != 1:
            raise KeyringError(f"{where}: not a node sealing-key file (kind {KIND}, formatVersion 1)")
        keys = doc.get("keys")
        if not isinstance(keys, list) or not keys:
            raise KeyringError(f"{where}: keys: at least one version is required")
        entries: list[_Entry] = []
        for i, item in enumerate(keys):
            try:
                version = item["version"]
                if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
                    raise ValueError
                annotations = {
                    str(k): base64.b64decode(v, validate=True) for k, v in item.get("annotations", {}).items()
                }
                info = SealingKeyInfo(
                    version=version,
                    created=str(item["created"]),
                    state=str(item["state"]),
                    key_id=str(item["keyId"]),
                    public_key=_unb64url(str(item["publicKey"])),
                )
                wrapped = Wrapped(
                    ciphertext=base64.b64decode(item["wrapped"], validate=True),
                    key_id=info.key_id,
                    annotations=annotations,
                )
                if info.state not in ("primary", "active") or len(info.public_key) != 32:
                    raise ValueError
            except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
                raise KeyringError(f"{where}: keys[{i}]: malformed entry") from None
            entries.append(_Entry(info, wrapped))
        versions = [e.info.version for e in entries]
        if len(set(versions)) != len(versions):
            raise KeyringError(f"{where}: a key version appears twice")
        return sorted(entries, key=lambda e: e.info.version)

    def exists(self) -> bool:
        return self.path.exists()

    def info(self) -> list[SealingKeyInfo]:
        """Every version, oldest first, without touching the key backend."""
        return [e.info for e in self._read()]

    def public_key(self, version: int | None = None) -> PublicSealingKey:
        """The stored public half of ``version`` (default: the primary), without the key backend."""
        entries = self._read()
        chosen = (
            entries[-1] if version is None else next((e for e in entries if e.info.version == version), None)
        )
        if chosen is None:
            raise KeyNotFound(f"{self.path}: no node sealing key version {version}")
        return PublicSealingKey(chosen.info.version, chosen.info.public_key)

    def _unwrap_all(self, backend: KeyBackend, entries: list[_Entry]) -> dict[int, bytes]:
        roots: dict[int, bytes] = {}
        for e in entries:
            root = backend.unwrap(e.wrapped, aad=_aad(e.info.version))
            if len(root) != 32 or derive_public_key(root) != e.info.public_key:
                raise KeyringError(
                    f"{self.path}: version {e.info.version}: the root does not match its public key"
                )
            roots[e.info.version] = root
        return roots

    def open(self, backend: KeyBackend) -> SealingKeys:
        """Unwrap every version with ``backend``; the result reloads this file on ``refresh``."""
        entries = self._read()
        roots = self._unwrap_all(backend, entries)
        signature = [self._signature()]

        def reload() -> tuple[dict[int, bytes], list[SealingKeyInfo]] | None:
            now = self._signature()
            if now == signature[0]:
                return None
            fresh = self._read()
            result = self._unwrap_all(backend, fresh), [e.info for e in fresh]
            signature[0] = now
            return result

        return SealingKeys(roots, [e.info for e in entries], reload=reload, rng=self._rng)

    def _signature(self) -> tuple[int, int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    # --- writing ------------------------------------------------------------------------------------

    def _new_entry(self, backend: KeyBackend, version: int, state: str) -> _Entry:
        root = self._rng(32)
        wrapped = backend.wrap(root, aad=_aad(version))
        created = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        info = SealingKeyInfo(version, created, state, wrapped.key_id, derive_public_key(root))
        return _Entry(info, wrapped)

    def _write(self, entries: list[_Entry]) -> None:
        doc = {
            "kind": KIND,
            "formatVersion": 1,
            "keys": [
                {
                    "version": e.info.version,
                    "created": e.info.created,
                    "state": e.info.state,
                    "keyId": e.info.key_id,
                    "wrapped": base64.b64encode(e.wrapped.ciphertext).decode("ascii"),
                    "annotations": {
                        k: base64.b64encode(v).decode("ascii") for k, v in e.wrapped.annotations.items()
                    },
                    "publicKey": _b64url(e.info.public_key),
                }
                for e in entries
            ],
        }
        write_private_atomic(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def create(self, backend: KeyBackend, *, force: bool = False) -> SealingKeyInfo:
        """Write a new file with version 1 (refusing to replace one unless ``force``)."""
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path.parent}: directory does not exist")
        with exclusive_lock(self.path):
            if self.path.exists() and not force:
                raise InvalidRequest(
                    f"{self.path}: a node sealing-key file exists; values sealed with it would no longer "
                    "open (use `kubeshield node keys rotate`, or --force to replace it)"
                )
            entry = self._new_entry(backend, 1, "primary")
            self._write([entry])
        return entry.info

    def rotate(self, backend: KeyBackend) -> SealingKeyInfo:
        """Add a new primary version; older versions stay and keep opening their values."""
        with exclusive_lock(self.path):
            entries = self._read()
            version = entries[-1].info.version + 1
            older = [
                _Entry(
                    SealingKeyInfo(
                        e.info.version, e.info.created, "active", e.info.key_id, e.info.public_key
                    ),
                    e.wrapped,
                )
                for e in entries
            ]
            entry = self._new_entry(backend, version, "primary")
            self._write([*older, entry])
        return entry.info
