"""The apiserver's own checks on KMS v2 replies and stored ``EncryptedObject`` fields.

They mirror ``ValidateKeyID``, ``validateEncryptedDEKSource`` and ``validateAnnotations`` in
kubernetes/apiserver ``pkg/storage/value/encrypt/envelope/kmsv2/envelope.go`` and
``IsFullyQualifiedDomainName`` in apimachinery ``pkg/util/validation``. All limits are inclusive: a
check fails only when a length *exceeds* the maximum. We use them both on our plugin's own replies (a
violation is our bug: fail closed) and to judge replies and stored values as the apiserver would.

Every failure raises :class:`~kubeshield.errors.ContractViolation` naming the rule. Messages show
lengths, never the ciphertext or annotation values; annotation keys are shown because the contract
makes them public (they are stored in plaintext and must be domain names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kubeshield.errors import ContractViolation

__all__ = [
    "MAX_ANNOTATIONS_BYTES",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_KEY_ID_BYTES",
    "is_fully_qualified_domain_name",
    "validate_annotations",
    "validate_encrypted_dek_source",
    "validate_key_id",
]

MAX_KEY_ID_BYTES = 1024
MAX_CIPHERTEXT_BYTES = 1024
MAX_ANNOTATIONS_BYTES = 32768

_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*")
_DNS1123_LABEL_MAX = 63
_DNS1123_SUBDOMAIN_MAX = 253
_SHOWN_KEY_CHARS = 80


def is_fully_qualified_domain_name(name: str) -> bool:
    """True if ``name`` passes apimachinery's ``IsFullyQualifiedDomainName``.

    That is: non-empty; one trailing dot is ignored; the rest is a lowercase RFC 1123 subdomain of at
    most 253 characters with at least two labels, each label at most 63 characters.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    if not name:
        return False
    if name.endswith("."):
        name = name[:-1]
    if len(name) > _DNS1123_SUBDOMAIN_MAX or _DNS1123_SUBDOMAIN_RE.fullmatch(name) is None:
        return False
    labels = name.split(".")
    if len(labels) < 2:
        return False
    return all(len(label) <= _DNS1123_LABEL_MAX and _DNS1123_LABEL_RE.fullmatch(label) for label in labels)


def _utf8_length(what: str, value: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ContractViolation(f"{what} is not valid UTF-8") from None


def validate_key_id(key_id: str) -> None:
    """key_id must be 1..1024 bytes (UTF-8), as ``ValidateKeyID`` requires."""
    if not isinstance(key_id, str):
        raise TypeError(f"key_id must be str, not {type(key_id).__name__}")
    size = _utf8_length("key_id", key_id)
    if size == 0:
        raise ContractViolation("key_id is empty; it must be 1..1024 bytes")
    if size > MAX_KEY_ID_BYTES:
        raise ContractViolation(f"key_id is {size} bytes, more than the maximum of {MAX_KEY_ID_BYTES}")


def validate_encrypted_dek_source(ciphertext: bytes) -> None:
    """The wrapped DEK/seed (``EncryptResponse.ciphertext``) must be 1..1024 bytes."""
    if not isinstance(ciphertext, bytes):
        raise TypeError(f"ciphertext must be bytes, not {type(ciphertext).__name__}")
    if not ciphertext:
        raise ContractViolation("encrypted DEK source (ciphertext) is empty; it must be 1..1024 bytes")
    if len(ciphertext) > MAX_CIPHERTEXT_BYTES:
        raise ContractViolation(
            f"encrypted DEK source (ciphertext) is {len(ciphertext)} bytes, "
            f"more than the maximum of {MAX_CIPHERTEXT_BYTES}"
        )


def validate_annotations(annotations: Mapping[str, bytes]) -> None:
    """Annotation keys must be FQDNs; all keys plus values together at most 32768 bytes."""
    if not isinstance(annotations, Mapping):
        raise TypeError(f"annotations must be a mapping, not {type(annotations).__name__}")
    total = 0
    for key, value in annotations.items():
        if not isinstance(key, str):
            raise TypeError(f"annotation keys must be str, not {type(key).__name__}")
        if not isinstance(value, bytes):
            raise TypeError(f"annotation values must be bytes, not {type(value).__name__}")
        if not is_fully_qualified_domain_name(key):
            raise ContractViolation(
                f"annotation key {key[:_SHOWN_KEY_CHARS]!a} is not a fully qualified domain name "
                "(lowercase RFC 1123 subdomain, at least two labels, at most 253 characters)"
            )
        total += _utf8_length("an annotation key", key) + len(value)
    if total > MAX_ANNOTATIONS_BYTES:
        raise ContractViolation(
            f"annotations total {total} bytes (keys plus values), more than the maximum of "
            f"{MAX_ANNOTATIONS_BYTES}"
        )
