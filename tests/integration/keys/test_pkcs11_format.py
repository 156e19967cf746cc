"""Property tests for the PKCS#11 backend's byte formats (pure functions, no token)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import ConfigError, InvalidCiphertext
from kubeshield.keys import _pkcs11_format as fmt

versions = st.integers(min_value=1, max_value=fmt.MAX_VERSION)


tags = st.binary(min_size=8, max_size=8)


@given(
    version=versions,
    tag=tags,
    iv=st.binary(min_size=12, max_size=12),
    sealed=st.binary(min_size=16, max_size=200),
)
def test_ciphertext_round_trip(version: int, tag: bytes, iv: bytes, sealed: bytes) -> None:
    blob = fmt.encode_ciphertext(version=version, tag=tag, iv=iv, sealed=sealed)
    assert blob[0] == 0x01
    assert int.from_bytes(blob[1:5], "big") == version
    assert blob[5:13] == tag and blob[13:25] == iv and blob[25:] == sealed
    assert fmt.decode_ciphertext(blob) == (version, tag, iv, sealed)


@given(blob=st.binary(max_size=80))
def test_decode_rejects_garbage_only_with_invalid_ciphertext(blob: bytes) -> None:
    try:
        version, tag, iv, sealed = fmt.decode_ciphertext(blob)
    except InvalidCiphertext as exc:
        assert str(exc) == "invalid ciphertext"
    else:
        assert blob[0] == 0x01 and version >= 1 and len(tag) == 8 and len(iv) == 12 and len(sealed) >= 16


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01",
        b"\x02\x00\x00\x00\x01" + bytes(36),
        b"\x01\x00\x00\x00\x00" + bytes(36),
        b"\x01" + bytes(32),
    ],
    ids=["empty", "header-only", "wrong-format-byte", "version-zero", "too-short"],
)
def test_decode_rejects_known_bad(blob: bytes) -> None:
    with pytest.raises(InvalidCiphertext):
        fmt.decode_ciphertext(blob)


@given(version=versions, tag=tags)
def test_object_id_round_trip(version: int, tag: bytes) -> None:
    assert fmt.parse_object_id(fmt.object_id(version, tag)) == (version, tag)


@given(value=st.binary(max_size=30))
def test_parse_object_id_accepts_only_canonical_ids(value: bytes) -> None:
    ident = fmt.parse_object_id(value)
    if ident is not None:
        assert fmt.object_id(*ident) == value


@pytest.mark.parametrize(
    "value",
    [
        b"kubeshield:v0:0011223344556677",
        b"kubeshield:v01:0011223344556677",
        b"kubeshield:v1",
        b"kubeshield:v1:00112233445566",
        b"kubeshield:v1:00112233445566AA",
        b"kms-test",
        b"kubeshield:v4294967296:0011223344556677",
    ],
)
def test_parse_object_id_rejects(value: bytes) -> None:
    assert fmt.parse_object_id(value) is None


def test_gcm_aad_binds_key_id_and_aad_without_ambiguity() -> None:
    a = fmt.gcm_aad(key_id="pkcs11:s:l:v1", aad=b"x")
    assert a == b"kubeshield/pkcs11/v1\x00pkcs11:s:l:v1\x00x"
    assert fmt.gcm_aad(key_id="pkcs11:s:l:v1", aad=b"") != fmt.gcm_aad(key_id="pkcs11:s:l:v2", aad=b"")


def test_make_key_id_shape() -> None:
    tag = bytes.fromhex("00ff00ff00ff00ff")
    assert (
        fmt.make_key_id(serial="abc123", label="kek", version=3, tag=tag)
        == "pkcs11:abc123:kek:v3-00ff00ff00ff00ff"
    )
    with pytest.raises(ValueError):
        fmt.make_key_id(serial="abc", label="kek", version=0, tag=tag)
    with pytest.raises(ValueError):
        fmt.make_key_id(serial="abc", label="kek", version=1, tag=b"short")


@pytest.mark.parametrize("label", ["", "a b", "x" * 65, "kek:1", "-lead", "é"])
def test_validate_key_label_rejects(label: str) -> None:
    with pytest.raises(ConfigError, match="keyLabel"):
        fmt.validate_key_label(label)
