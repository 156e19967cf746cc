"""Value encryption: every type round-trips with sops' encodings; anything malformed is opaque."""

from __future__ import annotations

import base64
import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import InvalidCiphertext
from kubeshield.sops._cipher import ValueCipher, plain_bytes
from kubeshield.sops.tree import Comment, Timestamp

KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("value", "data", "kind"),
    [
        ("héllo", "héllo".encode(), "str"),
        (42, b"42", "int"),
        (-7, b"-7", "int"),
        (2.5, b"2.5", "float"),
        (1e20, b"100000000000000000000", "float"),
        (1.5e-7, b"0.00000015", "float"),
        (True, b"True", "bool"),
        (False, b"False", "bool"),
        (Timestamp(2024, 1, 1, 10, 20, 30, 500_000_000, 7200), b"2024-01-01T10:20:30.5+02:00", "time"),
        (Comment(" a comment"), b" a comment", "comment"),
        (b"\x00\xff", b"\x00\xff", "str"),
    ],
)
def test_plaintext_bytes_match_sops(value, data, kind) -> None:
    assert plain_bytes(value) == (data, kind)


@given(
    st.one_of(
        st.text(min_size=1),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.booleans(),
        st.text(min_size=1).map(Comment),
    ),
    st.text(),
)
def test_round_trip(value, aad) -> None:
    cipher = ValueCipher(KEY)
    text = cipher.encrypt(value, aad=aad)
    got = ValueCipher(KEY).decrypt(text, aad=aad)
    if isinstance(value, float) and math.isinf(value):
        assert got == value
    else:
        assert got == value and type(got) is type(value)


def test_empty_string_is_not_encrypted() -> None:
    assert ValueCipher(KEY).encrypt("", aad="a:") == ""
    assert ValueCipher(KEY).decrypt("", aad="a:") == ""


def test_iv_is_32_bytes_and_reused_only_for_the_same_value_and_path() -> None:
    cipher = ValueCipher(KEY)
    first = cipher.encrypt("v", aad="a:")
    iv = base64.b64decode(first.split("iv:")[1].split(",")[0])
    assert len(iv) == 32
    assert cipher.encrypt("v", aad="a:") != first  # no stash yet: a fresh IV
    reader = ValueCipher(KEY)
    assert reader.decrypt(first, aad="a:") == "v"
    assert reader.encrypt("v", aad="a:") == first  # unchanged value keeps its ciphertext
    assert reader.encrypt("w", aad="a:") != first
    assert reader.encrypt("v", aad="b:") != first


def test_wrong_path_or_key_fails() -> None:
    text = ValueCipher(KEY).encrypt("secret", aad="db:password:")
    with pytest.raises(InvalidCiphertext):
        ValueCipher(KEY).decrypt(text, aad="db:user:")
    with pytest.raises(InvalidCiphertext):
        ValueCipher(os.urandom(32)).decrypt(text, aad="db:password:")


@pytest.mark.parametrize(
    "text",
    [
        "plaintext",
        "ENC[AES256_GCM,data:!!!,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]",
        "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]",  # 3-byte tag
        "ENC[AES256_GCM,data:AAAA,iv:,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]",
        "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:weird]",
        "ENC[AES128_GCM,data:AAAA,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]",
    ],
)
def test_malformed_values_are_opaque(text) -> None:
    with pytest.raises(InvalidCiphertext) as info:
        ValueCipher(KEY).decrypt(text, aad="a:")
    assert str(info.value) == "invalid ciphertext"


def test_unknown_type_even_with_a_valid_tag_is_refused() -> None:
    good = ValueCipher(KEY).encrypt("x", aad="a:")
    with pytest.raises(InvalidCiphertext):
        ValueCipher(KEY).decrypt(good.replace("type:str", "type:weird"), aad="a:")


def test_the_data_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ValueCipher(b"short")
