"""`keys retire` reads a real etcd: KMS v1 values by their wrap's fingerprint, unparsable KMS values
fail closed, values under other keys do not block (issue 16 item 2)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from kubeshield.cli import main
from kubeshield.envelope.kmsv1 import encode_kmsv1_payload, seal_kmsv1_data
from kubeshield.envelope.kmsv2 import DEKSourceType, EncryptedObject, encode_encrypted_object, seal_with_seed
from kubeshield.etcd.client import EtcdClient
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.service import AAD_V1, AAD_V2
from tests.support.etcd import EtcdServer


def _v1_value(backend: LocalKeyBackend, key: str) -> bytes:
    dek = os.urandom(32)
    encrypted_dek = backend.wrap(dek, aad=AAD_V1).ciphertext
    data = seal_kmsv1_data(dek, b"k8s\x00v1 secret", aad=key.encode())
    return b"k8s:enc:kms:v1:legacy:" + encode_kmsv1_payload(encrypted_dek, data)


def _v2_value(backend: LocalKeyBackend, key: str) -> bytes:
    seed = os.urandom(32)
    wrapped = backend.wrap(seed, aad=AAD_V2)
    obj = EncryptedObject(
        encrypted_data=seal_with_seed(seed, b"k8s\x00v2 secret", aad=key.encode()),
        key_id=wrapped.key_id,
        encrypted_dek_source=wrapped.ciphertext,
        annotations={},
        dek_source_type=DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )
    return b"k8s:enc:kms:v2:kubeshield:" + encode_encrypted_object(obj)


def _retire(capsys: object, keyring: Path, server: EtcdServer, prefix: str) -> tuple[int, str]:
    capsys.readouterr()  # type: ignore[attr-defined]
    code = main(["keys", "retire", "--keyring", str(keyring), "--version", "1",
                 "--endpoints", server.endpoint, "--prefix", prefix])  # fmt: skip
    out = capsys.readouterr()  # type: ignore[attr-defined]
    return code, out.out + out.err


def test_retire_follows_kms_v1_values_and_fails_closed(
    tmp_path: Path, etcd_server: EtcdServer, etcd: EtcdClient, capsys: object, monkeypatch: object
) -> None:
    for name in [k for k in os.environ if k.startswith("KUBESHIELD_")]:
        monkeypatch.delenv(name)  # type: ignore[attr-defined]
    prefix = f"/retire-{uuid.uuid4().hex[:8]}/registry"
    keyring = tmp_path / "keyring"
    LocalKeyBackend.create(path=keyring)
    v1_backend = LocalKeyBackend(path=keyring)
    KeyringFile(keyring).rotate(passphrase=None)
    v2_backend = LocalKeyBackend(path=keyring)
    other = LocalKeyBackend.create(path=tmp_path / "other")  # another keyring's version 1
    v1_key = f"{prefix}/secrets/ns/legacy-v1"
    etcd.put(v1_key.encode(), _v1_value(v1_backend, v1_key))
    for name, backend in (("current", v2_backend), ("foreign", other)):
        key = f"{prefix}/secrets/ns/{name}"
        etcd.put(key.encode(), _v2_value(backend, key))
    etcd.put(f"{prefix}/configmaps/ns/plain".encode(), b"k8s\x00plain")

    code, text = _retire(capsys, keyring, etcd_server, prefix)
    assert code == 1
    assert "1 stored value(s) are still encrypted under it" in text and v1_key in text
    assert "/current" not in text and "/foreign" not in text
    assert len(KeyringFile(keyring).read_info().versions) == 2

    etcd.delete(v1_key.encode())
    broken = f"{prefix}/secrets/ns/broken"
    etcd.put(broken.encode(), b"k8s:enc:kms:v2:kubeshield:\x0a\x05trunc")
    code, text = _retire(capsys, keyring, etcd_server, prefix)
    assert code == 1 and "cannot be parsed" in text and broken in text

    etcd.delete(broken.encode())
    code, text = _retire(capsys, keyring, etcd_server, prefix)
    assert code == 0, text
    assert "3 stored value(s) checked, none needs" in text  # current, foreign, plain
    assert [v.version for v in KeyringFile(keyring).read_info().versions] == [2]
