from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.envelope import (
    DEKSourceType,
    EncryptedObject,
    decode_encrypted_object,
    encode_encrypted_object,
    generate_dek,
    generate_seed,
    open_encrypted_object,
    open_with_dek,
    open_with_seed,
    seal_with_dek,
    seal_with_seed,
)
from kubeshield.errors import ContractViolation, InvalidCiphertext
from tests.support.envelope import FixedRng, pb_bytes, pb_varint

AAD = b"/registry/secrets/ns/name"
SEED_TYPE = DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED


def _obj(**changes: object) -> EncryptedObject:
    fields: dict[str, object] = {
        "encrypted_data": b"\x01" * 60,
        "key_id": "kek-v1",
        "encrypted_dek_source": b"\x02" * 40,
        "annotations": {"b.example.com": b"2", "a.example.com": b""},
        "dek_source_type": SEED_TYPE,
    }
    fields.update(changes)
    return EncryptedObject(**fields)  # type: ignore[arg-type]


def _entry(key: bytes, value: bytes) -> bytes:
    return pb_bytes(1, key) + pb_bytes(2, value)


def test_encoding_is_go_proto_marshal_layout() -> None:
    expected = (
        pb_bytes(1, b"\x01" * 60)
        + pb_bytes(2, b"kek-v1")
        + pb_bytes(3, b"\x02" * 40)
        + pb_bytes(4, _entry(b"a.example.com", b""))  # sorted; empty value still written
        + pb_bytes(4, _entry(b"b.example.com", b"2"))
        + pb_varint(5, 1)
    )
    assert encode_encrypted_object(_obj()) == expected


def test_type_zero_omits_field_five_and_decodes_back() -> None:
    obj = _obj(dek_source_type=DEKSourceType.AES_GCM_KEY, annotations={})
    blob = encode_encrypted_object(obj)
    assert blob == pb_bytes(1, b"\x01" * 60) + pb_bytes(2, b"kek-v1") + pb_bytes(3, b"\x02" * 40)
    assert decode_encrypted_object(blob) == obj
    # an explicit 0 (allowed by proto3 parsers) also means AES_GCM_KEY
    assert decode_encrypted_object(blob + pb_varint(5, 0)).dek_source_type == DEKSourceType.AES_GCM_KEY


def test_decoder_skips_unknown_fields_and_keeps_last_repeated_value() -> None:
    blob = (
        pb_bytes(9, b"future")
        + pb_bytes(1, b"old")
        + pb_bytes(1, b"data")
        + pb_varint(15, 7)
        + pb_bytes(2, b"k")
        + pb_bytes(3, b"c")
        + pb_bytes(4, _entry(b"x.io", b"1") + pb_varint(3, 1))
        + pb_bytes(4, _entry(b"x.io", b"2"))
        + pb_varint(5, 1)
    )
    obj = decode_encrypted_object(blob)
    assert obj.encrypted_data == b"data"
    assert dict(obj.annotations) == {"x.io": b"2"}
    assert obj.dek_source_type == SEED_TYPE


GOOD = (pb_bytes(1, b"d"), pb_bytes(2, b"k"), pb_bytes(3, b"c"))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        GOOD[1] + GOOD[2],  # no data
        GOOD[0] + GOOD[2],  # no key_id
        GOOD[0] + GOOD[1],  # no DEK source
        GOOD[0] + pb_bytes(2, b"k" * 1025) + GOOD[2],
        GOOD[0] + GOOD[1] + pb_bytes(3, b"c" * 1025),
        GOOD[0] + pb_bytes(2, b"\xff\xfe") + GOOD[2],  # key_id not UTF-8
        b"".join(GOOD) + pb_varint(5, 2),  # unknown source type
        b"".join(GOOD) + pb_varint(5, (1 << 32) + 1),
        b"".join(GOOD) + pb_bytes(4, _entry(b"@", b"")),  # annotation key not an FQDN
        b"".join(GOOD) + pb_bytes(4, _entry(b"Upper.io", b"")),
        b"".join(GOOD) + pb_bytes(4, _entry(b"a.io", b"v" * (32768 - 3))),  # total 32769
        b"".join(GOOD) + pb_bytes(4, _entry(b"\xff.io", b"")),
        b"".join(GOOD) + pb_bytes(4, pb_varint(1, 3)),  # map key with wrong wire type
        b"".join(GOOD) + pb_bytes(4, b"\x0a\x05ab"),  # truncated map entry
        pb_varint(1, 5) + GOOD[1] + GOOD[2],  # data with varint wire type
        b"".join(GOOD) + pb_bytes(5, b"\x01"),  # enum with length-delimited wire type
        b"".join(GOOD)[:-1],
        b"".join(GOOD) + b"\x0b",  # group
    ],
)
def test_invalid_objects_are_invalid_ciphertext(blob: bytes) -> None:
    with pytest.raises(InvalidCiphertext):
        decode_encrypted_object(blob)


def test_limits_are_inclusive_on_decode() -> None:
    at_limits = (
        pb_bytes(1, b"d")
        + pb_bytes(2, b"k" * 1024)
        + pb_bytes(3, b"c" * 1024)
        + pb_bytes(4, _entry(b"a.io", b"v" * (32768 - 4)))
    )
    obj = decode_encrypted_object(at_limits)
    assert len(obj.key_id) == 1024 and len(obj.encrypted_dek_source) == 1024
    assert encode_encrypted_object(obj) == at_limits


def test_encode_refuses_what_the_apiserver_would_refuse() -> None:
    with pytest.raises(ContractViolation, match="encrypted data is empty"):
        encode_encrypted_object(_obj(encrypted_data=b""))
    with pytest.raises(ContractViolation, match="key_id"):
        encode_encrypted_object(_obj(key_id=""))
    with pytest.raises(ContractViolation, match="ciphertext"):
        encode_encrypted_object(_obj(encrypted_dek_source=b"x" * 1025))
    with pytest.raises(ContractViolation, match="annotation"):
        encode_encrypted_object(_obj(annotations={"nodots": b""}))
    with pytest.raises(TypeError):
        encode_encrypted_object(b"not an object")  # type: ignore[arg-type]


def test_encrypted_object_checks_types_and_freezes_annotations() -> None:
    source = {"a.io": b"1"}
    obj = _obj(annotations=source, dek_source_type=1)
    source["b.io"] = b"2"
    assert dict(obj.annotations) == {"a.io": b"1"}
    assert obj.dek_source_type is SEED_TYPE
    with pytest.raises(TypeError):
        obj.annotations["c.io"] = b"3"  # type: ignore[index]
    with pytest.raises(TypeError, match="encrypted_data"):
        _obj(encrypted_data="text")
    with pytest.raises(TypeError, match="key_id"):
        _obj(key_id=b"bytes")
    with pytest.raises(TypeError, match="annotations"):
        _obj(annotations={"a.io": "str"})
    with pytest.raises(ValueError):
        _obj(dek_source_type=7)
    with pytest.raises(TypeError):
        _obj(dek_source_type=True)


def test_repr_shows_no_ciphertext() -> None:
    text = repr(_obj(encrypted_data=b"SECRETSECRET", encrypted_dek_source=b"WRAPPEDWRAPPED"))
    assert "SECRET" not in text and "WRAPPED" not in text and "kek-v1" in text


@pytest.mark.parametrize("plaintext", [b"", b"k8s\x00" + os.urandom(100)])
def test_seed_round_trip_and_layout(plaintext: bytes) -> None:
    seed, info, nonce = os.urandom(32), os.urandom(32), os.urandom(12)
    rng = FixedRng([info, nonce])
    data = seal_with_seed(seed, plaintext, aad=AAD, rng=rng)
    assert rng.calls == [32, 12]
    assert data[:32] == info and data[32:44] == nonce
    assert len(data) == 32 + 12 + len(plaintext) + 16
    assert open_with_seed(seed, data, aad=AAD) == plaintext


def test_seed_key_is_hkdf_expand_only() -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

    seed, info, nonce = os.urandom(32), os.urandom(32), os.urandom(12)
    data = seal_with_seed(seed, b"payload", aad=AAD, rng=FixedRng([info, nonce]))
    # full HKDF (extract + expand) must NOT be the key
    right_key = HKDFExpand(hashes.SHA256(), 32, info).derive(seed)
    assert AESGCM(right_key).decrypt(nonce, data[44:], AAD) == b"payload"
    wrong_key = HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(seed)
    with pytest.raises(InvalidTag):
        AESGCM(wrong_key).decrypt(nonce, data[44:], AAD)


def test_seed_failures_are_invalid_ciphertext() -> None:
    seed = os.urandom(32)
    data = seal_with_seed(seed, b"value", aad=AAD)
    for index in range(len(data)):
        tampered = bytearray(data)
        tampered[index] ^= 0x04
        with pytest.raises(InvalidCiphertext):
            open_with_seed(seed, bytes(tampered), aad=AAD)
    for cut in range(len(data)):
        with pytest.raises(InvalidCiphertext):
            open_with_seed(seed, data[:cut], aad=AAD)
    for wrong in ((os.urandom(32), AAD), (seed, AAD + b"/x"), (seed[:31], AAD), (seed + b"\x01", AAD)):
        with pytest.raises(InvalidCiphertext):
            open_with_seed(wrong[0], data, aad=wrong[1])


def test_longer_seeds_are_allowed_shorter_refused() -> None:
    seed = os.urandom(48)
    assert open_with_seed(seed, seal_with_seed(seed, b"v", aad=AAD), aad=AAD) == b"v"
    with pytest.raises(ValueError, match="at least 32"):
        seal_with_seed(os.urandom(31), b"v", aad=AAD)


def test_dek_round_trip_and_failures() -> None:
    dek, nonce = os.urandom(32), os.urandom(12)
    data = seal_with_dek(dek, b"value", aad=AAD, rng=FixedRng([nonce]))
    assert data[:12] == nonce
    assert open_with_dek(dek, data, aad=AAD) == b"value"
    for wrong_dek, aad in ((os.urandom(32), AAD), (dek, b"/registry/other"), (dek[:20], AAD), (b"", AAD)):
        with pytest.raises(InvalidCiphertext):
            open_with_dek(wrong_dek, data, aad=aad)
    for cut in range(len(data)):
        with pytest.raises(InvalidCiphertext):
            open_with_dek(dek, data[:cut], aad=AAD)
    with pytest.raises(ValueError):
        seal_with_dek(bytes(31), b"v", aad=AAD)


def test_open_encrypted_object_dispatches_on_type() -> None:
    seed = generate_seed()
    dek = generate_dek()
    by_seed = _obj(encrypted_data=seal_with_seed(seed, b"one", aad=AAD))
    by_dek = _obj(
        encrypted_data=seal_with_dek(dek, b"two", aad=AAD), dek_source_type=DEKSourceType.AES_GCM_KEY
    )
    assert open_encrypted_object(by_seed, seed, aad=AAD) == b"one"
    assert open_encrypted_object(by_dek, dek, aad=AAD) == b"two"
    with pytest.raises(InvalidCiphertext):
        open_encrypted_object(by_seed, dek, aad=AAD)  # a seed-typed object opened as if a DEK
    mislabelled = _obj(encrypted_data=by_seed.encrypted_data, dek_source_type=DEKSourceType.AES_GCM_KEY)
    with pytest.raises(InvalidCiphertext):
        open_encrypted_object(mislabelled, seed, aad=AAD)
    with pytest.raises(TypeError):
        open_encrypted_object(by_seed.encrypted_data, seed, aad=AAD)  # type: ignore[arg-type]


def test_generators_use_rng() -> None:
    assert generate_seed(rng=FixedRng([b"s" * 32])) == b"s" * 32
    assert generate_dek(rng=FixedRng([b"d" * 32])) == b"d" * 32


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_fqdn = st.builds(lambda a, b: f"{a}.{b}", _label, _label)
_objects = st.builds(
    EncryptedObject,
    encrypted_data=st.binary(min_size=1, max_size=200),
    key_id=st.text(min_size=1, max_size=100),
    encrypted_dek_source=st.binary(min_size=1, max_size=100),
    annotations=st.dictionaries(_fqdn, st.binary(max_size=50), max_size=4),
    dek_source_type=st.sampled_from(DEKSourceType),
)


@settings(max_examples=100)
@given(_objects)
def test_encode_decode_round_trip(obj: EncryptedObject) -> None:
    blob = encode_encrypted_object(obj)
    assert decode_encrypted_object(blob) == obj
    assert encode_encrypted_object(decode_encrypted_object(blob)) == blob
