"""Certificate chains and CRLs for the attestation verifiers, on top of pyca/cryptography.

Only the PEM *framing* is hand-written (to match what Intel's quotes carry and what dcap-qvl accepts):
blocks ``-----BEGIN <L>-----`` ... ``-----END <L>-----`` in order, anything outside a block ignored,
a BEGIN/END label mismatch an error, ASCII whitespace inside the base64 ignored, and the base64 strict
and canonical (no stray characters, correct padding, zero trailing bits). Every signature, name and
time check is cryptography's.

Path building (:func:`verify_chain`) follows the rules a WebPKI verifier applies to DCAP chains: the
first certificate is the leaf; an issuer is looked for first among the pinned anchors (name match and a
valid signature), then among the other certificates given (name match, CA basic constraint, valid
signature; one that does not parse is passed over), to a depth of :data:`MAX_DEPTH`; each certificate
on the path must be valid at ``at``. Revocation: every certificate on the path below the anchor must be
covered by a CRL issued (signed, name-matched) by its issuer, current at ``at``, that does not list
it; no covering CRL is an error ("unknown revocation status"), as is a revoked serial.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubeshield.attest import _cache
from kubeshield.attest._der import signature_is_whole_octets
from kubeshield.attest.errors import AttestationError, EvidenceFormatError

__all__ = [
    "MAX_DEPTH",
    "ChainError",
    "RevocationError",
    "load_certificate",
    "load_crl",
    "parse_pem_blocks",
    "verify_chain",
    "verify_signed_by",
]

MAX_DEPTH = 6
_BEGIN = re.compile(rb"-----BEGIN ([^\r\n-]*)-----")
_WS = re.compile(rb"[ \t\n\r\x0b\x0c]")
_MAX_PEM_BLOCKS = 16


class ChainError(AttestationError):
    """A certificate chain does not lead to a pinned anchor (signature, name, validity, basic constraints)."""


class RevocationError(ChainError):
    """A CRL is missing, invalid, stale, or lists a certificate of the chain (the message says which)."""


def _strict_b64(data: bytes, what: str) -> bytes:
    body = _WS.sub(b"", data)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"{what}: invalid base64 in a PEM block") from None
    if base64.b64encode(raw) != body:
        raise EvidenceFormatError(f"{what}: non-canonical base64 in a PEM block")
    return raw


def parse_pem_blocks(data: bytes, *, what: str) -> list[bytes]:
    """The DER contents of every PEM block in ``data`` in order (framing rules in the module docstring).

    An unterminated block at the end is ignored (a truncated certification data loses its last
    certificate, the root, which is pinned anyway).
    """
    out: list[bytes] = []
    pos = 0
    while True:
        m = _BEGIN.search(data, pos)
        if m is None:
            return out
        label = m.group(1)
        end_marker = b"-----END "
        end = data.find(end_marker, m.end())
        close = data.find(b"-----", end + len(end_marker)) if end >= 0 else -1
        if close < 0:  # an unterminated last block is ignored, as the PEM parser dcap-qvl uses does
            return out
        if data[end + len(end_marker) : close] != label:
            raise EvidenceFormatError(f"{what}: PEM block {len(out)}: mismatching BEGIN and END labels")
        out.append(_strict_b64(data[m.end() : end], what))
        if len(out) > _MAX_PEM_BLOCKS:
            raise EvidenceFormatError(f"{what}: more than {_MAX_PEM_BLOCKS} PEM blocks")
        pos = close + 5


@functools.lru_cache(maxsize=256)
def _load_certificate_cached(der: bytes, allow_zero_serial: bool) -> x509.Certificate | str:
    try:
        return _load_certificate(der, allow_zero_serial=allow_zero_serial)
    except ValueError as exc:
        return str(exc)


def load_certificate(der: bytes, *, allow_zero_serial: bool = False) -> x509.Certificate:
    """:func:`_load_certificate`, memoized by the DER bytes (certificates are immutable)."""
    result = _load_certificate_cached(bytes(der), allow_zero_serial)
    if isinstance(result, str):
        raise ValueError(result)
    return result


def _load_certificate(der: bytes, *, allow_zero_serial: bool = False) -> x509.Certificate:
    """Parse a DER certificate *completely* (cryptography parses fields lazily); ValueError if any fails.

    ``allow_zero_serial`` accepts a serial number of 0 (AMD issues every VCEK with serial 0), which
    cryptography warns about; any other warning still refuses the certificate.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cert = x509.load_der_x509_certificate(der)
            _ = (cert.subject, cert.issuer, cert.serial_number, cert.not_valid_before_utc)
            _ = (cert.not_valid_after_utc, cert.extensions, cert.public_key(), cert.signature)
            _ = (cert.tbs_certificate_bytes, cert.signature_algorithm_oid)
    except Exception as exc:  # cryptography raises ValueError, InvalidVersion, DuplicateExtension, ...
        raise ValueError(f"certificate does not parse: {type(exc).__name__}") from None
    if allow_zero_serial:
        caught = [w for w in caught if "serial number" not in str(w.message)]
    if caught:  # e.g. a country name that is not 2 letters: refused rather than warned about on every use
        raise ValueError("certificate is malformed (cryptography warns about it)")
    if not signature_is_whole_octets(der):
        raise ValueError("certificate is malformed (signature BIT STRING with unused bits)")
    return cert


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise ChainError unless ``issuer`` is ``cert``'s issuer by name and signature (EC, RSA, RSA-PSS)."""
    parts = (
        cert.tbs_certificate_bytes,
        cert.signature,
        cert.signature_algorithm_oid.dotted_string.encode(),
        issuer.subject.public_bytes(),  # verify_directly_issued_by also compares the names
        issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    try:
        _cache.checked("cert", parts, lambda: cert.verify_directly_issued_by(issuer))
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise ChainError(
            f"certificate {cert.subject.rfc4514_string()!r} is not signed by "
            f"{issuer.subject.rfc4514_string()!r} ({type(exc).__name__})"
        ) from None


def _check_time(cert: x509.Certificate, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise ChainError(
            f"certificate {cert.subject.rfc4514_string()!r} is not yet valid at {at.isoformat()} "
            f"(not before {cert.not_valid_before_utc.isoformat()})"
        )
    if at > cert.not_valid_after_utc:
        raise ChainError(
            f"certificate {cert.subject.rfc4514_string()!r} expired at "
            f"{cert.not_valid_after_utc.isoformat()} "
            f"(verification time {at.isoformat()})"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    except ValueError:
        return False
    return bool(bc.ca)


def load_crl(der: bytes, *, what: str) -> x509.CertificateRevocationList:
    """Parse a DER CRL completely; ``EvidenceFormatError`` naming ``what`` when it does not parse.

    Memoized by the DER bytes (a CRL object is immutable; a collateral's CRLs repeat across quotes).
    """
    result = _load_crl_cached(bytes(der))
    if result is None:
        raise EvidenceFormatError(f"{what}: not a DER CRL (or a malformed one)")
    return result


@functools.lru_cache(maxsize=64)
def _load_crl_cached(der: bytes) -> x509.CertificateRevocationList | None:
    try:
        return _load_crl(der, what="crl")
    except EvidenceFormatError:
        return None


def _load_crl(der: bytes, *, what: str) -> x509.CertificateRevocationList:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            crl = x509.load_der_x509_crl(der)
            _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.signature, crl.tbs_certlist_bytes)
            _ = [r.serial_number for r in crl]
    except Exception:  # ValueError, DuplicateExtension, UnsupportedAlgorithm, ...
        raise EvidenceFormatError(f"{what}: not a DER CRL") from None
    if caught:
        raise EvidenceFormatError(f"{what}: malformed CRL")
    if not signature_is_whole_octets(der):
        raise EvidenceFormatError(f"{what}: malformed CRL (signature BIT STRING with unused bits)")
    return crl


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False

    def verify() -> None:
        if not crl.is_signature_valid(key):
            raise InvalidSignature

    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    parts = (crl.tbs_certlist_bytes, crl.signature, spki)
    try:
        _cache.checked("crl", parts, verify)
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        return False
    return True


def _check_revocation(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime,
) -> None:
    covering = [crl for crl in crls if crl.issuer == cert.issuer]
    if not covering:
        raise RevocationError(
            f"unknown revocation status of {cert.subject.rfc4514_string()!r}: no CRL from its issuer "
            f"{cert.issuer.rfc4514_string()!r} in the collateral"
        )
    for crl in covering:
        if not _crl_signed_by(crl, issuer):
            raise RevocationError(
                f"the CRL of {issuer.subject.rfc4514_string()!r} has an invalid signature "
                "for its issuer's key"
            )
        if at < crl.last_update_utc:
            raise RevocationError(
                f"the CRL of {issuer.subject.rfc4514_string()!r} is not yet valid at {at.isoformat()} "
                f"(thisUpdate {crl.last_update_utc.isoformat()})"
            )
        next_update = crl.next_update_utc
        if next_update is not None and at > next_update:
            raise RevocationError(
                f"the CRL of {issuer.subject.rfc4514_string()!r} is stale at {at.isoformat()} "
                f"(nextUpdate {next_update.isoformat()})"
            )
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise RevocationError(
                f"certificate {cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x}) is revoked"
            )


@dataclass(frozen=True, slots=True)
class _Path:
    certs: tuple[x509.Certificate, ...]  # leaf first, the anchor last


def _build(
    cert: x509.Certificate,
    pool: Sequence[bytes],
    anchors: Sequence[x509.Certificate],
    at: datetime,
    depth: int,
) -> _Path:
    if depth > MAX_DEPTH:
        raise ChainError(f"certificate chain longer than {MAX_DEPTH}")
    last: ChainError | None = None
    for anchor in anchors:
        if anchor.subject != cert.issuer:
            continue
        try:
            verify_signed_by(cert, anchor)
        except ChainError as exc:
            last = exc
            continue
        return _Path((cert, anchor))
    for der in pool:
        try:
            candidate = load_certificate(der)
        except ValueError:
            continue
        if candidate.subject != cert.issuer or candidate == cert or not _is_ca(candidate):
            continue
        try:
            _check_time(candidate, at)
            verify_signed_by(cert, candidate)
            rest = _build(candidate, [d for d in pool if d != der], anchors, at, depth + 1)
        except ChainError as exc:
            last = exc
            continue
        return _Path((cert, *rest.certs))
    if last is not None:
        raise last
    raise ChainError(f"unknown issuer {cert.issuer.rfc4514_string()!r}: not a pinned root nor in the chain")


def verify_chain(
    chain: Sequence[bytes],
    *,
    anchors: Sequence[x509.Certificate],
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] | None = None,
    what: str,
) -> list[x509.Certificate]:
    """Verify DER ``chain`` (leaf first) to one of ``anchors``; returns the path (leaf ... anchor).

    With ``crls`` (may be empty) every certificate below the anchor needs a covering, current CRL.
    Raises ``EvidenceFormatError`` when the leaf does not parse, ``ChainError``/``RevocationError``.
    """
    if not chain:
        raise EvidenceFormatError(f"{what}: no certificate")
    if len(chain) > MAX_DEPTH + 1:
        raise ChainError(f"{what}: certificate chain of {len(chain)} is longer than {MAX_DEPTH + 1}")
    try:
        leaf = load_certificate(chain[0])
    except ValueError:
        raise EvidenceFormatError(f"{what}: the leaf certificate does not parse") from None
    try:
        _check_time(leaf, at)
        path = _build(leaf, list(chain[1:]), anchors, at, 1)
        if crls is not None:
            for cert, issuer in zip(path.certs, path.certs[1:], strict=False):
                _check_revocation(cert, issuer, crls, at)
    except ChainError as exc:
        raise type(exc)(f"{what}: {exc}") from None
    return list(path.certs)
