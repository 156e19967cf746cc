"""Backup and restore of a local keyring (kubeshield.keys.backup), with real age encryption (pyrage)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.errors import ConfigError, KeyringError
from kubeshield.keys import backup as backups
from kubeshield.keys.backup import BackupError
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring

AAD = b"/registry/secrets/default/db"


def _identity() -> tuple[str, str]:
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def _data_under_every_version(path: Path, passphrase: bytes | None, rotations: int) -> list[tuple]:
    """Wrap one seed under each version of a fresh keyring (rotating in between)."""
    keyring_file = KeyringFile(path, argon2=CHEAP_ARGON2)
    keyring_file.create(passphrase=passphrase)
    out = []
    for i in range(rotations + 1):
        if i:
            keyring_file.rotate(passphrase=passphrase)
        backend = LocalKeyBackend(path=path, passphrase=passphrase)
        seed = os.urandom(32)
        out.append((backend.wrap(seed, aad=AAD), seed))
        backend.close()
    return out


def _backup(path: Path, passphrase: bytes | None, recipients: list[str]) -> bytes:
    payload = backups.export_payload(KeyringFile(path).load(passphrase))
    return backups.encrypt_backup(payload, recipients=recipients)


def _nothing_at(path: Path) -> bool:
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.restore-")]
    return not path.exists() and not leftovers


@pytest.mark.parametrize(("source_pass", "target_pass"), [(None, None), (PASSPHRASE, b"another one")])
def test_backup_then_restore_into_a_fresh_keyring_decrypts_old_data(
    tmp_path: Path, source_pass: bytes | None, target_pass: bytes | None
) -> None:
    old = _data_under_every_version(tmp_path / "kr", source_pass, rotations=2)
    secret, public = _identity()
    data = _backup(tmp_path / "kr", source_pass, [public])
    assert b"local:v1" not in data  # encrypted, not just encoded

    (tmp_path / "restored").mkdir()
    target = tmp_path / "restored" / "kr"
    contents = backups.decrypt_backup(data, identities=[secret])
    info = backups.restore_backup(contents, keyring=target, passphrase=target_pass, argon2=CHEAP_ARGON2)

    source = KeyringFile(tmp_path / "kr").read_info()
    assert info.keyring_id == source.keyring_id
    assert [(v.key_id, v.state) for v in info.versions] == [(v.key_id, v.state) for v in source.versions]
    assert info.protected is (target_pass is not None)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    restored = LocalKeyBackend(path=target, passphrase=target_pass)
    for wrapped, seed in old:
        assert restored.unwrap(wrapped, aad=AAD) == seed
    assert restored.key_id() == source.primary.key_id


def test_a_second_recipient_can_restore_too(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    (_s1, p1), (s2, p2) = _identity(), _identity()
    data = _backup(tmp_path / "kr", None, [p1, p2])
    assert backups.decrypt_backup(data, identities=[s2]).keys == KeyringFile(tmp_path / "kr").load(None).keys


def test_wrong_identity_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    _, public = _identity()
    other, _ = _identity()
    data = _backup(tmp_path / "kr", None, [public])
    with pytest.raises(BackupError, match="wrong identity or passphrase"):
        backups.decrypt_backup(data, identities=[other])


@pytest.mark.parametrize("damage", ["truncate-end", "truncate-header", "flip-body", "flip-header"])
def test_truncated_or_tampered_backup_is_refused(tmp_path: Path, damage: str) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    secret, public = _identity()
    data = bytearray(_backup(tmp_path / "kr", None, [public]))
    if damage == "truncate-end":
        data = data[:-7]
    elif damage == "truncate-header":
        data = data[:60]
    elif damage == "flip-body":
        data[-20] ^= 0x01
    else:
        data[data.index(b"\n---") - 3] ^= 0x01
    with pytest.raises(BackupError, match=r"cannot decrypt the backup|not an age"):
        backups.decrypt_backup(bytes(data), identities=[secret])


def test_not_an_age_file(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", passphrase=None)
    with pytest.raises(BackupError, match="no age v1 header"):
        backups.decrypt_backup(backups.export_payload(keyring), identities=[_identity()[0]])


def test_passphrase_backup_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", passphrase=None, rotations=1)
    data = backups.encrypt_backup(backups.export_payload(keyring), passphrase=b"backup pass")
    assert backups.decrypt_backup(data, passphrase=b"backup pass").keys == keyring.keys
    with pytest.raises(BackupError, match="wrong identity or passphrase"):
        backups.decrypt_backup(data, passphrase=b"backup pasS")


def test_recipients_and_passphrase_are_exclusive(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", passphrase=None)
    payload = backups.export_payload(keyring)
    with pytest.raises(ConfigError, match="exactly one"):
        backups.encrypt_backup(payload)
    with pytest.raises(ConfigError, match="exactly one"):
        backups.encrypt_backup(payload, recipients=[_identity()[1]], passphrase=b"x")
    with pytest.raises(ConfigError, match="recipient #2 is not an age X25519 recipient"):
        backups.encrypt_backup(payload, recipients=[_identity()[1], "age1notreally"])
    with pytest.raises(ConfigError, match="identity #1 is not an age X25519 identity"):
        backups.decrypt_backup(b"age-encryption.org/v1\n", identities=["AGE-SECRET-KEY-" + "1NOPE"])


def test_restore_refuses_an_existing_keyring_unless_force(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    contents = backups.parse_payload(backups.export_payload(KeyringFile(tmp_path / "kr").load(None)))
    existing = make_keyring(tmp_path / "existing", passphrase=None)
    before = (tmp_path / "existing").read_bytes()
    with pytest.raises(BackupError, match="already exists; refusing to overwrite"):
        backups.restore_backup(contents, keyring=tmp_path / "existing")
    assert (tmp_path / "existing").read_bytes() == before
    # another keyring: --force alone would drop its only version, so that must be named explicitly
    with pytest.raises(BackupError, match=r"would drop version\(s\) 1 \(local:v1:.*another keyring"):
        backups.restore_backup(contents, keyring=tmp_path / "existing", force=True)
    assert (tmp_path / "existing").read_bytes() == before
    info = backups.restore_backup(contents, keyring=tmp_path / "existing", force=True, allow_drop=[1])
    assert info.keyring_id == contents.keyring_id != existing.info.keyring_id


def test_a_failing_write_leaves_nothing_behind(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    contents = backups.parse_payload(backups.export_payload(KeyringFile(tmp_path / "kr").load(None)))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    (tmp_path / "t").mkdir()
    with pytest.raises(BackupError, match="cannot write the restored keyring"):
        backups.restore_backup(contents, keyring=tmp_path / "t" / "kr", fsync=broken_fsync)
    assert _nothing_at(tmp_path / "t" / "kr")


def test_restore_onto_a_fresh_node_creates_a_private_directory(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    contents = backups.parse_payload(backups.export_payload(KeyringFile(tmp_path / "kr").load(None)))
    backups.restore_backup(contents, keyring=tmp_path / "new" / "dir" / "kr")
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "dir").st_mode) == 0o700
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(BackupError, match="cannot create the keyring's directory"):
        backups.restore_backup(contents, keyring=tmp_path / "file" / "kr")


# -- the payload: strict parsing, fingerprints ----------------------------------------------------------


def _doc(tmp_path: Path, rotations: int = 1) -> dict:
    keyring = make_keyring(tmp_path / "kr", passphrase=None, rotations=rotations)
    return json.loads(backups.export_payload(keyring))


def test_payload_round_trip(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", passphrase=None, rotations=2)
    contents = backups.parse_payload(backups.export_payload(keyring))
    assert contents.keys == keyring.keys
    assert contents.versions == keyring.info.versions
    assert "keys=<hidden>" in repr(contents)
    assert base64.b64encode(keyring.keys[1]).decode() not in repr(contents)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(kind="KubeshieldKeyring"), "not a kubeshield key backup"),
        (lambda d: d.update(formatVersion=2), "unsupported backup formatVersion 2"),
        (lambda d: d.update(extra=1), "unknown backup field 'extra'"),
        (lambda d: d.pop("created"), "backup field 'created' is missing"),
        (lambda d: d.update(keyringId="x"), "keyringId is not a UUID"),
        (lambda d: d.update(versions=[]), "non-empty list"),
        (lambda d: d["versions"][0].update(state="retired"), r"versions\[0\]\.state"),
        (lambda d: d["versions"][0].update(key="!!"), r"versions\[0\]\.key is not base64"),
        (lambda d: d["versions"][0].update(key=base64.b64encode(b"k" * 16).decode()), "32-byte key"),
        (lambda d: d["versions"][1].update(key=d["versions"][0]["key"]), r"versions\[1\]\.keyId does not"),
        (lambda d: d["versions"][0].update(version=2), r"versions\[0\]\.keyId does not match"),
        (lambda d: d["versions"][0].update(state="primary"), "exactly one primary"),
        (lambda d: d["versions"].reverse(), "ascending"),
        (lambda d: d["versions"][0].pop("created"), "exactly the fields"),
    ],
)
def test_payload_problems_are_named(tmp_path: Path, edit, message: str) -> None:
    doc = _doc(tmp_path)
    edit(doc)
    with pytest.raises(BackupError, match=message):
        backups.parse_payload(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_backup_error_only(raw: bytes) -> None:
    with pytest.raises(BackupError):
        backups.parse_payload(raw)


_KEYRING_DOC: dict = {}


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=1), st.integers(min_value=0, max_value=31), st.integers(1, 255))
def test_any_change_to_a_key_is_caught_by_its_fingerprint(version: int, offset: int, mask: int) -> None:
    if not _KEYRING_DOC:
        keys = [os.urandom(32) for _ in range(2)]
        from kubeshield.keys.keyring import key_id_for

        _KEYRING_DOC.update(
            kind="KubeshieldKeyBackup",
            formatVersion=1,
            created="2026-01-01T00:00:00Z",
            keyringId="12345678-1234-4234-8234-123456789abc",
            versions=[
                {
                    "version": n,
                    "keyId": key_id_for(n, k),
                    "created": "2026-01-01T00:00:00Z",
                    "state": "primary" if n == 2 else "decrypt-only",
                    "key": base64.b64encode(k).decode(),
                }
                for n, k in enumerate(keys, start=1)
            ],
        )
    doc = json.loads(json.dumps(_KEYRING_DOC))
    key = bytearray(base64.b64decode(doc["versions"][version]["key"]))
    key[offset] ^= mask
    doc["versions"][version]["key"] = base64.b64encode(bytes(key)).decode()
    with pytest.raises(BackupError, match="does not match the fingerprint"):
        backups.parse_payload(json.dumps(doc).encode())


def test_backup_error_is_a_keyring_error() -> None:
    assert issubclass(BackupError, KeyringError)


# -- files ----------------------------------------------------------------------------------------------


def test_write_backup_is_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "b.age"
    backups.write_backup(out, b"age-encryption.org/v1\nx")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with pytest.raises(BackupError, match="refusing to overwrite"):
        backups.write_backup(out, b"other")
    assert out.read_bytes() == b"age-encryption.org/v1\nx"
    backups.write_backup(out, b"other", force=True)
    assert out.read_bytes() == b"other"


def test_recipient_and_identity_files_skip_comments(tmp_path: Path) -> None:
    secret, public = _identity()
    (tmp_path / "r").write_text(f"# ops team\n\n{public}\n")
    (tmp_path / "i").write_text(f"# created: today\n# public key: {public}\n{secret}\n")
    assert backups.read_recipients(tmp_path / "r") == [public]
    assert backups.read_identities(tmp_path / "i") == [secret]
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no recipient"):
        backups.read_recipients(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read identity file"):
        backups.read_identities(tmp_path / "missing")


@pytest.mark.parametrize("backend", ["pkcs11", "transit", "awskms", "custody", "thirdparty"])
def test_non_exportable_backends_name_a_procedure(backend: str) -> None:
    reason = backups.non_exportable_reason(backend)
    assert reason is not None and len(reason) > 30
    # keyring files are exportable: local, and tpm (opened with its TPM, so rotations can be backed up)
    assert backups.non_exportable_reason("local") is None
    assert backups.non_exportable_reason("tpm") is None
