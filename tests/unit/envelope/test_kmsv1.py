from __future__ import annotations

import os

import pytest

from kubeshield.envelope import (
    decode_kmsv1_payload,
    encode_kmsv1_payload,
    open_kmsv1_data,
    seal_aescbc,
    seal_kmsv1_data,
)
from kubeshield.errors import InvalidCiphertext
from tests.support.envelope import FixedRng

AAD = b"/registry/secrets/ns/name"


def test_payload_layout_and_round_trip() -> None:
    payload = encode_kmsv1_payload(b"wrapped", b"data")
    assert payload == b"\x00\x07wrapped" + b"data"
    assert decode_kmsv1_payload(payload) == (b"wrapped", b"data")
    big = os.urandom(0xFFFF)
    assert decode_kmsv1_payload(encode_kmsv1_payload(big, b"")) == (big, b"")


def test_payload_bounds() -> None:
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        encode_kmsv1_payload(b"", b"data")
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        encode_kmsv1_payload(bytes(0x10000), b"data")
    for bad in (b"", b"\x00", b"\x00\x00data", b"\x00\x05abcd", b"\xff\xff" + bytes(100)):
        with pytest.raises(InvalidCiphertext):
            decode_kmsv1_payload(bad)
    with pytest.raises(TypeError, match="payload"):
        decode_kmsv1_payload("\x00\x01a")  # type: ignore[arg-type]


def test_gcm_data_is_fresh_and_cbc_data_is_stale() -> None:
    dek, nonce = os.urandom(32), os.urandom(12)
    data = seal_kmsv1_data(dek, b"new value", aad=AAD, rng=FixedRng([nonce]))
    assert data[:12] == nonce and len(data) == 12 + 9 + 16
    assert open_kmsv1_data(dek, data, aad=AAD) == (b"new value", False)
    legacy = seal_aescbc(dek, b"written by 1.24")
    assert open_kmsv1_data(dek, legacy, aad=AAD) == (b"written by 1.24", True)


def test_failures_are_invalid_ciphertext() -> None:
    dek = os.urandom(32)
    # 10-byte plaintext: 38-byte GCM data can never pass the CBC fallback (22 is not a block multiple)
    data = seal_kmsv1_data(dek, b"0123456789", aad=AAD)
    assert (len(data) - 16) % 16
    for wrong_dek, aad in ((os.urandom(32), AAD), (dek, b"/registry/elsewhere"), (dek[:31], AAD)):
        with pytest.raises(InvalidCiphertext):
            open_kmsv1_data(wrong_dek, data, aad=aad)
    for index in range(len(data)):
        tampered = bytearray(data)
        tampered[index] ^= 0x10
        with pytest.raises(InvalidCiphertext):
            open_kmsv1_data(dek, bytes(tampered), aad=AAD)
    for cut in range(len(data)):
        with pytest.raises(InvalidCiphertext):
            open_kmsv1_data(dek, data[:cut], aad=AAD)


def test_wrong_aad_never_yields_a_fresh_read() -> None:
    dek = os.urandom(32)
    for length in range(40):
        data = seal_kmsv1_data(dek, bytes(length), aad=AAD)
        try:
            _, stale = open_kmsv1_data(dek, data, aad=b"/other")
        except InvalidCiphertext:
            continue
        assert stale  # only the unauthenticated CBC fallback can ever "succeed"


def test_type_errors() -> None:
    with pytest.raises(TypeError, match="dek"):
        seal_kmsv1_data("k" * 32, b"x", aad=AAD)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aad"):
        open_kmsv1_data(bytes(32), b"x" * 40, aad="a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="encrypted_dek"):
        encode_kmsv1_payload("abc", b"")  # type: ignore[arg-type]
