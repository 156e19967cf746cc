from __future__ import annotations

import os

import nacl.secret
import pytest

from kubeshield.envelope import open_secretbox, seal_secretbox
from kubeshield.errors import InvalidCiphertext
from tests.support.envelope import FixedRng


@pytest.mark.parametrize("plaintext", [b"", b"a", os.urandom(300)])
def test_round_trip_and_layout(plaintext: bytes) -> None:
    key, nonce = os.urandom(32), os.urandom(24)
    payload = seal_secretbox(key, plaintext, rng=FixedRng([nonce]))
    assert payload[:24] == nonce
    assert len(payload) == 24 + 16 + len(plaintext)
    assert open_secretbox(key, payload) == plaintext
    # the combined NaCl form Go's secretbox.Seal produces: nonce || tag || ciphertext
    assert nacl.secret.SecretBox(key).decrypt(payload[24:], payload[:24]) == plaintext


def test_tamper_truncation_and_wrong_key_are_refused() -> None:
    key = os.urandom(32)
    payload = seal_secretbox(key, b"value")
    for index in range(len(payload)):
        tampered = bytearray(payload)
        tampered[index] ^= 0x80
        with pytest.raises(InvalidCiphertext):
            open_secretbox(key, bytes(tampered))
    for cut in range(len(payload)):
        with pytest.raises(InvalidCiphertext):
            open_secretbox(key, payload[:cut])
    with pytest.raises(InvalidCiphertext):
        open_secretbox(os.urandom(32), payload)


def test_type_and_key_size_errors() -> None:
    with pytest.raises(TypeError, match="key"):
        seal_secretbox("k" * 32, b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="payload"):
        open_secretbox(bytes(32), "x")  # type: ignore[arg-type]
    for size in (16, 24, 31, 33):
        with pytest.raises(ValueError, match="32"):
            seal_secretbox(bytes(size), b"x")
        with pytest.raises(ValueError, match="32"):
            open_secretbox(bytes(size), bytes(64))
