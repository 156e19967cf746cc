"""`kubeshield etcd audit` on a real etcd and on a real snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.seed_etcd import secret_key
from kubeshield.etcd.client import EtcdClient
from tests.integration.etcd._helpers import EXPECTED_FORMAT, MIX, run_cli, run_json, seed_mix
from tests.integration.etcd._helpers import live_args as _live
from tests.support.etcd import Base64KMSPlugin, EtcdServer, save_snapshot


def _by_key(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in doc["records"]}


def test_audit_classifies_every_format_without_config(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    code, doc = run_json(
        capsys, "etcd", "audit", "--endpoints", etcd_server.endpoint, "--prefix", prefix, "-o", "json"
    )
    assert code == 0
    records = _by_key(doc)
    assert len(records) == n == doc["summary"]["total"]
    for i in range(n):
        entry = MIX[i % len(MIX)]
        record = records[secret_key(i, prefix=prefix).decode()]
        assert record["format"] == EXPECTED_FORMAT[entry], entry
        assert record["resource"] == "secrets"
        assert record["namespace"] == f"ns-{i % 10}"
        assert record["stale"] is None and record["error"] is None
        if entry.startswith("kms-v2"):
            assert record["provider"] == "kms-provider"
            assert record["key_id"] == entry.rsplit("@", 1)[1]
            want = "AES_GCM_KEY" if "type0" in entry else "HKDF_SHA256_XNONCE_AES_GCM_SEED"
            assert record["dek_source_type"] == want
        elif entry != "identity":
            assert record["provider"] == entry.split(":", 1)[1]
    assert doc["summary"]["by_format"]["plaintext"] == doc["summary"]["plaintext"] == n // len(MIX)


def test_audit_with_config_marks_exactly_what_the_apiserver_calls_stale(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    code, doc = run_json(
        capsys,
        *_live("audit", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "-o",
        "json",
    )
    assert code == 0
    records = _by_key(doc)
    for i in range(n):
        entry = MIX[i % len(MIX)]
        record = records[secret_key(i, prefix=prefix).decode()]
        # only type-1 KMS v2 under the plugin's current key_id "1" is fresh: kms-v2 is the first provider
        assert record["stale"] is (entry != "kms-v2:kms-provider@1"), entry
    assert doc["summary"]["current_key_ids"] == {"kms-provider": "1"}
    assert doc["summary"]["stale"] == n - n // len(MIX)


def test_fail_on_sets_exit_code(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix)
    base = ["etcd", "audit", "--endpoints", etcd_server.endpoint, "--prefix", prefix]
    assert run_cli(capsys, *base)[0] == 0
    assert run_cli(capsys, *base, "--fail-on", "plaintext")[0] == 1
    assert run_cli(capsys, *base, "--encryption-config", str(enc_config.path), "--fail-on", "stale")[0] == 1


def test_table_output_never_shows_values(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix)
    code, out, _ = run_cli(
        capsys,
        *_live("audit", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
    )
    assert code == 0
    assert "kms-provider" in out and "stale:" in out
    assert "value-" not in out and "password" not in out  # seeded secret content


def test_bad_values_are_per_key_errors_and_the_run_continues(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    etcd.put(f"{prefix}/secrets/ns/garbage".encode(), b"\x00\x01 not a kubernetes value")
    etcd.put(f"{prefix}/secrets/ns/other-key".encode(), b"k8s:enc:aesgcm:v1:key9:" + b"\x00" * 40)
    etcd.put(f"{prefix}/secrets/ns/bad-kms".encode(), b"k8s:enc:kms:v2:kms-provider:\xff\xff\xff")
    etcd.put(f"{prefix}/secrets/ns/".encode() + b"we\xc3\xafrd\x01key\xff", b"k8s\x00plain")
    code, doc = run_json(
        capsys,
        *_live("audit", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "-o",
        "json",
    )
    assert code == 1
    records = _by_key(doc)
    assert records[f"{prefix}/secrets/ns/garbage"]["format"] == "unknown"
    assert "unknown storage format" in records[f"{prefix}/secrets/ns/garbage"]["error"]
    assert "matches no configured provider" in records[f"{prefix}/secrets/ns/other-key"]["error"]
    assert "EncryptedObject" in records[f"{prefix}/secrets/ns/bad-kms"]["error"]
    assert records[f"{prefix}/secrets/ns/we\u00efrd\x01key\\xff"]["format"] == "plaintext"
    assert doc["summary"]["errors"] == 3
    assert doc["summary"]["total"] == 13


def test_plugin_down_fails_at_once_naming_the_socket(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, kms_plugin: Base64KMSPlugin, prefix: str, capsys
) -> None:
    """Issue 16 item 9: a dead socket used to cost a 3 s deadline per key; now the run stops before it
    reads anything, saying which provider and why."""
    seed_mix(etcd, enc_config.config, prefix, n=9)
    kms_plugin.stop()
    code, out, err = run_cli(
        capsys,
        *_live("audit", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "-o",
        "json",
    )
    assert code == 1
    assert out == ""  # not a single record: nothing was walked
    assert f"KMS provider 'kms-provider' (unix://{kms_plugin.socket_path})" in err
    assert "does not exist" in err or "connection refused" in err
    assert "--kms-endpoint kms-provider=unix:///PATH" in err


def test_skip_kms_is_an_error_per_kms_key_not_a_crash(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, kms_plugin: Base64KMSPlugin, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    kms_plugin.stop()
    code, doc = run_json(
        capsys,
        *_live("audit", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--skip-kms",
        "kms-provider",
        "-o",
        "json",
    )
    assert code == 1
    errors = [r for r in doc["records"] if r["error"]]
    # only the type-1 kms-v2 values (key_id 1 and 2) need Status to be judged; the rest are still classified
    assert sorted(r["key"] for r in errors) == [
        secret_key(5, prefix=prefix).decode(),
        secret_key(6, prefix=prefix).decode(),
    ]
    assert all("cannot ask KMS plugin 'kms-provider'" in r["error"] for r in errors)
    assert all("--skip-kms" in r["error"] for r in errors)
    assert sum(1 for r in doc["records"] if r["stale"]) == 7  # every other entry of MIX


def test_snapshot_audit_equals_live_audit(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, tmp_path: Path, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix)
    args = ["--prefix", prefix, "--encryption-config", str(enc_config.path), "-o", "json"]
    _, live = run_json(capsys, "etcd", "audit", "--endpoints", etcd_server.endpoint, *args)
    snap = save_snapshot(etcd_server.endpoint, tmp_path / "snap.db")
    _, offline = run_json(capsys, "etcd", "audit", "--snapshot", str(snap), *args)
    assert offline == live


def test_resources_all_walks_every_resource(
    etcd_server: EtcdServer, etcd: EtcdClient, prefix: str, capsys
) -> None:
    etcd.put(f"{prefix}/configmaps/ns/cm".encode(), b"k8s\x00x")
    etcd.put(f"{prefix}/secrets/ns/s".encode(), b"k8s\x00x")
    etcd.put(f"{prefix}/example.com/widgets/ns/w".encode(), b"{}")
    base = ["etcd", "audit", "--endpoints", etcd_server.endpoint, "--prefix", prefix, "-o", "json"]
    _, doc = run_json(capsys, *base, "--resources", "all")
    assert sorted(r["resource"] for r in doc["records"]) == ["configmaps", "secrets", "widgets.example.com"]
    _, doc = run_json(capsys, *base)
    assert [r["resource"] for r in doc["records"]] == ["secrets"]


@pytest.mark.parametrize("argv", [["--snapshot", "/nonexistent"], []])
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    assert run_cli(capsys, "etcd", "audit", *argv)[0] == 2
