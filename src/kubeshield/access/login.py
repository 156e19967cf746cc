"""``kubeshield access login``: the user's side of the relay, from the OIDC flow to the agent.

1. ``GET <relay>/v1/config``: the provider (issuer, public client id, scopes) and the clusters;
2. optionally ``POST <relay>/v1/attestation`` with a fresh nonce, the answer checked by
   ``expect_relay`` *before anything else is sent*;
3. the OIDC flow against that provider: device code (the verification URL and the user code are
   shown; the person approves on any device) or auth code + PKCE through a 127.0.0.1 redirect;
4. ``new_key()`` of the key holder (the agent: the private key is generated inside it and never
   leaves it; only a CSR comes back);
5. optionally ``POST <relay>/v1/challenge`` and evidence over the relay's nonce (``evidence``);
6. ``POST <relay>/v1/certificates`` with the ID token, the nonce the flow sent, and the CSR;
7. the returned certificate is checked (it certifies the CSR's key, it is a client certificate, the
   relay's CA signed it) and handed to the holder with the relay's cluster endpoints
   (``install_certificate``): the agent then holds one credential per cluster, in memory only.

The ID token is used once and dropped; it is never written anywhere and never printed.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.oidc import (
    LoginError,
    Tokens,
    auth_code_flow,
    discover,
    http_request,
    poll_device_flow,
    start_device_flow,
    tls_context,
)
from kubeshield.access.relay_settings import endpoint_from_json
from kubeshield.errors import InvalidRequest

__all__ = ["KeyHolder", "LoginResult", "RelayCheck", "RelayConfig", "fetch_relay_config", "login"]

Flow = Literal["device", "auth-code"]


class RelayCheck(Protocol):
    """How the login checks the relay's evidence (``relay_attest.RelayEvidenceCheck``)."""

    def nonce(self) -> bytes: ...

    def check(self, sent: bytes, doc: dict[str, Any]) -> tuple[str, bytes]: ...


class KeyHolder(Protocol):
    """Where the client key lives (the agent's ``AgentClient``): makes it, and takes the certificate."""

    def new_key(self) -> tuple[str, bytes]:
        """A new key pair inside the holder: ``(handle, CSR PEM)``."""
        ...

    def install_certificate(
        self,
        *,
        handle: str,
        cert_pem: bytes,
        clusters: Sequence[ClusterEndpoint],
        subject: str | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayConfig:
    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    clusters: tuple[str, ...]
    login_evidence_required: bool = False
    relay_evidence: bool = False


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: str
    groups: tuple[str, ...]
    expires_at: datetime
    clusters: tuple[ClusterEndpoint, ...] = field(repr=False)
    relay_attestation: str | None = None


def _relay_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _relay_error(reply_status: int, body: bytes, what: str) -> LoginError:
    message = f"HTTP {reply_status}"
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            message = doc["error"][:300]
    except (ValueError, UnicodeDecodeError):
        pass
    return LoginError(f"the relay refused {what}: {message}")


def fetch_relay_config(relay_url: str, *, context: ssl.SSLContext) -> RelayConfig:
    if not relay_url.startswith("https://"):
        raise LoginError(f"--relay {relay_url!r}: the relay URL must be https://")
    reply = http_request(_relay_url(relay_url, "/v1/config"), context=context)
    if reply.status != 200:
        raise _relay_error(reply.status, reply.body, "the config request")
    doc = reply.json("the relay's /v1/config")
    issuer, client_id, scopes = doc.get("issuer"), doc.get("clientId"), doc.get("scopes")
    if not isinstance(issuer, str) or not isinstance(client_id, str):
        raise LoginError("the relay's /v1/config names no issuer or clientId")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise LoginError("the relay's /v1/config: scopes is not a list of strings")
    clusters = doc.get("clusters") or []
    att = doc.get("attestation") or {}
    return RelayConfig(
        issuer=issuer,
        client_id=client_id,
        scopes=tuple(scopes),
        clusters=tuple(c for c in clusters if isinstance(c, str)),
        login_evidence_required=bool(isinstance(att, dict) and att.get("loginEvidenceRequired")),
        relay_evidence=bool(isinstance(att, dict) and att.get("relayEvidence")),
    )


def _check_certificate(cert_pem: bytes, csr_pem: bytes, ca_pem: bytes | None) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise LoginError("the relay's answer holds no PEM certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != csr.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise LoginError("the relay's certificate is not for the key this login made; refused")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise LoginError("the relay's certificate is not a client certificate (no clientAuth)")
    if ca_pem is not None:
        try:
            ca = x509.load_pem_x509_certificate(ca_pem)
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise LoginError("the relay's certificate is not signed by the relay's CA") from None
    return cert


def login(
    *,
    relay_url: str,
    holder: KeyHolder,
    flow: Flow = "device",
    relay_context: ssl.SSLContext,
    provider_context: ssl.SSLContext | None = None,
    show: Callable[[str], None],
    open_url: Callable[[str], None] | None = None,
    lifetime_seconds: float | None = None,
    expect_relay: RelayCheck | None = None,
    evidence: Callable[[bytes, bytes], dict[str, Any]] | None = None,
    browser_timeout: float = 300.0,
) -> LoginResult:
    """Run the whole login (see the module docstring). ``show`` prints a line for the person.

    ``expect_relay`` verifies the relay's attestation over a fresh nonce (raising ``PolicyDenied``)
    before the flow starts, and then only a certificate of the attested CA is accepted;
    ``evidence(nonce, csr_pem) -> doc`` produces this side's evidence when the relay requires it.
    """
    config = fetch_relay_config(relay_url, context=relay_context)
    if not config.clusters:
        raise LoginError(
            "the relay serves no cluster (its relay.yaml lists none): there is nothing to log in to"
        )
    status = getattr(holder, "status", None)
    if callable(status):  # the agent: fail now, not after the person has logged in
        status()
    attested: str | None = None
    attested_ca: bytes | None = None
    if expect_relay is not None:
        if not config.relay_evidence:
            raise LoginError("--expect-relay-attestation: this relay serves no attestation evidence")
        sent = expect_relay.nonce()
        reply = http_request(
            _relay_url(relay_url, "/v1/attestation"),
            context=relay_context,
            method="POST",
            json_body={"nonce": base64.urlsafe_b64encode(sent).rstrip(b"=").decode("ascii")},
        )
        if reply.status != 200:
            raise _relay_error(reply.status, reply.body, "the attestation request")
        attested, attested_ca = expect_relay.check(sent, reply.json("the relay's /v1/attestation"))
        show(f"relay attestation verified: {attested}")
    if config.login_evidence_required and evidence is None:
        raise LoginError("this relay requires attestation evidence from the login side (--attest-tcti)")
    if provider_context is None and config.issuer.startswith("https://"):
        provider_context = tls_context()
    meta = discover(config.issuer, context=provider_context)
    tokens: Tokens
    if flow == "device":
        auth = start_device_flow(
            meta, client_id=config.client_id, scopes=config.scopes, context=provider_context
        )
        target = auth.verification_uri_complete or auth.verification_uri
        show(f"To log in, open {target} and enter the code {auth.user_code}")
        tokens = poll_device_flow(meta, auth, client_id=config.client_id, context=provider_context)
    elif flow == "auth-code":

        def opener(url: str) -> None:
            show(f"To log in, open this URL in a browser on this machine: {url}")
            if open_url is not None:
                open_url(url)

        tokens = auth_code_flow(
            meta,
            client_id=config.client_id,
            scopes=config.scopes,
            context=provider_context,
            open_url=opener,
            timeout=browser_timeout,
        )
    else:
        raise InvalidRequest(f"flow: {flow!r} is not device or auth-code")
    handle, csr_pem = holder.new_key()
    body: dict[str, Any] = {"idToken": tokens.id_token, "csr": csr_pem.decode("ascii")}
    if tokens.nonce is not None:
        body["nonce"] = tokens.nonce
    if lifetime_seconds is not None:
        body["lifetimeSeconds"] = lifetime_seconds
    if config.login_evidence_required and evidence is not None:
        reply = http_request(
            _relay_url(relay_url, "/v1/challenge"), context=relay_context, method="POST", json_body={}
        )
        if reply.status != 200:
            raise _relay_error(reply.status, reply.body, "the challenge request")
        challenge = reply.json("the relay's /v1/challenge").get("nonce")
        if not isinstance(challenge, str):
            raise LoginError("the relay's /v1/challenge holds no nonce")
        body["evidence"] = evidence(challenge.encode("ascii"), csr_pem)
    reply = http_request(
        _relay_url(relay_url, "/v1/certificates"), context=relay_context, method="POST", json_body=body
    )
    del body, tokens
    if reply.status != 200:
        raise _relay_error(reply.status, reply.body, "the certificate request")
    doc = reply.json("the relay's /v1/certificates")
    cert_text, ca_text = doc.get("certificate"), doc.get("caCertificate")
    if not isinstance(cert_text, str):
        raise LoginError("the relay's answer holds no certificate")
    cert_pem = cert_text.encode("ascii")
    ca_pem = ca_text.encode("ascii") if isinstance(ca_text, str) else None
    if attested_ca is not None:
        ca_pem = attested_ca  # only the CA the attested relay named may have signed it
    cert = _check_certificate(cert_pem, csr_pem, ca_pem)
    raw_clusters = doc.get("clusters")
    if not isinstance(raw_clusters, list):
        raise LoginError("the relay's answer holds no cluster list")
    try:
        clusters = tuple(endpoint_from_json(c, f"clusters[{i}]") for i, c in enumerate(raw_clusters))
    except InvalidRequest as exc:
        raise LoginError(f"the relay's answer: {exc}") from None
    user = doc.get("user")
    groups = doc.get("groups") or []
    if not isinstance(user, str):
        raise LoginError("the relay's answer names no user")
    holder.install_certificate(handle=handle, cert_pem=cert_pem, clusters=clusters, subject=user)
    return LoginResult(
        user=user,
        groups=tuple(g for g in groups if isinstance(g, str)),
        expires_at=cert.not_valid_after_utc,
        clusters=clusters,
        relay_attestation=attested,
    )
