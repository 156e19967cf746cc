# ruff: noqa: F811  (pytest fixtures imported from tests.support are re-bound as arguments)
"""The relay over https refuses bad ID tokens and CSRs with a clear error, and never echoes a token.

The tokens are real: the device flow against the real oidc-provider, then changed the way an
attacker would (re-signed, unsigned, sent to a relay expecting another client or issuer, judged
after their expiry)."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jws
from joserfc.jwk import RSAKey

from kubeshield.access import oidc
from tests.support.access_relay import RunningRelay, start_relay
from tests.support.oidc_provider import OidcProvider, complete_device_login, oidc_provider  # noqa: F401


@pytest.fixture(scope="module")
def real_token(oidc_provider: OidcProvider) -> str:
    """One real ID token of alice (device flow, completed by a person)."""
    meta = oidc.discover(oidc_provider.issuer, context=None)
    auth = oidc.start_device_flow(
        meta, client_id=oidc_provider.client_id, scopes=["openid", "email", "groups"], context=None
    )
    person = threading.Thread(
        target=complete_device_login, args=(oidc_provider, auth.verification_uri, auth.user_code), daemon=True
    )
    person.start()
    tokens = oidc.poll_device_flow(meta, auth, client_id=oidc_provider.client_id, context=None)
    person.join(60)
    return tokens.id_token


@pytest.fixture
def relay(tmp_path: Path, oidc_provider: OidcProvider) -> Iterator[RunningRelay]:
    running = start_relay(tmp_path / "relay", provider=oidc_provider)
    try:
        yield running
    finally:
        running.stop()


def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM).decode()


def post(relay: RunningRelay, body: Any, *, path: str = "/v1/certificates", **kw: Any) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(relay.tls_ca)), timeout=30) as client:
        if isinstance(body, bytes):
            return client.post(relay.url + path, content=body, **kw)
        return client.post(relay.url + path, json=body, **kw)


def refused(relay: RunningRelay, token: str, status: int, match: str, **extra: Any) -> None:
    reply = post(relay, {"idToken": token, "csr": csr_pem(), **extra})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert match in error
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in reply.text  # nothing of the token comes back


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(head + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
    )


def test_the_real_token_is_accepted(relay: RunningRelay, real_token: str) -> None:
    reply = post(relay, {"idToken": real_token, "csr": csr_pem()})
    assert reply.status_code == 200, reply.text
    assert reply.json()["user"] == "alice@example.test"
    assert reply.headers["cache-control"] == "no-store"
    refused(relay, real_token, 401, "already used")


def test_a_forged_token_signed_by_another_key_under_the_provider_s_kid(
    relay: RunningRelay, real_token: str
) -> None:
    header, claims = parts(real_token)
    impostor = RSAKey.generate_key(2048, parameters={"kid": header["kid"]})
    forged = jws.serialize_compact(
        header, json.dumps({**claims, "email": "admin@example.test"}).encode(), impostor, algorithms=["RS256"]
    )
    refused(relay, forged, 401, "signature does not verify with the provider's key")


def test_a_changed_claim_under_the_real_signature(relay: RunningRelay, real_token: str) -> None:
    head, _, sig = real_token.split(".")
    _, claims = parts(real_token)
    refused(
        relay,
        f"{head}.{b64(json.dumps({**claims, 'groups': ['admins']}).encode())}.{sig}",
        401,
        "signature does not verify",
    )


def test_alg_none(relay: RunningRelay, real_token: str) -> None:
    _, claims = parts(real_token)
    header = b64(json.dumps({"alg": "none"}).encode())
    refused(relay, f"{header}.{b64(json.dumps(claims).encode())}.", 401, "alg none")


def test_hmac_with_the_provider_s_public_key(
    relay: RunningRelay, real_token: str, oidc_provider: OidcProvider
) -> None:
    import hashlib
    import hmac

    header, _ = parts(real_token)
    jwk = next(k for k in oidc_provider.jwks()["keys"] if k["kid"] == header["kid"])
    pem = RSAKey.import_key(jwk).as_pem(private=False)
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': header['kid']}).encode())}.{real_token.split('.')[1]}"
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    refused(relay, f"{signing_input}.{b64(mac)}", 401, "HMAC")


def test_an_expired_token(tmp_path: Path, oidc_provider: OidcProvider, real_token: str) -> None:
    later = start_relay(tmp_path / "later", provider=oidc_provider, clock=lambda: time.time() + 2 * 3600)
    try:
        refused(later, real_token, 401, "expired at")
    finally:
        later.stop()


def test_a_relay_for_another_client_refuses_the_audience(
    tmp_path: Path, oidc_provider: OidcProvider, real_token: str
) -> None:
    other = start_relay(tmp_path / "other", provider=oidc_provider, client_id="another-app")
    try:
        refused(other, real_token, 401, "audience 'kubeshield' does not include 'another-app'")
    finally:
        other.stop()


def test_a_relay_for_another_issuer_refuses_the_issuer(
    tmp_path: Path, oidc_provider: OidcProvider, real_token: str
) -> None:
    other = start_relay(tmp_path / "other", provider=oidc_provider, issuer="https://login.example.test")
    try:
        refused(other, real_token, 401, "is not the expected 'https://login.example.test'")
    finally:
        other.stop()


def test_a_nonce_that_is_not_the_flow_s(relay: RunningRelay, real_token: str) -> None:
    # a device-flow token carries no nonce: a login that claims to have sent one is refused
    refused(relay, real_token, 401, "carries none", nonce="sent-by-someone")


def test_a_csr_with_a_bad_signature(relay: RunningRelay, real_token: str) -> None:
    req = x509.load_pem_x509_csr(csr_pem().encode())
    der = bytearray(req.public_bytes(serialization.Encoding.DER))
    der[-4] ^= 0x01
    pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    reply = post(relay, {"idToken": real_token, "csr": pem})
    assert reply.status_code == 400
    assert "csr: the signature does not verify" in reply.json()["error"]
    # the refused CSR did not spend the token
    assert post(relay, {"idToken": real_token, "csr": csr_pem()}).status_code == 200


def test_an_unreachable_provider_is_503_not_a_certificate(
    tmp_path: Path, oidc_provider: OidcProvider, real_token: str
) -> None:
    from tests.support.oidc_provider import OidcProvider as P

    gone = P(
        issuer="http://127.0.0.1:9",
        client_id=oidc_provider.client_id,
        process=oidc_provider.process,
        log_path=oidc_provider.log_path,
    )
    broken = start_relay(tmp_path / "broken", provider=gone, issuer=oidc_provider.issuer)
    try:
        reply = post(broken, {"idToken": real_token, "csr": csr_pem()})
        assert reply.status_code == 503
        assert "the provider's signing keys: cannot reach" in reply.json()["error"]
    finally:
        broken.stop()


def test_http_api_shape_and_bad_requests(relay: RunningRelay) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(relay.tls_ca)), timeout=30) as client:
        config = client.get(relay.url + "/v1/config").json()
        assert config["clientId"] == "kubeshield" and config["flows"] == ["device", "auth-code"]
        assert client.get(relay.url + "/v1/clusters").json() == {
            "clusters": [
                {"name": "example", "server": "https://127.0.0.1:6443", "caData": None, "tlsServerName": None}
            ]
        }
        assert client.get(relay.url + "/nope").status_code == 404
        assert client.get(relay.url + "/v1/certificates").status_code == 405
        assert client.post(relay.url + "/v1/challenge").status_code == 400  # no attestation configured
    assert post(relay, b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert post(relay, b"not json", headers={"content-type": "application/json"}).status_code == 400
    big = post(relay, b"{" + b" " * (300 * 1024) + b"}", headers={"content-type": "application/json"})
    assert big.status_code == 413
    reply = post(relay, {"csr": "x"})
    assert reply.status_code == 400 and reply.json() == {
        "error": "idToken: required (the ID token of the OIDC login)"
    }
