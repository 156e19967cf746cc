"""The custody wire protocol: exact layout, strict decoding, any bytes -> a frame or ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.keys._custody_protocol import (
    MAX_BODY,
    MAX_FIELDS,
    Op,
    ProtocolError,
    Request,
    Response,
    Status,
    decode_body_length,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

fields = st.lists(st.binary(max_size=300), max_size=8).map(tuple)


def test_layout_is_the_documented_one() -> None:
    frame = encode_request(Request(Op.UNWRAP, (b"ct", b"", b"aad")))
    body = (
        bytes([2, 2, 3]) + struct.pack(">I", 2) + b"ct" + struct.pack(">I", 0) + struct.pack(">I", 3) + b"aad"
    )
    assert frame == struct.pack(">I", len(body)) + body


@given(op=st.sampled_from(list(Op)), fs=fields)
def test_request_round_trip(op: Op, fs: tuple[bytes, ...]) -> None:
    frame = encode_request(Request(op, fs))
    assert decode_body_length(frame[:4]) == len(frame) - 4
    assert decode_request(frame[4:]) == Request(op, fs)


@given(status=st.sampled_from(list(Status)), fs=fields)
def test_response_round_trip(status: Status, fs: tuple[bytes, ...]) -> None:
    frame = encode_response(Response(status, fs))
    assert decode_response(frame[4:]) == Response(status, fs)


@given(st.binary(max_size=600))
def test_any_bytes_decode_to_a_request_or_the_one_protocol_error(data: bytes) -> None:
    try:
        request = decode_request(data)
    except ProtocolError:
        return
    assert encode_request(request)[4:] == data  # what decodes re-encodes to the same bytes


@given(st.binary(min_size=4, max_size=4))
def test_any_header_is_a_length_in_range_or_a_protocol_error(header: bytes) -> None:
    try:
        length = decode_body_length(header)
    except ProtocolError:
        assert struct.unpack(">I", header)[0] < 3 or struct.unpack(">I", header)[0] > MAX_BODY
        return
    assert 3 <= length <= MAX_BODY


@given(fs=fields.filter(lambda f: sum(map(len, f)) > 0), cut=st.integers(min_value=1, max_value=50))
def test_truncated_and_padded_bodies_are_rejected(fs: tuple[bytes, ...], cut: int) -> None:
    body = encode_request(Request(Op.WRAP, fs))[4:]
    with pytest.raises(ProtocolError):
        decode_request(body[: max(3, len(body) - cut)] if len(body) - cut >= 3 else body[:-1])
    with pytest.raises(ProtocolError):
        decode_request(body + b"\x00")


@pytest.mark.parametrize(
    "body",
    [
        bytes([3, 1, 0]),  # unknown version
        bytes([1, 3, 0]),  # protocol version 1 (no greeting) is refused
        bytes([2, 9, 0]),  # unknown op
        bytes([2, 0, 0]),  # op 0 is not an op
        bytes([2, 1, MAX_FIELDS + 1]) + b"\x00\x00\x00\x00" * (MAX_FIELDS + 1),
        bytes([2, 1, 1]) + struct.pack(">I", 0xFFFFFFFF),  # field longer than the frame
        bytes([2, 1]),
    ],
)
def test_malformed_requests(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(body)


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(ProtocolError):
        decode_body_length(struct.pack(">I", MAX_BODY + 1))
    with pytest.raises(ProtocolError):
        encode_request(Request(Op.WRAP, (b"x" * MAX_BODY, b"")))
    assert decode_body_length(struct.pack(">I", MAX_BODY)) == MAX_BODY


def test_repr_never_shows_fields() -> None:
    secret = b"plaintext-dek-bytes"
    assert "plaintext" not in repr(Request(Op.WRAP, (secret, b"")))
    assert "plaintext" not in repr(Response(Status.OK, (secret,)))


class _Stream:
    """A socket stand-in that serves recv() from bytes (read_greeting only calls recv)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def recv(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        return out


def test_greeting_layout_and_reading() -> None:
    from kubeshield.keys._custody_protocol import GREETING, encode_greeting, read_greeting

    frame = encode_greeting()
    assert (
        frame
        == struct.pack(">I", 3 + 4 + len(GREETING)) + bytes([2, 0, 1]) + struct.pack(">I", 18) + GREETING
    )
    assert read_greeting(_Stream(frame)) is None  # type: ignore[arg-type]
    refusal = encode_response(Response(Status.PERMISSION_DENIED, (b"no",)))
    got = read_greeting(_Stream(refusal))  # type: ignore[arg-type]
    assert got is not None and got.status == Status.PERMISSION_DENIED
    with pytest.raises(ProtocolError):  # an OK frame that is not the greeting (e.g. an answer)
        read_greeting(_Stream(encode_response(Response(Status.OK, (b"local:v1:x",)))))  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        read_greeting(_Stream(b""))  # type: ignore[arg-type]
