"""Keyring lifecycle: the versions digest, retire, ownership kept on every rewrite, the lock file and
the directory checks (issue 15 item 9, issue 16 items 2 and 6)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.errors import KeyNotFound, KeyringError
from kubeshield.keys import backup as backups
from kubeshield.keys.base import Wrapped
from kubeshield.keys.files import directory_problem, file_exposure, write_private_atomic
from kubeshield.keys.keyring import KeyringFile, versions_digest
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring

REPO = Path(__file__).resolve().parents[3]
BACKUP_UID = 65532  # the backup CronJob's uid (deploy/backup-cronjob.yaml)


def _owner(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# --- versions digest -------------------------------------------------------------------------------------


def test_versions_digest_is_the_documented_hash(tmp_path: Path) -> None:
    info = make_keyring(tmp_path / "kr", rotations=1).info
    text = "\n".join(f"{v.key_id} {v.state}" for v in info.versions).encode()
    expected = hashlib.sha256(b"kubeshield-keyring-versions\x00" + text).hexdigest()[:16]
    assert info.versions_digest == expected == versions_digest(info.versions)
    assert KeyringFile(tmp_path / "kr").read_info().versions_digest == expected


def test_versions_digest_follows_rotate_and_retire_but_not_the_passphrase(tmp_path: Path) -> None:
    kr = KeyringFile(tmp_path / "kr", argon2=CHEAP_ARGON2)
    first = kr.create(passphrase=PASSPHRASE).info
    rotated = kr.rotate(passphrase=PASSPHRASE).info
    retired = kr.retire(1, passphrase=PASSPHRASE).info
    digests = {first.versions_digest, rotated.versions_digest, retired.versions_digest}
    assert len(digests) == 3
    assert first.keyring_id == rotated.keyring_id == retired.keyring_id
    # the same versions restored under another passphrase: same id, same digest
    contents = backups.parse_payload(backups.export_payload(kr.load(PASSPHRASE)))
    restored = backups.restore_backup(
        contents, keyring=tmp_path / "copy", passphrase=b"another", argon2=CHEAP_ARGON2
    )
    assert (restored.keyring_id, restored.versions_digest) == (retired.keyring_id, retired.versions_digest)


# --- retire ----------------------------------------------------------------------------------------------


def test_retire_removes_a_decrypt_only_version_for_good(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    old = LocalKeyBackend(path=tmp_path / "kr", passphrase=PASSPHRASE)
    wrapped_v1 = old.wrap(b"s" * 32, aad=b"a")
    make_keyring_file = KeyringFile(tmp_path / "kr")
    make_keyring_file.rotate(passphrase=PASSPHRASE)
    wrapped_v2 = LocalKeyBackend(path=tmp_path / "kr", passphrase=PASSPHRASE).wrap(b"t" * 32, aad=b"a")
    retired = make_keyring_file.retire(1, passphrase=PASSPHRASE)
    assert [(v.version, v.state) for v in retired.info.versions] == [(2, "primary")]
    assert retired.info.protected and retired.info.argon2 is not None
    backend = LocalKeyBackend(path=tmp_path / "kr", passphrase=PASSPHRASE)
    assert backend.unwrap(wrapped_v2, aad=b"a") == b"t" * 32
    with pytest.raises(KeyNotFound):
        backend.unwrap(wrapped_v1, aad=b"a")
    # a running backend drops it at its next reload
    assert old.refresh() is True
    with pytest.raises(KeyNotFound):
        old.unwrap(wrapped_v1, aad=b"a")


def test_retire_refuses_the_primary_and_unknown_versions(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", rotations=1)
    before = (tmp_path / "kr").read_bytes()
    with pytest.raises(KeyringError, match="version 2 is the primary"):
        KeyringFile(tmp_path / "kr").retire(2, passphrase=PASSPHRASE)
    with pytest.raises(KeyringError, match=r"version 7 is not in this keyring \(its versions: 1, 2\)"):
        KeyringFile(tmp_path / "kr").retire(7, passphrase=PASSPHRASE)
    assert (tmp_path / "kr").read_bytes() == before


# --- ownership and mode kept on every rewrite -------------------------------------------------------------


def _chowned_keyring(path: Path, *, mode: int = 0o640) -> None:
    make_keyring(path)
    os.chown(path, BACKUP_UID, BACKUP_UID)
    os.chmod(path, mode)


@pytest.mark.parametrize("rewrite", ["rotate", "retire", "create-force", "restore-force"])
def test_every_rewrite_keeps_owner_group_and_mode(tmp_path: Path, rewrite: str) -> None:
    assert os.geteuid() == 0, "this test chowns files to another uid: run the suite as root"
    kr = tmp_path / "kr"
    _chowned_keyring(kr)
    KeyringFile(kr).rotate(passphrase=PASSPHRASE)  # a second version, so retire has one to remove
    os.chown(kr, BACKUP_UID, BACKUP_UID)
    os.chmod(kr, 0o640)
    inode = os.stat(kr).st_ino
    if rewrite == "rotate":
        KeyringFile(kr).rotate(passphrase=PASSPHRASE)
    elif rewrite == "retire":
        KeyringFile(kr).retire(1, passphrase=PASSPHRASE)
    elif rewrite == "create-force":
        KeyringFile(kr, argon2=CHEAP_ARGON2).create(passphrase=PASSPHRASE, force=True)
    else:
        contents = backups.parse_payload(backups.export_payload(KeyringFile(kr).load(PASSPHRASE)))
        backups.restore_backup(contents, keyring=kr, passphrase=PASSPHRASE, force=True, argon2=CHEAP_ARGON2)
    assert os.stat(kr).st_ino != inode  # it really was replaced ...
    assert _owner(kr) == (BACKUP_UID, BACKUP_UID, 0o640)  # ... and kept its owner, group and mode
    assert KeyringFile(kr).load(PASSPHRASE).info.versions
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".kr")]


def test_a_new_file_is_0600_and_the_writers(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        write_private_atomic(tmp_path / "new", b"x")
    finally:
        os.umask(old_umask)
    assert _owner(tmp_path / "new") == (os.geteuid(), os.getegid(), 0o600)


def _as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python ``code`` as uid/gid 65534. The interpreter lives under /root (0700), so the script
    imports what it needs first and drops to 65534 before doing anything (``DROP`` below)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


DROP = "import os\nos.setgroups([])\nos.setgid(65534)\nos.setuid(65534)\n"


@pytest.fixture
def traversable() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path is under a 0700 root directory)."""
    base = Path(tempfile.mkdtemp(prefix="kubeshield-nobody-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def test_a_writer_that_cannot_keep_the_owner_changes_nothing(traversable: Path) -> None:
    """uid 65534 owns the file but not its group (root): rewriting it would hand it to nogroup."""
    home = traversable / "home"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    kr = home / "kr"
    make_keyring(kr, passphrase=None)
    os.chown(kr, 65534, 0)
    os.chown(home / "kr.lock", 65534, 65534)
    before = kr.read_bytes()
    code = (
        "import sys\n"
        "from kubeshield.errors import KeyringError\n"
        "from kubeshield.keys.keyring import KeyringFile\n"
        f"{DROP}"
        "assert os.geteuid() == 65534\n"
        "try:\n"
        "    KeyringFile(sys.argv[1]).rotate(passphrase=None)\n"
        "except KeyringError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    result = _as_nobody(code, str(kr))
    assert result.returncode == 3, result.stderr
    assert "cannot keep its owner 65534:0" in result.stdout
    assert kr.read_bytes() == before and _owner(kr)[:2] == (65534, 0)
    assert [n for n in os.listdir(home) if n.endswith(".tmp")] == []


# --- the lock file ----------------------------------------------------------------------------------------


def test_a_symlinked_lock_file_is_refused_not_followed(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    (tmp_path / "kr.lock").unlink(missing_ok=True)
    (tmp_path / "kr.lock").symlink_to(victim)
    with pytest.raises(KeyringError, match="cannot lock keyring: the lock file is a symbolic link"):
        KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE)
    (tmp_path / "kr.lock").unlink()
    (tmp_path / "kr.lock").symlink_to(tmp_path / "nowhere")  # dangling: O_CREAT must not create it
    with pytest.raises(KeyringError, match="symbolic link"):
        KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE)
    assert victim.read_bytes() == b"do not touch" and not (tmp_path / "nowhere").exists()


def test_a_fifo_at_the_lock_path_is_refused_without_blocking(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr")
    (tmp_path / "kr.lock").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "kr.lock", 0o600)
    with pytest.raises(KeyringError, match="the lock file is not a regular file"):
        KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE)


@pytest.mark.parametrize("lock", ["new", "left by root before the chown"])
def test_a_lock_file_taken_by_root_belongs_to_the_keyrings_owner(tmp_path: Path, lock: str) -> None:
    _chowned_keyring(tmp_path / "kr", mode=0o600)
    if lock == "new":
        (tmp_path / "kr.lock").unlink()
    else:
        assert _owner(tmp_path / "kr.lock")[:2] == (0, 0)
    KeyringFile(tmp_path / "kr").rotate(passphrase=PASSPHRASE)
    assert _owner(tmp_path / "kr.lock") == (BACKUP_UID, BACKUP_UID, 0o600)


# --- directory and file checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "who"), [(0o770, "group-writable"), (0o707, "world-writable"),
                                           (0o1777, "group- and world-writable")])  # fmt: skip
def test_a_keyring_in_a_writable_directory_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    d = tmp_path / "d"
    make_keyring(d / "kr")
    d.chmod(mode)
    message = rf"directory {d} is mode {mode:04o} \({who}\)"
    with pytest.raises(KeyringError, match=message):
        KeyringFile(d / "kr").read_info()
    with pytest.raises(KeyringError, match=message):
        KeyringFile(d / "kr").rotate(passphrase=PASSPHRASE)
    with pytest.raises(KeyringError, match=message):
        KeyringFile(d / "other").create(passphrase=None)
    with pytest.raises(KeyringError, match=message):
        LocalKeyBackend(path=d / "kr", passphrase=PASSPHRASE)
    assert not (d / "other").exists()
    d.chmod(0o755)
    assert KeyringFile(d / "kr").read_info().versions


@pytest.fixture
def secret_volume(tmp_path: Path) -> Iterator[Path]:
    """A world-writable tmpfs, like kubelet's Secret volumes; remounted read-only by the test."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_keyring_on_a_read_only_mount_passes_the_directory_check(
    tmp_path: Path, secret_volume: Path
) -> None:
    make_keyring(tmp_path / "kr")
    (secret_volume / "kr").write_bytes((tmp_path / "kr").read_bytes())
    with pytest.raises(KeyringError, match="world-writable"):
        KeyringFile(secret_volume / "kr").read_info()
    subprocess.run(["mount", "-o", "remount,ro", str(secret_volume)], check=True)
    assert directory_problem(secret_volume) is None
    assert KeyringFile(secret_volume / "kr").load(PASSPHRASE).info.versions


@pytest.mark.parametrize(
    ("mode", "gid", "groups", "problem"),
    [
        (0o600, 0, {0}, None),
        (0o400, 0, {0}, None),
        (0o644, 0, {0}, "accessible by others"),
        (0o604, 0, {0}, "accessible by others"),
        (0o660, 4242, {4242}, "group 4242, which can write it"),
        (0o640, 4242, {0}, "group 4242, which this process is not a member of"),
        (0o640, 0, {0}, "accessible by group 0"),  # root's group: no fsGroup case
        (0o440, 65532, {0, 65532}, None),  # kubelet fsGroup: the pod's own non-root group
        (0o640, 65532, {0, 65532}, None),
    ],
)
def test_file_exposure(tmp_path: Path, mode: int, gid: int, groups: set[int], problem: str | None) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.chown(f, 0, gid)
    f.chmod(mode)
    found = file_exposure(f, groups=groups)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and f"mode {mode:04o}" in found and str(f) in found


def test_file_exposure_follows_symlinks_like_a_secret_volume(tmp_path: Path) -> None:
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "passphrase").write_bytes(b"x")
    (tmp_path / "passphrase").symlink_to("..data/passphrase")
    os.chmod(tmp_path / "..data" / "passphrase", 0o644)
    assert "accessible by others" in (file_exposure(tmp_path / "passphrase") or "")
    os.chmod(tmp_path / "..data" / "passphrase", 0o400)
    assert file_exposure(tmp_path / "passphrase") is None


def test_unwrapping_with_a_retired_key_id_is_key_not_found_not_a_crash(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", rotations=1)
    v1 = KeyringFile(tmp_path / "kr").read_info().versions[0]
    KeyringFile(tmp_path / "kr").retire(1, passphrase=PASSPHRASE)
    backend = LocalKeyBackend(path=tmp_path / "kr", passphrase=PASSPHRASE)
    with pytest.raises(KeyNotFound):
        backend.unwrap(Wrapped(ciphertext=b"\x01" + b"\x00" * 60, key_id=v1.key_id))
