"""Value encryption of SOPS v3 (``aes/cipher.go``): ``ENC[AES256_GCM,data:...,iv:...,tag:...,type:...]``.

Hazardous internals: callers use :class:`ValueCipher`, which draws IVs itself. Format::

    ENC[AES256_GCM,data:<b64 ciphertext>,iv:<b64 iv>,tag:<b64 16-byte tag>,type:<type>]

* AES-256-GCM, a 32-byte IV (sops' ``nonceSize``; on decrypt the IV length is taken from the value),
  the 16-byte tag split off the end; standard base64 with padding.
* AAD is the key path joined with ``:`` plus a trailing ``:`` (list indices are not part of it);
  the MAC uses the ``lastmodified`` string instead.
* Plaintext bytes by type: ``str`` raw UTF-8, ``int`` decimal, ``float`` Go's
  ``FormatFloat(v, 'f', -1, 64)``, ``bool`` ``True``/``False``, ``time`` RFC 3339 with nanoseconds,
  ``comment`` the comment text. ``bytes`` (binary store) are encrypted as ``str``, as sops does.
* The empty string (and an empty comment) is never encrypted: it stays ``""``.

IV reuse ("the stash", as sops): a value decrypted with :meth:`ValueCipher.decrypt` remembers its IV under
(aad, plaintext); encrypting the same plaintext at the same path again reuses it, so an unchanged value
keeps its ciphertext and diffs stay small. Only the same (key, aad, plaintext) ever reuses an IV, which
gives the same ciphertext again and reveals nothing new.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import InvalidCiphertext
from kubeshield.sops import _gofmt
from kubeshield.sops.tree import Comment, Timestamp

__all__ = ["ENC_PREFIX", "ValueCipher", "is_encrypted_value", "plain_bytes"]

ENC_PREFIX: Final = "ENC[AES256_GCM,"
_NONCE_SIZE: Final = 32
_ENC_RE: Final = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]", re.S)
# what sops itself writes: each field once, base64 or a type name, nothing after "]". A value it matches
# splits exactly as _ENC_RE splits it (no field can hold ",iv:", ",tag:", ",type:" or "]"), in one pass
# instead of _ENC_RE's backtracking from the end of the text for each field.
_ENC_STRICT: Final = re.compile(
    r"ENC\[AES256_GCM,data:([A-Za-z0-9+/=]+),iv:([A-Za-z0-9+/=]+),tag:([A-Za-z0-9+/=]+),type:([a-z0-9]+)\]"
)
_IV_BATCH: Final = 128  # IVs drawn from os.urandom per call


def is_encrypted_value(value: object) -> bool:
    return isinstance(value, str) and value.startswith(ENC_PREFIX)


def plain_bytes(value: Any) -> tuple[bytes, str]:
    """The bytes sops encrypts and hashes for a leaf, and its ``type:`` name."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape"), "str"
    if isinstance(value, bool):
        return (b"True" if value else b"False"), "bool"
    if isinstance(value, int):
        return str(value).encode("ascii"), "int"
    if isinstance(value, float):
        return _gofmt.format_float_f(value).encode("ascii"), "float"
    if isinstance(value, Timestamp):
        return value.rfc3339().encode("ascii"), "time"
    if isinstance(value, Comment):
        return value.value.encode("utf-8", "surrogateescape"), "comment"
    if isinstance(value, bytes | bytearray):
        return bytes(value), "str"
    raise TypeError(f"a value of type {type(value).__name__} cannot be encrypted")


def _b64decode(text: str) -> bytes:
    # what base64.b64decode(validate=True) does, without its wrapper (three calls per value);
    # a str that is not ASCII is a ValueError
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidCiphertext() from None


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _decode_typed(data: bytes, kind: str) -> Any:
    """sops' type switch on decrypt. Malformed text is the opaque ``InvalidCiphertext``."""
    try:
        if kind == "str":
            return data.decode("utf-8", "surrogateescape")
        if kind == "comment":
            return Comment(data.decode("utf-8", "surrogateescape"))
        text = data.decode("ascii")
        if kind in ("int", "int64"):
            return _gofmt.parse_int(text)
        if kind == "float":
            return _gofmt.parse_float(text)
        if kind == "bool":
            return _gofmt.parse_bool(text)
        if kind == "time":
            return Timestamp.parse_rfc3339(text)
        if kind == "bytes":
            return data
    except (UnicodeDecodeError, ValueError):
        raise InvalidCiphertext() from None
    raise InvalidCiphertext()


class ValueCipher:
    """Encrypts and decrypts tree values with one 32-byte data key. Not thread-safe (the stash).

    ``remember_ivs=False`` skips the stash (a plain decrypt that re-encrypts nothing). With the default
    ``os.urandom``, IVs are drawn 128 at a time (one system call instead of one per value); each is used
    once, as before.
    """

    def __init__(
        self, data_key: bytes, *, rng: Callable[[int], bytes] = os.urandom, remember_ivs: bool = True
    ) -> None:
        if not isinstance(data_key, bytes) or len(data_key) != 32:
            raise ValueError("the SOPS data key must be 32 bytes")
        self._aead = AESGCM(data_key)
        self._rng = rng
        self._remember = remember_ivs
        self._ivs = b""
        self._iv_at = 0
        self._stash: dict[tuple[str, str, bytes], bytes] = {}

    def _new_iv(self) -> bytes:
        if self._rng is not os.urandom:
            return self._rng(_NONCE_SIZE)
        at = self._iv_at
        if at + _NONCE_SIZE > len(self._ivs):
            self._ivs, at = os.urandom(_NONCE_SIZE * _IV_BATCH), 0
        self._iv_at = at + _NONCE_SIZE
        return self._ivs[at : at + _NONCE_SIZE]

    def encrypt(self, value: Any, *, aad: str) -> str:
        """``ENC[...]`` for ``value`` at path ``aad``; ``""`` stays ``""``."""
        data, kind = plain_bytes(value)
        return self.encrypt_plain(data, kind, aad=aad)

    def encrypt_plain(self, data: bytes, kind: str, *, aad: str) -> str:
        """:meth:`encrypt` of a value already turned into ``plain_bytes(value)`` (the MAC needs them too)."""
        if not data and kind in ("str", "comment"):
            return ""
        iv = self._stash.get((aad, kind, data)) if self._stash else None
        if iv is None:
            iv = self._new_iv()
        sealed = self._aead.encrypt(iv, data, aad.encode("utf-8", "surrogateescape"))
        return f"ENC[AES256_GCM,data:{_b64(sealed[:-16])},iv:{_b64(iv)},tag:{_b64(sealed[-16:])},type:{kind}]"

    def decrypt(self, text: str, *, aad: str) -> Any:
        """The typed plaintext of one ``ENC[...]`` value. Any failure is ``InvalidCiphertext``."""
        if text == "":
            return ""
        match = _ENC_STRICT.fullmatch(text) or _ENC_RE.match(text)
        if match is None:
            raise InvalidCiphertext()
        data = _b64decode(match.group(1))
        iv = _b64decode(match.group(2))
        tag = _b64decode(match.group(3))
        kind = match.group(4)
        if len(tag) != 16 or not iv:
            raise InvalidCiphertext()
        try:
            plain = self._aead.decrypt(iv, data + tag, aad.encode("utf-8", "surrogateescape"))
        except (InvalidTag, ValueError, OverflowError):
            raise InvalidCiphertext() from None
        value = _decode_typed(plain, kind)
        if self._remember:
            stash_kind = "str" if kind == "bytes" else kind
            self._stash[(aad, stash_kind, plain)] = iv
        return value
