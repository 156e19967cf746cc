"""Raw cipher primitives behind the envelope recipes.

.. danger::

    This is a "Hazardous Materials" module. Everything here takes explicit nonces, IVs and key
    lengths, and misuse (a repeated GCM nonce, an unauthenticated CBC payload trusted as genuine,
    HKDF with a short seed) silently destroys confidentiality or integrity. Only the public modules of
    :mod:`kubeshield.envelope` may call it; they draw every nonce from an injected ``rng`` and never
    expose a nonce parameter. Do not import it from anywhere else.

Every failure to open a ciphertext raises the one opaque :class:`~kubeshield.errors.InvalidCiphertext`.
Wrong argument *types* raise ``TypeError`` naming the parameter; wrong key *sizes* on the sealing side
raise ``ValueError`` (a programming or configuration error, as in pyca/cryptography).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from kubeshield.errors import InvalidCiphertext

__all__ = [
    "AES_KEY_SIZES",
    "CBC_IV_SIZE",
    "GCM_NONCE_SIZE",
    "GCM_TAG_SIZE",
    "SECRETBOX_KEY_SIZE",
    "SECRETBOX_NONCE_SIZE",
    "SECRETBOX_TAG_SIZE",
    "Rng",
    "cbc_open",
    "cbc_seal",
    "check_key",
    "gcm_open",
    "gcm_seal",
    "hkdf_expand_sha256",
    "random_bytes",
    "require_bytes",
    "secretbox_open",
    "secretbox_seal",
]

Rng = Callable[[int], bytes]

AES_KEY_SIZES = (16, 24, 32)
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16
CBC_IV_SIZE = 16
_AES_BLOCK = 16
SECRETBOX_KEY_SIZE = 32
SECRETBOX_NONCE_SIZE = 24
SECRETBOX_TAG_SIZE = 16


def require_bytes(name: str, value: object) -> bytes:
    """Return ``value`` if it is ``bytes``; otherwise raise ``TypeError`` naming the parameter."""
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def check_key(name: str, key: object, sizes: Collection[int]) -> bytes:
    """Type- and size-check a key; ``ValueError`` names the allowed sizes (never the key)."""
    key = require_bytes(name, key)
    if len(key) not in sizes:
        allowed = ", ".join(str(s) for s in sorted(sizes))
        raise ValueError(f"{name} must be {allowed} bytes long, not {len(key)}")
    return key


def random_bytes(rng: Rng, size: int) -> bytes:
    """Draw ``size`` bytes from ``rng`` and insist it returned exactly that many."""
    value = rng(size)
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"rng must return exactly {size} bytes")
    return value


def gcm_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM. Returns ``nonce(12) || ciphertext || tag(16)``."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def gcm_open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open ``nonce(12) || ciphertext || tag(16)``; any failure is ``InvalidCiphertext``."""
    if len(blob) < GCM_NONCE_SIZE + GCM_TAG_SIZE:
        raise InvalidCiphertext()
    try:
        return AESGCM(key).decrypt(blob[:GCM_NONCE_SIZE], blob[GCM_NONCE_SIZE:], aad)
    except InvalidTag:
        raise InvalidCiphertext() from None


def cbc_seal(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-CBC with PKCS#7 padding. Returns ``iv(16) || ciphertext``."""
    pad = _AES_BLOCK - len(plaintext) % _AES_BLOCK
    padded = plaintext + bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def cbc_open(key: bytes, blob: bytes) -> bytes:
    """Open ``iv(16) || ciphertext`` exactly as the apiserver's CBC transformer does.

    The apiserver's padding check accepts any padding length from 1 up to the whole decrypted length
    (not only up to 16) as long as every padding byte equals it; we mirror that so we read what it
    reads. CBC is unauthenticated: a success proves nothing about integrity.
    """
    if len(blob) < CBC_IV_SIZE:
        raise InvalidCiphertext()
    body = blob[CBC_IV_SIZE:]
    if not body or len(body) % _AES_BLOCK:
        raise InvalidCiphertext()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:CBC_IV_SIZE])).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    pad = padded[-1]
    if pad == 0 or pad > len(padded):
        raise InvalidCiphertext()
    if not hmac.compare_digest(padded[-pad:], bytes([pad]) * pad):
        raise InvalidCiphertext()
    return padded[:-pad]


def hkdf_expand_sha256(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-Expand only (no extract step, no salt), SHA-256."""
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def secretbox_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """NaCl secretbox (XSalsa20-Poly1305). Returns ``nonce(24) || tag(16) || ciphertext``."""
    return bytes(nacl.secret.SecretBox(key).encrypt(plaintext, nonce))


def secretbox_open(key: bytes, blob: bytes) -> bytes:
    """Open ``nonce(24) || tag(16) || ciphertext``; any failure is ``InvalidCiphertext``."""
    if len(blob) < SECRETBOX_NONCE_SIZE + SECRETBOX_TAG_SIZE:
        raise InvalidCiphertext()
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(blob))
    except nacl.exceptions.CryptoError:
        raise InvalidCiphertext() from None
