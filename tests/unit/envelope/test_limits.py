from __future__ import annotations

import pytest

from kubeshield.envelope import (
    MAX_ANNOTATIONS_BYTES,
    MAX_CIPHERTEXT_BYTES,
    MAX_KEY_ID_BYTES,
    is_fully_qualified_domain_name,
    validate_annotations,
    validate_encrypted_dek_source,
    validate_key_id,
)
from kubeshield.errors import ContractViolation

LABEL63 = "a" * 63


@pytest.mark.parametrize(
    "name",
    [
        "a.b",
        "example.com",
        "example.com.",  # one trailing dot allowed
        "local-kek.kms.kubernetes.io",
        "version.encryption.remote.io",
        "0.9",
        "x-1.y-2.z",
        f"{LABEL63}.io",
        ".".join(["a" * 63] * 3) + "." + "a" * 61,  # exactly 253
        ".".join(["a" * 63] * 3) + "." + "a" * 61 + ".",  # 253 plus the trailing dot
    ],
)
def test_fqdn_accepted(name: str) -> None:
    assert is_fully_qualified_domain_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "@",
        ".",
        "localhost",  # a single label
        "localhost.",
        "Example.com",  # uppercase
        "example.COM",
        "a..b",
        ".a.b",
        "a.b..",
        "-a.b",
        "a-.b",
        "a_b.c",
        "a.b/c",
        "a b.c",
        "ex\u00e4mple.com",
        "a.b\n",
        f"{'a' * 64}.io",  # label longer than 63
        ".".join(["a" * 63] * 3) + "." + "a" * 62,  # 254
    ],
)
def test_fqdn_rejected(name: str) -> None:
    assert not is_fully_qualified_domain_name(name)


def test_fqdn_type_error() -> None:
    with pytest.raises(TypeError):
        is_fully_qualified_domain_name(b"a.b")  # type: ignore[arg-type]


def test_constants() -> None:
    assert (MAX_KEY_ID_BYTES, MAX_CIPHERTEXT_BYTES, MAX_ANNOTATIONS_BYTES) == (1024, 1024, 32768)


def test_key_id_limits_are_inclusive_and_counted_in_bytes() -> None:
    validate_key_id("k")
    validate_key_id("k" * 1024)
    validate_key_id("\u00e9" * 512)  # 1024 bytes of UTF-8
    with pytest.raises(ContractViolation, match="key_id is empty"):
        validate_key_id("")
    with pytest.raises(ContractViolation, match="key_id is 1025 bytes"):
        validate_key_id("k" * 1025)
    with pytest.raises(ContractViolation, match="1026 bytes"):
        validate_key_id("\u00e9" * 513)
    with pytest.raises(ContractViolation, match="UTF-8"):
        validate_key_id("\ud800")
    with pytest.raises(TypeError, match="key_id"):
        validate_key_id(b"k")  # type: ignore[arg-type]


def test_ciphertext_limits_are_inclusive_and_do_not_show_bytes() -> None:
    validate_encrypted_dek_source(b"c")
    validate_encrypted_dek_source(b"c" * 1024)
    with pytest.raises(ContractViolation, match="empty"):
        validate_encrypted_dek_source(b"")
    with pytest.raises(ContractViolation, match="1025 bytes") as info:
        validate_encrypted_dek_source(b"Q" * 1025)
    assert "QQ" not in str(info.value)
    with pytest.raises(TypeError, match="ciphertext"):
        validate_encrypted_dek_source("c")  # type: ignore[arg-type]


def test_annotation_size_is_inclusive_at_32768() -> None:
    validate_annotations({})
    validate_annotations({"a.io": b"v" * (32768 - 4)})
    validate_annotations({"a.io": b"v" * 10000, "b.io": b"v" * (32768 - 8 - 10000)})
    with pytest.raises(ContractViolation, match="32769 bytes"):
        validate_annotations({"a.io": b"v" * (32768 - 3)})


def test_annotation_keys_must_be_fqdns_and_values_are_never_shown() -> None:
    with pytest.raises(ContractViolation, match="'@' is not a fully qualified domain name"):
        validate_annotations({"@": b"SECRETVALUE"})
    with pytest.raises(ContractViolation) as info:
        validate_annotations({"single": b"SECRETVALUE"})
    assert "SECRETVALUE" not in str(info.value)
    with pytest.raises(ContractViolation):
        validate_annotations({"Upper.io": b""})


def test_annotation_type_errors() -> None:
    with pytest.raises(TypeError):
        validate_annotations([("a.io", b"")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="values"):
        validate_annotations({"a.io": "text"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys"):
        validate_annotations({b"a.io": b""})  # type: ignore[dict-item]
