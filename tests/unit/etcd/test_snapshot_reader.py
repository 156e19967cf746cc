"""The bbolt/snapshot reader on hand-built files: latest revision wins, tombstones hide, corruption named."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import SnapshotError
from kubeshield.etcd.api import kv_pb2
from kubeshield.etcd.snapshot import SnapshotReader
from tests.support.etcd import build_bbolt, revision_key


def _kv(key: bytes, value: bytes, rev: int) -> bytes:
    return kv_pb2.KeyValue(
        key=key, value=value, mod_revision=rev, create_revision=rev, version=1
    ).SerializeToString()


def _records() -> list[tuple[bytes, bytes]]:
    return [
        (revision_key(2), _kv(b"/registry/secrets/a/x", b"v1", 2)),
        (revision_key(3), _kv(b"/registry/secrets/a/y", b"big" * 3000, 3)),  # forces overflow pages
        (revision_key(4), _kv(b"/registry/secrets/a/x", b"v2", 4)),
        (revision_key(5, tombstone=True), _kv(b"/registry/secrets/a/z", b"", 5)),
        (revision_key(5), _kv(b"/registry/secrets/a/z", b"gone", 5)),
        (revision_key(6), _kv(b"/registry/configmaps/a/c", b"cm", 6)),
        (revision_key(7, tombstone=True), _kv(b"/registry/secrets/a/z", b"", 7)),
    ]


def _write(tmp: Path, data: bytes, *, with_hash: bool) -> Path:
    path = tmp / "snap.db"
    if with_hash:
        data = data + hashlib.sha256(data).digest()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("with_hash", [True, False])
def test_latest_revision_wins_and_tombstones_hide(tmp_path: Path, with_hash: bool) -> None:
    with SnapshotReader(_write(tmp_path, build_bbolt(_records()), with_hash=with_hash)) as reader:
        got = {kv.key: (kv.value, kv.mod_revision) for kv in reader.iter_prefix(b"/registry/secrets/")}
        assert got == {b"/registry/secrets/a/x": (b"v2", 4), b"/registry/secrets/a/y": (b"big" * 3000, 3)}
        assert len(reader) == 3
        assert reader.get(b"/registry/secrets/a/z") is None


def test_newest_valid_meta_is_used(tmp_path: Path) -> None:
    data = bytearray(build_bbolt(_records()))
    data[4096 + 16 + 8] ^= 1  # break meta 1's page size field: its checksum no longer matches
    with SnapshotReader(_write(tmp_path, bytes(data), with_hash=False)) as reader:
        assert reader.get(b"/registry/secrets/a/x") is not None  # meta 0 still points at a valid tree


def test_no_key_bucket_is_not_an_etcd_snapshot(tmp_path: Path) -> None:
    data = bytearray(build_bbolt(_records()))
    at = data.index(b"key", 3 * 4096)
    data[at : at + 3] = b"kez"
    with pytest.raises(SnapshotError, match="no 'key' bucket"):
        SnapshotReader(_write(tmp_path, bytes(data), with_hash=False))


def test_malformed_revision_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="malformed revision key"):
        SnapshotReader(_write(tmp_path, build_bbolt([(b"short", _kv(b"k", b"v", 1))]), with_hash=False))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=5 * 4096 - 1), st.integers(1, 255)),
        min_size=1,
        max_size=8,
    )
)
def test_any_corruption_gives_snapshot_error_or_a_consistent_read(
    tmp_path: Path, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(build_bbolt(_records()))
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    path = _write(tmp_path, bytes(data), with_hash=False)
    try:
        with SnapshotReader(path) as reader:
            for kv in reader.iter_prefix(b""):
                assert isinstance(kv.value, bytes)
    except SnapshotError as exc:
        assert str(exc)


@settings(deadline=None)  # the machine is shared: no timing limits in tests
@given(st.binary(max_size=9000))
def test_random_bytes_never_crash(data: bytes) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        with pytest.raises(SnapshotError):
            SnapshotReader(handle.name)
