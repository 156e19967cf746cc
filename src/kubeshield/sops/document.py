"""One SOPS file in memory: parse, get the data key, decrypt, encrypt, and write it back.

This is the library half of every ``kubeshield sops`` command; the CLI only wires flags to it.

* :func:`parse_encrypted` reads an encrypted file of any store into an :class:`EncryptedDocument`;
* :func:`recover_data_key` asks the master keys, group by group (age first, then pgp, then the rest, as
  sops orders them), and combines Shamir shares when the file has several key groups;
* :func:`decrypt_document` decrypts every value and checks the MAC (exit 51 on a mismatch);
* :func:`encrypt_document` encrypts a plaintext tree under a data key and seals the MAC;
* :func:`wrap_data_key` encrypts the data key (or its shares) for every master key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.errors import InvalidCiphertext
from kubeshield.sops import shamir
from kubeshield.sops._cipher import ValueCipher
from kubeshield.sops._walk import decrypt_branches, encrypt_branches
from kubeshield.sops.errors import ExitCode, MacMismatch, SopsError
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey, format_created_at
from kubeshield.sops.metadata import Metadata, metadata_from_plain
from kubeshield.sops.stores import Store
from kubeshield.sops.tree import Branch, Timestamp

__all__ = [
    "DecryptedDocument",
    "EncryptedDocument",
    "decrypt_document",
    "encrypt_document",
    "mac_aad",
    "parse_encrypted",
    "recover_data_key",
    "wrap_data_key",
]

_DECRYPTION_ORDER = ("age", "pgp")


@dataclass
class EncryptedDocument:
    branches: list[Branch]
    metadata: Metadata


@dataclass
class DecryptedDocument:
    branches: list[Branch]
    metadata: Metadata
    data_key: bytes
    cipher: ValueCipher  # remembers the IVs of the values it decrypted


def parse_encrypted(data: bytes, *, store: Store, where: str) -> EncryptedDocument:
    branches, raw = store.load_encrypted(data, where=where)
    if raw is None:
        raise SopsError(f"{where}: sops metadata not found", code=ExitCode.ERROR_GENERIC)
    try:
        metadata = metadata_from_plain(raw)
    except SopsError as exc:
        raise SopsError(f"{where}: {exc}", code=exc.code) from None
    return EncryptedDocument(branches=branches, metadata=metadata)


def _ordered(group: list[MasterKey]) -> list[MasterKey]:
    def rank(key: MasterKey) -> int:
        return _DECRYPTION_ORDER.index(key.kind) if key.kind in _DECRYPTION_ORDER else len(_DECRYPTION_ORDER)

    return sorted(group, key=rank)


def recover_data_key(metadata: Metadata, *, env: KeyEnv) -> bytes:
    """The 32-byte data key. ``SopsError`` (exit 128) listing each group's and key's failure."""
    parts: list[bytes] = []
    report: list[str] = []
    for index, group in enumerate(metadata.key_groups):
        failures: list[str] = []
        part: bytes | None = None
        for master in _ordered(group):
            try:
                part = master.decrypt(env=env)
                break
            except SopsError as exc:
                failures.append(f"  {master.describe()}: {exc}")
        if part is not None:
            parts.append(part)
            report.append(f"Group {index}: SUCCESS")
        else:
            report.append(
                f"Group {index}: FAILED" + ("\n" + "\n".join(failures) if failures else " (no keys)")
            )
    several = len(metadata.key_groups) > 1
    threshold = metadata.shamir_threshold or len(metadata.key_groups)
    if several and len(parts) >= threshold:
        try:
            data_key = shamir.combine(parts)
        except ValueError:
            raise SopsError(
                "could not combine the Shamir shares of the data key", code=ExitCode.COULD_NOT_RETRIEVE_KEY
            ) from None
    elif not several and parts:
        data_key = parts[0]
    else:
        need = f"; the file needs {threshold} of {len(metadata.key_groups)} key groups" if several else ""
        raise SopsError(
            "failed to get the data key required to decrypt the SOPS file"
            + need
            + "\n\n"
            + "\n".join(report),
            code=ExitCode.COULD_NOT_RETRIEVE_KEY,
        )
    if len(data_key) != 32:
        raise SopsError("the recovered data key is not 32 bytes", code=ExitCode.COULD_NOT_RETRIEVE_KEY)
    return data_key


def mac_aad(lastmodified: str) -> str:
    """sops re-formats ``lastmodified`` with Go's ``time.RFC3339`` (no fraction) before using it as AAD."""
    ts = Timestamp.parse_rfc3339(lastmodified)
    return Timestamp(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, 0, ts.offset).rfc3339()


def decrypt_document(
    doc: EncryptedDocument,
    *,
    data_key: bytes,
    ignore_mac: bool = False,
    where: str = "file",
    remember_ivs: bool = True,
) -> DecryptedDocument:
    """Decrypt every value and check the MAC. ``remember_ivs=False`` when nothing will be re-encrypted
    with the returned cipher (a plain decrypt): its stash of IVs is then not built."""
    cipher = ValueCipher(data_key, remember_ivs=remember_ivs)
    meta = doc.metadata
    try:
        plain, computed = decrypt_branches(
            doc.branches, cipher=cipher, selection=meta.selection, mac_only_encrypted=meta.mac_only_encrypted
        )
    except SopsError as exc:
        raise SopsError(f"{where}: {exc}", code=exc.code) from None
    if not ignore_mac:
        try:
            stored = cipher.decrypt(meta.mac, aad=mac_aad(meta.lastmodified)) if meta.mac else ""
        except InvalidCiphertext:
            raise MacMismatch(
                f"{where}: cannot decrypt the MAC (sops.mac was edited or the file tampered with)"
            ) from None
        if not stored:
            raise MacMismatch(f"{where}: MAC mismatch: the file has no MAC")
        if stored != computed:
            raise MacMismatch(f"{where}: MAC mismatch: the file was changed outside sops or tampered with")
    return DecryptedDocument(branches=plain, metadata=meta, data_key=data_key, cipher=cipher)


def encrypt_document(
    branches: list[Branch],
    *,
    metadata: Metadata,
    data_key: bytes,
    cipher: ValueCipher | None = None,
    clock: Callable[[], float] = time.time,
) -> EncryptedDocument:
    """Encrypt ``branches`` and seal a fresh MAC; ``cipher`` (with its stash) keeps unchanged IVs."""
    cipher = cipher or ValueCipher(data_key)
    encrypted, mac = encrypt_branches(
        branches, cipher=cipher, selection=metadata.selection, mac_only_encrypted=metadata.mac_only_encrypted
    )
    metadata.lastmodified = format_created_at(clock())
    metadata.mac = cipher.encrypt(mac, aad=mac_aad(metadata.lastmodified))
    return EncryptedDocument(branches=encrypted, metadata=metadata)


def wrap_data_key(
    metadata: Metadata, data_key: bytes, *, env: KeyEnv, rng: Callable[[int], bytes] = os.urandom
) -> None:
    """Encrypt ``data_key`` (split by Shamir over several groups) for every master key."""
    groups = metadata.key_groups
    if not groups or not any(groups):
        raise SopsError(
            "no master key: give --age, --pgp, --kms, --hc-vault-transit or --kubeshield, "
            "or a .sops.yaml rule",
            code=ExitCode.NO_ENCRYPTION_KEY_FOUND,
        )
    if len(groups) == 1:
        parts = [data_key]
    else:
        if metadata.shamir_threshold == 0:
            metadata.shamir_threshold = len(groups)
        if not 1 <= metadata.shamir_threshold <= len(groups):
            raise SopsError(
                f"shamir threshold {metadata.shamir_threshold} is not between 1 and the "
                f"{len(groups)} key groups",
                code=ExitCode.ERROR_GENERIC,
            )
        if metadata.shamir_threshold < 2:
            raise SopsError(
                "a shamir threshold must be at least 2 with several key groups", code=ExitCode.ERROR_GENERIC
            )
        parts = shamir.split(data_key, parts=len(groups), threshold=metadata.shamir_threshold, rng=rng)
    for part, group in zip(parts, groups, strict=True):
        for key in group:
            key.encrypt(part, env=env)
