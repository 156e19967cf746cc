"""Sealing keys shared by the sealed-secrets integration tests (made once per session, at test time), and
the Kubernetes API stand-in fixtures (tests/support/kubeapi)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeshield.seal.certs import make_certificate, pem_of
from kubeshield.seal.keyset import KeySet, MemoryDecrypter, SealingKey
from tests.support.kubeapi.fixtures import kube, kube_api, kube_ns, kubectl  # noqa: F401


@dataclass(frozen=True)
class TestKey:
    private_key: rsa.RSAPrivateKey
    cert_pem: str
    spki_pem: str
    private_pem: str

    def keyset(self) -> KeySet:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        return KeySet([SealingKey(certificate=cert, decrypter=MemoryDecrypter(self.private_key))])


def _make(bits: int) -> TestKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    cert = make_certificate(key, valid_for=timedelta(days=3650))
    return TestKey(
        private_key=key,
        cert_pem=pem_of(cert).decode(),
        spki_pem=key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
    )


@pytest.fixture(scope="session")
def key4096() -> TestKey:
    """An RSA-4096 sealing key, the controller's default size."""
    return _make(4096)


@pytest.fixture(scope="session")
def other_key() -> TestKey:
    return _make(2048)
