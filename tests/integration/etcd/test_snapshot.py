"""SnapshotReader on real `etcdctl snapshot save` files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeshield.errors import SnapshotError
from kubeshield.etcd.client import EtcdClient
from kubeshield.etcd.snapshot import SnapshotReader
from tests.support.etcd import EtcdServer, save_snapshot


@pytest.fixture
def populated(etcd: EtcdClient, prefix: str) -> dict[bytes, bytes]:
    base = f"{prefix}/secrets/ns/".encode()
    etcd.put_many((base + b"k%04d" % i, bytes([i % 251]) * (i * 7 % 9000)) for i in range(600))
    for i in range(0, 600, 50):  # overwrite: the snapshot must keep the latest revision
        etcd.put(base + b"k%04d" % i, b"latest-%d" % i)
    for i in range(5, 600, 100):  # delete: tombstones must hide the key
        etcd.delete(base + b"k%04d" % i)
    etcd.put(base + b"k0005", b"recreated")
    return {kv.key: kv.value for kv in etcd.iter_prefix(base)}


def test_snapshot_holds_exactly_the_live_keys_and_values(
    etcd_server: EtcdServer, populated: dict[bytes, bytes], prefix: str, tmp_path: Path
) -> None:
    snap = save_snapshot(etcd_server.endpoint, tmp_path / "snap.db")
    with SnapshotReader(snap) as reader:
        got = {kv.key: kv.value for kv in reader.iter_prefix(f"{prefix}/secrets/ns/".encode())}
        assert got == populated
        assert reader.get(f"{prefix}/secrets/ns/k0105".encode()) is None
        recreated = reader.get(f"{prefix}/secrets/ns/k0005".encode())
        assert recreated is not None and recreated.value == b"recreated"


def test_snapshot_without_the_trailing_hash_still_reads(
    etcd_server: EtcdServer, populated: dict[bytes, bytes], prefix: str, tmp_path: Path
) -> None:
    snap = save_snapshot(etcd_server.endpoint, tmp_path / "snap.db")
    bare = tmp_path / "bare.db"
    bare.write_bytes(snap.read_bytes()[:-32])
    with SnapshotReader(bare) as reader:
        assert {kv.key: kv.value for kv in reader.iter_prefix(f"{prefix}/".encode())} == populated


def test_truncated_snapshot_is_refused(
    etcd_server: EtcdServer, populated: dict[bytes, bytes], tmp_path: Path
) -> None:
    data = save_snapshot(etcd_server.endpoint, tmp_path / "snap.db").read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated"):
        SnapshotReader(cut)


def test_flipped_byte_fails_the_integrity_check(
    etcd_server: EtcdServer, populated: dict[bytes, bytes], tmp_path: Path
) -> None:
    data = bytearray(save_snapshot(etcd_server.endpoint, tmp_path / "snap.db").read_bytes())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="SHA-256"):
        SnapshotReader(bad)


def test_corrupt_page_in_a_hashless_file_is_named(
    etcd_server: EtcdServer, populated: dict[bytes, bytes], tmp_path: Path
) -> None:
    data = bytearray(save_snapshot(etcd_server.endpoint, tmp_path / "snap.db").read_bytes()[:-32])
    page_size = int.from_bytes(data[24:28], "little")
    for pgid in range(2, len(data) // page_size):  # break every branch/leaf page header's type
        flags = int.from_bytes(data[pgid * page_size + 8 : pgid * page_size + 10], "little")
        if flags in (1, 2):
            data[pgid * page_size + 8] = 0x7F
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="page type"):
        SnapshotReader(bad)


def test_not_a_snapshot_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not bbolt" * 1000)
    with pytest.raises(SnapshotError, match="not a bbolt database"):
        SnapshotReader(junk)


def test_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotError, match="empty"):
        SnapshotReader(empty)
    with pytest.raises(SnapshotError, match="cannot open"):
        SnapshotReader(tmp_path / "missing.db")
