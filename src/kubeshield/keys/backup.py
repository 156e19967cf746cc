"""Backup and restore of exportable KEK material: a local keyring, encrypted with age (pyrage).

What can be backed up: the KEK versions of a ``local`` keyring, passphrase-protected, unprotected or
TPM-sealed (``tpm``: the keyring is opened with its TPM, so only that machine can make the backup; the
age file then opens with the recipients' identities, never with the TPM). What cannot: keys that never
leave their custodian (PKCS#11 tokens, OpenBao/Vault Transit, AWS KMS, the custody process);
:func:`non_exportable_reason` names the vendor's own backup procedure for each. The in-memory
local KEKs of the hierarchy are not backed up either: each is per process, lives at most
``keys.hierarchy.maxAge``, and already travels with every ciphertext wrapped by the remote key; a copy
would only matter if the remote key were lost, and that case is what the break-glass escrow (an
emergency keyring, :mod:`kubeshield.keys.breakglass`) covers without dumping process memory.

Backup file: the age v1 format (https://age-encryption.org/v1), binary, to one or more X25519
recipients (``age1...``) or to a passphrase (age's scrypt recipient). age authenticates the whole file,
so a wrong identity, a wrong passphrase, truncation and any tampering are all refused on decryption.
The plaintext inside is UTF-8 JSON, built by :func:`export_payload`::

    {"kind": "KubeshieldKeyBackup",
     "formatVersion": 1,
     "created": "<RFC3339, UTC>",
     "keyringId": "<uuid of the source keyring>",
     "versions": [{"version": 1, "keyId": "local:v1:<fp>", "created": "<RFC3339>",
                   "state": "primary" | "decrypt-only", "key": "<standard base64 of the 32-byte KEK>"},
                  ...]}                                            # ascending, exactly one primary

Restore (:func:`restore_backup`) decrypts, then verifies before anything is written: the format
(every field, exactly), that every ``keyId`` is the fingerprint of its key and its version, and a wrap
/unwrap round trip per version through a freshly written keyring in a temp file next to the target,
sealed the way the target will be (a passphrase, a TPM via ``sealer``, or nothing). Only then is the
temp file renamed over the target (atomically, directory fsynced; a new file is 0600, a replaced one
keeps its owner, group and mode), and only if no keyring exists there, unless ``force``.

Replacing never drops a version silently: under the target's lock, every version of the current
keyring whose key_id the backup lacks (all of them when the backup is of another keyring) must be named
in ``allow_drop``, or the restore is refused with the list. A current file that cannot be read is
refused too (move it aside first), because then nobody can say what it held. The restored keyring keeps
the source's keyringId and key_ids, so it decrypts everything the source wrapped.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import ConfigError, KeyringError, KubeshieldError
from kubeshield.keys.base import Wrapped
from kubeshield.keys.files import exclusive_lock, replace_private, write_private_atomic
from kubeshield.keys.keyring import (
    KEY_BYTES,
    Argon2Params,
    Keyring,
    KeyringFile,
    KeyringInfo,
    KeyringVersion,
    KeySealer,
    key_id_for,
)
from kubeshield.keys.local import WRAP_FORMAT, LocalKeyBackend

__all__ = [
    "BACKUP_FORMAT_VERSION",
    "BACKUP_KIND",
    "BackupContents",
    "BackupError",
    "decrypt_backup",
    "encrypt_backup",
    "export_payload",
    "non_exportable_reason",
    "parse_payload",
    "read_backup_file",
    "read_identities",
    "read_recipients",
    "restore_backup",
    "versions_dropped",
    "write_backup",
    "write_identity",
]

BACKUP_KIND = "KubeshieldKeyBackup"
BACKUP_FORMAT_VERSION = 1
_MAX_BACKUP_BYTES = 4 << 20
_MAX_LIST_FILE_BYTES = 1 << 20
_TOP_FIELDS = frozenset({"kind", "formatVersion", "created", "keyringId", "versions"})
_VERSION_FIELDS = frozenset({"version", "keyId", "created", "state", "key"})
_STATES = ("primary", "decrypt-only")
_LOCAL_AAD = b"kubeshield/local/v1\x00"  # kubeshield.keys.local's wrap AAD label (re-derived to cross-check)
_PROBE_AAD = b"kubeshield/backup-verify"
_PYRAGE_FIX = "pip install 'kubeshield[backup]' (it installs pyrage)"

_VENDOR_BACKUP: Mapping[str, str] = {
    "pkcs11": (
        "PKCS#11 keys are generated non-extractable inside the token; back them up with the HSM vendor's "
        "own procedure (e.g. Thales Luna 'cmu backup'/backup HSM, Entrust nShield Security World "
        "replication, AWS CloudHSM cluster backups, YubiHSM 2 wrapped export under a wrap key)"
    ),
    "transit": (
        "OpenBao/Vault Transit keys stay in the key service; back up the key service itself "
        "(integrated storage: 'bao operator raft snapshot save' / 'vault operator raft snapshot save'), "
        "or mark the key exportable and allow_plaintext_backup and use 'transit/backup/<key>' "
        "(weakens custody)"
    ),
    "awskms": (
        "AWS KMS keys cannot be exported; AWS keeps them durable. Guard against deletion (key policy, "
        "a long PendingWindowInDays) and use a multi-Region key replica for regional outages"
    ),
    "custody": "the custody process holds its own keys; back them up with its own procedure",
}


class BackupError(KeyringError):
    """A backup cannot be made, read or restored. The message names the problem, never key bytes."""


@dataclass(frozen=True, slots=True)
class BackupContents:
    """A decrypted, verified backup: the public part plus each version's KEK. Never printed."""

    keyring_id: str
    created: str
    versions: tuple[KeyringVersion, ...]
    keys: Mapping[int, bytes] = field(repr=False)

    def __repr__(self) -> str:
        return f"BackupContents(keyring_id={self.keyring_id!r}, versions={len(self.versions)}, keys=<hidden>)"


def non_exportable_reason(backend: str) -> str | None:
    """Why ``backend``'s keys cannot be backed up by kubeshield, with the vendor procedure.

    None for ``local`` and ``tpm`` (a TPM-sealed local keyring, opened with its TPM to export it).
    """
    if backend in ("local", "tpm"):
        return None
    return _VENDOR_BACKUP.get(
        backend, f"the {backend!r} backend offers no key export; use its vendor's backup procedure"
    )


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pyrage() -> Any:
    try:
        import pyrage  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ConfigError(f"backup and restore need the pyrage package: {_PYRAGE_FIX}") from None
    return pyrage


# -- the payload ----------------------------------------------------------------------------------------


def export_payload(keyring: Keyring, *, clock: Callable[[], float] = time.time) -> bytes:
    """The backup plaintext of an opened keyring (layout in the module docstring)."""
    doc = {
        "kind": BACKUP_KIND,
        "formatVersion": BACKUP_FORMAT_VERSION,
        "created": _rfc3339(clock()),
        "keyringId": keyring.info.keyring_id,
        "versions": [
            {
                "version": v.version,
                "keyId": v.key_id,
                "created": v.created,
                "state": v.state,
                "key": base64.b64encode(keyring.keys[v.version]).decode("ascii"),
            }
            for v in keyring.info.versions
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def parse_payload(raw: bytes) -> BackupContents:
    """Parse and verify a backup plaintext. Raises ``BackupError`` naming the first problem."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise BackupError("backup payload is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != BACKUP_KIND:
        raise BackupError(f"not a kubeshield key backup (kind is not {BACKUP_KIND})")
    fmt = doc.get("formatVersion")
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise BackupError("backup formatVersion is missing or not an integer")
    if fmt != BACKUP_FORMAT_VERSION:
        raise BackupError(
            f"unsupported backup formatVersion {fmt} (this kubeshield reads {BACKUP_FORMAT_VERSION})"
        )
    if set(doc) != _TOP_FIELDS:
        extra, missing = sorted(set(doc) - _TOP_FIELDS), sorted(_TOP_FIELDS - set(doc))
        raise BackupError(
            f"unknown backup field {extra[0]!r}" if extra else f"backup field {missing[0]!r} is missing"
        )
    keyring_id, created = doc["keyringId"], doc["created"]
    try:
        if not isinstance(keyring_id, str) or str(uuid.UUID(keyring_id)) != keyring_id:
            raise ValueError
    except ValueError:
        raise BackupError("backup keyringId is not a UUID") from None
    _check_time(created, "created")
    raw_versions = doc["versions"]
    if not isinstance(raw_versions, list) or not raw_versions:
        raise BackupError("backup versions must be a non-empty list")
    versions: list[KeyringVersion] = []
    keys: dict[int, bytes] = {}
    for i, item in enumerate(raw_versions):
        where = f"versions[{i}]"
        if not isinstance(item, dict) or set(item) != _VERSION_FIELDS:
            raise BackupError(f"backup {where} must have exactly the fields {sorted(_VERSION_FIELDS)}")
        number, key_id, v_created, state = item["version"], item["keyId"], item["created"], item["state"]
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise BackupError(f"backup {where}.version must be a positive integer")
        if versions and number <= versions[-1].version:
            raise BackupError(f"backup {where}.version is not in ascending order")
        if state not in _STATES:
            raise BackupError(f"backup {where}.state must be one of {', '.join(_STATES)}")
        _check_time(v_created, f"{where}.created")
        try:
            if not isinstance(item["key"], str):
                raise ValueError
            key = base64.b64decode(item["key"], validate=True)
        except (ValueError, binascii.Error):
            raise BackupError(f"backup {where}.key is not base64") from None
        if len(key) != KEY_BYTES:
            raise BackupError(f"backup {where}.key is not a {KEY_BYTES}-byte key")
        if not isinstance(key_id, str) or key_id_for(number, key) != key_id:
            raise BackupError(f"backup {where}.keyId does not match the fingerprint of its key and version")
        versions.append(KeyringVersion(number, key_id, v_created, state))
        keys[number] = key
    if sum(v.state == "primary" for v in versions) != 1:
        raise BackupError("backup must have exactly one primary version")
    if len({v.key_id.rsplit(":", 1)[1] for v in versions}) != len(versions):
        raise BackupError("two backup versions share a key")
    return BackupContents(keyring_id=keyring_id, created=created, versions=tuple(versions), keys=keys)


def _check_time(value: object, where: str) -> None:
    try:
        if not isinstance(value, str):
            raise ValueError
        datetime.fromisoformat(value)
    except ValueError:
        raise BackupError(f"backup {where} is not an RFC 3339 time") from None


# -- age ------------------------------------------------------------------------------------------------


def _lines(path: Path, what: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_LIST_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc.strerror}") from None
    if len(data) > _MAX_LIST_FILE_BYTES:
        raise ConfigError(f"{path}: {what} file is larger than {_MAX_LIST_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} file is not UTF-8 text") from None
    out = [line.strip() for line in text.splitlines()]
    return [line for line in out if line and not line.startswith("#")]


def read_recipients(path: Path) -> list[str]:
    """age recipients from a file, one per line (``#`` comments and blank lines ignored, like ``age -R``)."""
    recipients = _lines(path, "recipients")
    if not recipients:
        raise ConfigError(f"{path}: recipients file holds no recipient")
    return recipients


def write_identity(path: Path, *, force: bool = False, clock: Callable[[], float] = time.time) -> str:
    """Create a new age X25519 identity file at ``path`` (0600, as ``age-keygen`` writes it).

    Returns its recipient (``age1...``), the only part to share. Refuses to replace a file unless
    ``force``.
    """
    pyrage = _pyrage()
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise BackupError(f"{path}: a file already exists; refusing to overwrite it (use --force)")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent}: the identity's directory does not exist")
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = f"# created: {_rfc3339(clock())}\n# public key: {recipient}\n{identity}\n"
    try:
        write_private_atomic(path, text.encode("ascii"))
    except OSError as exc:
        raise BackupError(f"{path}: cannot write the identity: {exc.strerror}") from None
    return recipient


def read_identities(path: Path) -> list[str]:
    """age identities (the ``AGE-SECRET-KEY-`` lines) from an identity file, as ``age-keygen`` writes it."""
    identities = _lines(path, "identity")
    if not identities:
        raise ConfigError(f"{path}: identity file holds no identity")
    return identities


def encrypt_backup(
    payload: bytes, *, recipients: Sequence[str] = (), passphrase: bytes | None = None
) -> bytes:
    """Encrypt ``payload`` to age X25519 ``recipients`` or to ``passphrase`` (exactly one of the two)."""
    if bool(recipients) == (passphrase is not None):
        raise ConfigError("give age recipients or a passphrase for the backup (exactly one of the two)")
    pyrage = _pyrage()
    if passphrase is not None:
        return bytes(pyrage.passphrase.encrypt(payload, _passphrase_text(passphrase)))
    parsed = []
    for i, text in enumerate(recipients):
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(text))
        except pyrage.RecipientError:
            raise ConfigError(f"recipient #{i + 1} is not an age X25519 recipient (age1...)") from None
    try:
        return bytes(pyrage.encrypt(payload, parsed))
    except pyrage.EncryptError as exc:  # pragma: no cover - not reachable with valid recipients
        raise BackupError("age encryption failed") from exc


def decrypt_backup(
    data: bytes, *, identities: Sequence[str] = (), passphrase: bytes | None = None
) -> BackupContents:
    """Decrypt an age backup with ``identities`` or ``passphrase``, then parse and verify it."""
    if bool(identities) == (passphrase is not None):
        raise ConfigError("give an age identity or a passphrase to open the backup (exactly one of the two)")
    pyrage = _pyrage()
    if not data.startswith(b"age-encryption.org/v1\n"):
        raise BackupError("not an age-encrypted backup (no age v1 header)")
    try:
        if passphrase is not None:
            raw = pyrage.passphrase.decrypt(data, _passphrase_text(passphrase))
        else:
            parsed = []
            for i, text in enumerate(identities):
                try:
                    parsed.append(pyrage.x25519.Identity.from_str(text))
                except pyrage.IdentityError:
                    raise ConfigError(f"identity #{i + 1} is not an age X25519 identity") from None
            raw = pyrage.decrypt(data, parsed)
    except pyrage.DecryptError:
        raise BackupError(
            "cannot decrypt the backup: wrong identity or passphrase, or the file is truncated or tampered"
        ) from None
    return parse_payload(bytes(raw))


def _passphrase_text(passphrase: bytes) -> str:
    if not passphrase:
        raise ConfigError("the backup passphrase must not be empty")
    try:
        return passphrase.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the backup passphrase must be UTF-8 text") from None


def write_backup(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write an encrypted backup atomically with mode 0600; refuse to replace a file unless ``force``."""
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise BackupError(f"{path}: a file already exists; refusing to overwrite it (use --force)")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent}: the backup's directory does not exist")
    try:
        write_private_atomic(path, data)
    except OSError as exc:
        raise BackupError(f"{path}: cannot write the backup: {exc.strerror}") from None


def read_backup_file(path: Path) -> bytes:
    """Read an encrypted backup (bounded in size)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_BACKUP_BYTES + 1)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup: {exc.strerror}") from None
    if len(data) > _MAX_BACKUP_BYTES:
        raise BackupError(f"{path}: larger than {_MAX_BACKUP_BYTES} bytes; not a kubeshield key backup")
    if not data:
        raise BackupError(f"{path}: the backup file is empty")
    return data


# -- restore --------------------------------------------------------------------------------------------


def _local_blob(key: bytes, key_id: str, plaintext: bytes, nonce: bytes, aad: bytes) -> bytes:
    """The ``local`` backend's wrap layout, built independently to cross-check the restored keyring."""
    fp = bytes.fromhex(key_id.rsplit(":", 1)[1])
    full_aad = _LOCAL_AAD + key_id.encode("ascii") + b"\x00" + aad
    return bytes([WRAP_FORMAT]) + fp + nonce + AESGCM(key).encrypt(nonce, plaintext, full_aad)


def _verify_keyring(
    path: Path,
    contents: BackupContents,
    passphrase: bytes | None,
    rng: Callable[[int], bytes],
    sealer: KeySealer | None,
) -> None:
    """Open the keyring at ``path`` and prove every version unwraps, and the primary wraps."""
    backend = LocalKeyBackend(path=path, passphrase=passphrase, sealer=sealer)
    try:
        listed = [(v.version, v.key_id, v.state) for v in backend.versions()]
        expected = [(v.version, v.key_id, v.state) for v in contents.versions]
        if listed != expected:
            raise BackupError("the restored keyring does not list the backup's versions")
        for v in contents.versions:
            probe = rng(32)
            blob = _local_blob(contents.keys[v.version], v.key_id, probe, rng(12), _PROBE_AAD)
            if backend.unwrap(Wrapped(ciphertext=blob, key_id=v.key_id), aad=_PROBE_AAD) != probe:
                raise BackupError(f"version {v.version} failed its wrap/unwrap round trip")
        probe = rng(32)
        if backend.unwrap(backend.wrap(probe, aad=_PROBE_AAD), aad=_PROBE_AAD) != probe:
            raise BackupError("the primary version failed its wrap/unwrap round trip")
    except KubeshieldError as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"the restored keyring failed verification ({type(exc).__name__})") from None
    finally:
        backend.close()


def restore_backup(
    contents: BackupContents,
    *,
    keyring: Path,
    passphrase: bytes | None = None,
    force: bool = False,
    allow_drop: Collection[int] = (),
    argon2: Argon2Params | None = None,
    sealer: KeySealer | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    fsync: Callable[[int], None] = os.fsync,
) -> KeyringInfo:
    """Write ``contents`` as a keyring at ``keyring``, verified first (module docstring).

    Sealed with ``passphrase`` (Argon2id, ``argon2`` cost), or by ``sealer`` (a TPM), or unprotected.
    A missing directory is created 0700 (as ``keys init`` does). Refuses to replace an existing keyring
    unless ``force``, and even then refuses to drop a version of it that ``allow_drop`` (version numbers
    of the current keyring) does not name. Nothing is written at
    ``keyring`` unless the verified temp keyring is complete; on any failure the temp file is removed.
    """
    target = Path(keyring)
    if passphrase is not None and not passphrase:
        raise ConfigError("the new keyring's passphrase must not be empty")
    if passphrase is not None and sealer is not None:
        raise ConfigError("a restored keyring is sealed by a passphrase or by a TPM, not both")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a fresh node, as `keys init` does
    except OSError as exc:
        raise BackupError(f"{target.parent}: cannot create the keyring's directory: {exc.strerror}") from None
    refusal = f"{target}: a keyring already exists; refusing to overwrite it (use --force)"
    if os.path.lexists(target):
        if not force:
            raise BackupError(refusal)
        _refuse_drops(target, contents, allow_drop)  # early, before any work; again under the lock
    tmp = target.with_name(f".{target.name}.restore-{rng(6).hex()}")
    try:
        staging = KeyringFile(tmp, rng=rng, argon2=argon2, fsync=fsync, sealer=sealer)
        staging.write(
            keyring_id=contents.keyring_id,
            versions=contents.versions,
            keys=contents.keys,
            passphrase=passphrase,
        )
        _verify_keyring(tmp, contents, passphrase, rng, sealer)
        with exclusive_lock(target):
            if os.path.lexists(target):
                if not force:
                    raise BackupError(refusal)
                _refuse_drops(target, contents, allow_drop)
            replace_private(tmp, target, fsync=fsync)
    except OSError as exc:
        raise BackupError(f"{target}: cannot write the restored keyring: {exc.strerror}") from None
    except KeyringError as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"{target}: cannot write the restored keyring: {exc}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".lock")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return KeyringFile(target).read_info()


def versions_dropped(current: KeyringInfo, contents: BackupContents) -> tuple[KeyringVersion, ...]:
    """The versions of ``current`` whose key_id ``contents`` does not hold (what a restore would drop)."""
    kept = {v.key_id for v in contents.versions}
    return tuple(v for v in current.versions if v.key_id not in kept)


def _refuse_drops(target: Path, contents: BackupContents, allow_drop: Collection[int]) -> None:
    try:
        current = KeyringFile(target).read_info()
    except KeyringError as exc:
        raise BackupError(
            f"cannot read the current keyring to see what restoring over it would drop ({exc}); "
            f"move it aside first (mv {target} {target}.broken)"
        ) from None
    every = versions_dropped(current, contents)
    dropped = [v for v in every if v.version not in set(allow_drop)]
    if not dropped:
        return
    other = (
        f" (the backup is of another keyring: {contents.keyring_id}; the current one is {current.keyring_id})"
        if contents.keyring_id != current.keyring_id
        else ""
    )
    names = ", ".join(f"{v.version} ({v.key_id}, {v.state})" for v in dropped)
    numbers = ",".join(str(v.version) for v in every)
    raise BackupError(
        f"{target}: restoring this backup would drop version(s) {names} of the current keyring{other}; "
        "whatever is stored under them would become unreadable. Back up the current keyring first; to "
        f"drop them anyway, pass --allow-drop {numbers}"
    )
