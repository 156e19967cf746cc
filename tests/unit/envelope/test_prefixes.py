from __future__ import annotations

import pytest

from kubeshield.envelope import (
    ENCRYPTED_PREFIX,
    DEKSourceType,
    EncryptedObject,
    StoredFormat,
    classify,
    encode_encrypted_object,
    split_prefix,
    value_prefix,
)

KMS_PAYLOAD = encode_encrypted_object(
    EncryptedObject(
        encrypted_data=b"d" * 50,
        key_id="k1",
        encrypted_dek_source=b"w" * 40,
        annotations={},
        dek_source_type=DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )
)


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        ("aescbc", b"k8s:enc:aescbc:v1:n:"),
        ("aesgcm", b"k8s:enc:aesgcm:v1:n:"),
        ("secretbox", b"k8s:enc:secretbox:v1:n:"),
        ("kms-v1", b"k8s:enc:kms:v1:n:"),
        ("kms-v2", b"k8s:enc:kms:v2:n:"),
    ],
)
def test_value_prefix(kind: str, prefix: bytes) -> None:
    assert value_prefix(kind, "n") == prefix
    assert prefix.startswith(ENCRYPTED_PREFIX)
    stored = classify(prefix + (KMS_PAYLOAD if kind == "kms-v2" else b"\x00payload"))
    assert (stored.format, stored.name, stored.encoding) == (kind, "n", None)
    assert split_prefix(prefix + b"rest", kind=kind, name="n") == b"rest"
    assert split_prefix(prefix + b"rest", kind=kind, name="m") is None


def test_value_prefix_errors() -> None:
    with pytest.raises(ValueError, match="unknown provider kind"):
        value_prefix("identity", "x")
    with pytest.raises(ValueError, match="empty"):
        value_prefix("aesgcm", "")
    with pytest.raises(TypeError):
        value_prefix("aesgcm", b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        split_prefix("k8s:enc:aesgcm:v1:x:", kind="aesgcm", name="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "encoding"),
    [(b"k8s\x00\x0a\x00", "protobuf"), (b'{"kind":"Secret"}', "json"), (b"\xd9\xd9\xf7\xa1", "cbor")],
)
def test_plaintext_encodings(value: bytes, encoding: str) -> None:
    assert classify(value) == StoredFormat("plaintext", None, encoding, b"")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"k8s",
        b"garbage",
        b"k8s:enc:",
        b"k8s:enc:foo:v1:n:x",
        b"k8s:enc:aesgcm:v1:no-separator",
        b"k8s\x01",
    ],
)
def test_unknown(value: bytes) -> None:
    assert classify(value) == StoredFormat("unknown", None, None, b"")


def test_known_names_match_names_with_colons_longest_first() -> None:
    value = b"k8s:enc:aesgcm:v1:key:with:colons:\x01\x02"
    assert classify(value).name == "key"
    known = {"aesgcm": {"key", "key:with:colons"}}
    stored = classify(value, known_names=known)
    assert (stored.name, stored.payload) == ("key:with:colons", b"\x01\x02")
    # a known name of another kind does not apply
    assert classify(value, known_names={"aescbc": {"key:with:colons"}}).name == "key"
    # no known name matches: fall back to splitting
    assert classify(value, known_names={"aesgcm": {"other"}}).name == "key"


def test_kms_v2_known_names_are_verified_by_parsing() -> None:
    value = b"k8s:enc:kms:v2:a:b:" + KMS_PAYLOAD
    assert classify(value, known_names={"kms-v2": {"a:b"}}).payload == KMS_PAYLOAD
    # both "a" and "a:b" match textually; only "a:b" leaves a parsable EncryptedObject
    assert classify(value, known_names={"kms-v2": ["a", "a:b"]}).name == "a:b"


def test_kms_v2_guess_picks_the_colon_after_which_an_object_parses() -> None:
    stored = classify(b"k8s:enc:kms:v2:a:b:" + KMS_PAYLOAD)
    assert (stored.format, stored.name, stored.payload) == ("kms-v2", "a:b", KMS_PAYLOAD)
    # corrupt payload: still kms-v2, name up to the first colon, payload left for the decoder to refuse
    broken = classify(b"k8s:enc:kms:v2:p:\xff\xff")
    assert (broken.format, broken.name, broken.payload) == ("kms-v2", "p", b"\xff\xff")


def test_classify_argument_errors() -> None:
    with pytest.raises(TypeError, match="value"):
        classify("k8s:enc:")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="known_names"):
        classify(b"k8s:enc:aesgcm:v1:a:x", known_names=[("aesgcm", ["a"])])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="collection of str"):
        classify(b"k8s:enc:aesgcm:v1:a:x", known_names={"aesgcm": "a"})


def test_stored_format_repr_hides_payload() -> None:
    stored = classify(b"k8s:enc:aesgcm:v1:n:TOPSECRET")
    assert "TOPSECRET" not in repr(stored)
