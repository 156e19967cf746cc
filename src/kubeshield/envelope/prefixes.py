"""The prefixes kube-apiserver puts in front of stored values, and recognising which format a value is.

A value in etcd is ``<prefix><payload>``:

    identity   (none)                           k8s\\x00... protobuf, {... JSON, or \\xd9\\xd9\\xf7 CBOR
    aescbc     k8s:enc:aescbc:v1:<keyName>:     see :mod:`kubeshield.envelope.aes`
    aesgcm     k8s:enc:aesgcm:v1:<keyName>:     see :mod:`kubeshield.envelope.aes`
    secretbox  k8s:enc:secretbox:v1:<keyName>:  see :mod:`kubeshield.envelope.secretbox`
    kms-v1     k8s:enc:kms:v1:<providerName>:   see :mod:`kubeshield.envelope.kmsv1`
    kms-v2     k8s:enc:kms:v2:<providerName>:   see :mod:`kubeshield.envelope.kmsv2`

Key names and v1 provider names may themselves contain ``:``, so a robust reader matches the configured
names (``known_names``) instead of splitting at the next colon.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from kubeshield.envelope import _aead
from kubeshield.envelope.kmsv2 import decode_encrypted_object
from kubeshield.errors import InvalidCiphertext

__all__ = [
    "ENCRYPTED_PREFIX",
    "KINDS",
    "StoredFormat",
    "classify",
    "split_prefix",
    "value_prefix",
]

ENCRYPTED_PREFIX = b"k8s:enc:"

_KIND_PREFIXES: dict[str, bytes] = {
    "aescbc": ENCRYPTED_PREFIX + b"aescbc:v1:",
    "aesgcm": ENCRYPTED_PREFIX + b"aesgcm:v1:",
    "secretbox": ENCRYPTED_PREFIX + b"secretbox:v1:",
    "kms-v1": ENCRYPTED_PREFIX + b"kms:v1:",
    "kms-v2": ENCRYPTED_PREFIX + b"kms:v2:",
}
KINDS: tuple[str, ...] = tuple(_KIND_PREFIXES)

_PROTOBUF_MAGIC = b"k8s\x00"
_JSON_START = b"{"
_CBOR_SELF_DESCRIBE = b"\xd9\xd9\xf7"
# how far into a kms-v2 value we look for the ':' that ends the provider name when names are not known
_MAX_GUESSED_NAME_BYTES = 1024


@dataclass(frozen=True)
class StoredFormat:
    """What a stored value is. ``payload`` is the bytes after the prefix (empty for plaintext/unknown)."""

    format: str
    name: str | None
    encoding: str | None
    payload: bytes

    def __repr__(self) -> str:  # never show the payload
        return (
            f"StoredFormat(format={self.format!r}, name={self.name!r}, encoding={self.encoding!r}, "
            f"payload=<{len(self.payload)} bytes>)"
        )


def _kind_prefix(kind: str) -> bytes:
    if not isinstance(kind, str):
        raise TypeError(f"kind must be str, not {type(kind).__name__}")
    try:
        return _KIND_PREFIXES[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def value_prefix(kind: str, name: str) -> bytes:
    """The exact prefix of values written by provider ``kind`` under key/provider ``name``.

    ``value_prefix("kms-v2", "mykms") == b"k8s:enc:kms:v2:mykms:"``.
    """
    prefix = _kind_prefix(kind)
    if not isinstance(name, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")
    return prefix + name.encode("utf-8") + b":"


def split_prefix(value: bytes, *, kind: str, name: str) -> bytes | None:
    """The payload of ``value`` if it starts with that provider's prefix, else ``None``."""
    value = _aead.require_bytes("value", value)
    prefix = value_prefix(kind, name)
    return value[len(prefix) :] if value.startswith(prefix) else None


def _name_text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _is_encrypted_object(payload: bytes) -> bool:
    try:
        decode_encrypted_object(payload)
    except InvalidCiphertext:
        return False
    return True


def _match_known(kind: str, rest: bytes, names: Collection[str]) -> StoredFormat | None:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"known_names[{kind!r}] must be a collection of str")
    fallback: StoredFormat | None = None
    for name in sorted(names, key=lambda n: (-len(n.encode("utf-8")), n)):
        head = name.encode("utf-8") + b":"
        if not rest.startswith(head):
            continue
        found = StoredFormat(kind, name, None, rest[len(head) :])
        if kind != "kms-v2" or _is_encrypted_object(found.payload):
            return found
        fallback = fallback or found
    return fallback


def _split_guess(kind: str, rest: bytes) -> StoredFormat | None:
    first = rest.find(b":")
    if first < 0:
        return None
    if kind == "kms-v2":
        colon = first
        while 0 <= colon <= _MAX_GUESSED_NAME_BYTES:
            if _is_encrypted_object(rest[colon + 1 :]):
                return StoredFormat(kind, _name_text(rest[:colon]), None, rest[colon + 1 :])
            colon = rest.find(b":", colon + 1)
    return StoredFormat(kind, _name_text(rest[:first]), None, rest[first + 1 :])


def classify(value: bytes, *, known_names: Mapping[str, Collection[str]] | None = None) -> StoredFormat:
    """Say which storage format ``value`` is in, and split off its prefix.

    ``known_names`` maps a kind (``"aesgcm"``, ``"kms-v2"``, ...) to the configured key or provider
    names, so names containing ``:`` match exactly (longest first). Without a matching known name the
    name ends at the next ``:``; for kms-v2 the first ``:`` after which an ``EncryptedObject`` parses
    is chosen. A ``k8s:enc:`` value of no known kind, or with no name separator, is ``"unknown"``.
    """
    value = _aead.require_bytes("value", value)
    if known_names is not None and not isinstance(known_names, Mapping):
        raise TypeError(f"known_names must be a mapping, not {type(known_names).__name__}")
    if value.startswith(ENCRYPTED_PREFIX):
        for kind, prefix in _KIND_PREFIXES.items():
            if not value.startswith(prefix):
                continue
            rest = value[len(prefix) :]
            names = (known_names or {}).get(kind)
            found = _match_known(kind, rest, names) if names else None
            found = found or _split_guess(kind, rest)
            if found is not None:
                return found
            break
        return StoredFormat("unknown", None, None, b"")
    if value.startswith(_PROTOBUF_MAGIC):
        return StoredFormat("plaintext", None, "protobuf", b"")
    if value.startswith(_JSON_START):
        return StoredFormat("plaintext", None, "json", b"")
    if value.startswith(_CBOR_SELF_DESCRIBE):
        return StoredFormat("plaintext", None, "cbor", b"")
    return StoredFormat("unknown", None, None, b"")
