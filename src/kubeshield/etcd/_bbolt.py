"""A read-only reader for bbolt (etcd's storage engine) database files. Private: use ``snapshot``.

Layout (all integers little-endian), as written by go.etcd.io/bbolt v1.3:

    page      = header(16) ‖ body, spanning (1 + overflow) x page_size bytes
    header    = id u64 ‖ flags u16 ‖ count u16 ‖ overflow u32
                flags: 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist
    meta      (pages 0 and 1, body) = magic u32 (0xED0CDAED) ‖ version u32 (2) ‖ page_size u32 ‖
                flags u32 ‖ root bucket (root pgid u64 ‖ sequence u64) ‖ freelist pgid u64 ‖
                high-water pgid u64 ‖ txid u64 ‖ checksum u64 = FNV-1a-64 of the 56 bytes before it.
                The valid meta with the higher txid is the current one.
    branch    element i at body + 16·i = pos u32 ‖ ksize u32 ‖ child pgid u64;
                key = bytes at (element address + pos), ksize long. Keys are each child's first key.
    leaf      element i at body + 16·i = flags u32 ‖ pos u32 ‖ ksize u32 ‖ vsize u32;
                key at (element address + pos), value right after it. flags 0x01 = nested bucket.
    bucket    value = root pgid u64 ‖ sequence u64 ‖ [inline page when root == 0]

The freelist is ignored: a reader that follows the tree from the current meta never visits free pages.
Every offset is bounds-checked, so a corrupt or truncated file raises ``SnapshotError`` naming the page.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

from kubeshield.errors import SnapshotError

__all__ = ["BoltDB", "Node"]

Buf = bytes | mmap.mmap

MAGIC = 0xED0CDAED
VERSION = 2
_PAGE_HEADER = struct.Struct("<QHHI")
_META = struct.Struct("<IIIIQQQQQQ")
_BRANCH_ELEM = struct.Struct("<IIQ")
_LEAF_ELEM = struct.Struct("<IIII")
_BUCKET = struct.Struct("<QQ")
_BRANCH, _LEAF, _META_FLAG = 0x01, 0x02, 0x04
_BUCKET_LEAF = 0x01
_MAX_DEPTH = 64


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class Node:
    """One branch or leaf page, either on disk (``where`` = page id) or inline in a bucket value."""

    __slots__ = ("base", "buf", "count", "end", "flags", "where")

    def __init__(self, buf: Buf, base: int, end: int, where: str) -> None:
        if base + _PAGE_HEADER.size > end:
            raise SnapshotError(f"{where} is truncated")
        _, self.flags, self.count, _ = _PAGE_HEADER.unpack_from(buf, base)
        if self.flags not in (_BRANCH, _LEAF):
            raise SnapshotError(f"{where} has page type 0x{self.flags:x}, expected a branch or leaf page")
        self.buf, self.base, self.end, self.where = buf, base, end, where

    def _slice(self, start: int, length: int) -> bytes:
        if start < self.base or start + length > self.end:
            raise SnapshotError(f"{self.where}: element points outside the page")
        return bytes(self.buf[start : start + length])

    def branch(self, i: int) -> tuple[bytes, int]:
        addr = self.base + _PAGE_HEADER.size + i * _BRANCH_ELEM.size
        if addr + _BRANCH_ELEM.size > self.end:
            raise SnapshotError(f"{self.where}: element table runs past the page")
        pos, ksize, pgid = _BRANCH_ELEM.unpack_from(self.buf, addr)
        return self._slice(addr + pos, ksize), pgid

    def leaf(self, i: int) -> tuple[int, bytes, bytes]:
        addr = self.base + _PAGE_HEADER.size + i * _LEAF_ELEM.size
        if addr + _LEAF_ELEM.size > self.end:
            raise SnapshotError(f"{self.where}: element table runs past the page")
        flags, pos, ksize, vsize = _LEAF_ELEM.unpack_from(self.buf, addr)
        start = addr + pos
        return flags, self._slice(start, ksize), self._slice(start + ksize, vsize)


class BoltDB:
    """A bbolt file held in a buffer (usually an mmap). Read-only; no locking."""

    def __init__(self, buf: Buf, *, size: int | None = None, name: str = "database") -> None:
        self._buf, self._size, self._name = buf, len(buf) if size is None else size, name
        metas = []
        for page_size_guess in self._page_size_candidates():
            for pgid in (0, 1):
                meta = self._read_meta(pgid * page_size_guess)
                if meta is not None and meta[2] == page_size_guess:
                    metas.append(meta)
            if metas:
                break
        if not metas:
            raise SnapshotError(f"{name} is not a bbolt database (no valid meta page: bad magic or checksum)")
        meta = max(metas, key=lambda m: m[8])
        self.page_size: int = meta[2]
        self.root_pgid: int = meta[4]
        high_water: int = meta[7]
        if high_water * self.page_size > self._size:
            raise SnapshotError(
                f"{name} is truncated: the meta page says {high_water} pages of {self.page_size} bytes "
                f"({high_water * self.page_size} bytes) but the file holds {self._size}"
            )
        self._high_water = high_water

    def _page_size_candidates(self) -> list[int]:
        out = []
        if self._size >= _PAGE_HEADER.size + _META.size:
            size = struct.unpack_from("<I", self._buf, _PAGE_HEADER.size + 8)[0]
            if 512 <= size <= 65536 and size & (size - 1) == 0:
                out.append(size)
        return out + [s for s in (4096, 16384, 65536) if s not in out]

    def _read_meta(self, offset: int) -> tuple[int, ...] | None:
        start = offset + _PAGE_HEADER.size
        if start + _META.size > self._size:
            return None
        flags = _PAGE_HEADER.unpack_from(self._buf, offset)[1]
        fields = _META.unpack_from(self._buf, start)
        if flags != _META_FLAG or fields[0] != MAGIC or fields[1] != VERSION:
            return None
        if _fnv1a64(bytes(self._buf[start : start + _META.size - 8])) != fields[9]:
            return None
        return fields

    def page(self, pgid: int) -> Node:
        if not 2 <= pgid < self._high_water:
            raise SnapshotError(f"{self._name}: page id {pgid} is out of range (corrupt tree)")
        base = pgid * self.page_size
        if base + _PAGE_HEADER.size > self._size:
            raise SnapshotError(f"{self._name}: page {pgid} is past the end of the file (truncated)")
        overflow = _PAGE_HEADER.unpack_from(self._buf, base)[3]
        end = base + (1 + overflow) * self.page_size
        if end > self._size:
            raise SnapshotError(f"{self._name}: page {pgid} runs past the end of the file (truncated)")
        return Node(self._buf, base, end, f"page {pgid}")

    def root(self) -> Node:
        return self.page(self.root_pgid)

    def bucket(self, parent: Node, name: bytes) -> Node | None:
        """The root node of nested bucket ``name`` inside the bucket whose root is ``parent``."""
        found = self.lookup(parent, name)
        if found is None:
            return None
        flags, value = found
        if not flags & _BUCKET_LEAF:
            raise SnapshotError(f"{self._name}: {name!r} is a key, not a bucket")
        if len(value) < _BUCKET.size:
            raise SnapshotError(f"{self._name}: bucket {name!r} header is truncated")
        root, _ = _BUCKET.unpack_from(value, 0)
        if root == 0:  # inline bucket: its single leaf page follows the header
            return Node(value, _BUCKET.size, len(value), f"inline bucket {name!r}")
        return self.page(root)

    def items(self, node: Node, *, depth: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        """Every (flags, key, value) of the tree under ``node``, in key order."""
        if depth > _MAX_DEPTH:
            raise SnapshotError(f"{self._name}: tree deeper than {_MAX_DEPTH} (corrupt, or a cycle)")
        if node.flags == _LEAF:
            for i in range(node.count):
                yield node.leaf(i)
            return
        for i in range(node.count):
            _, child = node.branch(i)
            yield from self.items(self.page(child), depth=depth + 1)

    def lookup(self, node: Node, key: bytes, *, depth: int = 0) -> tuple[int, bytes] | None:
        """(flags, value) of ``key`` in the tree under ``node``, or None."""
        if depth > _MAX_DEPTH:
            raise SnapshotError(f"{self._name}: tree deeper than {_MAX_DEPTH} (corrupt, or a cycle)")
        if node.flags == _BRANCH:
            lo, hi = 0, node.count - 1
            if hi < 0:
                return None
            while lo < hi:  # last element whose key <= key
                mid = (lo + hi + 1) // 2
                if node.branch(mid)[0] <= key:
                    lo = mid
                else:
                    hi = mid - 1
            return self.lookup(self.page(node.branch(lo)[1]), key, depth=depth + 1)
        lo, hi = 0, node.count
        while lo < hi:
            mid = (lo + hi) // 2
            flags, k, value = node.leaf(mid)
            if k == key:
                return flags, value
            if k < key:
                lo = mid + 1
            else:
                hi = mid
        return None
