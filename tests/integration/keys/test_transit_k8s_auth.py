"""Kubernetes auth against a real OpenBao whose kubernetes auth method asks a TokenReview endpoint.

No kube-apiserver can be installed here, so a minimal TokenReview endpoint (the one call OpenBao makes)
runs in a thread: it authenticates exactly the service-account JWT the test minted, signed with an RSA
key generated at test time, and refuses anything else.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from kubeshield.errors import BackendAuthError
from kubeshield.keys.transit import KubernetesAuth, TransitKeyBackend
from tests.support.openbao import BaoServer, openbao, transit_key, write_secret_file  # noqa: F401

NAMESPACE, ACCOUNT = "kube-system", "kubeshield"


def _throwaway_ca_pem() -> str:
    """A self-signed certificate made now; OpenBao insists on one (our endpoint is plain HTTP)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _service_account_jwt() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"alg": "RS256", "typ": "JWT", "kid": "test"}
    now = int(time.time())
    claims = {
        "iss": "kubernetes/serviceaccount",
        "sub": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
        "kubernetes.io/serviceaccount/namespace": NAMESPACE,
        "kubernetes.io/serviceaccount/service-account.name": ACCOUNT,
        "kubernetes.io/serviceaccount/service-account.uid": "5c6e7b2a-0000-4000-8000-000000000001",
        "iat": now,
        "exp": now + 3600,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


@pytest.fixture
def token_review() -> Iterator[tuple[str, str, list[str]]]:
    """(url, the one JWT it accepts, the tokens it was asked about)."""
    jwt = _service_account_jwt()
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            token = body.get("spec", {}).get("token", "")
            asked.append(token)
            status: dict[str, object] = {"authenticated": False}
            if token == jwt:
                status = {
                    "authenticated": True,
                    "user": {
                        "username": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
                        "uid": "5c6e7b2a-0000-4000-8000-000000000001",
                        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
                    },
                }
            reply = json.dumps(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
            ).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", jwt, asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_kubernetes_login_with_the_service_account_jwt(
    openbao: BaoServer, transit_key: str, tmp_path: Path, token_review: tuple[str, str, list[str]]
) -> None:
    url, jwt, asked = token_review
    if "kubernetes/" not in openbao.api("GET", "sys/auth")["data"]:
        openbao.api("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
    openbao.api(
        "POST",
        "auth/kubernetes/config",
        {"kubernetes_host": url, "disable_local_ca_jwt": True, "kubernetes_ca_cert": _throwaway_ca_pem()},
    )
    policy = f"p-{transit_key}"
    openbao.transit_policy(policy, key=transit_key)
    openbao.api(
        "POST",
        "auth/kubernetes/role/kubeshield",
        {
            "bound_service_account_names": [ACCOUNT],
            "bound_service_account_namespaces": [NAMESPACE],
            "token_policies": [policy],
            "token_ttl": "60s",
        },
    )
    backend = TransitKeyBackend(
        address=openbao.address,
        key=transit_key,
        auth=KubernetesAuth(role="kubeshield", jwt_file=write_secret_file(tmp_path / "jwt", jwt)),
    )
    try:
        assert backend.unwrap(backend.wrap(b"k" * 32, aad=b"a"), aad=b"a") == b"k" * 32
        status = backend.auth_status()
        assert (status.method, status.logins) == ("kubernetes", 1)
        assert asked and asked[-1] == jwt
    finally:
        backend.close()
    other_jwt = _service_account_jwt()  # same claims, but the cluster does not know this token
    with pytest.raises(BackendAuthError) as caught:
        TransitKeyBackend(
            address=openbao.address,
            key=transit_key,
            auth=KubernetesAuth(role="kubeshield", jwt_file=write_secret_file(tmp_path / "jwt2", other_jwt)),
        )
    assert other_jwt not in str(caught.value)
