"""The age v1 file format (c2sp.org/age), for stanzas that no age library writes for us.

kubeshield writes and reads the ``kubeshield`` stanza itself (see :mod:`.kubeshield`); X25519 and SSH
recipients go through pyrage. Layout::

    age-encryption.org/v1
    -> <type> <arg>...            one stanza per recipient
    <body: unpadded base64, 64-column lines, last line shorter than 64 (maybe empty)>
    --- <HMAC-SHA256(HKDF(file_key, "", "header"), header up to and including "---"), unpadded b64>
    <16-byte nonce><STREAM: ChaCha20-Poly1305 64 KiB chunks, key HKDF(file_key, nonce, "payload"),
     chunk nonce = 11-byte big-endian counter || 0x01 on the last chunk, else 0x00>

ASCII armour: ``-----BEGIN AGE ENCRYPTED FILE-----``, padded base64 in 64-column lines, ``-----END AGE
ENCRYPTED FILE-----``. Every parse or authentication failure is ``InvalidCiphertext``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kubeshield.errors import InvalidCiphertext

__all__ = ["Stanza", "armor", "dearmor", "decrypt", "encrypt", "parse_header"]

_INTRO: Final = b"age-encryption.org/v1\n"
_BEGIN: Final = "-----BEGIN AGE ENCRYPTED FILE-----"
_END: Final = "-----END AGE ENCRYPTED FILE-----"
_CHUNK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        line = " ".join(["->", self.type, *self.args]).encode("ascii") + b"\n"
        text = _b64(self.body)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append("")
        return line + "".join(f"{chunk}\n" for chunk in lines).encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: bytes) -> bytes:
    if b"=" in text or b"\r" in text:
        raise InvalidCiphertext()
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCiphertext() from None
    if _b64(data).encode("ascii") != text:  # canonical encodings only
        raise InvalidCiphertext()
    return data


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _header_mac(file_key: bytes, header: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, b"", b"header"), header, sha256).digest()


def encrypt(
    plaintext: bytes, *, file_key: bytes, stanzas: Sequence[Stanza], rng: Callable[[int], bytes] = os.urandom
) -> bytes:
    """A binary age file holding ``plaintext`` whose file key the ``stanzas`` wrap."""
    if len(file_key) != 16:
        raise ValueError("the age file key is 16 bytes")
    header = _INTRO + b"".join(s.encode() for s in stanzas) + b"---"
    out = bytearray(header + b" " + _b64(_header_mac(file_key, header)).encode("ascii") + b"\n")
    nonce = rng(16)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    out += nonce
    chunks = [plaintext[i : i + _CHUNK] for i in range(0, len(plaintext), _CHUNK)] or [b""]
    for counter, chunk in enumerate(chunks):
        last = counter == len(chunks) - 1
        out += aead.encrypt(counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), chunk, None)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class _Parsed:
    stanzas: tuple[Stanza, ...]
    header: bytes
    mac: bytes
    payload: bytes


def parse_header(data: bytes) -> _Parsed:
    """Split a binary age file into its stanzas, MAC'd header, MAC and payload."""
    if not data.startswith(_INTRO):
        raise InvalidCiphertext()
    pos = len(_INTRO)
    stanzas: list[Stanza] = []
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise InvalidCiphertext()
        line = data[pos:end]
        if line.startswith(b"--- "):
            header = data[: pos + 3]
            mac = _unb64(line[4:])
            return _Parsed(tuple(stanzas), header, mac, data[end + 1 :])
        if not line.startswith(b"-> "):
            raise InvalidCiphertext()
        try:
            parts = line[3:].decode("ascii").split(" ")
        except UnicodeDecodeError:
            raise InvalidCiphertext() from None
        if not parts or any(not p for p in parts):
            raise InvalidCiphertext()
        pos = end + 1
        body = b""
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                raise InvalidCiphertext()
            chunk = data[pos:end]
            if len(chunk) > 64:
                raise InvalidCiphertext()
            body += chunk
            pos = end + 1
            if len(chunk) < 64:
                break
        stanzas.append(Stanza(parts[0], tuple(parts[1:]), _unb64(body)))


def decrypt(data: bytes, *, unwrap: Callable[[Stanza], bytes | None]) -> bytes:
    """Decrypt a binary age file; ``unwrap(stanza)`` returns the file key or ``None`` (not ours)."""
    parsed = parse_header(data)
    file_key = None
    for stanza in parsed.stanzas:
        file_key = unwrap(stanza)
        if file_key is not None:
            break
    if file_key is None or len(file_key) != 16:
        raise InvalidCiphertext()
    if not hmac.compare_digest(_header_mac(file_key, parsed.header), parsed.mac):
        raise InvalidCiphertext()
    payload = parsed.payload
    if len(payload) < 16 + 16:
        raise InvalidCiphertext()
    aead = ChaCha20Poly1305(_hkdf(file_key, payload[:16], b"payload"))
    body = payload[16:]
    out = bytearray()
    size = _CHUNK + 16
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    for counter, chunk in enumerate(chunks):
        last = counter == len(chunks) - 1
        try:
            out += aead.decrypt(counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), chunk, None)
        except InvalidTag:
            raise InvalidCiphertext() from None
    return bytes(out)


def armor(data: bytes) -> str:
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def dearmor(text: str | bytes) -> bytes:
    """The binary age file inside an armoured one (binary input is returned as it is)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    stripped = raw.strip()
    if not stripped.startswith(_BEGIN.encode()):
        return raw
    lines = stripped.decode("ascii", "replace").splitlines()
    if lines[-1].strip() != _END:
        raise InvalidCiphertext()
    try:
        return base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCiphertext() from None
