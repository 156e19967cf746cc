"""Verify Intel SGX and TDX DCAP quotes offline, with collateral from a file.

The steps, in order (each failure is the ``reason`` of a not-ok :class:`Verification`):

1. parse the quote (:mod:`kubeshield.attest.dcap_quote`) and the collateral
   (:mod:`kubeshield.attest.dcap_collateral`);
2. time: ``at`` must lie within [issueDate, nextUpdate] of the TCB info and of the QE identity;
3. the QE identity must be for this TEE (``QE`` v2 for SGX, ``TD_QE`` v2/v3 for TDX);
4. the pinned Intel SGX Root CA (:mod:`kubeshield.attest._intel_root`) must be valid at ``at`` and not
   listed by either CRL; both CRLs must parse;
5. the TCB info and QE identity issuer chains must lead to the pinned root (with revocation from the
   CRLs) and their leaf must sign the exact ``tcb_info`` / ``qe_identity`` texts (ECDSA P-256 SHA-256);
6. quote header: attestation key type 2 (ECDSA-256 with P-256); certification data type 5;
7. the PCK chain in the quote must lead to the pinned root; every certificate below it must be covered
   by a current CRL from its issuer that does not list it (no covering CRL: unknown revocation status);
8. the PCK leaf must sign the QE report; the QE report must match the QE identity (MRSIGNER,
   ISVPRODID, MISCSELECT and ATTRIBUTES under their masks) and its ISVSVN selects the QE TCB level;
9. the QE report's report_data[0:32] must be SHA-256(attestation key || QE auth data);
10. the attestation key must sign the quote header and body (the ISV/TD report);
11. the PCK certificate's SGX extension gives FMSPC, PCE ID, CPUSVN and PCESVN; FMSPC and PCE ID must
    equal the TCB info's; a TDX quote needs a TDX TCB info (id TDX, version 3);
12. the first TCB level (Intel orders them newest first) whose every SGX component <= CPUSVN, pcesvn <=
    PCESVN and (TDX) every TDX component <= TEE_TCB_SVN (from index 2 when TEE_TCB_SVN[1] > 0, the TDX
    module then being matched against ``tdxModuleIdentities``) gives the status and advisory IDs;
    no level, or status ``Revoked``, is a failure;
13. the QE's status converges with it as Intel's QVL does (QE OutOfDate makes UpToDate/SWHardeningNeeded
    OutOfDate and Configuration* OutOfDateConfigurationNeeded), advisory IDs are the union;
14. debug enclaves / TDs (SGX ATTRIBUTES.DEBUG, any TD TUD bit), reserved TD attribute bits, a TD without
    SEPT_VE_DISABLE and a TD 1.5 with a non-zero MRSERVICETD are refused last, as dcap-qvl does.

``ok`` is then true and ``status`` is the converged TCB status. Whether e.g.
``ConfigurationAndSWHardeningNeeded`` is acceptable is for the policy (docs/attestation.md).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kubeshield.attest import _cache, _der
from kubeshield.attest._intel_root import INTEL_SGX_ROOT_CA
from kubeshield.attest._x509 import ChainError, load_crl, parse_pem_blocks, verify_chain
from kubeshield.attest.dcap_collateral import (
    Collateral,
    QeIdentity,
    QeTcbLevel,
    TcbInfo,
    TcbLevel,
    parse_collateral,
    parse_qe_identity,
    parse_tcb_info,
    tcb_info_dates,
)
from kubeshield.attest.dcap_quote import (
    ATTESTATION_KEY_ECDSA_P256,
    CERT_PCK_CHAIN,
    Quote,
    TdReport,
    parse_quote,
)
from kubeshield.attest.errors import AttestationError, EvidenceFormatError
from kubeshield.attest.result import Verification

__all__ = ["PckExtension", "parse_pck_extension", "verify_dcap"]

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_FMSPC = SGX_EXTENSION_OID + ".4"
_PCEID = SGX_EXTENSION_OID + ".3"
_TCB = SGX_EXTENSION_OID + ".2"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"


@dataclass(frozen=True, slots=True)
class PckExtension:
    fmspc: bytes
    pce_id: bytes
    cpu_svn: bytes
    pce_svn: int


def _der_int(value: bytes, what: str) -> int:
    if not value or (len(value) > 1 and value[0] == 0 and value[1] < 0x80) or value[0] & 0x80:
        raise EvidenceFormatError(f"{what}: not a non-negative minimal INTEGER")
    return int.from_bytes(value, "big")


def parse_pck_extension(cert: x509.Certificate) -> PckExtension:
    """FMSPC, PCE ID, CPUSVN and PCESVN from the SGX extension of a PCK certificate (memoized by DER)."""
    return _pck_extension(cert.public_bytes(serialization.Encoding.DER))


@functools.lru_cache(maxsize=256)
def _pck_extension(der: bytes) -> PckExtension:
    cert = x509.load_der_x509_certificate(der)
    what = "pck certificate: sgx extension"
    matches = [e for e in cert.extensions if e.oid.dotted_string == SGX_EXTENSION_OID]
    if len(matches) != 1:
        raise EvidenceFormatError(f"{what}: expected exactly one, found {len(matches)}")
    value = matches[0].value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    found: dict[str, bytes] = {}
    for tag, item in _der.sequence_items(raw, what=what):
        if tag != _der.SEQUENCE:
            raise EvidenceFormatError(f"{what}: an entry is not a SEQUENCE")
        t0, oid_raw, pos = _der.read_tlv(item, 0, what=what)
        if t0 != _der.OID:
            raise EvidenceFormatError(f"{what}: an entry does not start with an OID")
        oid = _der.decode_oid(oid_raw, what=what)
        t1, val, end = _der.read_tlv(item, pos, what=what)
        if end != len(item):
            raise EvidenceFormatError(f"{what}: entry {oid} has trailing data")
        if oid == _TCB:
            if t1 != _der.SEQUENCE:
                raise EvidenceFormatError(f"{what}: TCB is not a SEQUENCE")
            for _, sub in _der.sequence_items(bytes([t1]) + _len(val) + val, what=what):
                _, soid, spos = _der.read_tlv(sub, 0, what=what)
                _, sval, _ = _der.read_tlv(sub, spos, what=what)
                found[_der.decode_oid(soid, what=what)] = sval
        else:
            found[oid] = val
    try:
        fmspc, pce_id, cpu_svn, pce_raw = found[_FMSPC], found[_PCEID], found[_CPUSVN], found[_PCESVN]
    except KeyError as exc:
        raise EvidenceFormatError(f"{what}: missing {exc.args[0]}") from None
    if len(fmspc) != 6 or len(pce_id) != 2 or len(cpu_svn) != 16:
        raise EvidenceFormatError(f"{what}: FMSPC, PCE ID or CPUSVN has a wrong length")
    return PckExtension(fmspc, pce_id, cpu_svn, _der_int(pce_raw, f"{what}: PCESVN"))


def _len(value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _raw_sig(sig: bytes, what: str) -> bytes:
    if len(sig) != 64:
        raise AttestationError(f"{what}: signature is {len(sig)} bytes, expected 64 (r||s)")
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _verify_ecdsa(key: object, sig: bytes, data: bytes, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise AttestationError(f"{what}: signing key is not ECDSA P-256")
    der = _raw_sig(sig, what)
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    try:
        _cache.checked(
            "ecdsa-p256-sha256", (data, der, point), lambda: key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        )
    except InvalidSignature:
        raise AttestationError(f"{what}: signature is invalid") from None


def _window(name: str, issue: datetime, next_update: datetime, at: datetime) -> None:
    if at > next_update:
        raise AttestationError(
            f"{name} expired: nextUpdate {next_update.isoformat()} is before the verification time "
            f"{at.isoformat()}"
        )
    if at < issue:
        raise AttestationError(
            f"{name} issue date {issue.isoformat()} is in the future of the verification time "
            f"{at.isoformat()}"
        )


def _qe_level(levels: tuple[QeTcbLevel, ...], svn: int) -> QeTcbLevel | None:
    for level in levels:
        if svn >= level.isv_svn:
            return level
    return None


def _masked(a: bytes, mask: bytes) -> bytes:
    return bytes(x & m for x, m in zip(a, mask, strict=True))


def _check_qe_identity(quote: Quote, ident: QeIdentity) -> QeTcbLevel:
    qe = quote.qe_report
    if qe.mr_signer != ident.mr_signer:
        raise AttestationError("QE report MRSIGNER does not match the QE identity")
    if qe.isv_prod_id != ident.isv_prod_id:
        raise AttestationError("QE report ISVPRODID does not match the QE identity")
    if qe.misc_select & ident.miscselect_mask != ident.miscselect & ident.miscselect_mask:
        raise AttestationError("QE report MISCSELECT does not match the QE identity under its mask")
    if _masked(qe.attributes, ident.attributes_mask) != _masked(ident.attributes, ident.attributes_mask):
        raise AttestationError("QE report ATTRIBUTES do not match the QE identity under its mask")
    level = _qe_level(ident.levels, qe.isv_svn)
    if level is None or level.status == "Revoked":
        raise AttestationError(f"QE report ISVSVN {qe.isv_svn} is revoked (no QE identity TCB level)")
    return level


def _module_status(report: TdReport, info: TcbInfo) -> QeTcbLevel | None:
    """The TDX module's TCB level from ``tdxModuleIdentities`` (TEE_TCB_SVN[1] > 0), else None."""
    major = report.tee_tcb_svn[1]
    if major == 0 or not info.tdx_module_identities:
        module = info.tdx_module
        if module is not None:
            if report.mr_signer_seam != module.mr_signer:
                raise AttestationError("TD report MRSIGNERSEAM does not match the TCB info's tdxModule")
            if _masked(report.seam_attributes, module.attributes_mask) != _masked(
                module.attributes, module.attributes_mask
            ):
                raise AttestationError("TD report SEAMATTRIBUTES do not match the TCB info's tdxModule")
        return None
    wanted = f"TDX_{major:02d}"
    for ident in info.tdx_module_identities:
        if ident.id == wanted:
            if report.mr_signer_seam != ident.mr_signer:
                raise AttestationError(f"TD report MRSIGNERSEAM does not match TDX module identity {wanted}")
            if _masked(report.seam_attributes, ident.attributes_mask) != _masked(
                ident.attributes, ident.attributes_mask
            ):
                raise AttestationError(f"TD report SEAMATTRIBUTES do not match TDX module identity {wanted}")
            level = _qe_level(ident.levels, report.tee_tcb_svn[0])
            if level is None or level.status == "Revoked":
                raise AttestationError(f"TDX module {wanted} SVN {report.tee_tcb_svn[0]} has no TCB level")
            return level
    raise AttestationError(f"TCB info has no TDX module identity {wanted}")


def _platform_level(quote: Quote, pck: PckExtension, info: TcbInfo) -> TcbLevel:
    report = quote.report
    start = 2 if isinstance(report, TdReport) and report.tee_tcb_svn[1] > 0 else 0
    for level in info.levels:
        if pck.pce_svn < level.pce_svn:
            continue
        if any(c < s for c, s in zip(pck.cpu_svn, level.sgx_components, strict=True)):
            continue
        if isinstance(report, TdReport):
            if not level.tdx_components:
                raise AttestationError("TCB info level has no TDX components for a TDX quote")
            if any(
                c < s for c, s in zip(report.tee_tcb_svn[start:], level.tdx_components[start:], strict=True)
            ):
                continue
        return level
    raise AttestationError("no TCB level of the TCB info matches the platform (CPUSVN/PCESVN/TEE_TCB_SVN)")


def _converge(status: str, other: str) -> str:
    if other == "OutOfDate":
        if status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return status


def _check_attributes(report: object) -> None:
    if isinstance(report, TdReport):
        attrs = report.td_attributes
        if attrs[0] != 0:
            raise AttestationError("debug mode is enabled (TD attributes TUD bits are set)")
        reserved_sec = attrs[1] | attrs[2] << 8 | (attrs[3] & 0x0F) << 16
        if reserved_sec or attrs[3] & 0x20 or (int.from_bytes(attrs[4:8], "little") & 0x7FFFFFFF):
            raise AttestationError("reserved bits in TD attributes are set")
        if not attrs[3] & 0x10:
            raise AttestationError("TD attributes: SEPT_VE_DISABLE is not set")
        if report.mr_service_td is not None and any(report.mr_service_td):
            raise AttestationError("TD report 1.5 has a non-zero MRSERVICETD")
    elif getattr(report, "debug", False):
        raise AttestationError("debug mode is enabled (SGX ATTRIBUTES.DEBUG is set)")


def _chain(
    pem: bytes, what: str, at: datetime, crls: list[x509.CertificateRevocationList]
) -> x509.Certificate:
    certs = parse_pem_blocks(pem, what=what)
    if not certs:
        raise ChainError(f"{what}: certificate chain is too short (no certificate)")
    return verify_chain(certs, anchors=[INTEL_SGX_ROOT_CA], at=at, crls=crls, what=what)[0]


def _verify(quote: Quote, col: Collateral, at: datetime) -> tuple[str, tuple[str, ...]]:
    info_issue, info_next = tcb_info_dates(col.tcb_info)
    _window("TCB info", info_issue, info_next, at)
    qe_issue, qe_next = tcb_info_dates(col.qe_identity)
    _window("QE identity", qe_issue, qe_next, at)
    ident_preview = parse_qe_identity(col.qe_identity)
    if quote.is_tdx:
        if ident_preview.id != "TD_QE" or ident_preview.version not in (2, 3):
            raise EvidenceFormatError(
                f"collateral: QE identity {ident_preview.id} version {ident_preview.version} is not for "
                "a TDX quote (expected TD_QE version 2 or 3)"
            )
    elif ident_preview.id != "QE" or ident_preview.version != 2:
        raise EvidenceFormatError(
            f"collateral: QE identity {ident_preview.id} version {ident_preview.version} is not for an SGX "
            "quote (expected QE version 2)"
        )
    crls = [
        load_crl(col.root_ca_crl, what="collateral: root_ca_crl"),
        load_crl(col.pck_crl, what="collateral: pck_crl"),
    ]
    root = INTEL_SGX_ROOT_CA
    if not root.not_valid_before_utc <= at <= root.not_valid_after_utc:
        raise ChainError("the pinned Intel SGX Root CA is not valid at the verification time")
    for crl in crls:
        if crl.get_revoked_certificate_by_serial_number(root.serial_number) is not None:
            raise ChainError("the Intel SGX Root CA is revoked by a CRL of the collateral")
    tcb_signer = _chain(col.tcb_info_issuer_chain, "collateral: tcb_info_issuer_chain", at, crls)
    _verify_ecdsa(tcb_signer.public_key(), col.tcb_info_signature, col.tcb_info, "collateral: tcb_info")
    qe_signer = _chain(col.qe_identity_issuer_chain, "collateral: qe_identity_issuer_chain", at, crls)
    _verify_ecdsa(
        qe_signer.public_key(), col.qe_identity_signature, col.qe_identity, "collateral: qe_identity"
    )
    info = parse_tcb_info(col.tcb_info)
    ident = ident_preview
    if quote.attestation_key_type != ATTESTATION_KEY_ECDSA_P256:
        raise EvidenceFormatError(
            f"dcap quote: header.attestation_key_type {quote.attestation_key_type} is unsupported "
            "(only 2, ECDSA-256 with P-256)"
        )
    if quote.cert_type != CERT_PCK_CHAIN:
        raise EvidenceFormatError(
            f"dcap quote: certification data type {quote.cert_type} is unsupported (only 5, PCK chain)"
        )
    pck_cert = _chain(quote.cert_data, "quote: PCK certificate chain", at, crls)
    _verify_ecdsa(pck_cert.public_key(), quote.qe_report_signature, quote.qe_report.raw, "quote: QE report")
    qe_level = _check_qe_identity(quote, ident)
    if (
        hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
        != quote.qe_report.report_data[:32]
    ):
        raise AttestationError(
            "quote: QE report hash mismatch (report data does not bind the attestation key)"
        )
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
    except ValueError:
        raise AttestationError(
            "quote: the attestation key is not a P-256 point, so the ISV signature is invalid"
        ) from None
    _verify_ecdsa(att_key, quote.isv_signature, quote.signed, "quote: ISV enclave report")
    pck = parse_pck_extension(pck_cert)
    if pck.fmspc != info.fmspc:
        raise AttestationError(
            f"FMSPC mismatch: the PCK certificate says {pck.fmspc.hex().upper()}, the TCB info is for "
            f"{info.fmspc.hex().upper()} (collateral for another platform)"
        )
    if pck.pce_id != info.pce_id:
        raise AttestationError("PCE ID of the PCK certificate does not match the TCB info")
    if quote.is_tdx and (info.id != "TDX" or info.version < 3):
        raise AttestationError("TDX quote with a non-TDX TCB info in the collateral")
    if not quote.is_tdx and info.id != "SGX":
        raise AttestationError(f"SGX quote with a {info.id} TCB info in the collateral")
    level = _platform_level(quote, pck, info)
    if level.status == "Revoked":
        raise AttestationError("the platform TCB level is Revoked")
    status = level.status
    advisories = list(level.advisory_ids)
    others: list[QeTcbLevel] = [qe_level]
    if isinstance(quote.report, TdReport):
        module = _module_status(quote.report, info)
        if module is not None:
            others.append(module)
    for other in others:
        status = _converge(status, other.status)
        advisories += [a for a in other.advisory_ids if a not in advisories]
    _check_attributes(quote.report)
    return status, tuple(advisories)


def verify_dcap(quote_bytes: bytes, collateral: bytes | None, *, at: datetime) -> Verification:
    """Verify an SGX/TDX quote with its collateral at time ``at`` (the module docstring's steps).

    Raises ``EvidenceFormatError`` only when the quote itself does not parse; every other problem is a
    not-ok :class:`Verification` whose ``reason`` names it (with the unverified claims filled in).
    """
    if at.tzinfo is None:
        raise ValueError("at must be a timezone-aware datetime")
    quote = parse_quote(quote_bytes)
    base = Verification(tee="tdx" if quote.is_tdx else "sgx", ok=False, claims=quote.claims())
    if collateral is None:
        return base.failed("no collateral: the quote parses but is not verified (give --collateral)")
    try:
        col = parse_collateral(collateral)
        status, advisories = _verify(quote, col, at)
    except AttestationError as exc:
        return base.failed(str(exc))
    return Verification(tee=base.tee, ok=True, status=status, advisory_ids=advisories, claims=base.claims)
