"""Restore never drops a version silently, writes the protection it is asked for, and age identities
for receiving keyrings (issue 16 items 1, 2 and 3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyrage
import pytest

from kubeshield.errors import KeyringError
from kubeshield.keys import backup as backups
from kubeshield.keys.backup import BackupError
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring
from tests.unit.keys.test_keyring_tpm_protection import XorSealer

AAD = b"kubeshield/kms/v2"


def _backup_of(path: Path, passphrase: bytes | None = PASSPHRASE) -> backups.BackupContents:
    return backups.parse_payload(backups.export_payload(KeyringFile(path).load(passphrase)))


def test_an_older_backup_never_silently_drops_the_current_primary(tmp_path: Path) -> None:
    """The issue's lock-out: back up, rotate, write under v2, restore the old backup with --force."""
    kr = tmp_path / "kr"
    make_keyring(kr)
    old_backup = _backup_of(kr)
    KeyringFile(kr).rotate(passphrase=PASSPHRASE)
    written = LocalKeyBackend(path=kr, passphrase=PASSPHRASE).wrap(b"s" * 32, aad=AAD)
    v2 = KeyringFile(kr).read_info().primary
    before = kr.read_bytes()
    with pytest.raises(BackupError) as refused:
        backups.restore_backup(old_backup, keyring=kr, passphrase=PASSPHRASE, force=True, argon2=CHEAP_ARGON2)
    message = str(refused.value)
    assert f"would drop version(s) 2 ({v2.key_id}, primary)" in message and "--allow-drop 2" in message
    assert "another keyring" not in message  # same keyring, older state
    assert kr.read_bytes() == before
    assert LocalKeyBackend(path=kr, passphrase=PASSPHRASE).unwrap(written, aad=AAD) == b"s" * 32
    assert not [n for n in os.listdir(tmp_path) if "restore" in n]
    # named explicitly, it goes through (the operator asked for exactly this)
    info = backups.restore_backup(
        old_backup, keyring=kr, passphrase=PASSPHRASE, force=True, allow_drop=[2], argon2=CHEAP_ARGON2
    )
    assert [v.key_id for v in info.versions] == [v.key_id for v in old_backup.versions]


def test_allow_drop_must_name_every_dropped_version(tmp_path: Path) -> None:
    kr = tmp_path / "kr"
    make_keyring(kr)
    old_backup = _backup_of(kr)
    KeyringFile(kr).rotate(passphrase=PASSPHRASE)
    KeyringFile(kr).rotate(passphrase=PASSPHRASE)
    with pytest.raises(
        BackupError, match=r"version\(s\) 3 \(local:v3:[0-9a-f]{16}, primary\) of .*-drop 2,3$"
    ):
        backups.restore_backup(
            old_backup, keyring=kr, passphrase=PASSPHRASE, force=True, allow_drop=[2], argon2=CHEAP_ARGON2
        )


def test_a_backup_holding_every_current_version_replaces_without_allow_drop(tmp_path: Path) -> None:
    kr = tmp_path / "kr"
    make_keyring(kr, rotations=1)
    full = _backup_of(kr)
    KeyringFile(kr).retire(1, passphrase=PASSPHRASE)  # the current keyring is a subset of the backup
    info = backups.restore_backup(full, keyring=kr, passphrase=PASSPHRASE, force=True, argon2=CHEAP_ARGON2)
    assert [v.version for v in info.versions] == [1, 2]


def test_an_unreadable_current_keyring_is_not_replaced(tmp_path: Path) -> None:
    make_keyring(tmp_path / "src")
    (tmp_path / "kr").write_bytes(b"{not json")
    os.chmod(tmp_path / "kr", 0o600)
    with pytest.raises(BackupError, match=r"cannot read the current keyring .* move it aside first"):
        backups.restore_backup(_backup_of(tmp_path / "src"), keyring=tmp_path / "kr", force=True)
    assert (tmp_path / "kr").read_bytes() == b"{not json"


def test_restore_seals_with_the_given_sealer(tmp_path: Path) -> None:
    make_keyring(tmp_path / "src", rotations=1)
    contents = _backup_of(tmp_path / "src")
    sealer = XorSealer(pcrs=(7,))
    info = backups.restore_backup(contents, keyring=tmp_path / "kr.tpm", sealer=sealer)
    assert info.kdf == "tpm" and info.pcrs == (7,)
    assert sealer.unseals >= 1  # the verification step opened it through the sealer
    opened = KeyringFile(tmp_path / "kr.tpm", sealer=sealer).load(None)
    assert [v.key_id for v in opened.info.versions] == [v.key_id for v in contents.versions]
    with pytest.raises(KeyringError, match="sealed by a TPM"):
        KeyringFile(tmp_path / "kr.tpm").load(None)
    with pytest.raises(Exception, match="passphrase or by a TPM, not both"):
        backups.restore_backup(contents, keyring=tmp_path / "x", sealer=sealer, passphrase=b"p")
    assert not (tmp_path / "x").exists()


def test_a_tpm_keyring_can_be_backed_up_through_its_sealer(tmp_path: Path) -> None:
    sealer = XorSealer()
    created = KeyringFile(tmp_path / "kr.tpm", sealer=sealer).create(passphrase=None)
    payload = backups.export_payload(KeyringFile(tmp_path / "kr.tpm", sealer=sealer).load(None))
    restored = backups.restore_backup(
        backups.parse_payload(payload), keyring=tmp_path / "kr", passphrase=b"p", argon2=CHEAP_ARGON2
    )
    assert restored.keyring_id == created.info.keyring_id and restored.kdf == "argon2id"


def test_write_identity_is_private_and_opens_what_its_recipient_sealed(tmp_path: Path) -> None:
    recipient = backups.write_identity(tmp_path / "node.agekey")
    assert recipient.startswith("age1")
    assert stat.S_IMODE(os.stat(tmp_path / "node.agekey").st_mode) == 0o600
    identities = backups.read_identities(tmp_path / "node.agekey")
    assert len(identities) == 1
    sealed = pyrage.encrypt(b"hello", [pyrage.x25519.Recipient.from_str(recipient)])
    assert pyrage.decrypt(sealed, [pyrage.x25519.Identity.from_str(identities[0])]) == b"hello"
    before = (tmp_path / "node.agekey").read_bytes()
    with pytest.raises(BackupError, match="already exists"):
        backups.write_identity(tmp_path / "node.agekey")
    assert (tmp_path / "node.agekey").read_bytes() == before
    assert backups.write_identity(tmp_path / "node.agekey", force=True) != recipient
