"""The apiserver's ``aesgcm`` and ``aescbc`` providers: the payload after ``k8s:enc:aes{gcm,cbc}:v1:NAME:``.

Byte layouts (keys are 16, 24 or 32 bytes):

    aesgcm  nonce(12, random) || AES-GCM ciphertext || tag(16)     AAD = the full etcd key
    aescbc  iv(16, random)    || AES-CBC ciphertext of plaintext || PKCS#7 padding      no AAD

AES-CBC is unauthenticated: ``open_aescbc`` succeeding proves nothing about integrity; it exists to
read what old clusters wrote. Every failure to open raises the opaque ``InvalidCiphertext``.
"""

from __future__ import annotations

import os

from kubeshield.envelope import _aead
from kubeshield.envelope._aead import Rng

__all__ = ["open_aescbc", "open_aesgcm", "seal_aescbc", "seal_aesgcm"]


def seal_aesgcm(key: bytes, plaintext: bytes, *, aad: bytes, rng: Rng = os.urandom) -> bytes:
    """Encrypt like the ``aesgcm`` provider: ``nonce(12) || ciphertext || tag(16)``, AAD = etcd key.

    ``rng`` is called once, for the 12-byte nonce; replace it only in tests.
    """
    key = _aead.check_key("key", key, _aead.AES_KEY_SIZES)
    plaintext = _aead.require_bytes("plaintext", plaintext)
    aad = _aead.require_bytes("aad", aad)
    return _aead.gcm_seal(key, _aead.random_bytes(rng, _aead.GCM_NONCE_SIZE), plaintext, aad)


def open_aesgcm(key: bytes, payload: bytes, *, aad: bytes) -> bytes:
    """Decrypt an ``aesgcm`` payload. Raises ``InvalidCiphertext`` on any failure."""
    key = _aead.check_key("key", key, _aead.AES_KEY_SIZES)
    payload = _aead.require_bytes("payload", payload)
    aad = _aead.require_bytes("aad", aad)
    return _aead.gcm_open(key, payload, aad)


def seal_aescbc(key: bytes, plaintext: bytes, *, rng: Rng = os.urandom) -> bytes:
    """Encrypt like the ``aescbc`` provider: ``iv(16) || AES-CBC(plaintext || PKCS#7 padding)``.

    ``rng`` is called once, for the 16-byte IV; replace it only in tests.
    """
    key = _aead.check_key("key", key, _aead.AES_KEY_SIZES)
    plaintext = _aead.require_bytes("plaintext", plaintext)
    return _aead.cbc_seal(key, _aead.random_bytes(rng, _aead.CBC_IV_SIZE), plaintext)


def open_aescbc(key: bytes, payload: bytes) -> bytes:
    """Decrypt an ``aescbc`` payload as the apiserver does. Raises ``InvalidCiphertext`` on bad
    length or padding (a wrong key is detected only through the padding, i.e. not always)."""
    key = _aead.check_key("key", key, _aead.AES_KEY_SIZES)
    payload = _aead.require_bytes("payload", payload)
    return _aead.cbc_open(key, payload)
