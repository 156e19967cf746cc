"""Per-ServiceAccount sealed values: the byte format, its text form, sealing and opening.

A sealed value can be opened only with the cluster's node sealing key (:mod:`.sealing_keys`), and the
release paths hand its plaintext only to a pod whose ServiceAccount token proves the identity in its
binding (:mod:`.identity`). Text form (fits a ConfigMap value, an annotation, a SecretProviderClass
parameter)::

    kubeshield:node:v1:<base64url without padding of the bytes below>

Bytes::

    offset  size  field
    0       1     format version            0x01
    1       1     mode                      0x01 "key": sealed by a holder of the sealing key
                                            0x02 "public": sealed offline to the public sealing key
    2       4     key version               uint32 big-endian: which sealing-key version opens it
    6       2     binding length L          uint16 big-endian, 1..4096
    8       L     binding                   canonical JSON (identity.Binding.to_bytes)
    8+L     32    ephemeral X25519 key      mode 0x02 only
    ...     12    nonce                     random
    ...     n+16  AES-256-GCM ciphertext || tag

    AAD = b"kubeshield/node/v1\\x00" || every byte before the nonce (version, mode, key version,
          binding, ephemeral key)

The AES-256-GCM key is per identity (``namespace:serviceaccount``), derived from the sealing key's
root secret R_v of version v (32 random bytes wrapped by a kubeshield key backend)::

    mode 0x01:  K = HKDF-SHA256(ikm=R_v, salt="", info=INFO)
    mode 0x02:  s_v = X25519 private key HKDF-SHA256(ikm=R_v, salt="", info="kubeshield/node/v1/x25519")
                K = HKDF-SHA256(ikm=X25519(e, S_v), salt=E || S_v, info=INFO)    (e, E ephemeral; S_v public)
    INFO = b"kubeshield/node/v1/identity\\x00" || namespace || b"\\x00" || serviceaccount

So a value sealed for ``ns-a:app`` is encrypted under a key no other identity's values use, its
binding (identity, audience, pod selector) cannot be changed without breaking the tag, and rotation
works by key version: new values use the newest version, every version still held opens. Any failure
to open (wrong key, tampered byte, unknown mode) is the opaque :class:`~kubeshield.errors.InvalidCiphertext`;
a text that is not a sealed value at all also raises it from :func:`parse_sealed`.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kubeshield.errors import InvalidCiphertext, InvalidRequest
from kubeshield.node.identity import Binding

__all__ = [
    "MAX_PLAINTEXT",
    "MODE_KEY",
    "MODE_PUBLIC",
    "PREFIX",
    "SealedValue",
    "derive_public_key",
    "is_sealed_text",
    "open_sealed",
    "parse_sealed",
    "seal_to_public",
    "seal_with_root",
]

PREFIX = "kubeshield:node:v1:"
VERSION = 0x01
MODE_KEY = 0x01
MODE_PUBLIC = 0x02
MAX_PLAINTEXT = 1 << 20  # 1 MiB: a Secret's limit, and far below an annotation's total
_MAX_BINDING = 4096
_LABEL = b"kubeshield/node/v1\x00"
_INFO = b"kubeshield/node/v1/identity\x00"
_X25519_INFO = b"kubeshield/node/v1/x25519"
_NONCE, _TAG, _EPK = 12, 16, 32
_MAX_TEXT = len(PREFIX) + ((8 + _MAX_BINDING + _EPK + _NONCE + MAX_PLAINTEXT + _TAG) * 4 + 2) // 3


@dataclass(frozen=True, slots=True)
class SealedValue:
    """A parsed sealed value. Its public parts (``binding``, ``key_version``, ``mode``) are readable."""

    mode: int
    key_version: int
    binding: Binding
    ephemeral: bytes  # 32 bytes in mode 0x02, empty in mode 0x01
    nonce: bytes
    ciphertext: bytes
    header: bytes  # every byte before the nonce (the AAD after the label)

    def __repr__(self) -> str:  # never print ciphertext
        return (
            f"SealedValue(mode={self.mode}, key_version={self.key_version}, "
            f"binding={self.binding.describe()!r}, ciphertext=<{len(self.ciphertext)} bytes>)"
        )


def _hkdf(ikm: bytes, *, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(ikm)


def _identity_info(binding: Binding) -> bytes:
    ident = binding.identity
    return _INFO + ident.namespace.encode("ascii") + b"\x00" + ident.service_account.encode("ascii")


def _x25519_private(root: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(_hkdf(root, salt=b"", info=_X25519_INFO))


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive_public_key(root: bytes) -> bytes:
    """The raw 32-byte X25519 public sealing key of root secret ``root``."""
    _check_root(root)
    return _raw_public(_x25519_private(root).public_key())


def _check_root(root: bytes) -> None:
    if not isinstance(root, bytes) or len(root) != 32:
        raise ValueError("a sealing root secret is 32 bytes")


def _check_plaintext(plaintext: bytes) -> None:
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if len(plaintext) > MAX_PLAINTEXT:
        raise InvalidRequest(f"a sealed value holds at most {MAX_PLAINTEXT} bytes, got {len(plaintext)}")


def _header(mode: int, key_version: int, binding: Binding, ephemeral: bytes) -> bytes:
    if not 1 <= key_version <= 0xFFFFFFFF:
        raise ValueError("key_version must be 1..2**32-1")
    data = binding.to_bytes()
    return struct.pack(">BBIH", VERSION, mode, key_version, len(data)) + data + ephemeral


def _encode(header: bytes, nonce: bytes, ciphertext: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(header + nonce + ciphertext).rstrip(b"=").decode("ascii")


def seal_with_root(
    plaintext: bytes,
    *,
    binding: Binding,
    root: bytes,
    key_version: int,
    rng: Callable[[int], bytes] = os.urandom,
) -> str:
    """Mode 0x01: seal with the root secret itself (a holder of the sealing key). Returns the text form."""
    _check_root(root)
    _check_plaintext(plaintext)
    header = _header(MODE_KEY, key_version, binding, b"")
    nonce = rng(_NONCE)
    key = _hkdf(root, salt=b"", info=_identity_info(binding))
    return _encode(header, nonce, AESGCM(key).encrypt(nonce, plaintext, _LABEL + header))


def seal_to_public(
    plaintext: bytes,
    *,
    binding: Binding,
    public_key: bytes,
    key_version: int,
    rng: Callable[[int], bytes] = os.urandom,
) -> str:
    """Mode 0x02: seal offline to the raw X25519 public sealing key of ``key_version``."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise ValueError("a public sealing key is 32 raw X25519 bytes")
    _check_plaintext(plaintext)
    peer = X25519PublicKey.from_public_bytes(public_key)
    eph = X25519PrivateKey.from_private_bytes(rng(32))
    eph_public = _raw_public(eph.public_key())
    header = _header(MODE_PUBLIC, key_version, binding, eph_public)
    key = _hkdf(eph.exchange(peer), salt=eph_public + public_key, info=_identity_info(binding))
    nonce = rng(_NONCE)
    return _encode(header, nonce, AESGCM(key).encrypt(nonce, plaintext, _LABEL + header))


def is_sealed_text(text: str) -> bool:
    """Whether ``text`` has the sealed-value prefix (it may still fail to parse)."""
    return isinstance(text, str) and text.strip().startswith(PREFIX)


def parse_sealed(text: str) -> SealedValue:
    """Parse the text form (surrounding whitespace allowed). Anything malformed is ``InvalidCiphertext``."""
    if not isinstance(text, str):
        raise InvalidCiphertext()
    text = text.strip()
    if not text.startswith(PREFIX) or len(text) > _MAX_TEXT:
        raise InvalidCiphertext()
    body = text[len(PREFIX) :]
    if "=" in body or len(body) % 4 == 1:
        raise InvalidCiphertext()
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCiphertext() from None
    if _encode(b"", b"", raw) != text:  # one encoding per value (no stray bits, no other alphabet)
        raise InvalidCiphertext()
    if len(raw) < 8:
        raise InvalidCiphertext()
    version, mode, key_version, blen = struct.unpack(">BBIH", raw[:8])
    if version != VERSION or mode not in (MODE_KEY, MODE_PUBLIC) or key_version == 0:
        raise InvalidCiphertext()
    if not 1 <= blen <= _MAX_BINDING:
        raise InvalidCiphertext()
    epk = _EPK if mode == MODE_PUBLIC else 0
    end = 8 + blen + epk
    if len(raw) < end + _NONCE + _TAG:
        raise InvalidCiphertext()
    try:
        binding = Binding.from_bytes(raw[8 : 8 + blen])
    except InvalidRequest:
        raise InvalidCiphertext() from None
    return SealedValue(
        mode=mode,
        key_version=key_version,
        binding=binding,
        ephemeral=raw[8 + blen : end],
        nonce=raw[end : end + _NONCE],
        ciphertext=raw[end + _NONCE :],
        header=raw[:end],
    )


def open_sealed(value: SealedValue, *, root: bytes) -> bytes:
    """Decrypt ``value`` with the root secret of its key version. Any failure is ``InvalidCiphertext``."""
    _check_root(root)
    info = _identity_info(value.binding)
    try:
        if value.mode == MODE_KEY:
            key = _hkdf(root, salt=b"", info=info)
        else:
            private = _x25519_private(root)
            own_public = _raw_public(private.public_key())
            shared = private.exchange(X25519PublicKey.from_public_bytes(value.ephemeral))
            key = _hkdf(shared, salt=value.ephemeral + own_public, info=info)
        return AESGCM(key).decrypt(value.nonce, value.ciphertext, _LABEL + value.header)
    except (InvalidTag, ValueError):
        raise InvalidCiphertext() from None
