"""KMS v1 storage: the payload after ``k8s:enc:kms:v1:NAME:``.

Byte layout::

    uint16 big-endian N || encDEK (N bytes, what the plugin's Encrypt returned) || data

``data`` is encrypted under the 32-byte DEK that the plugin's Decrypt(encDEK) returns:

    written since 1.25  nonce(12) || AES-GCM ciphertext || tag(16)    AAD = the full etcd key
    written until 1.24  iv(16) || AES-CBC ciphertext (PKCS#7)          no AAD

Readers try GCM first and fall back to CBC, reporting the CBC case as stale. Because CBC is
unauthenticated, a GCM value read with the wrong AAD or key can, rarely, pass the CBC padding check;
the apiserver has the same behaviour. Every failure raises the opaque ``InvalidCiphertext``.
"""

from __future__ import annotations

import os

from kubeshield.envelope import _aead
from kubeshield.envelope._aead import Rng
from kubeshield.errors import InvalidCiphertext

__all__ = [
    "MAX_ENCRYPTED_DEK_BYTES",
    "decode_kmsv1_payload",
    "encode_kmsv1_payload",
    "open_kmsv1_data",
    "seal_kmsv1_data",
]

MAX_ENCRYPTED_DEK_BYTES = 0xFFFF


def encode_kmsv1_payload(encrypted_dek: bytes, data: bytes) -> bytes:
    """``uint16-BE len(encrypted_dek) || encrypted_dek || data``; encDEK must be 1..65535 bytes."""
    encrypted_dek = _aead.require_bytes("encrypted_dek", encrypted_dek)
    data = _aead.require_bytes("data", data)
    if not 1 <= len(encrypted_dek) <= MAX_ENCRYPTED_DEK_BYTES:
        raise ValueError(
            f"encrypted_dek must be 1..{MAX_ENCRYPTED_DEK_BYTES} bytes, not {len(encrypted_dek)}"
        )
    return len(encrypted_dek).to_bytes(2, "big") + encrypted_dek + data


def decode_kmsv1_payload(payload: bytes) -> tuple[bytes, bytes]:
    """Split a KMS v1 payload into ``(encrypted_dek, data)``.

    Raises ``InvalidCiphertext`` when the length prefix is missing or runs past the end, or when the
    encDEK is empty (no plugin can unwrap nothing; the apiserver would only fail later, at Decrypt).
    """
    payload = _aead.require_bytes("payload", payload)
    if len(payload) < 2:
        raise InvalidCiphertext()
    size = int.from_bytes(payload[:2], "big")
    if size == 0 or len(payload) < 2 + size:
        raise InvalidCiphertext()
    return payload[2 : 2 + size], payload[2 + size :]


def seal_kmsv1_data(dek: bytes, plaintext: bytes, *, aad: bytes, rng: Rng = os.urandom) -> bytes:
    """The GCM ``data`` part the apiserver writes: ``nonce(12) || ciphertext || tag(16)``.

    ``rng`` is called once, for the nonce; replace it only in tests.
    """
    dek = _aead.check_key("dek", dek, _aead.AES_KEY_SIZES)
    plaintext = _aead.require_bytes("plaintext", plaintext)
    aad = _aead.require_bytes("aad", aad)
    return _aead.gcm_seal(dek, _aead.random_bytes(rng, _aead.GCM_NONCE_SIZE), plaintext, aad)


def open_kmsv1_data(dek: bytes, data: bytes, *, aad: bytes) -> tuple[bytes, bool]:
    """Return ``(plaintext, stale)``: GCM with AAD first, then the legacy CBC (``stale=True``).

    A DEK of a non-AES length (the plugin unwrapped something that is not a DEK) or a failure of both
    modes raises ``InvalidCiphertext``.
    """
    dek = _aead.require_bytes("dek", dek)
    data = _aead.require_bytes("data", data)
    aad = _aead.require_bytes("aad", aad)
    if len(dek) not in _aead.AES_KEY_SIZES:
        raise InvalidCiphertext()
    try:
        return _aead.gcm_open(dek, data, aad), False
    except InvalidCiphertext:
        pass
    return _aead.cbc_open(dek, data), True
