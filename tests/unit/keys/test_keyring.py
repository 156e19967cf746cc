"""The keyring file: layout, protection, atomic locked writes, and refusal of every bad file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import KeyringError, WrongPassphrase
from kubeshield.keys.keyring import Argon2Params, KeyringFile, fingerprint, key_id_for
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring

REPO = Path(__file__).resolve().parents[3]


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _write_doc(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))


# --- layout -------------------------------------------------------------------------------------------


def test_key_id_is_the_documented_fingerprint() -> None:
    key = bytes(range(32))
    digest = hashlib.sha256(b"kubeshield-kek-fingerprint\x00" + key).hexdigest()
    assert fingerprint(key) == bytes.fromhex(digest[:16])
    assert key_id_for(7, key) == f"local:v7:{digest[:16]}"


def test_unprotected_layout(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", passphrase=None)
    doc = _doc(tmp_path / "kr")
    assert set(doc) == {"kind", "formatVersion", "keyringId", "versions", "protection", "material"}
    assert (doc["kind"], doc["formatVersion"], doc["protection"]) == ("KubeshieldKeyring", 1, {"kdf": "none"})
    (version,) = doc["versions"]
    key = keyring.keys[1]
    assert version["version"] == 1 and version["state"] == "primary"
    assert version["keyId"] == key_id_for(1, key)
    assert version["created"].endswith("Z")
    table = json.loads(base64.b64decode(doc["material"]))
    assert table == {"1": base64.b64encode(key).decode()}


def test_protected_material_is_sealed_as_documented(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", rotations=1)
    doc = _doc(tmp_path / "kr")
    prot = doc["protection"]
    assert prot["kdf"] == "argon2id"
    assert (prot["iterations"], prot["lanes"], prot["memoryCost"]) == (1, 1, 8)
    salt = base64.b64decode(prot["salt"])
    kek = Argon2id(salt=salt, length=32, iterations=1, lanes=1, memory_cost=8).derive(PASSPHRASE)
    public = {k: v for k, v in doc.items() if k != "material"}
    aad = json.dumps(public, sort_keys=True, separators=(",", ":")).encode()
    blob = base64.b64decode(doc["material"])
    table = json.loads(AESGCM(kek).decrypt(blob[:12], blob[12:], aad))
    assert {int(v): base64.b64decode(k) for v, k in table.items()} == dict(keyring.keys)
    for key in keyring.keys.values():
        assert base64.b64encode(key).decode() not in (tmp_path / "kr").read_text()


def test_file_mode_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        make_keyring(tmp_path / "kr", rotations=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "kr").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "kr.lock").st_mode) == 0o600


def test_public_part_readable_without_passphrase(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", rotations=2)
    info = KeyringFile(tmp_path / "kr").read_info()
    assert info.protected and info.kdf == "argon2id"
    assert [v.state for v in info.versions] == ["decrypt-only", "decrypt-only", "primary"]
    assert info.primary.key_id == keyring.info.primary.key_id
    assert info.keyring_id == keyring.info.keyring_id


def test_rotation_keeps_every_version_and_moves_primary(tmp_path: Path) -> None:
    first = make_keyring(tmp_path / "kr")
    rotated = KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE)
    assert [v.version for v in rotated.info.versions] == [1, 2]
    assert rotated.keys[1] == first.keys[1] and rotated.keys[2] != first.keys[1]
    assert rotated.info.keyring_id == first.info.keyring_id
    reloaded = KeyringFile(tmp_path / "kr").load(PASSPHRASE)
    assert dict(reloaded.keys) == dict(rotated.keys)
    assert reloaded.info.argon2 == CHEAP_ARGON2  # the file's parameters are kept on rotation


def test_restored_backup_rotated_again_gets_a_different_key_id(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    shutil.copy(tmp_path / "kr", tmp_path / "backup")
    first = KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE).info.primary
    shutil.copy(tmp_path / "backup", tmp_path / "kr")
    second = KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE).info.primary
    assert first.version == second.version == 2
    assert first.key_id != second.key_id


def test_create_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = make_keyring(tmp_path / "kr")
    before = (tmp_path / "kr").read_bytes()
    with pytest.raises(KeyringError, match="already exists"):
        KeyringFile(tmp_path / "kr", argon2=CHEAP_ARGON2).create(passphrase=PASSPHRASE)
    assert (tmp_path / "kr").read_bytes() == before
    forced = KeyringFile(tmp_path / "kr", argon2=CHEAP_ARGON2).create(passphrase=None, force=True)
    assert forced.info.keyring_id != first.info.keyring_id


def test_create_makes_the_parent_directory_private(tmp_path: Path) -> None:
    make_keyring(tmp_path / "new" / "kr")
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) & 0o077 == 0


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        KeyringFile(tmp_path / "kr").create(passphrase=b"")
    assert not (tmp_path / "kr").exists()


def test_injected_rng_and_clock_are_used(tmp_path: Path) -> None:
    stream = iter([bytes([i]) * n for i, n in enumerate([32, 16], start=1)])
    kf = KeyringFile(tmp_path / "kr", clock=lambda: 0.0, rng=lambda n: next(stream))
    keyring = kf.create(passphrase=None)
    assert keyring.keys[1] == b"\x01" * 32
    assert keyring.info.versions[0].created == "1970-01-01T00:00:00Z"


def test_argon2_params_validate() -> None:
    with pytest.raises(ValueError, match="memoryCost"):
        Argon2Params(iterations=1, lanes=2, memory_cost=8)
    with pytest.raises(ValueError, match="iterations"):
        Argon2Params(iterations=0)


# --- passphrase ---------------------------------------------------------------------------------------


def test_wrong_passphrase(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    with pytest.raises(WrongPassphrase):
        KeyringFile(tmp_path / "kr").load(b"wrong")
    with pytest.raises(WrongPassphrase):
        KeyringFile(tmp_path / "kr").rotate(passphrase=b"wrong")
    assert len(KeyringFile(tmp_path / "kr").read_info().versions) == 1


def test_missing_passphrase_is_a_clear_error_not_wrong_passphrase(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    with pytest.raises(KeyringError, match="passphrase-protected") as info:
        KeyringFile(tmp_path / "kr").load(None)
    assert not isinstance(info.value, WrongPassphrase)


def test_editing_the_public_part_of_a_protected_keyring_is_detected(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", rotations=1)
    doc = _doc(tmp_path / "kr")
    doc["versions"][0]["state"], doc["versions"][1]["state"] = "primary", "decrypt-only"
    _write_doc(tmp_path / "kr", doc)
    with pytest.raises(WrongPassphrase):
        KeyringFile(tmp_path / "kr").load(PASSPHRASE)


def test_dropping_a_version_from_a_protected_keyring_is_detected(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", rotations=1)
    doc = _doc(tmp_path / "kr")
    doc["versions"] = doc["versions"][1:]
    _write_doc(tmp_path / "kr", doc)
    with pytest.raises(WrongPassphrase):
        KeyringFile(tmp_path / "kr").load(PASSPHRASE)


def test_unprotected_key_id_must_match_material(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    doc = _doc(tmp_path / "kr")
    doc["material"] = base64.b64encode(
        json.dumps({"1": base64.b64encode(os.urandom(32)).decode()}).encode()
    ).decode()
    _write_doc(tmp_path / "kr", doc)
    with pytest.raises(KeyringError, match="does not match its key material"):
        KeyringFile(tmp_path / "kr").load(None)


# --- bad files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "not a kubeshield keyring"),
        (b'{"kind": "Secret"}', "not a kubeshield keyring"),
        (b'{"kind": "KubeshieldKeyring", "formatVersion": 2}', "unsupported keyring formatVersion 2"),
        (b'{"kind": "KubeshieldKeyring", "formatVersion": "1"}', "formatVersion"),
        (b'{"kind": "KubeshieldKeyring", "formatVersion": 1}', "missing"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_foreign_or_corrupt_files(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "kr").write_bytes(content)
    with pytest.raises(KeyringError, match=problem) as info:
        KeyringFile(tmp_path / "kr").read_info()
    assert str(tmp_path / "kr") in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("keyringId", "nope", "keyringId"),
        ("versions", [], "non-empty"),
        ("protection", {"kdf": "scrypt"}, "kdf"),
        ("material", "***", "base64"),
        ("extra", 1, "unknown keyring field"),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, field: str, value: object, problem: str) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    doc = _doc(tmp_path / "kr")
    doc[field] = value
    _write_doc(tmp_path / "kr", doc)
    with pytest.raises(KeyringError, match=problem):
        KeyringFile(tmp_path / "kr").load(None)


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", rotations=1)
    good = (tmp_path / "kr").read_bytes()
    for n in range(0, len(good) - 2):  # the last bytes are the closing "}\n"
        (tmp_path / "kr").write_bytes(good[:n])
        with pytest.raises(KeyringError):
            KeyringFile(tmp_path / "kr").load(PASSPHRASE)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="not found"):
        KeyringFile(tmp_path / "absent").read_info()
    with pytest.raises(KeyringError, match="not a regular file"):
        KeyringFile(tmp_path).read_info()


def test_errors_never_contain_key_material(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path / "kr", passphrase=None)
    doc = _doc(tmp_path / "kr")
    doc["versions"][0]["keyId"] = "local:v1:0000000000000000"
    _write_doc(tmp_path / "kr", doc)
    with pytest.raises(KeyringError) as info:
        KeyringFile(tmp_path / "kr").load(None)
    key = keyring.keys[1]
    for secret in (key.hex(), base64.b64encode(key).decode(), doc["material"]):
        assert secret not in str(info.value)
    assert "keyring" in repr(keyring).lower() and key.hex() not in repr(keyring)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), protected=st.booleans())
def test_random_corruption_is_refused_or_harmless(
    tmp_path: Path, data: st.DataObject, protected: bool
) -> None:
    path = tmp_path / ("p" if protected else "u")
    passphrase = PASSPHRASE if protected else None
    if not path.exists():
        make_keyring(path, passphrase=passphrase, rotations=1)
        shutil.copy(path, path.with_suffix(".good"))
    good = path.with_suffix(".good").read_bytes()
    original = KeyringFile(path.with_suffix(".good")).load(passphrase)
    edits = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, len(good) - 1),
                st.sampled_from(["flip", "delete", "insert"]),
                st.binary(min_size=1, max_size=1),
            ),
            min_size=1,
            max_size=4,
        )
    )
    blob = bytearray(good)
    for pos, kind, byte in edits:
        pos %= max(len(blob), 1)
        if kind == "flip" and blob:
            blob[pos] ^= byte[0] or 1
        elif kind == "delete" and blob:
            del blob[pos]
        else:
            blob[pos:pos] = byte
    path.write_bytes(bytes(blob))
    try:
        loaded = KeyringFile(path).load(passphrase)
    except KeyringError:  # WrongPassphrase is a KeyringError
        return
    # the few edits JSON does not notice (whitespace, an equivalent escape) must not change any key
    assert dict(loaded.keys) == dict(original.keys)
    assert [v.key_id for v in loaded.info.versions] == [v.key_id for v in original.info.versions]


# --- atomic, locked writes ----------------------------------------------------------------------------


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    before = (tmp_path / "kr").read_bytes()
    entries = sorted(os.listdir(tmp_path))

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(KeyringError, match="cannot write keyring: Input/output error"):
        KeyringFile(tmp_path / "kr", fsync=failing_fsync).rotate(passphrase=PASSPHRASE)
    assert (tmp_path / "kr").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == entries


def test_successful_write_fsyncs_file_and_directory(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    synced: list[bool] = []

    def recording_fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        os.fsync(fd)

    KeyringFile(tmp_path / "kr", fsync=recording_fsync).rotate(passphrase=PASSPHRASE)
    assert synced == [False, True]


def _assert_consecutive_distinct(path: Path, passphrase: bytes | None, expected: int) -> None:
    keyring = KeyringFile(path).load(passphrase)
    versions = keyring.info.versions
    assert [v.version for v in versions] == list(range(1, expected + 1))
    assert len({v.key_id for v in versions}) == expected
    assert [v.state for v in versions].count("primary") == 1 and versions[-1].state == "primary"


def test_concurrent_rotations_from_threads_keep_every_version(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_consecutive_distinct(tmp_path / "kr", PASSPHRASE, 1 + 8 * 3)


def test_concurrent_rotations_from_processes_keep_every_version(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    script = (
        "import sys\n"
        "from kubeshield.keys.keyring import KeyringFile\n"
        "for _ in range(5):\n"
        "    KeyringFile(sys.argv[1]).rotate(passphrase=None)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "kr")], env=env, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    _assert_consecutive_distinct(tmp_path / "kr", None, 1 + 4 * 5)
