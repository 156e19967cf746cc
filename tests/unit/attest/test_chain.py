"""Chain building on certificates made at test time: loops and over-long chains end in ChainError, an
anchor is reached only by signature, validity and CRLs are enforced (revoked, stale, missing)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubeshield.attest._x509 import MAX_DEPTH, ChainError, RevocationError, load_crl, verify_chain

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make(cn: str, issuer_cn: str, issuer_key, key=None, *, ca=True, until=None, serial=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(until or NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def crl(issuer_cn: str, key, revoked=(), next_update=None) -> x509.CertificateRevocationList:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name(issuer_cn))
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(next_update or NOW + dt.timedelta(days=1))
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - dt.timedelta(hours=2))
            .build()
        )
    return load_crl(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER), what="t")


@pytest.fixture
def pki():
    root_key = ec.generate_private_key(ec.SECP256R1())
    root, _ = make("root", "root", root_key, root_key)
    inter, inter_key = make("inter", "root", root_key)
    leaf, _ = make("leaf", "inter", inter_key, ca=False, serial=4242)
    return root, root_key, inter, inter_key, leaf


def test_good_chain_and_crls(pki):
    root, root_key, inter, inter_key, leaf = pki
    path = verify_chain(
        [der(leaf), der(inter)],
        anchors=[root],
        at=NOW,
        crls=[crl("root", root_key), crl("inter", inter_key)],
        what="t",
    )
    assert [c.subject for c in path] == [leaf.subject, inter.subject, root.subject]


def test_revoked_stale_and_missing_crls(pki):
    root, root_key, inter, inter_key, leaf = pki
    with pytest.raises(RevocationError, match="revoked"):
        verify_chain(
            [der(leaf), der(inter)],
            anchors=[root],
            at=NOW,
            crls=[crl("root", root_key), crl("inter", inter_key, revoked=[4242])],
            what="t",
        )
    with pytest.raises(RevocationError, match="stale"):
        verify_chain(
            [der(leaf), der(inter)],
            anchors=[root],
            at=NOW,
            crls=[crl("root", root_key), crl("inter", inter_key, next_update=NOW - dt.timedelta(minutes=1))],
            what="t",
        )
    with pytest.raises(RevocationError, match="unknown revocation status"):
        verify_chain([der(leaf), der(inter)], anchors=[root], at=NOW, crls=[crl("root", root_key)], what="t")
    with pytest.raises(RevocationError, match="invalid signature"):
        verify_chain(
            [der(leaf), der(inter)],
            anchors=[root],
            at=NOW,
            crls=[crl("root", root_key), crl("inter", root_key)],
            what="t",
        )


def test_expired_intermediate_and_impostor_anchor(pki):
    root, _root_key, inter, _inter_key, leaf = pki
    with pytest.raises(ChainError, match=r"expired|unknown issuer|not signed"):
        verify_chain([der(leaf), der(inter)], anchors=[root], at=NOW + dt.timedelta(days=3), what="t")
    other_key = ec.generate_private_key(ec.SECP256R1())
    impostor, _ = make("root", "root", other_key, other_key)  # same name, other key
    with pytest.raises(ChainError, match="not signed"):
        verify_chain([der(leaf), der(inter)], anchors=[impostor], at=NOW, what="t")


def test_a_loop_ends_in_chain_error():
    a_key, b_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a, _ = make("A", "B", b_key, a_key)
    b, _ = make("B", "A", a_key, b_key)
    leaf, _ = make("leaf", "A", a_key, ca=False)
    anchor_key = ec.generate_private_key(ec.SECP256R1())
    anchor, _ = make("anchor", "anchor", anchor_key, anchor_key)
    with pytest.raises(ChainError):
        verify_chain([der(leaf), der(a), der(b), der(a), der(b)], anchors=[anchor], at=NOW, what="t")


def test_over_long_chain_is_refused():
    root_key = ec.generate_private_key(ec.SECP256R1())
    root, _ = make("c0", "c0", root_key, root_key)
    chain: list[bytes] = []
    key = root_key
    for i in range(1, MAX_DEPTH + 3):
        cert, key = make(f"c{i}", f"c{i - 1}", key)
        chain.insert(0, der(cert))
    with pytest.raises(ChainError, match="longer than"):
        verify_chain(chain, anchors=[root], at=NOW, what="t")
