"""Test helpers for kubeshield.envelope: deterministic randomness and small protobuf builders.

The builders here are written independently of ``kubeshield.envelope._wire`` so tests do not check the
codec against itself.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FixedRng", "pb_bytes", "pb_varint", "read_varint", "varint"]


class FixedRng:
    """An ``rng`` that hands out the given byte strings in order and checks each requested size."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = list(chunks)
        self.calls: list[int] = []

    def __call__(self, size: int) -> bytes:
        self.calls.append(size)
        if not self._chunks:
            raise AssertionError(f"rng called more often than expected (asked for {size} bytes)")
        chunk = self._chunks.pop(0)
        if len(chunk) != size:
            raise AssertionError(f"rng asked for {size} bytes, the test prepared {len(chunk)}")
        return chunk

    @property
    def exhausted(self) -> bool:
        return not self._chunks


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_bytes(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def pb_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Return ``(value, position after it)``."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
