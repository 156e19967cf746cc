"""The relay's client-certificate CA: its private key exists on disk only wrapped by a KeyBackend.

One JSON file (mode 0600, replaced atomically under an advisory lock, ``kubeshield.keys.files``)::

    {"kind": "KubeshieldRelayCA", "formatVersion": 1,
     "fingerprint": "sha256:<hex of the SHA-256 of the CA key's SubjectPublicKeyInfo DER>",
     "certificate": "-----BEGIN CERTIFICATE-----...",          # public: the clusters trust it
     "created": "<RFC3339>",
     "custody": {"type": "wrapped", "backend": "<keys.backend>", "keyId": "<backend key_id>",
                 "wrappedKey": "<b64>", "annotations": {"<k>": "<b64>"},
                 "ciphertext": "<b64 nonce(12) || AES-256-GCM(PKCS#8 DER of the CA key)>"}}

A fresh 32-byte key encrypts the CA key's PKCS#8 DER with AES-256-GCM; the configured
:class:`~kubeshield.keys.base.KeyBackend` (custody, PKCS#11, Transit, AWS KMS, TPM, local) wraps that
key. Both layers bind ``kubeshield.io/relay-ca/v1 NUL <fingerprint>`` as AAD, so the record cannot be
swapped for another CA's, and the unwrapped key is checked against the certificate before use. The
key is unwrapped only into the relay's memory (:meth:`RelayCA.open`), never written in clear.

Issued certificates (:meth:`RelayCA.issue`) are what kube-apiserver's x509 authenticator reads: CN is
the user, each O a group; EKU clientAuth only; ``notBefore`` one minute back for clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeshield.errors import InvalidCiphertext, InvalidRequest, KeyringError
from kubeshield.keys.base import KeyBackend, Wrapped
from kubeshield.keys.files import exclusive_lock, write_private_atomic

__all__ = [
    "CA_KIND",
    "CaKeyType",
    "CsrError",
    "RelayCA",
    "RelayCAError",
    "aad_for",
    "check_csr",
    "spki_fingerprint",
]

CA_KIND = "KubeshieldRelayCA"
FORMAT_VERSION = 1
_AAD_PREFIX = b"kubeshield.io/relay-ca/v1\x00"
_NONCE = 12
_MAX_FILE = 1 << 20
_MAX_CSR = 64 * 1024
_SKEW = timedelta(minutes=1)

CaKeyType = Literal["ecdsa-p256", "ecdsa-p384"]
SigningKey = ec.EllipticCurvePrivateKey


class RelayCAError(KeyringError):
    """The relay CA file is missing, unreadable, corrupt, or does not match its key."""


class CsrError(InvalidRequest):
    """A certificate signing request was refused (the message names why)."""


def spki_fingerprint(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def aad_for(fp: str) -> bytes:
    """The AAD both wrapping layers bind: the CA key's fingerprint under a fixed prefix."""
    return _AAD_PREFIX + fp.encode("ascii")


def check_csr(pem: object) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature and key: EC P-256/P-384 or RSA 2048..8192 bits.

    The CSR's subject and extensions are ignored (the relay decides both from the ID token); only the
    public key is used, and only after the CSR proves possession of its private half.
    """
    if not isinstance(pem, str | bytes):
        raise CsrError("csr: expected a PEM string")
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if len(data) > _MAX_CSR:
        raise CsrError(f"csr: larger than {_MAX_CSR} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CsrError("csr: not a PEM certificate signing request") from None
    try:
        key = csr.public_key()
    except (ValueError, TypeError):
        raise CsrError("csr: its public key cannot be read") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise CsrError(f"csr: EC curve {key.curve.name} not allowed (P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= 8192:
            raise CsrError(f"csr: RSA key of {key.key_size} bits not allowed (2048 to 8192)")
    else:
        raise CsrError(f"csr: key type {type(key).__name__} not allowed (EC P-256/P-384 or RSA)")
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise CsrError("csr: the signature does not verify (no proof of the private key)")
    return csr


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise RelayCAError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise RelayCAError(f"{where}: not base64") from None


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Record:
    certificate: x509.Certificate
    fingerprint: str
    custody: dict[str, Any]


class RelayCA:
    """An opened CA: the certificate, and the private key in this process's memory only."""

    def __init__(self, *, certificate: x509.Certificate, key: SigningKey) -> None:
        if spki_fingerprint(key.public_key()) != spki_fingerprint(certificate.public_key()):
            raise RelayCAError("the CA key does not match the CA certificate")
        self.certificate = certificate
        self._key = key

    def __repr__(self) -> str:
        return f"RelayCA(subject={self.certificate.subject.rfc4514_string()!r})"

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    # --- file ------------------------------------------------------------------------------------

    @staticmethod
    def create(
        path: Path,
        *,
        backend: KeyBackend,
        common_name: str = "kubeshield relay CA",
        valid_for: timedelta = timedelta(days=3650),
        key_type: CaKeyType = "ecdsa-p256",
        force: bool = False,
        now: datetime | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> RelayCA:
        """Make a CA key and self-signed certificate and store the key wrapped by ``backend``.

        Refuses to replace an existing file unless ``force`` (the clusters trust the old CA).
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise RelayCAError(f"{path.parent}: the CA file's directory does not exist")
        curve: ec.EllipticCurve = ec.SECP384R1() if key_type == "ecdsa-p384" else ec.SECP256R1()
        key = ec.generate_private_key(curve)
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(rng(16), "big") >> 1 or 1)
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA384() if key_type == "ecdsa-p384" else hashes.SHA256())
        )
        fp = spki_fingerprint(key.public_key())
        doc = {
            "kind": CA_KIND,
            "formatVersion": FORMAT_VERSION,
            "fingerprint": fp,
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "created": _rfc3339(now),
            "custody": _wrap(key, fp, backend=backend, rng=rng),
        }
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        with exclusive_lock(path):
            if path.exists() and not force:
                raise RelayCAError(f"{path}: a relay CA already exists; refusing to replace it (--force)")
            try:
                write_private_atomic(path, data)
            except OSError as exc:
                raise RelayCAError(f"{path}: cannot write the CA file: {exc.strerror}") from None
        return RelayCA(certificate=cert, key=key)

    @staticmethod
    def certificate_of(path: Path) -> x509.Certificate:
        """The CA certificate alone (public; no backend needed)."""
        return _read(Path(path)).certificate

    @staticmethod
    def open(path: Path, *, backend: KeyBackend) -> RelayCA:
        """Read the CA file and unwrap its key with ``backend``. ``InvalidCiphertext`` if it refuses."""
        path = Path(path)
        record = _read(path)
        custody = record.custody
        at = f"{path}: custody"
        annotations = custody.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise RelayCAError(f"{at}.annotations: expected an object")
        key_id = custody.get("keyId")
        if not isinstance(key_id, str):
            raise RelayCAError(f"{at}.keyId: expected a string")
        wrapped = Wrapped(
            ciphertext=_unb64(custody.get("wrappedKey"), f"{at}.wrappedKey"),
            key_id=key_id,
            annotations={str(k): _unb64(v, f"{at}.annotations.{k}") for k, v in annotations.items()},
        )
        blob = _unb64(custody.get("ciphertext"), f"{at}.ciphertext")
        aad = aad_for(record.fingerprint)
        dek = backend.unwrap(wrapped, aad=aad)
        if len(dek) != 32 or len(blob) < _NONCE + 16:
            raise InvalidCiphertext()
        try:
            der = AESGCM(dek).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except InvalidTag:
            raise InvalidCiphertext() from None
        try:
            key = serialization.load_der_private_key(der, password=None)
        except ValueError:
            raise InvalidCiphertext() from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RelayCAError(f"{path}: the unwrapped key is not an EC key")
        if spki_fingerprint(key.public_key()) != record.fingerprint:
            raise RelayCAError(f"{path}: the unwrapped key is not the certificate's")
        return RelayCA(certificate=record.certificate, key=key)

    # --- issuing ---------------------------------------------------------------------------------

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        user: str,
        groups: Sequence[str] = (),
        lifetime: timedelta,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """A client certificate for ``user`` (CN) in ``groups`` (O) on the CSR's (checked) public key."""
        if not user:
            raise ValueError("user must not be empty")
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        not_after = now + lifetime
        ca_after = self.certificate.not_valid_after_utc
        if not_after > ca_after:
            raise RelayCAError("the relay CA expires before the certificate would: renew the CA")
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        public = csr.public_key()
        is_rsa = isinstance(public, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        algorithm = hashes.SHA384() if isinstance(self._key.curve, ec.SECP384R1) else hashes.SHA256()
        return builder.sign(self._key, algorithm)


def _wrap(key: SigningKey, fp: str, *, backend: KeyBackend, rng: Callable[[int], bytes]) -> dict[str, Any]:
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    aad = aad_for(fp)
    dek = rng(32)
    nonce = rng(_NONCE)
    ciphertext = nonce + AESGCM(dek).encrypt(nonce, der, aad)
    wrapped = backend.wrap(dek, aad=aad)
    return {
        "type": "wrapped",
        "backend": backend.name,
        "keyId": wrapped.key_id,
        "wrappedKey": _b64(wrapped.ciphertext),
        "annotations": {k: _b64(v) for k, v in sorted(wrapped.annotations.items())},
        "ciphertext": _b64(ciphertext),
    }


def _read(path: Path) -> _Record:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise RelayCAError(
            f"{path}: no relay CA here (create one with `kubeshield access relay init-ca`)"
        ) from None
    except OSError as exc:
        raise RelayCAError(f"{path}: cannot read the relay CA file: {exc.strerror}") from None
    if len(raw) > _MAX_FILE:
        raise RelayCAError(f"{path}: larger than {_MAX_FILE} bytes; not a relay CA file")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RelayCAError(f"{path}: not JSON; not a relay CA file") from None
    if not isinstance(doc, dict) or doc.get("kind") != CA_KIND:
        raise RelayCAError(f"{path}: kind: expected {CA_KIND}")
    if doc.get("formatVersion") != FORMAT_VERSION:
        raise RelayCAError(f"{path}: formatVersion: expected {FORMAT_VERSION}")
    pem = doc.get("certificate")
    if not isinstance(pem, str):
        raise RelayCAError(f"{path}: certificate: expected a PEM string")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise RelayCAError(f"{path}: certificate: not a PEM certificate") from None
    fp = spki_fingerprint(cert.public_key())
    if doc.get("fingerprint") != fp:
        raise RelayCAError(f"{path}: fingerprint: does not match the certificate's key")
    custody = doc.get("custody")
    if not isinstance(custody, dict) or custody.get("type") != "wrapped":
        raise RelayCAError(f"{path}: custody.type: expected wrapped")
    return _Record(certificate=cert, fingerprint=fp, custody=custody)
