"""What the etcd tools read from: a key/value record and the ``KVSource`` seam.

Both a live etcd (:class:`kubeshield.etcd.client.EtcdClient`) and a snapshot file
(:class:`kubeshield.etcd.snapshot.SnapshotReader`) are ``KVSource``\\ s, so audit and decrypt run the same
code on either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["KVSource", "KeyValue", "prefix_range_end"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One live key in etcd (the latest revision of it). ``value`` is empty for keys-only reads."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0

    def __repr__(self) -> str:  # never show the (possibly secret) value
        return (
            f"KeyValue(key={self.key!r}, mod_revision={self.mod_revision}, value=<{len(self.value)} bytes>)"
        )


@runtime_checkable
class KVSource(Protocol):
    """A read-only view of etcd's keyspace, iterated in key order, a page at a time."""

    def iter_prefix(self, prefix: bytes, *, page_size: int = 500) -> Iterator[KeyValue]:
        """Every live key that starts with ``prefix``, ascending, with its value."""
        ...

    def get(self, key: bytes) -> KeyValue | None:
        """The latest value of ``key``, or None when it does not exist."""
        ...

    def close(self) -> None: ...


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key with this prefix": the prefix with its last byte incremented.

    Trailing 0xff bytes are dropped first; an empty or all-0xff prefix gives ``b"\\x00"`` (to the end).
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"
