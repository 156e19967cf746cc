"""Attestation between the login side and the relay (issue 11, item 6): TPM quotes over fresh nonces.

Two independent checks, each optional:

**The relay requires evidence from the login side** (``attestation.policy`` in relay.yaml). The login
asks ``POST /v1/challenge`` for a nonce (32 random bytes, single use, ``challengeTtl``), has its TPM
quote the PCRs with qualifyingData ::

    SHA-256("kubeshield.io/relay-login/v1" NUL || nonce || SHA-256(SPKI DER of the CSR's key))

and sends ``{"nonce": <b64url>, "tpm": <kubeshield.attest TPM evidence JSON>}`` with the certificate
request. The relay refuses the request when the evidence is absent, the nonce was not issued by it
(or is expired, or was used), the quote does not verify, the report data is not that binding, or the
evidence fails the policy (``kubeshield.attest.policy``: ``tee: [tpm]``, PCR values, ``ak_sha256``).

**The login requires evidence from the relay** (``access login --expect-relay-attestation POLICY``,
relay.yaml ``attestation.tcti``). Before anything is sent, the login posts its own nonce to
``POST /v1/attestation``; the relay's TPM quotes ::

    SHA-256("kubeshield.io/relay-evidence/v1" NUL || nonce || SHA-256(DER of the relay CA certificate))

and the answer carries that CA certificate. The login verifies the quote, the binding and the policy,
and then accepts only a client certificate signed by *that* CA.

What this proves, and what not:

* A verified login quote proves that, after the relay issued the nonce, a TPM whose attestation key
  is the one the policy pins (``ak_sha256``; without a pin, *any* TPM, including a software one)
  reported PCR values that satisfy the policy, and that whoever asked for the quote knew the CSR's
  public key. It does **not** prove that the CSR's private key is in that TPM or even on that
  machine (the agent makes it in memory), that the person who logged in sits at that machine, or
  that software not covered by the selected PCRs is benign. There is no EK certificate chain here:
  trust in the AK comes from pinning it in the policy, after it was enrolled out of band.
* A verified relay quote proves that the party answering the login (over the relay's TLS) could get
  a quote, over the login's fresh nonce and naming this CA certificate, from a TPM with the pinned
  AK and acceptable PCRs. It does **not** prove that the CA private key is inside that TPM (it is in
  the relay's memory, unwrapped by the ``keys:`` backend), that the relay verifies ID tokens
  correctly, nor anything about the OpenID provider. It does bind the certificate the login accepts
  to the CA named by the attested machine, so a relay impostor without that TPM cannot issue one
  the login would accept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubeshield.access.relay_settings import AttestationSettings
from kubeshield.attest.errors import AttestationError
from kubeshield.attest.evidence import verify_evidence
from kubeshield.attest.policy import Policy, load_policy
from kubeshield.errors import InvalidRequest, PolicyDenied

__all__ = [
    "LOGIN_PREFIX",
    "RELAY_PREFIX",
    "Attester",
    "RelayAttestation",
    "RelayEvidenceCheck",
    "login_binding",
    "login_evidence",
    "open_attestation",
    "relay_binding",
    "relay_evidence_checker",
    "verify_quote_doc",
]

LOGIN_PREFIX = b"kubeshield.io/relay-login/v1\x00"
RELAY_PREFIX = b"kubeshield.io/relay-evidence/v1\x00"
_NONCE_BYTES = 32
_MAX_OUTSTANDING = 10_000


class Attester(Protocol):
    """What quotes: :class:`kubeshield.keys.tpm_attest.TpmAttester` (``evidence(report_data) -> JSON``)."""

    def evidence(self, report_data: bytes) -> bytes: ...


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not text or len(text) > 128:
        raise InvalidRequest(f"{what}: expected a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{what}: not base64url") from None


def _spki_digest_of_csr(csr_pem: bytes) -> bytes:
    csr = x509.load_pem_x509_csr(csr_pem)
    der = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def login_binding(nonce: bytes, csr_pem: bytes) -> bytes:
    """The login quote's qualifyingData (module docstring)."""
    return hashlib.sha256(LOGIN_PREFIX + nonce + _spki_digest_of_csr(csr_pem)).digest()


def relay_binding(nonce: bytes, ca_pem: bytes) -> bytes:
    """The relay quote's qualifyingData (module docstring)."""
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(RELAY_PREFIX + nonce + hashlib.sha256(der).digest()).digest()


def verify_quote_doc(doc: object, *, expected: bytes, policy: Policy, what: str) -> str:
    """Verify TPM evidence (a JSON object) bound to ``expected`` against ``policy``.

    Returns a short description (the AK fingerprint); raises ``PolicyDenied`` naming every failure.
    """
    if not isinstance(doc, dict):
        raise PolicyDenied(f"{what}: expected TPM evidence (a JSON object)")
    try:
        result = verify_evidence(
            json.dumps(doc).encode(), at=datetime.now(UTC), expected_report_data=expected
        )
    except AttestationError as exc:
        raise PolicyDenied(f"{what}: {exc}") from None
    if result.tee != "tpm":
        raise PolicyDenied(f"{what}: TPM evidence expected, got {result.tee}")
    decision = policy.evaluate(result)
    if not decision.allowed:
        raise PolicyDenied(f"{what}: refused by the policy: {decision.reason}")
    return f"tpm ak sha256:{result.claims.get('ak_sha256')}"


class RelayAttestation:
    """The relay's half: challenges and login-evidence checks (``policy``), its own quotes (``attester``)."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        attester: Attester | None = None,
        challenge_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy is None and attester is None:
            raise ValueError("give a policy, an attester, or both")
        self._policy = policy
        self._attester = attester
        self._ttl = challenge_ttl
        self._clock = clock
        self._nonces: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self.ca_pem: bytes | None = None

    @property
    def requires_login_evidence(self) -> bool:
        return self._policy is not None

    @property
    def serves_evidence(self) -> bool:
        return self._attester is not None

    def new_challenge(self) -> dict[str, Any]:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        now = self._clock()
        with self._lock:
            for old in [n for n, exp in self._nonces.items() if exp <= now]:
                del self._nonces[old]
            if len(self._nonces) >= _MAX_OUTSTANDING:
                raise PolicyDenied("too many outstanding attestation challenges; try again later")
            self._nonces[nonce] = now + self._ttl
        return {"nonce": _b64url(nonce), "expiresIn": int(self._ttl)}

    def verify_login(self, evidence: object, csr_pem: bytes) -> str:
        """Check the login side's evidence for ``csr_pem``; ``PolicyDenied`` names the failure."""
        if self._policy is None:
            raise PolicyDenied("this relay has no attestation policy")
        if not isinstance(evidence, dict):
            raise PolicyDenied("evidence: expected {nonce, tpm}")
        nonce = _unb64url(evidence.get("nonce"), "evidence.nonce")
        with self._lock:
            expiry = self._nonces.pop(nonce, None)
        if expiry is None or expiry <= self._clock():
            raise PolicyDenied("evidence.nonce: not a challenge this relay issued, expired, or used already")
        return verify_quote_doc(
            evidence.get("tpm"),
            expected=login_binding(nonce, csr_pem),
            policy=self._policy,
            what="login attestation",
        )

    def own_evidence(self, nonce_text: object) -> dict[str, Any]:
        """The relay's quote over the login's nonce and its CA certificate."""
        if self._attester is None or self.ca_pem is None:
            raise InvalidRequest("this relay serves no attestation evidence of its own")
        nonce = _unb64url(nonce_text, "nonce")
        if len(nonce) < 16:
            raise InvalidRequest("nonce: at least 16 bytes")
        raw = self._attester.evidence(relay_binding(nonce, self.ca_pem))
        return {"caCertificate": self.ca_pem.decode("ascii"), "tpm": json.loads(raw)}


def open_attestation(settings: AttestationSettings) -> RelayAttestation:
    """The relay's attestation from relay.yaml ``attestation:`` (policy file, relay TPM)."""
    attester: Attester | None = None
    if settings.tcti is not None:
        from kubeshield.keys.tpm_attest import TpmAttester

        attester = TpmAttester(tcti=settings.tcti, pcrs=settings.pcrs)
    policy = load_policy(settings.policy) if settings.policy is not None else None
    return RelayAttestation(policy=policy, attester=attester, challenge_ttl=settings.challenge_ttl)


def login_evidence(
    tcti: str, *, pcrs: tuple[int, ...] = tuple(range(8))
) -> Callable[[bytes, bytes], dict[str, Any]]:
    """For ``login(evidence=...)``: this machine's TPM quote over the relay's nonce and the CSR."""
    from kubeshield.keys.tpm_attest import TpmAttester

    attester = TpmAttester(tcti=tcti, pcrs=pcrs)

    def make(nonce_text: bytes, csr_pem: bytes) -> dict[str, Any]:
        nonce = _unb64url(nonce_text.decode("ascii"), "the relay's nonce")
        raw = attester.evidence(login_binding(nonce, csr_pem))
        return {"nonce": nonce_text.decode("ascii"), "tpm": json.loads(raw)}

    return make


class RelayEvidenceCheck:
    """For ``login(expect_relay=...)``: a fresh nonce per login, and the check of the relay's answer."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def nonce(self) -> bytes:
        return secrets.token_bytes(_NONCE_BYTES)

    def check(self, sent: bytes, doc: dict[str, Any]) -> tuple[str, bytes]:
        """(description, the attested CA certificate PEM); ``PolicyDenied`` naming the failure."""
        ca_text = doc.get("caCertificate")
        if not isinstance(ca_text, str):
            raise PolicyDenied("relay attestation: the answer names no CA certificate")
        ca_pem = ca_text.encode("ascii")
        try:
            expected = relay_binding(sent, ca_pem)
        except ValueError:
            raise PolicyDenied("relay attestation: the CA certificate is not PEM") from None
        described = verify_quote_doc(
            doc.get("tpm"), expected=expected, policy=self._policy, what="relay attestation"
        )
        return described, ca_pem


def relay_evidence_checker(policy_file: Path) -> RelayEvidenceCheck:
    """The check ``--expect-relay-attestation POLICY`` runs (the policy file is read now)."""
    return RelayEvidenceCheck(load_policy(policy_file))
