"""One entry point for every kind of evidence: :func:`verify_evidence`.

The TEE kind comes from the evidence itself:

* binary, a DCAP header (version 3..5, TEE type SGX or TDX): an SGX or TDX quote; collateral = the
  dcap-qvl collateral JSON (:mod:`kubeshield.attest.dcap_collateral`);
* binary, 1184 bytes, version 2..5: an SEV-SNP report; collateral = the VCEK or VLEK (DER);
* JSON ``{"ak_public", "tpm_quote"}``: a TPM quote (:mod:`kubeshield.attest.tpm`), no collateral;
* JSON ``{"quote": B64, "cc_eventlog": B64}`` (Trustee's TDX evidence) or ``{"quote": B64}``: a DCAP
  quote with (optionally) its CC event log;
* JSON ``{"sample": ...}``: the sample TEE, refused unless ``allow_sample``.

``expected_report_data`` (the verifier's nonce binding, zero-padded to the report data size) must equal
the evidence's report data; an ``event_log`` (TDX CCEL) must replay to the quote's RTMRs.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from kubeshield.attest import dcap, sample, snp, tdx_eventlog, tpm
from kubeshield.attest.dcap_quote import MAX_QUOTE_BYTES, looks_like_dcap_quote, parse_quote
from kubeshield.attest.errors import AttestationError, EvidenceFormatError
from kubeshield.attest.result import Verification

__all__ = ["MAX_EVIDENCE_BYTES", "verify_evidence"]

MAX_EVIDENCE_BYTES = 2 * MAX_QUOTE_BYTES


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"evidence: {what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"evidence: {what} is not base64") from None


def _json(evidence: bytes) -> Any:
    try:
        return json.loads(evidence)
    except (ValueError, UnicodeDecodeError):
        raise EvidenceFormatError("evidence: starts like JSON but is not JSON") from None


def _with_event_log(result: Verification, quote_bytes: bytes, log: bytes) -> Verification:
    quote = parse_quote(quote_bytes)
    if not quote.is_tdx:
        raise EvidenceFormatError("evidence: a CC event log comes only with a TDX quote")
    parsed = tdx_eventlog.parse_ccel(log)
    replayed = tdx_eventlog.replay(parsed)
    claims = dict(result.claims)
    for i, value in enumerate(replayed):
        claims[f"eventlog_rtmr{i}"] = value.hex()
    result = replace(result, claims=claims)
    report = quote.report
    try:
        tdx_eventlog.check_rtmrs(parsed, report.rtmrs)  # type: ignore[union-attr]
    except AttestationError as exc:
        extra = f"; also: {result.reason}" if result.reason else ""
        return result.failed(f"{exc}{extra}")
    return result


def verify_evidence(
    evidence: bytes,
    *,
    at: datetime,
    collateral: bytes | None = None,
    event_log: bytes | None = None,
    expected_report_data: bytes | None = None,
    allow_sample: bool = False,
) -> Verification:
    """Verify ``evidence`` of any supported TEE (module docstring) at time ``at``.

    Raises :class:`EvidenceFormatError` when the evidence cannot be parsed or its type is unknown; every
    verification failure is a not-ok :class:`Verification` with the reason.
    """
    if not isinstance(evidence, bytes):
        raise TypeError("evidence must be bytes")
    if at.tzinfo is None:
        raise ValueError("at must be a timezone-aware datetime")
    if len(evidence) > MAX_EVIDENCE_BYTES:
        raise EvidenceFormatError(
            f"evidence: oversized ({len(evidence)} bytes, at most {MAX_EVIDENCE_BYTES})"
        )
    quote_bytes: bytes | None = None
    if evidence.lstrip()[:1] == b"{":
        doc = _json(evidence)
        if tpm.looks_like_tpm_evidence(doc):
            if collateral is not None:
                raise EvidenceFormatError("evidence: TPM evidence takes no collateral")
            result = tpm.verify_tpm(doc)
        elif sample.looks_like_sample(doc):
            result = sample.verify_sample(doc, allow_sample=allow_sample)
        elif isinstance(doc, dict) and "quote" in doc and set(doc) <= {"quote", "cc_eventlog"}:
            quote_bytes = _b64(doc["quote"], "quote")
            if "cc_eventlog" in doc:
                if event_log is not None:
                    raise EvidenceFormatError("evidence: two event logs (in the evidence and given apart)")
                event_log = _b64(doc["cc_eventlog"], "cc_eventlog")
            result = dcap.verify_dcap(quote_bytes, collateral, at=at)
        else:
            raise EvidenceFormatError(
                "evidence: unknown TEE type (JSON that is not TPM, TDX/SGX or sample evidence)"
            )
    elif looks_like_dcap_quote(evidence):
        quote_bytes = evidence
        result = dcap.verify_dcap(evidence, collateral, at=at)
    elif snp.looks_like_snp_report(evidence):
        result = snp.verify_snp(evidence, collateral, at=at)
    else:
        raise EvidenceFormatError(
            "evidence: unknown TEE type (not a DCAP quote, an SNP report, TPM or sample JSON)"
        )
    if event_log is not None:
        if quote_bytes is None:
            raise EvidenceFormatError("evidence: an event log comes only with a TDX quote")
        result = _with_event_log(result, quote_bytes, event_log)
    if expected_report_data is not None:
        result = _check_report_data(result, expected_report_data)
    return result


def _check_report_data(result: Verification, expected: bytes) -> Verification:
    have = result.claims.get("report_data")
    if not isinstance(have, str):
        return result.failed("the evidence has no report data to bind the nonce")
    raw = bytes.fromhex(have)
    if len(expected) > len(raw):
        return result.failed(f"expected report data is {len(expected)} bytes, the evidence holds {len(raw)}")
    if raw != expected + bytes(len(raw) - len(expected)):
        reason = "report data is not the expected nonce binding (wrong nonce, or replayed evidence)"
        return result.failed(reason + (f"; also: {result.reason}" if result.reason else ""))
    return result
