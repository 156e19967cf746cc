"""Key-version sync of local keyrings through a real etcd (Range polling + Txn compare-and-swap)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubeshield.errors import BackendUnavailable, ConfigError, EtcdError, KeyringError, WrongPassphrase
from kubeshield.etcd.client import EtcdClient
from kubeshield.keys.keyring import Argon2Params, KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.service import KMSService
from kubeshield.kms.sync import KeyringSync, SyncedBackend, SyncOutcome
from kubeshield.kms.sync_ops import adopt_keyring, resolve, rotate_in_etcd

PASS = b"correct horse battery staple"
CHEAP = Argon2Params(iterations=1, lanes=1, memory_cost=8)


@pytest.fixture
def store(etcd: EtcdClient) -> EtcdClient:
    """The session's etcd (tests/integration/conftest.py), as the KVStore sync writes to."""
    return etcd


def _replicas(tmp_path: Path, n: int) -> list[Path]:
    first = tmp_path / "r0" / "keyring"
    first.parent.mkdir()
    LocalKeyBackend.create(path=first, passphrase=PASS, argon2=CHEAP).close()
    paths = [first]
    for i in range(1, n):
        path = tmp_path / f"r{i}" / "keyring"
        path.parent.mkdir()
        shutil.copy(first, path)
        paths.append(path)
    return paths


def _sync(store: EtcdClient, path: Path, prefix: str) -> KeyringSync:
    return KeyringSync(store=store, keyring=path, passphrase=PASS, prefix=prefix)


def test_rotation_on_one_replica_reaches_the_others(tmp_path: Path, store: EtcdClient) -> None:
    prefix = f"/t/{tmp_path.name}/"
    a, b, c = _replicas(tmp_path, 3)
    syncs = [_sync(store, p, prefix) for p in (a, b, c)]
    assert syncs[0].sync_once() is SyncOutcome.CREATED
    assert syncs[1].sync_once() is SyncOutcome.IN_SYNC
    new_key = LocalKeyBackend(path=b, passphrase=PASS).rotate()
    assert syncs[1].sync_once() is SyncOutcome.PUBLISHED
    service = KMSService(LocalKeyBackend(path=c, passphrase=PASS))
    syncs[2].set_on_change(service.refresh_now)
    assert syncs[2].sync_once() is SyncOutcome.ADOPTED
    assert service.status().key_id == new_key  # reloaded at once through on_change
    assert syncs[0].sync_once() is SyncOutcome.ADOPTED
    for path in (a, b, c):
        assert KeyringFile(path).read_info().primary.key_id == new_key
        assert path.stat().st_mode & 0o777 == 0o600
    assert all(s.healthy()[0] for s in syncs)
    # a seed wrapped on one replica opens on every other
    wrapped = LocalKeyBackend(path=a, passphrase=PASS).wrap(b"seed" * 8, aad=b"x")
    assert LocalKeyBackend(path=c, passphrase=PASS).unwrap(wrapped, aad=b"x") == b"seed" * 8


def test_concurrent_rotations_diverge_and_neither_side_is_overwritten(
    tmp_path: Path, store: EtcdClient
) -> None:
    prefix = f"/t/{tmp_path.name}/"
    a, b = _replicas(tmp_path, 2)
    sa, sb = _sync(store, a, prefix), _sync(store, b, prefix)
    sa.sync_once()
    LocalKeyBackend(path=a, passphrase=PASS).rotate()
    LocalKeyBackend(path=b, passphrase=PASS).rotate()
    assert sa.sync_once() is SyncOutcome.PUBLISHED
    before = b.read_bytes()
    with pytest.raises(KeyringError, match="diverged"):
        sb.sync_once()
    assert b.read_bytes() == before
    ok, detail = sb.healthy()
    assert not ok and "diverged" in detail
    backend = SyncedBackend(LocalKeyBackend(path=b, passphrase=PASS), sb)
    assert not backend.check_health().ok


def test_a_foreign_keyring_in_etcd_is_refused(tmp_path: Path, store: EtcdClient) -> None:
    prefix = f"/t/{tmp_path.name}/"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (a,) = _replicas(tmp_path / "one", 1)
    (b,) = _replicas(tmp_path / "two", 1)  # a keyring of its own: another keyringId
    _sync(store, a, prefix).sync_once()
    with pytest.raises(KeyringError, match="different keyring"):
        _sync(store, b, prefix).sync_once()


def test_an_unprotected_keyring_is_never_synchronised(tmp_path: Path, store: EtcdClient) -> None:
    path = tmp_path / "plain"
    LocalKeyBackend.create(path=path).close()
    with pytest.raises(ConfigError, match="passphrase-protected"):
        _sync(store, path, "/t/plain/")


class Partitioned:
    """A KVStore whose etcd is unreachable (what EtcdClient raises when the server is gone)."""

    def get(self, key: bytes) -> None:
        raise EtcdError("etcd range at http://10.0.0.1:2379 failed: UNAVAILABLE")

    def compare_and_put(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, object]:
        raise EtcdError("etcd txn at http://10.0.0.1:2379 failed: UNAVAILABLE")


def test_an_etcd_outage_alone_leaves_the_replica_healthy(tmp_path: Path, store: EtcdClient) -> None:
    """Regression (issue 16 item 7): a replica cut off from etcd used to fail Status after ~3 s."""
    (a,) = _replicas(tmp_path, 1)
    clock = [0.0]
    sync = KeyringSync(store=store, keyring=a, passphrase=PASS, prefix=f"/t/{tmp_path.name}/",
                       interval=1.0, stale_after=5.0, clock=lambda: clock[0])  # fmt: skip
    sync.sync_once()
    assert sync.healthy() == (True, "ok") and sync.stale() is None
    clock[0] = 60.0  # a minute without a successful round
    assert sync.healthy() == (True, "ok")

    cut = KeyringSync(store=Partitioned(), keyring=a, passphrase=PASS, stale_after=5.0,
                      clock=lambda: clock[0])  # fmt: skip
    for _ in range(3):
        with pytest.raises(EtcdError):
            cut.sync_once()
    clock[0] = 70.0
    assert cut.healthy() == (True, "ok")
    assert cut.stale() == pytest.approx(10.0)  # visible, but not a reason to stop serving
    service = KMSService(SyncedBackend(LocalKeyBackend(path=a, passphrase=PASS), cut))
    assert service.check_health_now().ok
    assert service.status().key_id == KeyringFile(a).read_info().primary.key_id
    assert service.encrypt(b"s" * 32, uid="u").key_id


def test_a_diverged_replica_is_unhealthy_at_once_and_keys_sync_from_etcd_resolves_it(
    tmp_path: Path, store: EtcdClient
) -> None:
    """Regression: /readyz stayed ok for up to one health interval (10 s) after sync found divergence."""
    prefix = f"/t/{tmp_path.name}/"
    a, b = _replicas(tmp_path, 2)
    sa, sb = _sync(store, a, prefix), _sync(store, b, prefix)
    sa.sync_once()
    sb.sync_once()
    service = KMSService(SyncedBackend(LocalKeyBackend(path=b, passphrase=PASS), sb), health_interval=3600)
    sb.set_on_health_change(service.check_health_now)
    service.start()
    try:
        assert service.is_healthy()
        LocalKeyBackend(path=a, passphrase=PASS).rotate()
        lost = LocalKeyBackend(path=b, passphrase=PASS).rotate()  # a second rotation, racing
        assert sa.sync_once() is SyncOutcome.PUBLISHED
        with pytest.raises(KeyringError, match="diverged"):
            sb.sync_once()
        assert not service.is_healthy()  # at once: no waiting for the next health round
        with pytest.raises(BackendUnavailable, match="diverged"):
            service.status()

        with pytest.raises(KeyringError, match=f"would drop 1 version.*{lost}"):
            resolve(store=store, keyring=b, passphrase=PASS, source="etcd", prefix=prefix)
        dry = resolve(store=store, keyring=b, passphrase=PASS, source="etcd", prefix=prefix,
                      allow_drop=True, dry_run=True)  # fmt: skip
        assert dry.dropped == (lost,) and lost in [v.key_id for v in KeyringFile(b).read_info().versions]
        done = resolve(store=store, keyring=b, passphrase=PASS, source="etcd", prefix=prefix, allow_drop=True)
        assert done.action == "installed" and done.dropped == (lost,)
        assert b.read_bytes() == store.get(sb.key).value  # type: ignore[union-attr]
        assert sb.sync_once() is SyncOutcome.IN_SYNC
        assert service.is_healthy()  # at once again
        service.refresh_now()
        assert service.status().key_id == KeyringFile(a).read_info().primary.key_id
    finally:
        service.close()


def test_keys_sync_from_local_publishes_once_and_never_drops_silently(
    tmp_path: Path, store: EtcdClient
) -> None:
    prefix = f"/t/{tmp_path.name}/"
    (a,) = _replicas(tmp_path, 1)
    first = resolve(store=store, keyring=a, passphrase=PASS, source="local", prefix=prefix)
    assert first.action == "published" and first.dropped == ()
    assert resolve(store=store, keyring=a, passphrase=PASS, source="local", prefix=prefix).action == "in-sync"
    rotated = rotate_in_etcd(store=store, passphrase=PASS, prefix=prefix)
    with pytest.raises(KeyringError, match=f"would drop 1 version.*etcd holds.*{rotated.key_id}"):
        resolve(store=store, keyring=a, passphrase=PASS, source="local", prefix=prefix)
    installed = resolve(store=store, keyring=a, passphrase=PASS, source="etcd", prefix=prefix)
    assert installed.action == "installed" and installed.dropped == ()  # a superset: nothing dropped
    assert KeyringFile(a).read_info().primary.key_id == rotated.key_id
    (tmp_path / "other").mkdir()
    (other,) = _replicas(tmp_path / "other", 1)  # a keyring of its own
    with pytest.raises(KeyringError, match="would drop 2 version"):  # another keyring: all of etcd's go
        resolve(store=store, keyring=other, passphrase=PASS, source="local", prefix=prefix)
    plain = tmp_path / "plain"
    LocalKeyBackend.create(path=plain).close()
    with pytest.raises(KeyringError, match="unprotected keyring is never published"):
        resolve(store=store, keyring=plain, passphrase=None, source="local", prefix=f"/t/{tmp_path.name}-p/")


def test_rotation_through_etcd_survives_a_concurrent_writer(tmp_path: Path, store: EtcdClient) -> None:
    prefix = f"/t/{tmp_path.name}/"
    a, b = _replicas(tmp_path, 2)
    sa, sb = _sync(store, a, prefix), _sync(store, b, prefix)
    sa.sync_once()

    class Racing:
        """The first swap loses: another rotation lands in etcd between our read and our write."""

        def __init__(self) -> None:
            self.raced = False

        def get(self, key: bytes) -> object:
            return store.get(key)

        def compare_and_put(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, object]:
            if not self.raced:
                self.raced = True
                rotate_in_etcd(store=store, passphrase=PASS, prefix=prefix)
            return store.compare_and_put(key, value, mod_revision=mod_revision)

    rotation = rotate_in_etcd(store=Racing(), passphrase=PASS, prefix=prefix)  # type: ignore[arg-type]
    assert rotation.attempts == 2 and rotation.versions == 3  # redone on the new copy: nothing lost
    assert sa.sync_once() is SyncOutcome.ADOPTED and sb.sync_once() is SyncOutcome.ADOPTED
    for path in (a, b):
        info = KeyringFile(path).read_info()
        assert [v.version for v in info.versions] == [1, 2, 3] and info.primary.key_id == rotation.key_id
    with pytest.raises(ConfigError, match="holds no keyring"):
        rotate_in_etcd(store=store, passphrase=PASS, prefix=f"/t/{tmp_path.name}-empty/")
    with pytest.raises(WrongPassphrase):  # the etcd copy must open
        rotate_in_etcd(store=store, passphrase=b"not the passphrase", prefix=prefix)


def test_a_replica_with_an_empty_keyring_path_adopts_the_cluster_keyring(
    tmp_path: Path, store: EtcdClient
) -> None:
    prefix = f"/t/{tmp_path.name}/"
    (a,) = _replicas(tmp_path, 1)
    empty = tmp_path / "fresh" / "sync" / "keyring"  # not even the directory exists (an emptyDir)
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    with pytest.raises(ConfigError, match=r"etcd holds no keyring.*keys sync --from local"):
        adopt_keyring(store=store, keyring=empty, passphrase=PASS, prefix=prefix, timeout=5.0,
                      clock=lambda: clock[0], sleep=sleep)  # fmt: skip
    assert clock[0] >= 4.0 and not empty.exists()  # it waited (without a real sleep), then gave up
    resolve(store=store, keyring=a, passphrase=PASS, source="local", prefix=prefix)
    with pytest.raises(WrongPassphrase):  # never installed
        adopt_keyring(store=store, keyring=empty, passphrase=b"wrong passphrase", prefix=prefix)
    assert not empty.exists()
    info = adopt_keyring(store=store, keyring=empty, passphrase=PASS, prefix=prefix)
    assert info.keyring_id == KeyringFile(a).read_info().keyring_id
    assert empty.read_bytes() == a.read_bytes()
    assert empty.stat().st_mode & 0o777 == 0o600 and empty.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(ConfigError, match="already there"):
        adopt_keyring(store=store, keyring=empty, passphrase=PASS, prefix=prefix)
    cut = tmp_path / "cut" / "keyring"
    with pytest.raises(ConfigError, match="etcd is not reachable"):
        adopt_keyring(store=Partitioned(), keyring=cut, passphrase=PASS, timeout=1.0,  # type: ignore[arg-type]
                      clock=lambda: clock[0], sleep=sleep)  # fmt: skip


def test_adopting_a_newer_keyring_from_etcd_keeps_the_files_owner_group_and_mode(
    tmp_path: Path, store: EtcdClient
) -> None:
    """The backup CronJob reads the keyring as uid 65532: an adoption by sync must not reset it to
    root:root (keys.files.replace_private, as every other keyring rewrite does)."""
    import os

    prefix = f"/t/{tmp_path.name}/"
    a, b = _replicas(tmp_path, 2)
    os.chown(b, 65532, 65532)
    os.chmod(b, 0o640)
    syncs = [_sync(store, p, prefix) for p in (a, b)]
    assert syncs[0].sync_once() is SyncOutcome.CREATED
    assert syncs[1].sync_once() is SyncOutcome.IN_SYNC
    new_key = LocalKeyBackend(path=a, passphrase=PASS).rotate()
    assert syncs[0].sync_once() is SyncOutcome.PUBLISHED
    assert syncs[1].sync_once() is SyncOutcome.ADOPTED
    assert KeyringFile(b).read_info().primary.key_id == new_key
    st = b.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65532, 65532, 0o640)
