"""The hybrid byte format, labels by scope, strict base64, and the key order: known layout and properties."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.errors import InvalidCiphertext
from kubeshield.seal import _hybrid
from kubeshield.seal.certs import fingerprint, make_certificate
from kubeshield.seal.keyset import KeySet, MemoryDecrypter, SealingKey
from kubeshield.seal.objects import b64decode_std
from kubeshield.seal.scope import Scope, label_for, scope_of, with_scope

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _keyset(*keys: rsa.RSAPrivateKey, start: int = 0) -> KeySet:
    from datetime import UTC, datetime

    base = datetime(2024, 1, 1, tzinfo=UTC)
    return KeySet(
        SealingKey(
            certificate=make_certificate(
                k, valid_for=timedelta(days=30), now=base + timedelta(days=start + i)
            ),
            decrypter=MemoryDecrypter(k),
        )
        for i, k in enumerate(keys)
    )


def test_layout_matches_go_hybrid_encrypt() -> None:
    session = bytes(range(32))
    blob = _hybrid.encrypt(KEY.public_key(), b"twelve bytes", label=b"ns/name", rng=lambda n: session[:n])
    assert len(blob) == 2 + 256 + 12 + 16
    assert blob[:2] == (256).to_bytes(2, "big")
    # the RSA part is OAEP-SHA256/MGF1-SHA256 under the label, decryptable with plain cryptography
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"ns/name")
    assert KEY.decrypt(blob[2:258], oaep) == session
    # the rest is AES-256-GCM with a zero nonce and no AAD
    assert AESGCM(session).decrypt(bytes(12), blob[258:], None) == b"twelve bytes"


def test_empty_value_is_tag_only_and_round_trips() -> None:
    blob = _hybrid.encrypt(KEY.public_key(), b"", label=b"")
    assert len(blob) == 2 + 256 + 16
    assert _hybrid.decrypt(KEY, blob, label=b"") == b""


@pytest.mark.parametrize(
    ("scope", "label"),
    [(Scope.STRICT, b"prod/db"), (Scope.NAMESPACE_WIDE, b"prod"), (Scope.CLUSTER_WIDE, b"")],
)
def test_labels_by_scope(scope: Scope, label: bytes) -> None:
    assert label_for(namespace="prod", name="db", scope=scope) == label


def test_scope_from_annotations_cluster_wide_wins_and_only_true_counts() -> None:
    both = {
        "sealedsecrets.bitnami.com/cluster-wide": "true",
        "sealedsecrets.bitnami.com/namespace-wide": "true",
    }
    assert scope_of(both) is Scope.CLUSTER_WIDE
    assert scope_of({"sealedsecrets.bitnami.com/cluster-wide": "True"}) is Scope.STRICT
    assert scope_of(None) is Scope.STRICT
    assert with_scope(both, Scope.NAMESPACE_WIDE) == {"sealedsecrets.bitnami.com/namespace-wide": "true"}
    assert with_scope(both, Scope.STRICT) == {}
    with pytest.raises(ValueError, match="must be one of"):
        Scope.parse("global")


@settings(max_examples=40, deadline=None)
@given(value=st.binary(max_size=2048), label=st.binary(max_size=64))
def test_round_trip_property(value: bytes, label: bytes) -> None:
    blob = _hybrid.encrypt(KEY.public_key(), value, label=label)
    assert _hybrid.decrypt(KEY, blob, label=label) == value


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600))
def test_decoder_never_raises_anything_but_invalid_ciphertext(data: bytes) -> None:
    with pytest.raises(InvalidCiphertext):
        _hybrid.decrypt(KEY, data, label=b"x")


@settings(max_examples=40, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=2 + 256 + 5 + 15), bit=st.integers(min_value=0, max_value=7)
)
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    blob = bytearray(_hybrid.encrypt(KEY.public_key(), b"value", label=b"a/b"))
    blob[position] ^= 1 << bit
    with pytest.raises(InvalidCiphertext):
        _hybrid.decrypt(KEY, bytes(blob), label=b"a/b")


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2 + 256 + 5 + 15))
def test_truncation_is_refused(cut: int) -> None:
    blob = _hybrid.encrypt(KEY.public_key(), b"value", label=b"")
    with pytest.raises(InvalidCiphertext):
        _hybrid.decrypt(KEY, blob[:cut], label=b"")


def test_wrong_label_and_wrong_key_fail_the_same_way() -> None:
    blob = _hybrid.encrypt(KEY.public_key(), b"v", label=b"prod/db")
    for key, label in ((KEY, b"prod/other"), (KEY, b"prod"), (OTHER, b"prod/db")):
        with pytest.raises(InvalidCiphertext) as info:
            _hybrid.decrypt(key, blob, label=label)
        assert str(info.value) == "invalid ciphertext"


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=64))
def test_strict_base64_matches_go_std_encoding(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    assert b64decode_std(text) == data
    assert b64decode_std(text[:4] + "\n" + text[4:] + "\r\n") == data  # Go skips CR and LF
    if data:
        unpadded = text.rstrip("=")
        urlsafe = base64.urlsafe_b64encode(data).decode()
        if unpadded != text:
            with pytest.raises(ValueError):
                b64decode_std(unpadded)
        if urlsafe != text:
            with pytest.raises(ValueError):
                b64decode_std(urlsafe)


def test_fingerprint_is_the_openssh_sha256_form() -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    line = KEY.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    expected = (
        base64.b64encode(hashlib.sha256(base64.b64decode(line.split()[1])).digest()).decode().rstrip("=")
    )
    assert fingerprint(KEY.public_key()) == "SHA256:" + expected
    assert fingerprint(KEY.public_key()) != fingerprint(OTHER.public_key())


def test_key_order_hint_first_then_newest() -> None:
    k1, k2, k3 = KEY, OTHER, rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = _keyset(k1, k2, k3)
    assert keys.latest.fingerprint == fingerprint(k3.public_key())
    old = _hybrid.encrypt(k1.public_key(), b"old", label=b"l")
    keys.rsa_operations = 0
    opened = keys.open(old, label=b"l")
    assert opened.plaintext == b"old" and keys.rsa_operations == 3  # newest first: k3, k2, then k1
    keys.rsa_operations = 0
    assert keys.open(old, label=b"l", prefer=[fingerprint(k1.public_key())]).plaintext == b"old"
    assert keys.rsa_operations == 1
    keys.rsa_operations = 0
    # a wrong or forged hint costs tries, never correctness
    assert (
        keys.open(old, label=b"l", prefer=["SHA256:forged", fingerprint(k2.public_key())]).plaintext == b"old"
    )
    with pytest.raises(InvalidCiphertext):
        keys.open(old, label=b"l", prefer=[fingerprint(k2.public_key())], trial=False)
