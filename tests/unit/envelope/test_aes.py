from __future__ import annotations

import os
from typing import Any

import pytest

from kubeshield.envelope import open_aescbc, open_aesgcm, seal_aescbc, seal_aesgcm
from kubeshield.errors import InvalidCiphertext
from tests.support.envelope import FixedRng

AAD = b"/registry/secrets/default/db"


@pytest.mark.parametrize("size", [16, 24, 32])
@pytest.mark.parametrize("plaintext", [b"", b"x", b"k8s\x00" + bytes(range(200))])
def test_gcm_round_trip_and_layout(size: int, plaintext: bytes) -> None:
    key = os.urandom(size)
    nonce = os.urandom(12)
    payload = seal_aesgcm(key, plaintext, aad=AAD, rng=FixedRng([nonce]))
    assert payload[:12] == nonce
    assert len(payload) == 12 + len(plaintext) + 16
    assert open_aesgcm(key, payload, aad=AAD) == plaintext


def test_gcm_default_rng_gives_fresh_nonces() -> None:
    key = os.urandom(32)
    first, second = (seal_aesgcm(key, b"same", aad=AAD) for _ in range(2))
    assert first[:12] != second[:12]


@pytest.fixture
def gcm_case() -> tuple[bytes, bytes]:
    key = os.urandom(32)
    return key, seal_aesgcm(key, b"top secret value", aad=AAD)


def test_gcm_every_single_byte_tamper_is_refused(gcm_case: tuple[bytes, bytes]) -> None:
    key, payload = gcm_case
    for index in range(len(payload)):
        tampered = bytearray(payload)
        tampered[index] ^= 0x01
        with pytest.raises(InvalidCiphertext):
            open_aesgcm(key, bytes(tampered), aad=AAD)


def test_gcm_truncations_are_refused(gcm_case: tuple[bytes, bytes]) -> None:
    key, payload = gcm_case
    for cut in range(len(payload)):
        with pytest.raises(InvalidCiphertext):
            open_aesgcm(key, payload[:cut], aad=AAD)
    with pytest.raises(InvalidCiphertext):
        open_aesgcm(key, payload + b"\x00", aad=AAD)


def test_gcm_wrong_aad_or_key_is_refused(gcm_case: tuple[bytes, bytes]) -> None:
    key, payload = gcm_case
    with pytest.raises(InvalidCiphertext):
        open_aesgcm(key, payload, aad=AAD + b"x")
    with pytest.raises(InvalidCiphertext):
        open_aesgcm(key, payload, aad=b"")
    with pytest.raises(InvalidCiphertext):
        open_aesgcm(os.urandom(32), payload, aad=AAD)


def test_invalid_ciphertext_is_opaque(gcm_case: tuple[bytes, bytes]) -> None:
    key, payload = gcm_case
    with pytest.raises(InvalidCiphertext) as info:
        open_aesgcm(key, payload, aad=b"other")
    assert str(info.value) == "invalid ciphertext"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("size", [16, 24, 32])
@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 100])
def test_cbc_round_trip_and_layout(size: int, length: int) -> None:
    key = os.urandom(size)
    iv = os.urandom(16)
    plaintext = os.urandom(length)
    payload = seal_aescbc(key, plaintext, rng=FixedRng([iv]))
    assert payload[:16] == iv
    assert len(payload) == 16 + (length // 16 + 1) * 16
    assert open_aescbc(key, payload) == plaintext


def test_cbc_bad_lengths_are_refused() -> None:
    key = os.urandom(32)
    payload = seal_aescbc(key, b"0123456789")
    for blob in (b"", payload[:15], payload[:16], payload[:-1], payload + b"\x00"):
        with pytest.raises(InvalidCiphertext):
            open_aescbc(key, blob)


def _raw_cbc(key: bytes, iv: bytes, padded: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


def test_cbc_padding_rules_follow_the_apiserver() -> None:
    key, iv = os.urandom(32), os.urandom(16)
    # the apiserver accepts any padding length up to the whole decrypted length
    assert open_aescbc(key, _raw_cbc(key, iv, b"ab" + bytes([30]) * 30)) == b"ab"
    for bad in (
        b"a" * 15 + b"\x00",
        b"a" * 14 + b"\x01\x02",
        b"a" * 15 + b"\x11",
        b"a" * 13 + b"\x03\x04\x03",
    ):
        with pytest.raises(InvalidCiphertext):
            open_aescbc(key, _raw_cbc(key, iv, bad))


@pytest.mark.parametrize("func", [seal_aesgcm, open_aesgcm])
def test_gcm_type_errors_name_the_parameter(func: Any) -> None:
    with pytest.raises(TypeError, match="key"):
        func("k" * 32, b"x", aad=AAD)
    with pytest.raises(TypeError, match="aad"):
        func(bytes(32), b"x", aad="/registry")
    with pytest.raises(TypeError):
        func(bytes(32), bytearray(b"x"), aad=AAD)


def test_cbc_type_errors() -> None:
    with pytest.raises(TypeError, match="plaintext"):
        seal_aescbc(bytes(32), "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="payload"):
        open_aescbc(bytes(32), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 8, 31, 33, 64])
def test_bad_key_sizes_are_value_errors(size: int) -> None:
    with pytest.raises(ValueError, match="16, 24, 32"):
        seal_aesgcm(bytes(size), b"x", aad=AAD)
    with pytest.raises(ValueError):
        open_aesgcm(bytes(size), bytes(40), aad=AAD)
    with pytest.raises(ValueError):
        seal_aescbc(bytes(size), b"x")
    with pytest.raises(ValueError):
        open_aescbc(bytes(size), bytes(32))


def test_rng_must_return_exactly_the_size_asked() -> None:
    with pytest.raises(ValueError, match="rng"):
        seal_aesgcm(bytes(32), b"x", aad=AAD, rng=lambda n: bytes(n - 1))
    with pytest.raises(ValueError, match="rng"):
        seal_aescbc(bytes(32), b"x", rng=lambda n: "a" * n)  # type: ignore[arg-type, return-value]
