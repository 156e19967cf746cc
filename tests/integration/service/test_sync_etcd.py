"""Key-version sync of local keyrings through a real etcd (Range polling + Txn compare-and-swap)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubeshield.errors import ConfigError, EtcdError, KeyringError
from kubeshield.etcd.client import EtcdClient
from kubeshield.keys.keyring import Argon2Params, KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.service import KMSService
from kubeshield.kms.sync import KeyringSync, SyncedBackend, SyncOutcome

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


def test_partitioned_replica_turns_unhealthy(tmp_path: Path, store: EtcdClient) -> None:
    (a,) = _replicas(tmp_path, 1)
    clock = [0.0]
    sync = KeyringSync(store=store, keyring=a, passphrase=PASS, prefix=f"/t/{tmp_path.name}/",
                       interval=1.0, stale_after=5.0, clock=lambda: clock[0])  # fmt: skip
    sync.sync_once()
    assert sync.healthy() == (True, "ok")
    clock[0] = 6.0  # no successful round for longer than stale_after
    ok, detail = sync.healthy()
    assert not ok and "no successful sync" in detail

    class Partitioned:
        def get(self, key: bytes) -> None:
            raise EtcdError("etcd range at http://10.0.0.1:2379 failed: UNAVAILABLE")

        def compare_and_put(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, object]:
            raise AssertionError("never reached")

    cut = KeyringSync(store=Partitioned(), keyring=a, passphrase=PASS)
    with pytest.raises(EtcdError):
        cut.sync_once()
    assert not cut.healthy()[0]
