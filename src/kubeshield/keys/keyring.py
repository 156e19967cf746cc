"""The local keyring: ordered KEK versions in one JSON file, sealed with a passphrase or a TPM.

File layout (UTF-8 JSON, mode 0600, written atomically)::

    {"kind": "KubeshieldKeyring",
     "formatVersion": 1,
     "keyringId": "<uuid4>",
     "versions": [{"version": 1, "keyId": "local:v1:<fp>", "created": "<RFC3339>",
                   "state": "primary" | "decrypt-only"}, ...],           # ascending, exactly one primary
     "protection": {"kdf": "none"}
                 | {"kdf": "argon2id", "salt": "<b64, 16 bytes>", "iterations": 3, "lanes": 4,
                    "memoryCost": 65536}                                 # memoryCost in KiB
                 | {"kdf": "tpm", "sealed": "<b64 of a TPM-sealed blob>", "pcrs": [7, ...]},
     "material": "<b64>"}

The *public part* is every field except ``material``; it can be read without the passphrase
(``kubeshield keys list``). ``material`` is the standard base64 of:

* ``kdf: none``: the JSON text ``{"<version>": "<b64 of the 32-byte KEK>", ...}`` (one entry per
  version). Only file permissions (and disk encryption) protect it.
* ``kdf: argon2id``: ``nonce(12) || AES-256-GCM(json above) || tag(16)`` under the 32-byte key
  ``Argon2id(passphrase, salt, iterations, lanes, memoryCost)``, with
  AAD = the canonical JSON of the public part (keys sorted, no spaces, ASCII). Editing the version list,
  a state or the KDF parameters without the passphrase therefore makes the file fail to open. Because
  GCM cannot tell a wrong key from tampered data, both raise :class:`~kubeshield.errors.WrongPassphrase`.
  Every write draws a fresh salt and nonce; the Argon2 parameters are kept from the file.
* ``kdf: tpm``: ``nonce(12) || AES-256-GCM(json above) || tag(16)`` under a random 32-byte *wrapping
  key* that only the TPM can give back: ``sealed`` is that key sealed by a :class:`KeySealer`
  (:class:`kubeshield.keys.tpm.TpmSealer`: bound to this TPM's storage seed and, when ``pcrs`` is not
  empty, to the current sha256 values of those PCRs). AAD is the canonical JSON of the public part, as
  for argon2id, so it covers ``sealed`` and ``pcrs`` too. A copy of the file on another machine (another
  TPM) or after a PCR changed fails at unseal with :class:`~kubeshield.errors.KeyringError` (the TPM's
  reason); a file whose public part was edited fails the GCM check with a ``KeyringError`` saying it was
  altered. Every write draws a fresh wrapping key, seals it again (to the sealer's current ``pcrs``)
  and draws a fresh nonce. A :class:`KeyringFile` built with a ``sealer`` opens only TPM-sealed
  keyrings (fail closed: ``keys.backend: tpm`` never silently uses an unsealed file); one built
  without a sealer refuses a TPM-sealed keyring with a message naming the fix.

``keyId`` is ``local:v<N>:<fp>`` where ``fp`` is the first 16 hex digits of
``sha256(b"kubeshield-kek-fingerprint\\x00" + key)``: no secret, stable for a key, and different for
different keys even when a backup is restored and rotated again to the same version number. On load
every keyId is recomputed from its key and must match.

``keyringId`` names the keyring, not a version: it is drawn at ``create`` (a random UUID), kept by
every rotation, retirement and restore, and covered by the AAD of a sealed keyring. Two nodes serve the
same keyring exactly when they show the same ``keyringId``; they hold the same versions exactly when
they also show the same :attr:`KeyringInfo.versions_digest` (16 hex digits of
``sha256(b"kubeshield-keyring-versions\\x00" + "\\n".join(keyId + " " + state))``, public like the
key_ids it is computed from). ``keyringId`` has been a required field since the first format version, so
every keyring file has one.

Writes (``create``, ``rotate``, ``retire``, ``write``) hold ``flock`` on ``<path>.lock``, re-read the file
inside the lock, and replace it atomically (:mod:`kubeshield.keys.files`: the file keeps its owner,
group and mode), so concurrent rotations never lose a version. Readers take no lock: the atomic
rename means they see the old or the new file, never a mix. A keyring in an existing group- or
world-writable directory is refused on every read and write
(:func:`~kubeshield.keys.files.directory_problem`).

Errors: a missing, unreadable, corrupt, foreign or newer-format file raises
:class:`~kubeshield.errors.KeyringError` whose message names the path and the problem (never key bytes).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from kubeshield.errors import KeyringError, WrongPassphrase
from kubeshield.keys.files import directory_problem, exclusive_lock, write_private_atomic

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "Argon2Params",
    "FileStamp",
    "KeySealer",
    "Keyring",
    "KeyringFile",
    "KeyringInfo",
    "KeyringVersion",
    "fingerprint",
    "key_id_for",
    "versions_digest",
]

KIND = "KubeshieldKeyring"
FORMAT_VERSION = 1
KEY_BYTES = 32
_FINGERPRINT_LABEL = b"kubeshield-kek-fingerprint\x00"
_VERSIONS_LABEL = b"kubeshield-keyring-versions\x00"
_FINGERPRINT_BYTES = 8
_NONCE = 12
_TAG = 16
_SALT_BYTES = 16
_MAX_FILE_BYTES = 1 << 20
_MAX_VERSIONS = 10_000
_TOP_FIELDS = frozenset({"kind", "formatVersion", "keyringId", "versions", "protection", "material"})
_VERSION_FIELDS = frozenset({"version", "keyId", "created", "state"})
_ARGON_FIELDS = frozenset({"kdf", "salt", "iterations", "lanes", "memoryCost"})
_TPM_FIELDS = frozenset({"kdf", "sealed", "pcrs"})
_MAX_SEALED_BYTES = 4096
_KEY_ID = re.compile(r"local:v([1-9][0-9]*):([0-9a-f]{16})")
_STATES = ("primary", "decrypt-only")

State = Literal["primary", "decrypt-only"]
Kdf = Literal["none", "argon2id", "tpm"]


class KeySealer(Protocol):
    """Seals a short secret to a device (a TPM) so that only that device, in that state, unseals it.

    ``unseal`` raises :class:`~kubeshield.errors.KeyringError` (or a subclass) naming why it cannot.
    """

    @property
    def pcrs(self) -> tuple[int, ...]: ...

    def seal(self, secret: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...


def fingerprint(key: bytes) -> bytes:
    """The 8-byte public fingerprint of a KEK (raw bytes; its hex is the key_id suffix)."""
    return hashlib.sha256(_FINGERPRINT_LABEL + key).digest()[:_FINGERPRINT_BYTES]


def key_id_for(version: int, key: bytes) -> str:
    """``local:v<version>:<16 hex of the fingerprint>``."""
    return f"local:v{version}:{fingerprint(key).hex()}"


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost parameters. ``memory_cost`` is in KiB (65536 = 64 MiB)."""

    iterations: int = 3
    lanes: int = 4
    memory_cost: int = 65536

    def __post_init__(self) -> None:
        problem = _argon_problem(self.iterations, self.lanes, self.memory_cost)
        if problem:
            raise ValueError(problem)


def _argon_problem(iterations: int, lanes: int, memory_cost: int) -> str | None:
    if not 1 <= iterations <= 64:
        return "iterations must be in 1..64"
    if not 1 <= lanes <= 64:
        return "lanes must be in 1..64"
    if not 8 * lanes <= memory_cost <= 4 * 1024 * 1024:
        return "memoryCost must be in 8*lanes..4194304 KiB"
    return None


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What ``stat`` says about the keyring file; a change means it was replaced or edited."""

    inode: int
    mtime_ns: int
    ctime_ns: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class KeyringVersion:
    """Public description of one KEK version."""

    version: int
    key_id: str
    created: str  # RFC 3339, UTC
    state: State

    @property
    def created_timestamp(self) -> float:
        return datetime.fromisoformat(self.created).timestamp()


@dataclass(frozen=True, slots=True)
class KeyringInfo:
    """The public part of a keyring (readable without the passphrase or the TPM).

    ``pcrs`` are the PCRs a ``kdf: tpm`` keyring is sealed to (empty otherwise).
    """

    path: Path
    keyring_id: str
    versions: tuple[KeyringVersion, ...]
    kdf: Kdf
    argon2: Argon2Params | None
    pcrs: tuple[int, ...] = ()

    @property
    def primary(self) -> KeyringVersion:
        return next(v for v in self.versions if v.state == "primary")

    @property
    def protected(self) -> bool:
        return self.kdf != "none"

    @property
    def versions_digest(self) -> str:
        """16 hex digits naming this exact set of versions and states (module docstring)."""
        return versions_digest(self.versions)


def versions_digest(versions: tuple[KeyringVersion, ...]) -> str:
    """``sha256(label + "\\n".join(keyId + " " + state))``, first 16 hex digits."""
    text = "\n".join(f"{v.key_id} {v.state}" for v in versions).encode("ascii")
    return hashlib.sha256(_VERSIONS_LABEL + text).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Keyring:
    """An opened keyring: the public part plus each version's 32-byte KEK. Never printed."""

    info: KeyringInfo
    keys: Mapping[int, bytes] = field(repr=False)
    stamp: FileStamp

    def __repr__(self) -> str:
        return f"Keyring(path={str(self.info.path)!r}, versions={len(self.info.versions)}, keys=<hidden>)"


def _now_rfc3339(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _canonical(public: Mapping[str, Any]) -> bytes:
    return json.dumps(public, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64decode(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.b64decode(text.encode("ascii"), validate=True)


class KeyringFile:
    """Reads and writes one keyring file. Holds no key material itself.

    ``argon2`` sets the cost of *new* keyrings (``create``); tests pass cheap parameters here.
    ``sealer`` makes this a TPM-sealed keyring (``kdf: tpm``, module docstring): ``create`` seals with it,
    and ``load`` opens only TPM-sealed keyrings. ``fsync`` is the seam through which tests make a write fail.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        argon2: Argon2Params | None = None,
        fsync: Callable[[int], None] = os.fsync,
        sealer: KeySealer | None = None,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._rng = rng
        self._argon2 = argon2 if argon2 is not None else Argon2Params()
        self._fsync = fsync
        self._sealer = sealer

    # --- reading -----------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def stamp(self) -> FileStamp:
        """Cheap change detection (one ``stat``). Raises ``KeyringError`` if the file is gone."""
        try:
            return FileStamp.of(os.stat(self.path))
        except OSError as exc:
            raise self._error(f"cannot stat keyring: {exc.strerror}") from None

    def read_info(self) -> KeyringInfo:
        """The public part, without the passphrase."""
        info, _, _, _ = self._read()
        return info

    def load(self, passphrase: bytes | None) -> Keyring:
        """Open the keyring. An argon2id keyring needs ``passphrase``; a TPM-sealed one needs the sealer."""
        info, public, material, stamp = self._read()
        return Keyring(info=info, keys=self._open_material(info, public, material, passphrase), stamp=stamp)

    def _error(self, problem: str) -> KeyringError:
        return KeyringError(f"{self.path}: {problem}")

    def _check_directory(self) -> None:
        problem = directory_problem(self.path.parent)
        if problem is not None:
            raise self._error(problem)

    def _read(self) -> tuple[KeyringInfo, dict[str, Any], bytes, FileStamp]:
        self._check_directory()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._error("keyring file not found (create one with `kubeshield keys init`)") from None
        except OSError as exc:
            raise self._error(f"cannot open keyring: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._error("keyring is not a regular file")
            with os.fdopen(os.dup(fd), "rb") as fh:
                raw = fh.read(_MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise self._error(f"cannot read keyring: {exc.strerror}") from None
        finally:
            os.close(fd)
        info, public, material = self._parse(raw)
        return info, public, material, FileStamp.of(st)

    def _parse(self, raw: bytes) -> tuple[KeyringInfo, dict[str, Any], bytes]:
        if not raw:
            raise self._error("keyring file is empty")
        if len(raw) > _MAX_FILE_BYTES:
            raise self._error(f"keyring file is larger than {_MAX_FILE_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise self._error("keyring is not valid JSON (truncated or corrupt?)") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise self._error(f"not a kubeshield keyring (kind is not {KIND})")
        fmt = doc.get("formatVersion")
        if isinstance(fmt, bool) or not isinstance(fmt, int):
            raise self._error("formatVersion is missing or not an integer")
        if fmt != FORMAT_VERSION:
            raise self._error(
                f"unsupported keyring formatVersion {fmt} "
                f"(this kubeshield reads {FORMAT_VERSION}; a newer kubeshield wrote it)"
            )
        unknown = sorted(set(doc) - _TOP_FIELDS)
        missing = sorted(_TOP_FIELDS - set(doc))
        if unknown:
            raise self._error(f"unknown keyring field {unknown[0]!r}")
        if missing:
            raise self._error(f"keyring field {missing[0]!r} is missing")
        keyring_id = doc["keyringId"]
        try:
            if not isinstance(keyring_id, str) or str(uuid.UUID(keyring_id)) != keyring_id:
                raise ValueError
        except ValueError:
            raise self._error("keyringId is not a UUID") from None
        versions = self._parse_versions(doc["versions"])
        kdf, argon2, pcrs = self._parse_protection(doc["protection"])
        try:
            material = _b64decode(doc["material"])
        except (ValueError, binascii.Error):
            raise self._error("material is not base64") from None
        public = {k: v for k, v in doc.items() if k != "material"}
        info = KeyringInfo(self.path, keyring_id, versions, kdf, argon2, pcrs)
        return info, public, material

    def _parse_versions(self, raw: object) -> tuple[KeyringVersion, ...]:
        if not isinstance(raw, list) or not raw:
            raise self._error("versions must be a non-empty list")
        if len(raw) > _MAX_VERSIONS:
            raise self._error(f"more than {_MAX_VERSIONS} versions")
        out: list[KeyringVersion] = []
        for i, item in enumerate(raw):
            where = f"versions[{i}]"
            if not isinstance(item, dict) or set(item) != _VERSION_FIELDS:
                raise self._error(f"{where} must have exactly the fields {sorted(_VERSION_FIELDS)}")
            number, key_id, created, state = item["version"], item["keyId"], item["created"], item["state"]
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise self._error(f"{where}.version must be a positive integer")
            if out and number <= out[-1].version:
                raise self._error(f"{where}.version is not in ascending order")
            match = _KEY_ID.fullmatch(key_id) if isinstance(key_id, str) else None
            if match is None or int(match.group(1)) != number:
                raise self._error(f"{where}.keyId is malformed or does not match its version")
            try:
                if not isinstance(created, str):
                    raise ValueError
                datetime.fromisoformat(created)
            except ValueError:
                raise self._error(f"{where}.created is not an RFC 3339 time") from None
            if state not in _STATES:
                raise self._error(f"{where}.state must be one of {', '.join(_STATES)}")
            out.append(KeyringVersion(number, key_id, created, state))
        if sum(v.state == "primary" for v in out) != 1:
            raise self._error("exactly one version must be primary")
        if len({v.key_id.rsplit(":", 1)[1] for v in out}) != len(out):
            raise self._error("two versions share a fingerprint")
        return tuple(out)

    def _parse_protection(self, raw: object) -> tuple[Kdf, Argon2Params | None, tuple[int, ...]]:
        if not isinstance(raw, dict):
            raise self._error("protection must be a mapping")
        kdf = raw.get("kdf")
        if kdf == "none":
            if set(raw) != {"kdf"}:
                raise self._error("protection with kdf none has extra fields")
            return "none", None, ()
        if kdf == "tpm":
            return "tpm", None, self._parse_tpm_protection(raw)
        if kdf != "argon2id":
            raise self._error("protection.kdf must be none, argon2id or tpm")
        if set(raw) != _ARGON_FIELDS:
            raise self._error(f"protection must have exactly the fields {sorted(_ARGON_FIELDS)}")
        try:
            salt = _b64decode(raw["salt"])
        except (ValueError, binascii.Error):
            raise self._error("protection.salt is not base64") from None
        if not 8 <= len(salt) <= 64:
            raise self._error("protection.salt must be 8..64 bytes")
        numbers = [raw["iterations"], raw["lanes"], raw["memoryCost"]]
        if any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
            raise self._error("protection.iterations, lanes and memoryCost must be integers")
        problem = _argon_problem(*numbers)
        if problem:
            raise self._error(f"protection: {problem}")
        return "argon2id", Argon2Params(*numbers), ()

    def _parse_tpm_protection(self, raw: dict[str, Any]) -> tuple[int, ...]:
        if set(raw) != _TPM_FIELDS:
            raise self._error(f"protection must have exactly the fields {sorted(_TPM_FIELDS)}")
        try:
            sealed = _b64decode(raw["sealed"])
        except (ValueError, binascii.Error):
            raise self._error("protection.sealed is not base64") from None
        if not 1 <= len(sealed) <= _MAX_SEALED_BYTES:
            raise self._error(f"protection.sealed must be 1..{_MAX_SEALED_BYTES} bytes")
        pcrs = raw["pcrs"]
        if (
            not isinstance(pcrs, list)
            or any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 23 for p in pcrs)
            or pcrs != sorted(set(pcrs))
        ):
            raise self._error("protection.pcrs must be a sorted list of distinct PCR indexes 0..23")
        return tuple(pcrs)

    def _open_material(
        self, info: KeyringInfo, public: Mapping[str, Any], material: bytes, passphrase: bytes | None
    ) -> dict[int, bytes]:
        if self._sealer is not None and info.kdf != "tpm":
            raise self._error(
                f"keyring is not TPM-sealed (protection kdf is {info.kdf}); the tpm backend opens only "
                "keyrings created with `kubeshield keys init --config FILE` and keys.backend: tpm"
            )
        if info.kdf == "tpm":
            plain = self._open_tpm_material(public, material)
        elif info.argon2 is not None:
            if passphrase is None:
                raise self._error(
                    "keyring is passphrase-protected: give a passphrase file or set "
                    "KUBESHIELD_KEYRING_PASSPHRASE"
                )
            if len(material) < _NONCE + _TAG:
                raise self._error("material is truncated")
            salt = base64.b64decode(public["protection"]["salt"])
            kek = _derive(passphrase, salt, info.argon2)
            try:
                plain = AESGCM(kek).decrypt(material[:_NONCE], material[_NONCE:], _canonical(public))
            except InvalidTag:
                raise WrongPassphrase() from None
        else:
            plain = material
        try:
            table = json.loads(plain)
        except (ValueError, RecursionError):
            raise self._error("material is corrupt") from None
        expected = {str(v.version) for v in info.versions}
        if not isinstance(table, dict) or set(table) != expected:
            raise self._error("material does not hold exactly one key per listed version")
        keys: dict[int, bytes] = {}
        for v in info.versions:
            try:
                key = _b64decode(table[str(v.version)])
            except (ValueError, binascii.Error):
                raise self._error(f"material for version {v.version} is not base64") from None
            if len(key) != KEY_BYTES:
                raise self._error(f"material for version {v.version} is not a {KEY_BYTES}-byte key")
            if key_id_for(v.version, key) != v.key_id:
                raise self._error(f"keyId of version {v.version} does not match its key material")
            keys[v.version] = key
        return keys

    def _open_tpm_material(self, public: Mapping[str, Any], material: bytes) -> bytes:
        if self._sealer is None:
            raise self._error(
                "keyring is sealed by a TPM: open it with keys.backend: tpm (--config FILE, "
                "keys.tpm.tcti naming the TPM that sealed it)"
            )
        if len(material) < _NONCE + _TAG:
            raise self._error("material is truncated")
        try:
            wrapping = self._sealer.unseal(base64.b64decode(public["protection"]["sealed"]))
        except KeyringError as exc:
            raise type(exc)(f"{self.path}: {exc}") from None
        if len(wrapping) != KEY_BYTES:
            raise self._error("the TPM-sealed wrapping key has the wrong length")
        try:
            return AESGCM(wrapping).decrypt(material[:_NONCE], material[_NONCE:], _canonical(public))
        except InvalidTag:
            raise self._error(
                "keyring was altered: its contents do not match its TPM-sealed key (integrity check failed)"
            ) from None

    # --- writing -----------------------------------------------------------------------------------

    def create(self, *, passphrase: bytes | None, force: bool = False) -> Keyring:
        """Write a new keyring with one primary version. Refuses to replace one unless ``force``.

        With a sealer the keyring is TPM-sealed (``passphrase`` must then be None).
        """
        if passphrase is not None and not passphrase:
            raise ValueError("passphrase must not be empty (pass None for an unprotected keyring)")
        if passphrase is not None and self._sealer is not None:
            raise ValueError("a keyring is sealed by a passphrase or by a TPM, not both")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot create the keyring's directory: {exc.strerror}") from None
        self._check_directory()
        with self._locked():
            if os.path.lexists(self.path) and not force:
                raise self._error(
                    "a keyring already exists; refusing to overwrite it (replacing it with --force makes "
                    "every Secret encrypted under its keys unreadable)"
                )
            key = self._new_key()
            version = KeyringVersion(1, key_id_for(1, key), _now_rfc3339(self._clock), "primary")
            argon2 = self._argon2 if passphrase is not None else None
            return self._write(
                str(uuid.UUID(bytes=self._rng(16), version=4)),
                (version,),
                {1: key},
                argon2,
                passphrase,
                tpm=self._sealer is not None,
            )

    def rotate(self, *, passphrase: bytes | None) -> Keyring:
        """Add a new primary version; the previous primary becomes decrypt-only."""
        with self._locked():
            current = self.load(passphrase)
            key = self._new_key()
            number = current.info.versions[-1].version + 1
            new = KeyringVersion(number, key_id_for(number, key), _now_rfc3339(self._clock), "primary")
            if any(v.key_id.rsplit(":", 1)[1] == new.key_id.rsplit(":", 1)[1] for v in current.info.versions):
                raise self._error("the random generator repeated a key; refusing to rotate")
            old = current.info.versions
            older = [KeyringVersion(v.version, v.key_id, v.created, "decrypt-only") for v in old]
            versions = (*older, new)
            keys = {**current.keys, number: key}
            return self._write(
                current.info.keyring_id,
                versions,
                keys,
                current.info.argon2,
                passphrase,
                tpm=current.info.kdf == "tpm",
            )

    def retire(self, version: int, *, passphrase: bytes | None) -> Keyring:
        """Remove decrypt-only ``version`` and its key for good. Refuses the primary and unknown versions.

        Whatever is still encrypted under that version becomes unreadable: the CLI checks etcd first.
        """
        with self._locked():
            current = self.load(passphrase)
            numbers = [v.version for v in current.info.versions]
            if version not in numbers:
                listed = ", ".join(map(str, numbers))
                raise self._error(f"version {version} is not in this keyring (its versions: {listed})")
            if current.info.primary.version == version:
                raise self._error(
                    f"version {version} is the primary (it encrypts every new write); rotate first, "
                    "then retire it once nothing is stored under it"
                )
            kept = tuple(v for v in current.info.versions if v.version != version)
            keys = {n: k for n, k in current.keys.items() if n != version}
            return self._write(
                current.info.keyring_id,
                kept,
                keys,
                current.info.argon2,
                passphrase,
                tpm=current.info.kdf == "tpm",
            )

    def write(
        self,
        *,
        keyring_id: str,
        versions: tuple[KeyringVersion, ...],
        keys: Mapping[int, bytes],
        passphrase: bytes | None,
    ) -> Keyring:
        """Write exactly these versions as this keyring (restore): sealed by the sealer, the passphrase
        (with this file's Argon2 cost), or nothing. Replaces an existing file (callers decide whether
        they may). The versions must be well-formed, exactly one primary, each key matching its keyId.
        """
        if passphrase is not None and not passphrase:
            raise ValueError("passphrase must not be empty (pass None for an unprotected keyring)")
        if passphrase is not None and self._sealer is not None:
            raise ValueError("a keyring is sealed by a passphrase or by a TPM, not both")
        try:
            if str(uuid.UUID(keyring_id)) != keyring_id:
                raise ValueError
        except ValueError:
            raise ValueError("keyring_id must be a UUID") from None
        numbers = [v.version for v in versions]
        if not versions or numbers != sorted(set(numbers)) or set(numbers) != set(keys):
            raise ValueError("versions must be ascending, distinct and match the keys one to one")
        if sum(v.state == "primary" for v in versions) != 1:
            raise ValueError("exactly one version must be primary")
        for v in versions:
            if len(keys[v.version]) != KEY_BYTES or key_id_for(v.version, keys[v.version]) != v.key_id:
                raise ValueError(f"keyId of version {v.version} does not match its key")
        self._check_directory()
        with self._locked():
            argon2 = self._argon2 if passphrase is not None else None
            return self._write(keyring_id, versions, keys, argon2, passphrase, tpm=self._sealer is not None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive_lock(self.path))
        except OSError as exc:
            raise self._error(f"cannot lock keyring: {exc.strerror}") from None
        with stack:
            yield

    def _new_key(self) -> bytes:
        key = self._rng(KEY_BYTES)
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise TypeError(f"rng must return {KEY_BYTES} bytes")
        return key

    def _write(
        self,
        keyring_id: str,
        versions: tuple[KeyringVersion, ...],
        keys: Mapping[int, bytes],
        argon2: Argon2Params | None,
        passphrase: bytes | None,
        *,
        tpm: bool = False,
    ) -> Keyring:
        wrapping: bytes | None = None
        pcrs: tuple[int, ...] = ()
        if tpm:
            if self._sealer is None or argon2 is not None:
                raise self._error("a TPM-sealed keyring needs a sealer and no passphrase")
            wrapping = self._new_key()
            pcrs = tuple(self._sealer.pcrs)
            protection: dict[str, Any] = {
                "kdf": "tpm",
                "sealed": base64.b64encode(self._sealer.seal(wrapping)).decode("ascii"),
                "pcrs": list(pcrs),
            }
        elif argon2 is not None:
            salt = self._rng(_SALT_BYTES)
            protection = {
                "kdf": "argon2id",
                "salt": base64.b64encode(salt).decode("ascii"),
                "iterations": argon2.iterations,
                "lanes": argon2.lanes,
                "memoryCost": argon2.memory_cost,
            }
        else:
            protection = {"kdf": "none"}
        public: dict[str, Any] = {
            "kind": KIND,
            "formatVersion": FORMAT_VERSION,
            "keyringId": keyring_id,
            "versions": [
                {"version": v.version, "keyId": v.key_id, "created": v.created, "state": v.state}
                for v in versions
            ],
            "protection": protection,
        }
        table = json.dumps(
            {str(n): base64.b64encode(k).decode("ascii") for n, k in sorted(keys.items())},
            separators=(",", ":"),
        ).encode("ascii")
        if wrapping is not None:
            nonce = self._rng(_NONCE)
            material = nonce + AESGCM(wrapping).encrypt(nonce, table, _canonical(public))
        elif argon2 is not None:
            if passphrase is None:
                raise self._error("keyring is passphrase-protected but no passphrase was given")
            nonce = self._rng(_NONCE)
            sealed = AESGCM(_derive(passphrase, salt, argon2)).encrypt(nonce, table, _canonical(public))
            material = nonce + sealed
        else:
            material = table
        doc = {**public, "material": base64.b64encode(material).decode("ascii")}
        data = (json.dumps(doc, indent=2) + "\n").encode("ascii")
        try:
            write_private_atomic(self.path, data, fsync=self._fsync)
            stamp = FileStamp.of(os.stat(self.path))
        except OSError as exc:
            raise self._error(f"cannot write keyring: {exc.strerror}") from None
        kdf: Kdf = "tpm" if tpm else "argon2id" if argon2 is not None else "none"
        info = KeyringInfo(self.path, keyring_id, versions, kdf, argon2, pcrs)
        return Keyring(info=info, keys=dict(keys), stamp=stamp)


def _derive(passphrase: bytes, salt: bytes, params: Argon2Params) -> bytes:
    kdf = Argon2id(
        salt=salt,
        length=KEY_BYTES,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_cost,
    )
    return kdf.derive(passphrase)
