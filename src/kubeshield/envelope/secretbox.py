"""The apiserver's ``secretbox`` provider: the payload after ``k8s:enc:secretbox:v1:NAME:``.

Byte layout (key is exactly 32 bytes; no AAD):

    nonce(24, random) || Poly1305 tag(16) || XSalsa20 ciphertext

This is NaCl's combined secretbox form, as Go's ``secretbox.Seal(nonce[:], data, &nonce, &key)``
appended to the nonce.
"""

from __future__ import annotations

import os

from kubeshield.envelope import _aead
from kubeshield.envelope._aead import Rng

__all__ = ["open_secretbox", "seal_secretbox"]


def seal_secretbox(key: bytes, plaintext: bytes, *, rng: Rng = os.urandom) -> bytes:
    """Encrypt like the ``secretbox`` provider: ``nonce(24) || tag(16) || ciphertext``.

    ``rng`` is called once, for the 24-byte nonce; replace it only in tests.
    """
    key = _aead.check_key("key", key, (_aead.SECRETBOX_KEY_SIZE,))
    plaintext = _aead.require_bytes("plaintext", plaintext)
    return _aead.secretbox_seal(key, _aead.random_bytes(rng, _aead.SECRETBOX_NONCE_SIZE), plaintext)


def open_secretbox(key: bytes, payload: bytes) -> bytes:
    """Decrypt a ``secretbox`` payload. Raises ``InvalidCiphertext`` on any failure."""
    key = _aead.check_key("key", key, (_aead.SECRETBOX_KEY_SIZE,))
    payload = _aead.require_bytes("payload", payload)
    return _aead.secretbox_open(key, payload)
