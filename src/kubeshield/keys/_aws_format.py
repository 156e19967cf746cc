"""Byte formats of the AWS KMS backend (pure: no SDK, no I/O).

Wrapped ciphertext (built by :func:`encode_ciphertext`, read by :func:`decode_ciphertext`)::

    0x01                   format version byte
    generation  uint32 BE  the local rotation generation ``n`` of the key when it wrapped
    blob        rest       AWS KMS ``CiphertextBlob`` (opaque; it names the key and its material)

EncryptionContext sent with Encrypt and required again by Decrypt (:func:`encryption_context`)::

    {"kubeshield:format": "awskms/v1",
     "kubeshield:key-id": "awskms:<key ARN>:<n>",
     "kubeshield:aad":    base64url(SHA-256(aad)), unpadded}

KMS authenticates the context with the ciphertext, so a blob replayed under another key_id, another
generation or another aad is refused (InvalidCiphertextException). The aad is bound through its
SHA-256 rather than in full because the context is logged in clear in CloudTrail and is limited in
size; a collision-resistant digest binds it just as firmly.

key_id (:func:`make_key_id`, :func:`parse_key_id`): ``awskms:<key ARN>:<n>`` with ``n`` = 1 + the
number of completed rotations AWS lists for the key (ListKeyRotations). The ARN in a stored key_id is
the key that wrapped, so Decrypt names that key even after an alias has moved to another one.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

from kubeshield.errors import InvalidCiphertext

__all__ = [
    "FORMAT_V1",
    "MAX_GENERATION",
    "decode_ciphertext",
    "encode_ciphertext",
    "encryption_context",
    "make_key_id",
    "parse_key_arn",
    "parse_key_id",
]

FORMAT_V1 = 0x01
MAX_GENERATION = 0xFFFFFFFF
_HEADER = struct.Struct(">BI")
_CONTEXT_FORMAT = "awskms/v1"
_KEY_ARN = re.compile(r"arn:(aws[a-z-]*):kms:([a-z0-9-]+):([0-9]{12}):key/([A-Za-z0-9-]{1,128})")
_KEY_ID = re.compile(r"awskms:(.+):([1-9][0-9]{0,9})")


def make_key_id(*, arn: str, generation: int) -> str:
    if not 1 <= generation <= MAX_GENERATION:
        raise ValueError("generation out of range")
    return f"awskms:{arn}:{generation}"


def parse_key_arn(arn: str) -> tuple[str, str, str] | None:
    """(partition, region, account) of a KMS *key* ARN, or None for anything else (an alias ARN, junk)."""
    match = _KEY_ARN.fullmatch(arn)
    return None if match is None else (match.group(1), match.group(2), match.group(3))


def parse_key_id(key_id: str) -> tuple[str, int] | None:
    """(key ARN, generation) of a key_id made by :func:`make_key_id`, or None if it is not one."""
    match = _KEY_ID.fullmatch(key_id)
    if match is None or parse_key_arn(match.group(1)) is None:
        return None
    generation = int(match.group(2))
    if generation > MAX_GENERATION:
        return None
    return match.group(1), generation


def encryption_context(*, key_id: str, aad: bytes) -> dict[str, str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(aad).digest()).rstrip(b"=").decode("ascii")
    return {"kubeshield:format": _CONTEXT_FORMAT, "kubeshield:key-id": key_id, "kubeshield:aad": digest}


def encode_ciphertext(*, generation: int, blob: bytes) -> bytes:
    """``0x01 || uint32-BE generation || CiphertextBlob``."""
    if not 1 <= generation <= MAX_GENERATION:
        raise ValueError("generation out of range")
    if not blob:
        raise ValueError("empty CiphertextBlob")
    return _HEADER.pack(FORMAT_V1, generation) + blob


def decode_ciphertext(data: bytes) -> tuple[int, bytes]:
    """(generation, CiphertextBlob). Anything malformed is ``InvalidCiphertext``."""
    if len(data) <= _HEADER.size:
        raise InvalidCiphertext()
    fmt, generation = _HEADER.unpack_from(data)
    if fmt != FORMAT_V1 or generation == 0:
        raise InvalidCiphertext()
    return generation, bytes(data[_HEADER.size :])
