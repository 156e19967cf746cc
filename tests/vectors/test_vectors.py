"""Known-answer tests against ../shared/vectors/encryption-at-rest.json.

REAL vectors were recorded by kube-apiserver releases: each must decrypt and parse to exactly its
``expected`` fields. SYNTHETIC vectors were generated with fixed nonces: each must be reproduced byte
for byte by feeding those nonces through ``rng``, and must decrypt back. The file is required: a
missing file fails the suite, it is never skipped.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kubeshield.envelope import (
    DEKSourceType,
    EncryptedObject,
    classify,
    decode_encrypted_object,
    decode_kmsv1_payload,
    decode_object,
    encode_encrypted_object,
    encode_kmsv1_payload,
    encode_secret,
    open_aescbc,
    open_aesgcm,
    open_encrypted_object,
    open_kmsv1_data,
    open_with_seed,
    seal_aescbc,
    seal_aesgcm,
    seal_kmsv1_data,
    seal_with_dek,
    seal_with_seed,
    split_prefix,
    to_manifest,
    value_prefix,
)
from tests.support.envelope import FixedRng, read_varint, varint

VECTORS_NAME = "encryption-at-rest.json"


def _vectors_path() -> Path:
    override = os.environ.get("KUBESHIELD_VECTORS")
    if override:
        path = Path(override)
        return path / VECTORS_NAME if path.is_dir() else path
    return Path(__file__).resolve().parents[3] / "shared" / "vectors" / VECTORS_NAME


def _load() -> dict[str, dict[str, Any]]:
    path = _vectors_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"test vectors not found at {path}; put shared/ beside the repo or set KUBESHIELD_VECTORS"
        )
    vectors = json.loads(path.read_text())["vectors"]
    return {v["id"]: v for v in vectors}


VECTORS = _load()
REAL_ETCD = [vid for vid, v in VECTORS.items() if v["real"] and v["kind"] == "etcd-value"]
SYNTHETIC = [vid for vid, v in VECTORS.items() if not v["real"]]
SECRET_BLOB = bytes.fromhex(VECTORS["secret-protobuf"]["hex"])


def test_the_vector_file_has_what_these_tests_expect() -> None:
    assert len(REAL_ETCD) == 2
    assert set(SYNTHETIC) == {
        "synthetic-aesgcm",
        "synthetic-aescbc",
        "synthetic-kmsv1",
        "synthetic-kmsv2-hkdf",
        "synthetic-kmsv2-aesgcmkey",
    }


def _check_expected(plaintext: bytes, expected: dict[str, Any]) -> None:
    obj = decode_object(plaintext)
    assert obj.encoding == "protobuf"
    assert obj.api_version == expected["apiVersion"]
    assert obj.kind == expected["kind"]
    assert obj.name == expected["name"]
    assert obj.namespace == expected["namespace"]
    assert obj.uid == expected["uid"]
    assert obj.creation_timestamp == expected["creationTimestamp_seconds"]
    if "type" in expected:
        assert obj.type == expected["type"]
    if "data" in expected:
        assert dict(obj.data) == {k: v.encode() for k, v in expected["data"].items()}
    if "data_hex" in expected:
        assert dict(obj.data) == {k: bytes.fromhex(v) for k, v in expected["data_hex"].items()}


@pytest.mark.parametrize("vid", REAL_ETCD)
def test_real_kmsv2_values_decrypt_to_the_expected_secret(vid: str) -> None:
    vector = VECTORS[vid]
    value = bytes.fromhex(vector["etcd_value_hex"])
    aad = vector["etcd_key"].encode()
    name = vector["provider"]["name"]

    stored = classify(value)
    assert (stored.format, stored.name) == ("kms-v2", name)
    assert stored.payload == split_prefix(value, kind="kms-v2", name=name)

    obj = decode_encrypted_object(stored.payload)
    assert obj.dek_source_type == DEKSourceType(vector["dek_source_type"])
    assert obj.key_id == "1"
    assert dict(obj.annotations) == {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}
    # the base64 test plugin: encryptedDEKSource is the base64 text of the DEK/seed
    dek_source = base64.b64decode(obj.encrypted_dek_source, validate=True)
    assert dek_source.hex() == vector["decrypted_dek_source_hex"]

    plaintext = open_encrypted_object(obj, dek_source, aad=aad)
    _check_expected(plaintext, vector["expected"])
    # our encoder writes exactly what the apiserver wrote
    assert encode_encrypted_object(obj) == stored.payload


def test_real_v128_object_matches_our_secret_encoding_apart_from_managed_fields() -> None:
    """The 1.28 apiserver's Secret is byte for byte ours plus ObjectMeta field 17 (managedFields)."""
    vector = VECTORS["kmsv2-hkdfseed-k8s-1.28"]
    obj = decode_encrypted_object(classify(bytes.fromhex(vector["etcd_value_hex"])).payload)
    seed = bytes.fromhex(vector["decrypted_dek_source_hex"])
    real = open_encrypted_object(obj, seed, aad=vector["etcd_key"].encode())

    head = b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret\x12"
    assert real.startswith(head)
    raw_len, pos = read_varint(real, len(head))
    assert real[pos] == 0x0A  # Secret field 1: metadata
    meta_len, meta_start = read_varint(real, pos + 1)
    managed_start = real.index(b"\x8a\x01", meta_start)  # ObjectMeta field 17, wire type 2
    managed_len, managed_body = read_varint(real, managed_start + 2)
    managed_end = managed_body + managed_len
    assert managed_end == meta_start + meta_len  # managedFields is the last metadata field
    removed = managed_end - managed_start
    stripped = (
        real[: len(head)]
        + varint(raw_len - removed - (len(varint(meta_len)) - len(varint(meta_len - removed))))
        + b"\x0a"
        + varint(meta_len - removed)
        + real[meta_start:managed_start]
        + real[managed_end:]
    )
    expected = vector["expected"]
    ours = encode_secret(
        name=expected["name"],
        namespace=expected["namespace"],
        uid=expected["uid"],
        data={k: v.encode() for k, v in expected["data"].items()},
        creation_timestamp=expected["creationTimestamp_seconds"],
    )
    assert ours == stripped


def test_real_raw_gcm_transformer_output() -> None:
    vector = VECTORS["aesgcm-transformer-raw"]
    blob = bytes.fromhex(vector["ciphertext_hex"])
    key = vector["key_ascii"].encode()
    assert open_aesgcm(key, blob, aad=vector["aad_ascii"].encode()) == vector["plaintext_ascii"].encode()


def test_real_raw_hkdf_extended_nonce_output() -> None:
    vector = VECTORS["hkdf-xnonce-transformer-raw"]
    blob = bytes.fromhex(vector["ciphertext_hex"])
    seed = bytes.fromhex(vector["seed_hex"])
    assert open_with_seed(seed, blob, aad=vector["aad_ascii"].encode()) == vector["plaintext_ascii"].encode()


def test_real_secret_protobuf_parses() -> None:
    _check_expected(SECRET_BLOB, VECTORS["secret-protobuf"]["expected"])
    manifest = to_manifest(decode_object(SECRET_BLOB))
    assert manifest["data"] == {"api_key": base64.b64encode(bytes.fromhex("f09fa497f09f90bc")).decode()}
    assert manifest["metadata"] == {
        "name": "test-secret",
        "namespace": "secret-encryption-test",
        "uid": "72dfe5c4-1456-4239-b1ed-adffa2f1f7ba",
        "creationTimestamp": "2019-12-10T16:57:08Z",
    }


def test_encode_secret_matches_the_real_blob_without_the_removed_cluster_name_field() -> None:
    """The recorded Secret predates 1.25, which dropped ObjectMeta field 15 (clusterName, ``7a 00``)."""
    expected = VECTORS["secret-protobuf"]["expected"]
    ours = encode_secret(
        name=expected["name"],
        namespace=expected["namespace"],
        uid=expected["uid"],
        data={k: bytes.fromhex(v) for k, v in expected["data_hex"].items()},
        creation_timestamp=expected["creationTimestamp_seconds"],
        type=expected["type"],
    )
    assert SECRET_BLOB.count(b"\x7a\x00") == 1
    old = SECRET_BLOB.replace(b"\x7a\x00", b"").replace(b"\x12\x7e\x0a\x5f", b"\x12\x7c\x0a\x5d")
    assert ours == old


def _synthetic(vid: str) -> tuple[dict[str, Any], bytes, bytes]:
    vector = VECTORS[vid]
    inputs = vector["inputs"]
    assert inputs["plaintext"] == "the secret-protobuf vector's bytes"
    return inputs, bytes.fromhex(vector["etcd_value_hex"]), bytes.fromhex(inputs["key_or_dek_or_seed_hex"])


def test_synthetic_aesgcm() -> None:
    inputs, value, key = _synthetic("synthetic-aesgcm")
    aad = inputs["etcd_key"].encode()
    rng = FixedRng([bytes.fromhex(inputs["nonce_hex"])])
    built = value_prefix("aesgcm", inputs["aes_key_name"]) + seal_aesgcm(key, SECRET_BLOB, aad=aad, rng=rng)
    assert built == value and rng.exhausted
    stored = classify(value)
    assert (stored.format, stored.name) == ("aesgcm", "key1")
    assert open_aesgcm(key, stored.payload, aad=aad) == SECRET_BLOB


def test_synthetic_aescbc() -> None:
    inputs, value, key = _synthetic("synthetic-aescbc")
    rng = FixedRng([bytes.fromhex(inputs["cbc_iv_hex"])])
    built = value_prefix("aescbc", inputs["aes_key_name"]) + seal_aescbc(key, SECRET_BLOB, rng=rng)
    assert built == value and rng.exhausted
    stored = classify(value)
    assert (stored.format, stored.name) == ("aescbc", "key1")
    assert open_aescbc(key, stored.payload) == SECRET_BLOB


def test_synthetic_kmsv1() -> None:
    inputs, value, dek = _synthetic("synthetic-kmsv1")
    aad = inputs["etcd_key"].encode()
    encrypted_dek = base64.b64encode(dek)  # the base64 test plugin
    rng = FixedRng([bytes.fromhex(inputs["nonce_hex"])])
    data = seal_kmsv1_data(dek, SECRET_BLOB, aad=aad, rng=rng)
    built = value_prefix("kms-v1", inputs["kms_provider_name"]) + encode_kmsv1_payload(encrypted_dek, data)
    assert built == value and rng.exhausted
    stored = classify(value)
    assert (stored.format, stored.name) == ("kms-v1", "kms-provider")
    got_dek, got_data = decode_kmsv1_payload(stored.payload)
    assert base64.b64decode(got_dek) == dek
    assert open_kmsv1_data(dek, got_data, aad=aad) == (SECRET_BLOB, False)


@pytest.mark.parametrize(
    ("vid", "source_type"),
    [
        ("synthetic-kmsv2-hkdf", DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED),
        ("synthetic-kmsv2-aesgcmkey", DEKSourceType.AES_GCM_KEY),
    ],
)
def test_synthetic_kmsv2(vid: str, source_type: DEKSourceType) -> None:
    inputs, value, dek_source = _synthetic(vid)
    aad = inputs["etcd_key"].encode()
    nonce = bytes.fromhex(inputs["nonce_hex"])
    if source_type == DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED:
        rng = FixedRng([bytes.fromhex(inputs["hkdf_info_hex"]), nonce])
        data = seal_with_seed(dek_source, SECRET_BLOB, aad=aad, rng=rng)
    else:
        rng = FixedRng([nonce])
        data = seal_with_dek(dek_source, SECRET_BLOB, aad=aad, rng=rng)
    assert rng.exhausted
    obj = EncryptedObject(
        encrypted_data=data,
        key_id="1",
        encrypted_dek_source=base64.b64encode(dek_source),
        annotations={"local-kek.kms.kubernetes.io": b"encrypted-local-kek"},
        dek_source_type=source_type,
    )
    built = value_prefix("kms-v2", inputs["kms_provider_name"]) + encode_encrypted_object(obj)
    assert built == value
    stored = classify(value)
    assert (stored.format, stored.name) == ("kms-v2", "kms-provider")
    decoded = decode_encrypted_object(stored.payload)
    assert decoded == obj
    assert (
        open_encrypted_object(decoded, base64.b64decode(decoded.encrypted_dek_source), aad=aad) == SECRET_BLOB
    )
