"""The sealed-secrets hybrid encryption: RSA-OAEP(SHA-256) wraps a one-time AES-256-GCM key.

Hazardous internals: callers use :mod:`kubeshield.seal.sealing` and :mod:`kubeshield.seal.unsealing`,
which build the OAEP label from the scope; nothing here checks *which* label is right.

Byte layout of one sealed value (``pkg/crypto/crypto.go`` ``HybridEncrypt``), before base64::

    offset 0      2 bytes   big-endian uint16  N = len(RSA ciphertext)   (512 for RSA-4096)
    offset 2      N bytes   RSA-OAEP(SHA-256, MGF1-SHA-256, label) of a fresh 32-byte session key
    offset 2+N    M bytes   AES-256-GCM ciphertext of the value, nonce = 12 zero bytes, no AAD
    offset 2+N+M  16 bytes  GCM tag

The zero nonce is safe only because every session key encrypts exactly one value; :func:`encrypt`
draws a new key for each call from the injected ``rng``. Every failure to open a value (too short,
wrong key, wrong label, tampered bytes) raises the one opaque
:class:`~kubeshield.errors.InvalidCiphertext`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import InvalidCiphertext

__all__ = ["SESSION_KEY_BYTES", "SplitValue", "decrypt", "encrypt", "oaep", "open_session", "split"]

SESSION_KEY_BYTES = 32
_ZERO_NONCE = bytes(12)
_TAG_BYTES = 16


def oaep(label: bytes) -> padding.OAEP:
    """OAEP with SHA-256 for both the digest and MGF1, as Go's ``rsa.EncryptOAEP(sha256.New(), ...)``."""
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label or None
    )


def encrypt(
    public_key: rsa.RSAPublicKey,
    plaintext: bytes,
    *,
    label: bytes,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Seal ``plaintext`` for ``public_key`` under ``label`` (layout in the module docstring)."""
    session_key = rng(SESSION_KEY_BYTES)
    if len(session_key) != SESSION_KEY_BYTES:
        raise ValueError("rng returned the wrong number of bytes")
    wrapped = public_key.encrypt(session_key, oaep(label))
    if len(wrapped) > 0xFFFF:  # pragma: no cover - no RSA key is that large
        raise ValueError("RSA ciphertext does not fit a 2-byte length")
    body = AESGCM(session_key).encrypt(_ZERO_NONCE, plaintext, None)
    return len(wrapped).to_bytes(2, "big") + wrapped + body


@dataclass(frozen=True, slots=True)
class SplitValue:
    """A sealed value cut into its RSA part and its AES-GCM part (ciphertext + tag)."""

    rsa_ciphertext: bytes
    aes_ciphertext: bytes


def split(blob: bytes) -> SplitValue:
    """Cut ``blob`` at its 2-byte length prefix, as ``HybridDecrypt`` does. Raises ``InvalidCiphertext``."""
    if len(blob) < 2:
        raise InvalidCiphertext()
    rsa_len = int.from_bytes(blob[:2], "big")
    if len(blob) < 2 + rsa_len + _TAG_BYTES or rsa_len == 0:
        raise InvalidCiphertext()
    return SplitValue(rsa_ciphertext=blob[2 : 2 + rsa_len], aes_ciphertext=blob[2 + rsa_len :])


def open_session(session_key: bytes, aes_ciphertext: bytes) -> bytes:
    """Open the AES-GCM part with an unwrapped session key. Raises ``InvalidCiphertext``."""
    if len(session_key) != SESSION_KEY_BYTES:
        raise InvalidCiphertext()
    try:
        return AESGCM(session_key).decrypt(_ZERO_NONCE, aes_ciphertext, None)
    except InvalidTag:
        raise InvalidCiphertext() from None


def decrypt(private_key: rsa.RSAPrivateKey, blob: bytes, *, label: bytes) -> bytes:
    """Open one sealed value with one in-memory private key. Raises ``InvalidCiphertext``."""
    parts = split(blob)
    if len(parts.rsa_ciphertext) != private_key.key_size // 8 + (1 if private_key.key_size % 8 else 0):
        raise InvalidCiphertext()
    try:
        session_key = private_key.decrypt(parts.rsa_ciphertext, oaep(label))
    except ValueError:
        raise InvalidCiphertext() from None
    return open_session(session_key, parts.aes_ciphertext)
