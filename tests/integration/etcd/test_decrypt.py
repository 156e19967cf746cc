"""`kubeshield etcd decrypt`: every format, the REAL kube-apiserver vectors, snapshots, bad input."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import yaml

from bench.seed_etcd import secret_key, secret_plaintext
from kubeshield.envelope.objects import decode_object, to_manifest
from kubeshield.etcd.client import EtcdClient
from tests.integration.etcd._helpers import MIX, run_cli, run_json, seed_mix
from tests.integration.etcd._helpers import live_args as _live
from tests.support.etcd import (
    Base64KMSPlugin,
    EtcdServer,
    encryption_config_yaml,
    real_etcd_vectors,
    save_snapshot,
)


def _expected(i: int) -> dict[str, object]:
    return to_manifest(decode_object(secret_plaintext(i)))


def test_every_format_decrypts_to_the_stored_secret(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, kms_plugin: Base64KMSPlugin, prefix: str, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    code, doc = run_json(
        capsys,
        *_live("decrypt", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--all",
        "-o",
        "json",
    )
    assert code == 0
    assert doc["kind"] == "List"
    by_name = {item["metadata"]["name"]: item for item in doc["items"]}
    assert len(by_name) == n
    for i in range(n):
        assert by_name[f"secret-{i:07d}"] == _expected(i), MIX[i % len(MIX)]
    # one Decrypt per distinct wrapped seed/DEK (3 KMS v2 sources), not one per value
    assert kms_plugin.decrypt_calls == 3


def test_real_kube_apiserver_vectors_decrypt_through_the_plugin_socket(
    etcd_server: EtcdServer, etcd: EtcdClient, kms_plugin: Base64KMSPlugin, tmp_path: Path, capsys
) -> None:
    vectors = real_etcd_vectors()
    assert len(vectors) == 2
    for v in vectors:
        etcd.put(v["etcd_key"].encode(), bytes.fromhex(v["etcd_value_hex"]))
    prefix = vectors[0]["etcd_key"].split("/secrets/")[0]
    text, _ = encryption_config_yaml(
        kms_v2_endpoint=kms_plugin.endpoint, kms_v1_endpoint="unix:///nonexistent"
    )
    config = tmp_path / "enc.yaml"
    config.write_text(text)
    args = ["--endpoints", etcd_server.endpoint, "--prefix", prefix, "--encryption-config", str(config)]
    # the v1 provider of this config has no plugin and holds nothing: leave it out of the run
    args += ["--skip-kms", "v1prov"]
    code, out, _ = run_cli(
        capsys, "etcd", "decrypt", *args, "--namespace", "kms-v2-legacy-data", "-o", "yaml"
    )
    assert code == 0
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out)}
    for v in vectors:
        want = v["expected"]
        got = docs[want["name"]]
        assert got["metadata"]["namespace"] == want["namespace"]
        assert got["metadata"]["uid"] == want["uid"]
        assert {k: base64.b64decode(x).decode() for k, x in got["data"].items()} == want["data"]
    # the audit sees them as the apiserver would: 1.27's type 0 is stale, 1.28's seed with key_id 1 is not
    code, doc = run_json(capsys, "etcd", "audit", *args, "-o", "json")
    stale = {r["name"]: r["stale"] for r in doc["records"]}
    assert stale == {"dek-source-aes-gcm-key": True, "dek-source-hkdf-sha256-xnonce-aes-gcm-seed": False}


def test_decrypt_from_a_snapshot_to_files_of_mode_0600(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, tmp_path: Path, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    snap = save_snapshot(etcd_server.endpoint, tmp_path / "snap.db")
    out_dir = tmp_path / "recovered"
    code, _, err = run_cli(
        capsys,
        "etcd",
        "decrypt",
        "--snapshot",
        str(snap),
        "--prefix",
        prefix,
        "--encryption-config",
        str(enc_config.path),
        "--all",
        "--out-dir",
        str(out_dir),
    )
    assert code == 0, err
    files = sorted(out_dir.rglob("*.yaml"))
    assert len(files) == n
    for i in range(n):
        path = out_dir / "secrets" / f"ns-{i % 10}" / f"secret-{i:07d}.yaml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert yaml.safe_load(path.read_text()) == _expected(i)


def test_selected_keys_only_and_a_missing_key_is_reported(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix)
    key = secret_key(5, prefix=prefix).decode()
    code, out, err = run_cli(
        capsys,
        *_live("decrypt", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--key",
        key,
        "--key",
        f"{prefix}/secrets/ns/nope",
        "-o",
        "yaml",
    )
    assert code == 1
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out)] == ["secret-0000005"]
    assert "no such key" in err


def test_wrong_aes_key_fails_only_those_keys(
    etcd_server: EtcdServer,
    etcd: EtcdClient,
    enc_config,
    kms_plugin,
    kms_v1_plugin,
    prefix: str,
    tmp_path: Path,
    capsys,
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    wrong = dict(enc_config.keys)
    wrong["aesgcm:key1"] = base64.b64encode(b"\x01" * 32).decode()
    text, _ = encryption_config_yaml(
        kms_v2_endpoint=kms_plugin.endpoint, kms_v1_endpoint=kms_v1_plugin.endpoint, aes_keys=wrong
    )
    bad_config = tmp_path / "wrong.yaml"
    bad_config.write_text(text)
    code, doc = run_json(
        capsys,
        *_live("decrypt", etcd_server, prefix),
        "--encryption-config",
        str(bad_config),
        "--all",
        "-o",
        "json",
    )
    _, _, err = run_cli(
        capsys,
        *_live("decrypt", etcd_server, prefix),
        "--encryption-config",
        str(bad_config),
        "--all",
        "-o",
        "json",
    )
    assert code == 1
    failed = n // len(MIX)  # the aesgcm:key1 entries
    assert len(doc["items"]) == n - failed
    assert err.count("DecryptError") == failed
    assert "aesgcm:key1" in err
    assert enc_config.keys["aesgcm:key1"] not in err and wrong["aesgcm:key1"] not in err


def test_plugin_down_fails_at_once_with_a_clear_error(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, kms_plugin: Base64KMSPlugin, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    kms_plugin.stop()
    base = [*_live("decrypt", etcd_server, prefix), "--encryption-config", str(enc_config.path), "--all"]
    code, out, err = run_cli(capsys, *base, "-o", "yaml")
    assert code == 1 and out == ""
    assert "KMSUnreachable: KMS provider 'kms-provider'" in err
    # left out explicitly, its 3 KMS v2 values fail (at once) and the others decrypt
    code, out, err = run_cli(capsys, *base, "--skip-kms", "kms-provider", "-o", "yaml")
    assert code == 1
    assert len(list(yaml.safe_load_all(out))) == 6
    assert err.count("error:") == 3
    assert "left out of this run (--skip-kms)" in err


def test_garbage_from_the_plugin_is_a_per_key_error(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    key = f"{prefix}/secrets/ns/bad-seed".encode()
    value = bytes.fromhex(real_etcd_vectors()[1]["etcd_value_hex"])  # its AAD is another key: GCM fails
    etcd.put(key, value)
    code, _, err = run_cli(
        capsys,
        *_live("decrypt", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--all",
        "-o",
        "yaml",
    )
    assert code == 1
    assert "did not decrypt with kms-v2:kms-provider" in err


def test_usage_errors(capsys, enc_config) -> None:
    base = [
        "etcd",
        "decrypt",
        "--endpoints",
        "http://127.0.0.1:1",
        "--encryption-config",
        str(enc_config.path),
    ]
    assert run_cli(capsys, *base, "-o", "yaml")[0] == 2  # no selection
    assert run_cli(capsys, *base, "--all")[0] == 2  # no output
    assert run_cli(capsys, *base, "--all", "--namespace", "x", "-o", "yaml")[0] == 2
