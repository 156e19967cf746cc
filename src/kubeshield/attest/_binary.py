"""A bounds-checked reader for the fixed binary layouts of TEE evidence (hand-written: no library
parses SGX/TDX quotes, SNP reports or TPM structures the way their specifications define them)."""

from __future__ import annotations

from kubeshield.attest.errors import EvidenceFormatError

__all__ = ["Reader"]


class Reader:
    """Reads fields in order from ``data``; every failure is an ``EvidenceFormatError`` naming the field."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, *, what: str, pos: int = 0) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EvidenceFormatError(f"{what}: expected bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = pos
        self.what = what

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def error(self, field: str, problem: str) -> EvidenceFormatError:
        return EvidenceFormatError(f"{self.what}: {field}: {problem}")

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self.error(
                field, f"truncated (needs {n} bytes at offset {self._pos}, {self.remaining} left)"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16le(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32le(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def u64le(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def u16be(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32be(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64be(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def sized_be16(self, field: str) -> bytes:
        """A TPM2B: a big-endian u16 size, then that many bytes."""
        return self.take(self.u16be(f"{field}.size"), field)

    def end(self, field: str = "end") -> None:
        if self.remaining:
            raise self.error(field, f"{self.remaining} unexpected trailing bytes")
