"""The errors of :mod:`kubeshield.attest`.

    PolicyDenied                       (kubeshield.errors)
    └── AttestationError               evidence does not verify; the message names the failed check
        └── EvidenceFormatError        evidence or collateral cannot be parsed; the message names the field

Every parser in this package raises :class:`EvidenceFormatError` and nothing else for any input bytes:
truncated, oversized, wrong versions, non-canonical encodings. Messages name the structure and field
(``"sgx quote: header.version: unsupported value 7"``) and never carry key material.
"""

from __future__ import annotations

from kubeshield.errors import PolicyDenied

__all__ = ["AttestationError", "EvidenceFormatError"]


class AttestationError(PolicyDenied):
    """Evidence does not verify. The message names the failed check."""


class EvidenceFormatError(AttestationError):
    """Evidence or collateral cannot be parsed. The message names the structure and the field."""
