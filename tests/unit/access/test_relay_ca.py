"""The relay CA: its key stored only wrapped by a real KeyBackend (a local keyring), CSR checks, issuance."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.access.relay_ca import CsrError, RelayCA, RelayCAError, check_csr
from kubeshield.errors import InvalidCiphertext, KeyNotFound
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring


def backend(tmp_path: Path, name: str = "keyring") -> LocalKeyBackend:
    make_keyring(tmp_path / name)
    return LocalKeyBackend(path=tmp_path / name, passphrase=PASSPHRASE, argon2=CHEAP_ARGON2)


def csr_for(key: object, *, cn: str = "whoever") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_the_ca_file_holds_the_key_only_wrapped_and_is_private(tmp_path: Path) -> None:
    b = backend(tmp_path)
    ca = RelayCA.create(tmp_path / "ca.json", backend=b, common_name="test relay CA")
    raw = (tmp_path / "ca.json").read_bytes()
    assert stat.S_IMODE((tmp_path / "ca.json").stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in raw
    doc = json.loads(raw)
    assert doc["kind"] == "KubeshieldRelayCA" and doc["custody"]["backend"] == "local"
    reopened = RelayCA.open(tmp_path / "ca.json", backend=b)
    assert reopened.cert_pem == ca.cert_pem
    assert RelayCA.certificate_of(tmp_path / "ca.json").subject == ca.certificate.subject
    cert = ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_another_backend_cannot_open_it(tmp_path: Path) -> None:
    RelayCA.create(tmp_path / "ca.json", backend=backend(tmp_path))
    with pytest.raises((InvalidCiphertext, KeyNotFound)):
        RelayCA.open(tmp_path / "ca.json", backend=backend(tmp_path, "other-keyring"))


def test_a_record_swapped_for_another_cas_is_refused(tmp_path: Path) -> None:
    b = backend(tmp_path)
    RelayCA.create(tmp_path / "a.json", backend=b)
    RelayCA.create(tmp_path / "b.json", backend=b)
    a, other = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    a["custody"] = other["custody"]  # the same backend wrapped it, under the other CA's AAD
    (tmp_path / "a.json").write_text(json.dumps(a))
    with pytest.raises(InvalidCiphertext):
        RelayCA.open(tmp_path / "a.json", backend=b)
    a["fingerprint"] = "sha256:" + "0" * 64
    (tmp_path / "a.json").write_text(json.dumps(a))
    with pytest.raises(RelayCAError, match="fingerprint"):
        RelayCA.open(tmp_path / "a.json", backend=b)


def test_create_refuses_to_replace_unless_forced(tmp_path: Path) -> None:
    b = backend(tmp_path)
    first = RelayCA.create(tmp_path / "ca.json", backend=b)
    with pytest.raises(RelayCAError, match="already exists"):
        RelayCA.create(tmp_path / "ca.json", backend=b)
    assert RelayCA.open(tmp_path / "ca.json", backend=b).cert_pem == first.cert_pem
    assert RelayCA.create(tmp_path / "ca.json", backend=b, force=True).cert_pem != first.cert_pem


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no relay CA here"),
        (b"nope", "not JSON"),
        (b'{"kind": "x"}', "kind"),
        (b'{"kind": "KubeshieldRelayCA", "formatVersion": 9}', "formatVersion"),
    ],
)
def test_a_bad_ca_file_is_named(tmp_path: Path, content: bytes | None, match: str) -> None:
    if content is not None:
        (tmp_path / "ca.json").write_bytes(content)
    with pytest.raises(RelayCAError, match=match):
        RelayCA.open(tmp_path / "ca.json", backend=backend(tmp_path))


def test_issued_certificates_carry_user_groups_client_auth_and_the_lifetime(tmp_path: Path) -> None:
    ca = RelayCA.create(tmp_path / "ca.json", backend=backend(tmp_path), key_type="ecdsa-p384")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=0)
    cert = ca.issue(
        check_csr(csr_for(key, cn="ignored")),
        user="alice@example.test",
        groups=["dev", "ops"],
        lifetime=timedelta(minutes=15),
        now=now,
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice@example.test"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["dev", "ops"]
    assert cert.not_valid_after_utc == now + timedelta(minutes=15)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_a_certificate_outliving_the_ca_is_refused(tmp_path: Path) -> None:
    ca = RelayCA.create(tmp_path / "ca.json", backend=backend(tmp_path), valid_for=timedelta(hours=1))
    csr = check_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(RelayCAError, match="expires before"):
        ca.issue(csr, user="alice", lifetime=timedelta(hours=2))


# --- CSR checks ------------------------------------------------------------------------------------


def test_allowed_keys_pass() -> None:
    for key in (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ):
        assert check_csr(csr_for(key)).is_signature_valid


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (lambda: ec.generate_private_key(ec.SECP521R1()), "curve secp521r1 not allowed"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA key of 1024 bits"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "key type"),
    ],
)
def test_other_keys_are_refused(key: object, match: str) -> None:
    with pytest.raises(CsrError, match=match):
        check_csr(csr_for(key()))  # type: ignore[operator]


def test_a_csr_with_a_bad_signature_is_refused() -> None:
    good = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrError, match="signature does not verify"):
        check_csr(pem)


def test_a_csr_whose_key_was_swapped_is_refused() -> None:
    # the signature is someone else's: the CSR proves nothing about the key it names
    a = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    b = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    spki_a = a.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_b = b.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = a.public_bytes(serialization.Encoding.DER).replace(spki_a, spki_b)
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(der)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrError, match="signature does not verify"):
        check_csr(pem)


@pytest.mark.parametrize(
    ("value", "match"), [(7, "expected a PEM"), ("garbage", "not a PEM"), (b"x" * 70000, "larger than")]
)
def test_garbage_is_refused(value: object, match: str) -> None:
    with pytest.raises(CsrError, match=match):
        check_csr(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_in_a_pem_envelope_are_refused_cleanly(body: bytes) -> None:
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(body)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrError):
        check_csr(pem)
