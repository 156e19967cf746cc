"""Sealing certificates: made like the sealed-secrets controller's, parsed like kubeseal's.

The controller (``pkg/crypto/keys.go`` ``SignKey``) makes a self-signed X.509 certificate with a random
128-bit serial, ``KeyUsage: EncipherOnly``, ``BasicConstraints CA:TRUE``, subject and issuer CN = its
``--my-cn`` (empty by default), NotBefore = now and NotAfter = now + ``--key-ttl`` (10 years), signed
with SHA-256/RSA by the key itself. :func:`make_certificate` builds exactly that.

kubeseal (``ParseKey``) takes the first certificate of a PEM file, needs an RSA key and refuses an
expired certificate; :func:`sealing_key_from_pem` does the same and names what is wrong.

A key's fingerprint is the one sealed-secrets keys its registry by: the OpenSSH ``SHA256:`` fingerprint
of the public key (``ssh.FingerprintSHA256``): unpadded standard base64 of SHA-256 over the SSH wire
form of the RSA public key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from kubeshield.seal.errors import SealError

_KEY_USAGE_ENCIPHER_ONLY = b"\x03\x02\x00\x01"

__all__ = [
    "fingerprint",
    "load_certificates",
    "make_certificate",
    "pem_of",
    "sealing_key_from_pem",
]


def fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """``SHA256:<base64, no padding>`` of the SSH wire form of ``public_key``."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def make_certificate(
    private_key: rsa.RSAPrivateKey,
    *,
    valid_for: timedelta,
    common_name: str = "",
    now: datetime | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    public_key: rsa.RSAPublicKey | None = None,
) -> x509.Certificate:
    """The self-signed certificate the sealed-secrets controller makes for a new key.

    ``public_key`` (for keys on a token) puts another key in the certificate than the one that signs;
    the caller then signs the TBS part again with the right key (:mod:`kubeshield.seal.token`).
    """
    subject_key = public_key or private_key.public_key()
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]) if common_name else x509.Name([])
    serial = int.from_bytes(rng(16), "big") or 1  # Go: rand.Int(r, 2**128)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + valid_for)
        # Go's KeyUsageEncipherOnly alone: BIT STRING with only bit 7 set. pyca's KeyUsage refuses
        # encipherOnly without keyAgreement, so the DER is written as is (and never parsed back
        # through ``cert.extensions``, which would refuse it too).
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, _KEY_USAGE_ENCIPHER_ONLY), critical=True
        )
        # Go adds a SubjectKeyId (RFC 5280 method 1) to every CA certificate it creates
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return builder.sign(private_key, hashes.SHA256())


def pem_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificates(data: bytes, *, where: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ``SealError`` naming ``where`` when there is none."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise SealError(f"{where}: no PEM CERTIFICATE block found")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SealError(f"{where}: the PEM certificate cannot be parsed") from None
    return certs


def sealing_key_from_pem(data: bytes, *, where: str, now: datetime | None = None) -> rsa.RSAPublicKey:
    """The RSA public key to seal with, from the first certificate in ``data`` (kubeseal's rules)."""
    cert = load_certificates(data, where=where)[0]
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SealError(f"{where}: expected an RSA public key, found {type(key).__name__.lstrip('_')}")
    now = now or datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        day = cert.not_valid_after_utc.strftime("%B %-d, %Y")
        raise SealError(f"{where}: the certificate expired on {day}; refusing to seal with it")
    if key.key_size < 2048:
        raise SealError(f"{where}: the RSA key has {key.key_size} bits; at least 2048 are needed")
    return key
