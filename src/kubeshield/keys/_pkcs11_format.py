"""Byte formats of the PKCS#11 backend (pure: no SDK, no I/O).

Wrapped ciphertext (built by :func:`encode_ciphertext`, read by :func:`decode_ciphertext`)::

    0x01                  format version byte
    version   uint32 BE   the KEK version ``n``          } together they name one key object, whose
    tag       8 bytes     the key object's random tag    } CKA_ID is ``kubeshield:v<n>:<hex(tag)>``
    iv        12 bytes    random GCM nonce from the backend's rng
    ct || tag len(pt)+16  AES-256-GCM output of the token (CKM_AES_GCM, 128-bit tag)

The GCM additional data (:func:`gcm_aad`) binds the format, the full key_id (token serial, key label and
version) and the caller's aad, mirroring the local backend::

    b"kubeshield/pkcs11/v1\\x00" || key_id (ASCII) || 0x00 || aad

so a ciphertext replayed under another token, another label, another version or another aad fails its
tag. Version and tag are in the clear in the header only to pick the key object (KMS v1 sends no
key_id); a forged header selects another key (or none), and the GCM check then fails.

key_id (:func:`make_key_id`): ``pkcs11:<token-serial>:<key-label>:v<n>-<hex(tag)>``. It holds no
secret: serial and label are public token metadata, ``n`` orders the versions, and the random tag
(chosen when the key object is generated) makes every key object's identity unique even when two
processes rotate at the same moment and both create a version ``n``.

Key objects carry CKA_LABEL = the key label and CKA_ID = ``b"kubeshield:v<n>:<hex(tag)>"``
(:func:`object_id`, :func:`parse_object_id`).
"""

from __future__ import annotations

import re
import struct

from kubeshield.errors import ConfigError, InvalidCiphertext

__all__ = [
    "FORMAT_V1",
    "IV_SIZE",
    "KEY_TAG_SIZE",
    "MAX_VERSION",
    "TAG_SIZE",
    "decode_ciphertext",
    "encode_ciphertext",
    "gcm_aad",
    "make_key_id",
    "object_id",
    "parse_object_id",
    "validate_key_label",
]

FORMAT_V1 = 0x01
IV_SIZE = 12
TAG_SIZE = 16
KEY_TAG_SIZE = 8
MAX_VERSION = 0xFFFFFFFF
_HEADER = struct.Struct(">BI8s")
_AAD_PREFIX = b"kubeshield/pkcs11/v1\x00"
_OBJECT_ID = re.compile(rb"kubeshield:v([1-9][0-9]{0,9}):([0-9a-f]{16})")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


def validate_key_label(label: str) -> str:
    """Return ``label`` if it is a safe key label (1-64 of ``A-Za-z0-9._-``), else raise ConfigError."""
    if not isinstance(label, str) or _LABEL.fullmatch(label) is None:
        raise ConfigError("keyLabel must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")
    return label


def _check(version: int, tag: bytes) -> None:
    if not 1 <= version <= MAX_VERSION:
        raise ValueError("version out of range")
    if len(tag) != KEY_TAG_SIZE:
        raise ValueError("key tag must be 8 bytes")


def make_key_id(*, serial: str, label: str, version: int, tag: bytes) -> str:
    """``pkcs11:<serial>:<label>:v<version>-<hex(tag)>``: public identity of one key object."""
    _check(version, tag)
    return f"pkcs11:{serial}:{label}:v{version}-{tag.hex()}"


def object_id(version: int, tag: bytes) -> bytes:
    """CKA_ID of the key object holding KEK ``version`` with random ``tag``."""
    _check(version, tag)
    return b"kubeshield:v%d:%s" % (version, tag.hex().encode())


def parse_object_id(value: bytes) -> tuple[int, bytes] | None:
    """(version, tag) of a CKA_ID written by :func:`object_id`, or None for anything else."""
    match = _OBJECT_ID.fullmatch(bytes(value))
    if match is None:
        return None
    version = int(match.group(1))
    if version > MAX_VERSION:
        return None
    return version, bytes.fromhex(match.group(2).decode())


def gcm_aad(*, key_id: str, aad: bytes) -> bytes:
    """The GCM additional data: format label, key_id and the caller's aad (see module docstring)."""
    return _AAD_PREFIX + key_id.encode("ascii") + b"\x00" + aad


def encode_ciphertext(*, version: int, tag: bytes, iv: bytes, sealed: bytes) -> bytes:
    """``0x01 || uint32-BE version || tag(8) || iv(12) || ct||tag``."""
    _check(version, tag)
    if len(iv) != IV_SIZE:
        raise ValueError("iv must be 12 bytes")
    if len(sealed) < TAG_SIZE:
        raise ValueError("sealed output shorter than a GCM tag")
    return _HEADER.pack(FORMAT_V1, version, tag) + iv + sealed


def decode_ciphertext(blob: bytes) -> tuple[int, bytes, bytes, bytes]:
    """Split into (version, key tag, iv, ct||tag). Anything malformed is ``InvalidCiphertext``."""
    if len(blob) < _HEADER.size + IV_SIZE + TAG_SIZE:
        raise InvalidCiphertext()
    fmt, version, tag = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1 or version == 0:
        raise InvalidCiphertext()
    start = _HEADER.size
    return version, bytes(tag), bytes(blob[start : start + IV_SIZE]), bytes(blob[start + IV_SIZE :])
