"""Read an ``etcdctl snapshot save`` file directly, without starting etcd.

A snapshot is etcd's bbolt database, optionally followed by a 32-byte SHA-256 of everything before it
(``etcdctl snapshot save`` appends it; the file size is then ``n x 512 + 32``). When present it is
verified first. etcd's MVCC store is bucket ``key``: its keys are revisions, its values ``mvccpb.KeyValue``
protobufs::

    revision key = main u64 big-endian ‖ "_" ‖ sub u64 big-endian [‖ "t" for a tombstone (deletion)]

The reader walks the bucket once in revision order, keeping for each etcd key only the revision key of its
latest write and dropping keys whose latest revision is a tombstone. Values are then read on demand, one
key at a time, so memory holds the key index, never every value.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from kubeshield.errors import SnapshotError
from kubeshield.etcd._bbolt import BoltDB
from kubeshield.etcd.api import kv_pb2
from kubeshield.etcd.store import KeyValue

__all__ = ["SnapshotReader"]

_KEY_BUCKET = b"key"
_REV_LEN = 17
_HASH_LEN = 32


class SnapshotReader:
    """A ``KVSource`` over an etcd snapshot file. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], *, verify_hash: bool = True) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("rb")
        except OSError as exc:
            raise SnapshotError(f"cannot open snapshot {self.path}: {exc.strerror}") from exc
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                raise SnapshotError(f"snapshot {self.path} is empty")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            db_size = size
            if size % 512 == _HASH_LEN:
                db_size = size - _HASH_LEN
                if verify_hash and self._sha256(db_size) != self._map[db_size:]:
                    raise SnapshotError(
                        f"snapshot {self.path} fails its SHA-256 integrity check (corrupt or modified)"
                    )
            self._db = BoltDB(self._map, size=db_size, name=f"snapshot {self.path}")
            bucket = self._db.bucket(self._db.root(), _KEY_BUCKET)
            if bucket is None:
                raise SnapshotError(f"snapshot {self.path} has no 'key' bucket: not an etcd v3 snapshot")
            self._bucket = bucket
            self._index = self._build_index()
            self._keys = sorted(self._index)
        except BaseException:
            self.close()
            raise

    def _sha256(self, length: int) -> bytes:
        digest = hashlib.sha256()
        for start in range(0, length, 1 << 20):
            digest.update(self._map[start : min(length, start + (1 << 20))])
        return digest.digest()

    def _build_index(self) -> dict[bytes, bytes]:
        latest: dict[bytes, bytes] = {}
        for _flags, rev, value in self._db.items(self._bucket):
            if len(rev) not in (_REV_LEN, _REV_LEN + 1) or rev[8:9] != b"_":
                raise SnapshotError(f"snapshot {self.path}: 'key' bucket holds a malformed revision key")
            kv = self._parse(value)
            if len(rev) == _REV_LEN + 1 and rev[-1:] == b"t":
                latest.pop(kv.key, None)
            else:
                latest[kv.key] = rev
        return latest

    def _parse(self, value: bytes) -> KeyValue:
        try:
            msg = kv_pb2.KeyValue.FromString(value)
        except DecodeError:
            raise SnapshotError(f"snapshot {self.path}: a stored record is not an mvccpb.KeyValue") from None
        return KeyValue(
            key=bytes(msg.key),
            value=bytes(msg.value),
            mod_revision=int(msg.mod_revision),
            create_revision=int(msg.create_revision),
            version=int(msg.version),
        )

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: bytes) -> KeyValue | None:
        rev = self._index.get(key)
        if rev is None:
            return None
        found = self._db.lookup(self._bucket, rev)
        if found is None:
            raise SnapshotError(f"snapshot {self.path}: revision index points at a missing record")
        return self._parse(found[1])

    def iter_prefix(self, prefix: bytes, *, page_size: int = 500) -> Iterator[KeyValue]:
        """Every live key under ``prefix`` in key order (``page_size`` is accepted for ``KVSource``)."""
        i = bisect.bisect_left(self._keys, prefix)
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            kv = self.get(self._keys[i])
            if kv is not None:
                yield kv
            i += 1

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None and not m.closed:
            m.close()
        self._file.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
