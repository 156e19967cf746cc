"""Attestation evidence: parse and verify SGX/TDX DCAP quotes, TDX event logs, SEV-SNP reports, TPM 2.0
quotes (and the no-protection ``sample`` TEE), and evaluate a policy over the result. Layer 1: parsing
and verification only, no network, no clock (the verification time is always a parameter).

    from kubeshield.attest import verify_evidence, load_policy
    result = verify_evidence(quote, collateral=collateral_json, at=now)
    decision = load_policy("policy.yaml").evaluate(result)

Modules: ``dcap_quote``/``dcap_collateral``/``dcap`` (Intel), ``tdx_eventlog``, ``snp`` (AMD), ``tpm``,
``sample``, ``policy``, ``evidence`` (the dispatcher), ``result``, ``errors``. Pinned roots live in
``_intel_root`` and ``_amd_roots``. See docs/attestation.md for what each kind of evidence proves.
"""

from __future__ import annotations

from kubeshield.attest.errors import AttestationError, EvidenceFormatError
from kubeshield.attest.evidence import verify_evidence
from kubeshield.attest.policy import Decision, Policy, load_policy, parse_policy
from kubeshield.attest.result import TCB_STATUSES, Verification

__all__ = [
    "TCB_STATUSES",
    "AttestationError",
    "Decision",
    "EvidenceFormatError",
    "Policy",
    "Verification",
    "load_policy",
    "parse_policy",
    "verify_evidence",
]
