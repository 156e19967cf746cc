"""Any bytes given to a decoder either decode or raise the documented error; never anything else."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.envelope import (
    DEKSourceType,
    EncryptedObject,
    ObjectDecodeError,
    StoredFormat,
    classify,
    decode_encrypted_object,
    decode_kmsv1_payload,
    decode_object,
    encode_encrypted_object,
    encode_secret,
    open_aescbc,
    open_aesgcm,
    open_encrypted_object,
    open_kmsv1_data,
    open_secretbox,
    open_with_dek,
    open_with_seed,
)
from kubeshield.errors import InvalidCiphertext

KEY = os.urandom(32)
AAD = b"/registry/secrets/a/b"
VALID_OBJECT = encode_encrypted_object(
    EncryptedObject(
        encrypted_data=b"d" * 30,
        key_id="key",
        encrypted_dek_source=b"w" * 20,
        annotations={"a.example.io": b"v", "b.example.io": b""},
        dek_source_type=DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )
)
VALID_SECRET = encode_secret(
    name="n", namespace="ns", data={"k": b"v", "j": b""}, uid="u", creation_timestamp=5, labels={"l": "x"}
)


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """A valid encoding with a few bytes flipped, inserted, or cut: reaches the deep parse paths."""
    blob = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        pos = draw(st.integers(0, max(len(blob) - 1, 0)))
        if action == "flip" and blob:
            blob[pos] ^= draw(st.integers(1, 255))
        elif action == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        else:
            del blob[pos:]
    return bytes(blob)


def _inputs(base: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=120) | _mutated(base)


@settings(max_examples=150)
@given(_inputs(VALID_OBJECT))
def test_decode_encrypted_object(blob: bytes) -> None:
    try:
        obj = decode_encrypted_object(blob)
    except InvalidCiphertext:
        return
    assert obj.encrypted_data and obj.key_id and obj.encrypted_dek_source


@settings(max_examples=100)
@given(st.binary(max_size=80))
def test_decode_kmsv1_payload(blob: bytes) -> None:
    try:
        dek, data = decode_kmsv1_payload(blob)
    except InvalidCiphertext:
        return
    assert blob == len(dek).to_bytes(2, "big") + dek + data


@settings(max_examples=100)
@given(st.binary(max_size=100))
def test_openers(blob: bytes) -> None:
    # Authenticated formats: random bytes never open (the one documented error, nothing else).
    authenticated = [
        lambda: open_aesgcm(KEY, blob, aad=AAD),
        lambda: open_secretbox(KEY, blob),
        lambda: open_with_seed(KEY, blob, aad=AAD),
        lambda: open_with_dek(KEY, blob, aad=AAD),
        lambda: open_with_seed(blob, b"\x00" * 80, aad=AAD),
        lambda: open_with_dek(blob, b"\x00" * 80, aad=AAD),
    ]
    for opener in authenticated:
        with pytest.raises(InvalidCiphertext):
            opener()
    # CBC has no tag (and KMS v1 falls back to it): random bytes may pass the padding check, so either
    # the documented error or some bytes come back, never another exception.
    for unauthenticated in (
        lambda: open_aescbc(KEY, blob),
        lambda: open_kmsv1_data(KEY, blob, aad=AAD)[0],
        lambda: open_kmsv1_data(blob, b"\x00" * 48, aad=AAD)[0],
    ):
        try:
            result = unauthenticated()
        except InvalidCiphertext:
            continue
        assert isinstance(result, bytes)


@settings(max_examples=50)
@given(_mutated(VALID_OBJECT), st.binary(max_size=40))
def test_open_encrypted_object_with_any_dek_source(blob: bytes, dek_source: bytes) -> None:
    # Whether or not the mutated object still parses, a random DEK source never authenticates it.
    with pytest.raises(InvalidCiphertext):
        open_encrypted_object(decode_encrypted_object(blob), dek_source, aad=AAD)


@settings(max_examples=200)
@given(st.one_of(_inputs(VALID_SECRET), st.builds(lambda b: b"k8s\x00" + b, st.binary(max_size=80))))
def test_decode_object(blob: bytes) -> None:
    try:
        obj = decode_object(blob)
    except ObjectDecodeError:
        return
    assert obj.encoding in ("protobuf", "json")


@settings(max_examples=100)
@given(
    st.builds(lambda b: b"{" + b, st.binary(max_size=60)) | st.from_regex(rb"\{[ -~]{0,40}\}", fullmatch=True)
)
def test_decode_object_json(blob: bytes) -> None:
    try:
        obj = decode_object(blob)
    except ObjectDecodeError:
        return
    assert obj.encoding == "json"


_prefixes = st.sampled_from(
    [b"", b"k8s:enc:", b"k8s:enc:kms:v2:", b"k8s:enc:kms:v2:p:", b"k8s:enc:aesgcm:v1:", b"k8s:enc:kms:v1:x:"]
)


@settings(max_examples=150)
@given(_prefixes, st.binary(max_size=60) | _mutated(VALID_OBJECT))
def test_classify(prefix: bytes, rest: bytes) -> None:
    value = prefix + rest
    for known in (None, {"kms-v2": {"p", "p:q"}, "aesgcm": {"k:1"}}):
        stored = classify(value, known_names=known)
        assert isinstance(stored, StoredFormat)
        assert stored.format in ("plaintext", "aescbc", "aesgcm", "secretbox", "kms-v1", "kms-v2", "unknown")
        assert value.endswith(stored.payload)
