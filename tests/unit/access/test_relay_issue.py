"""The relay's certificate issuance without HTTP: claims to user and groups, replay, lifetimes, refusals."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jws
from joserfc.jwk import RSAKey

from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.idtoken import IdTokenError, IdTokenVerifier, JwksCache
from kubeshield.access.relay import ClaimMapping, Relay, endpoint_from_json, endpoint_to_json
from kubeshield.access.relay_ca import CsrError, RelayCA
from kubeshield.access.relay_settings import OidcSettings
from kubeshield.errors import InvalidRequest, PolicyDenied
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring

ISSUER = "https://login.example.test"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})


def token(**over: Any) -> str:
    now = time.time()
    claims = {
        "iss": ISSUER,
        "aud": "kubeshield",
        "sub": "u1",
        "iat": now,
        "exp": now + 300,
        "email": "alice@example.test",
        "email_verified": True,
        "groups": ["dev", "ops"],
    }
    claims.update(over)
    return jws.serialize_compact(
        {"alg": "RS256", "kid": "k1"}, json.dumps(claims).encode(), KEY, algorithms=["RS256"]
    )


def csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:masters-please")]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def relay(tmp_path: Path) -> Relay:
    return make_relay(tmp_path)


def make_relay(tmp_path: Path, **oidc_over: Any) -> Relay:
    make_keyring(tmp_path / "keyring")
    backend = LocalKeyBackend(path=tmp_path / "keyring", passphrase=PASSPHRASE, argon2=CHEAP_ARGON2)
    ca = RelayCA.create(tmp_path / "ca.json", backend=backend)
    oidc = OidcSettings(issuer=ISSUER, client_id="kubeshield", **oidc_over)
    jwks = json.dumps({"keys": [KEY.as_dict(private=False)]}).encode()
    verifier = IdTokenVerifier(issuer=ISSUER, client_id="kubeshield", jwks=JwksCache(fetch=lambda: jwks))
    clusters = [ClusterEndpoint(name="prod", server="https://prod.example.test:6443", ca_pem=ca.cert_pem)]
    return Relay(
        oidc=oidc,
        verifier=verifier,
        ca=ca,
        clusters=clusters,
        lifetime=timedelta(minutes=15),
        max_lifetime=timedelta(hours=1),
    )


def subject(doc: dict[str, Any]) -> tuple[str, list[str]]:
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(cn), [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def test_a_certificate_for_the_token_s_person_not_the_csr_s_subject(relay: Relay) -> None:
    doc = relay.issue({"idToken": token(), "csr": csr()})
    assert subject(doc) == ("alice@example.test", ["dev", "ops"])
    assert doc["user"] == "alice@example.test" and doc["groups"] == ["dev", "ops"]
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(minutes=15) <= lifetime <= timedelta(minutes=16)  # 1 minute back for clock skew
    assert endpoint_from_json(doc["clusters"][0], "c").name == "prod"
    assert doc["caCertificate"] == relay.ca_pem.decode()


def test_each_id_token_buys_one_certificate(relay: Relay) -> None:
    t = token()
    relay.issue({"idToken": t, "csr": csr()})
    with pytest.raises(IdTokenError, match="already used"):
        relay.issue({"idToken": t, "csr": csr()})


def test_prefixes_and_other_claims(tmp_path: Path) -> None:
    r = make_relay(tmp_path, username_claim="sub", username_prefix="oidc:", groups_prefix="oidc:")
    assert subject(r.issue({"idToken": token(), "csr": csr()})) == ("oidc:u1", ["oidc:dev", "oidc:ops"])


def test_groups_in_kubernetes_system_namespace_are_refused(relay: Relay) -> None:
    with pytest.raises(PolicyDenied, match="'system:masters' is in Kubernetes' reserved system: namespace"):
        relay.issue({"idToken": token(groups=["dev", "system:masters"]), "csr": csr()})
    with pytest.raises(PolicyDenied, match="user name"):
        relay.issue({"idToken": token(email="system:admin"), "csr": csr()})


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"email_verified": False}, "not verified"),
        ({"email": None}, "user name claim 'email' is missing"),
        ({"groups": "dev,ops"}, None),  # a single string is one group
        ({"groups": [1, 2]}, "not a list of strings"),
        ({"email": "a\nb"}, "control characters"),
    ],
)
def test_claim_mapping(relay: Relay, over: dict[str, Any], match: str | None) -> None:
    body = {"idToken": token(**over), "csr": csr()}
    if match is None:
        assert subject(relay.issue(body))[1] == ["dev,ops"]
        return
    with pytest.raises(PolicyDenied, match=match):
        relay.issue(body)


def test_requested_lifetimes_are_bounded(relay: Relay) -> None:
    doc = relay.issue({"idToken": token(), "csr": csr(), "lifetimeSeconds": 1800})
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    assert (
        timedelta(minutes=30) <= cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(minutes=31)
    )
    with pytest.raises(InvalidRequest, match="at most 3600"):
        relay.issue({"idToken": token(), "csr": csr(), "lifetimeSeconds": 7200})
    with pytest.raises(InvalidRequest, match="at least 60"):
        relay.issue({"idToken": token(), "csr": csr(), "lifetimeSeconds": 5})
    with pytest.raises(InvalidRequest, match="number of seconds"):
        relay.issue({"idToken": token(), "csr": csr(), "lifetimeSeconds": "1h"})


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        ({"csr": "x"}, InvalidRequest, "idToken: required"),
        ({"idToken": "a.b.c"}, InvalidRequest, "csr: required"),
        ({"idToken": "a.b.c", "csr": "x", "nonce": 5}, InvalidRequest, "nonce: expected"),
        ({"idToken": "not-a-token", "csr": "x"}, IdTokenError, "not a JWS"),
    ],
)
def test_bad_requests_are_named(
    relay: Relay, body: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        relay.issue(body)


def test_a_bad_csr_is_refused_after_the_token_and_does_not_spend_it(relay: Relay) -> None:
    t = token()
    with pytest.raises(CsrError):
        relay.issue(
            {
                "idToken": t,
                "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            }
        )
    assert relay.issue({"idToken": t, "csr": csr()})["user"] == "alice@example.test"


def test_a_relay_requiring_evidence_refuses_a_request_without_it(tmp_path: Path) -> None:
    base = make_relay(tmp_path)
    calls: list[bytes] = []

    def attest(evidence: object, csr_pem: bytes) -> str:
        calls.append(csr_pem)
        if evidence != {"ok": True}:
            raise PolicyDenied("login attestation: refused by the policy")
        return "tpm ak sha256:00"

    r = Relay(oidc=base.oidc, verifier=base._verifier, ca=base._ca, clusters=[], attest=attest)
    with pytest.raises(PolicyDenied, match="requires attestation evidence"):
        r.issue({"idToken": token(), "csr": csr()})
    with pytest.raises(PolicyDenied, match="refused by the policy"):
        r.issue({"idToken": token(), "csr": csr(), "evidence": {"ok": False}})
    c = csr()
    assert r.issue({"idToken": token(), "csr": c, "evidence": {"ok": True}})["user"]
    assert calls[-1] == c.encode()
    assert r.config()["attestation"]["loginEvidenceRequired"] is True


def test_claim_mapping_without_groups_claim() -> None:
    assert ClaimMapping(groups_claim=None).groups({"groups": ["dev"]}) == []


def test_endpoint_json_round_trip_and_errors() -> None:
    e = ClusterEndpoint(
        name="a", server="https://a:6443", ca_pem=b"-----BEGIN CERTIFICATE-----\nx\n", tls_server_name="k"
    )
    assert endpoint_from_json(endpoint_to_json(e), "c") == e
    with pytest.raises(InvalidRequest, match=r"c\.server: expected an https://"):
        endpoint_from_json({"name": "a", "server": "http://a"}, "c")
    with pytest.raises(InvalidRequest, match=r"c\.caData"):
        endpoint_from_json({"name": "a", "server": "https://a", "caData": "nope"}, "c")
