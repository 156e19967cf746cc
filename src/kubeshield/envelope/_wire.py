"""A tiny protobuf wire-format codec: just enough to read and write the messages kube-apiserver stores.

We decode Kubernetes objects and the KMS v2 ``EncryptedObject`` without the Kubernetes ``.proto`` set
and without a protobuf library, so this module implements the wire format directly
(https://protobuf.dev/programming-guides/encoding/):

    field   = tag value
    tag     = varint((field_number << 3) | wire_type)
    type 0  varint   : 1..10 bytes, 7 bits per byte, little-endian groups, high bit = "more follows"
    type 1  fixed64  : 8 bytes
    type 2  len      : varint(length) || length bytes   (strings, bytes, messages, map entries)
    type 5  fixed32  : 4 bytes

Decoding rules:

* zero-length type-2 fields are accepted (the apiserver writes ``12 00`` for empty strings);
* fields this code does not know are skipped (old objects carry e.g. ObjectMeta field 15);
* groups (wire types 3 and 4) are refused: no Kubernetes message uses them;
* a varint longer than 10 bytes, or whose 10th byte is above 1 (more than 64 bits), is refused, as
  Go's ``protowire.ConsumeVarint`` does;
* every malformed input raises the one internal :class:`WireError`, whose message describes the
  structure (never the bytes). Public decoders translate it into their documented error.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = [
    "LEN",
    "VARINT",
    "WireError",
    "encode_len_field",
    "encode_varint",
    "encode_varint_field",
    "iter_fields",
    "to_int32",
    "to_int64",
]

VARINT = 0
FIXED64 = 1
LEN = 2
FIXED32 = 5

_MAX_FIELD_NUMBER = (1 << 29) - 1
_UINT64_MASK = (1 << 64) - 1


class WireError(Exception):
    """Malformed protobuf bytes. Internal: public decoders re-raise their own documented error."""


def encode_varint(value: int) -> bytes:
    """Encode an integer as a protobuf varint. Negative values use 64-bit two's complement, like Go."""
    value &= _UINT64_MASK
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field_number: int, wire_type: int) -> bytes:
    if not 1 <= field_number <= _MAX_FIELD_NUMBER:
        raise ValueError(f"protobuf field number {field_number} is out of range")
    return encode_varint((field_number << 3) | wire_type)


def encode_len_field(field_number: int, payload: bytes) -> bytes:
    """``tag(field, 2) || varint(len(payload)) || payload``; an empty payload is written (``tag 00``)."""
    return _tag(field_number, LEN) + encode_varint(len(payload)) + payload


def encode_varint_field(field_number: int, value: int) -> bytes:
    """``tag(field, 0) || varint(value)``; written even when ``value`` is 0."""
    return _tag(field_number, VARINT) + encode_varint(value)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    for i in range(10):
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        if i == 9 and byte > 1:
            raise WireError("varint overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise WireError("varint longer than 10 bytes")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` for each field of one message.

    ``value`` is an ``int`` for varint and fixed fields (unsigned) and ``bytes`` for length-delimited
    fields. Raises :class:`WireError` on any malformed input, at the point it is reached.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field_number = key >> 3
        wire_type = key & 7
        if field_number == 0 or field_number > _MAX_FIELD_NUMBER:
            raise WireError("invalid field number")
        if wire_type == VARINT:
            value, pos = _read_varint(buf, pos)
            yield field_number, wire_type, value
        elif wire_type == LEN:
            length, pos = _read_varint(buf, pos)
            if length > end - pos:
                raise WireError("truncated length-delimited field")
            yield field_number, wire_type, bytes(buf[pos : pos + length])
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if size > end - pos:
                raise WireError("truncated fixed-width field")
            yield field_number, wire_type, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def to_int64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint as Go's int64."""
    return value - (1 << 64) if value >= (1 << 63) else value


def to_int32(value: int) -> int:
    """Reinterpret a varint as Go's int32 (Go truncates to the low 32 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value
