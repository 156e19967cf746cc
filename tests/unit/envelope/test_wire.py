from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.envelope import _wire
from tests.support.envelope import pb_bytes, pb_varint, varint


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        ((1 << 64) - 1, "ffffffffffffffffff01"),
    ],
)
def test_varint_known_encodings(value: int, encoded: str) -> None:
    assert _wire.encode_varint(value).hex() == encoded
    assert list(_wire.iter_fields(bytes.fromhex("08" + encoded))) == [(1, 0, value)]


def test_negative_varints_are_64_bit_twos_complement_like_go() -> None:
    assert _wire.encode_varint(-1).hex() == "ffffffffffffffffff01"
    ((_, _, raw),) = _wire.iter_fields(_wire.encode_varint_field(7, -5))
    assert isinstance(raw, int)
    assert _wire.to_int64(raw) == -5
    assert _wire.to_int32(raw) == -5


@pytest.mark.parametrize(
    "blob",
    [
        "08",  # tag without value
        "08ff",  # truncated varint
        "08ffffffffffffffffff02",  # 10th byte above 1: more than 64 bits
        "08ffffffffffffffffffff01",  # 11 bytes
        "0a05abcd",  # length runs past the end
        "0a",  # missing length
        "00",  # field number 0
        "0b",  # group start (wire type 3)
        "0c",  # group end (wire type 4)
        "0e",  # wire type 6
        "0d0102",  # truncated fixed32
        "0901020304",  # truncated fixed64
    ],
)
def test_malformed_input_raises_wire_error(blob: str) -> None:
    with pytest.raises(_wire.WireError):
        list(_wire.iter_fields(bytes.fromhex(blob)))


def test_zero_length_and_fixed_fields_are_read() -> None:
    blob = (
        pb_bytes(2, b"") + bytes.fromhex("0d01000000") + bytes.fromhex("110200000000000000") + pb_varint(3, 0)
    )
    assert list(_wire.iter_fields(blob)) == [(2, 2, b""), (1, 5, 1), (2, 1, 2), (3, 0, 0)]


def test_encoders_match_independent_builder() -> None:
    assert _wire.encode_len_field(300, b"ab") == pb_bytes(300, b"ab")
    assert _wire.encode_varint_field(5, 1) == pb_varint(5, 1)
    with pytest.raises(ValueError, match="field number"):
        _wire.encode_len_field(0, b"")


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_varint_round_trip(value: int) -> None:
    assert _wire.encode_varint(value) == varint(value)
    assert list(_wire.iter_fields(_wire.encode_varint_field(1, value))) == [(1, 0, value)]


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_wire_error(blob: bytes) -> None:
    try:
        fields = list(_wire.iter_fields(blob))
    except _wire.WireError:
        return
    for number, wire_type, value in fields:
        assert number >= 1
        assert wire_type in (0, 1, 2, 5)
        assert isinstance(value, bytes) == (wire_type == 2)
