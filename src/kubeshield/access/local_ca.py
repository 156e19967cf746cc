"""The agent's local certificate authority: it signs the serving certificate of each local proxy.

kubectl sends a bearer token only to an ``https://`` server it can verify, so the proxy on
``127.0.0.1`` needs a certificate kubectl trusts. The agent makes a CA at start (ECDSA P-256) and keeps
its private key in memory only: it is never written anywhere, and a new agent makes a new CA (the
kubeconfig from ``kubeshield access kubeconfig`` must then be printed again). The CA certificate is
public and goes into that kubeconfig as ``certificate-authority-data``.

The CA is constrained to what it is for: ``BasicConstraints(ca, path_length=0)`` and a name constraint
that permits only the IP 127.0.0.1 and the DNS name ``localhost``, so even a stolen CA key could not
sign a certificate another client would accept for a real host. Serving certificates carry exactly
``IP:127.0.0.1`` and ``DNS:localhost`` and ``serverAuth``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LocalCA", "ServingCertificate"]

_LOOPBACK = ipaddress.ip_address("127.0.0.1")


class ServingCertificate:
    """A serving certificate and its private key (PEM). ``repr`` never shows the key."""

    __slots__ = ("cert_pem", "expires_at", "key_pem")

    def __init__(self, *, cert_pem: bytes, key_pem: bytes, expires_at: dt.datetime) -> None:
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"ServingCertificate(expires={self.expires_at.isoformat()})"


class LocalCA:
    """An in-memory CA for loopback serving certificates."""

    def __init__(
        self,
        *,
        validity: dt.timedelta = dt.timedelta(days=365),
        now: dt.datetime | None = None,
        name: str | None = None,
    ) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
        self.expires_at = start + validity
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubeshield access"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, name or f"kubeshield agent CA on {socket.gethostname()}"[:64]
                ),
            ]
        )
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(self.expires_at)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints(
                    permitted_subtrees=[
                        x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
                        x509.DNSName("localhost"),
                    ],
                    excluded_subtrees=None,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return f"LocalCA(expires={self.expires_at.isoformat()})"

    def issue_serving(
        self, *, validity: dt.timedelta = dt.timedelta(days=30), now: dt.datetime | None = None
    ) -> ServingCertificate:
        """A fresh key and a certificate for 127.0.0.1 / localhost, valid until the CA is (at most)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
        end = min(start + validity, self.expires_at)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(_LOOPBACK), x509.DNSName("localhost")]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return ServingCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_pem, expires_at=end
        )
