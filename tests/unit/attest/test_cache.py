"""The signature memo only remembers successes and never lets a different key, name or body pass."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature

from kubeshield.attest import _cache


def test_only_successes_are_remembered():
    calls = []

    def bad():
        calls.append(1)
        raise InvalidSignature

    for _ in range(3):
        with pytest.raises(InvalidSignature):
            _cache.checked("t", (b"data", b"sig", b"key"), bad)
    assert len(calls) == 3
    ok = []
    _cache.checked("t", (b"data2", b"sig", b"key"), lambda: ok.append(1))
    _cache.checked("t", (b"data2", b"sig", b"key"), lambda: ok.append(1))
    assert ok == [1]
    with pytest.raises(InvalidSignature):  # another key for the same body and signature is checked again
        _cache.checked("t", (b"data2", b"sig", b"key2"), bad)
    with pytest.raises(InvalidSignature):  # part boundaries are length-prefixed: b"ab"+b"c" != b"a"+b"bc"
        _cache.checked("t", (b"data", b"2sig", b"key"), bad)


def test_disabled_memo_checks_every_time():
    _cache.set_size(0)
    try:
        calls = []
        _cache.checked("t", (b"x",), lambda: calls.append(1))
        _cache.checked("t", (b"x",), lambda: calls.append(1))
        assert calls == [1, 1]
    finally:
        _cache.set_size(4096)


def test_issuer_name_is_part_of_a_certificate_check(tmp_path):
    """A certificate verified under issuer A is not accepted under issuer B with the same key."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from kubeshield.attest._x509 import ChainError, verify_signed_by

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, issuer: str) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )

    a, b, leaf = cert("A", "A"), cert("B", "B"), cert("leaf", "A")
    verify_signed_by(leaf, a)
    with pytest.raises(ChainError):
        verify_signed_by(leaf, b)
