"""`kubeshield etcd rewrite`: key_id migration, provider changes, guarded writes, dry run, identity."""

from __future__ import annotations

import base64

import pytest

from bench.seed_etcd import secret_key, secret_plaintext
from kubeshield.envelope.aes import open_aesgcm
from kubeshield.envelope.kmsv2 import DEKSourceType, decode_encrypted_object, open_with_seed
from kubeshield.errors import ConfigError
from kubeshield.etcd.client import EtcdClient
from kubeshield.etcd.rewrite import rewrite
from kubeshield.etcd.transformers import ChainSet
from tests.integration.etcd._helpers import MIX, run_cli, run_json, seed_mix
from tests.integration.etcd._helpers import live_args as _live
from tests.support.etcd import Base64KMSPlugin, EtcdServer

KMS_PREFIX = b"k8s:enc:kms:v2:kms-provider:"


def _value(etcd: EtcdClient, key: bytes) -> bytes:
    kv = etcd.get(key)
    assert kv is not None
    return kv.value


def _values(etcd: EtcdClient, prefix: str) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in etcd.iter_prefix(f"{prefix}/".encode())}


def test_dry_run_is_the_default_and_writes_nothing(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    before = _values(etcd, prefix)
    code, out, err = run_cli(
        capsys,
        *_live("rewrite", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--to",
        "kms-provider",
    )
    assert code == 0
    assert _values(etcd, prefix) == before
    assert out.count("would-rewrite") == n - n // len(MIX)
    assert "dry run" in err


def test_rotation_then_rewrite_then_audit_shows_nothing_stale(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, kms_plugin: Base64KMSPlugin, prefix: str, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix)
    kms_plugin.key_id = "2"  # the KEK rotated: Status and Encrypt now say "2"
    audit = [
        "etcd",
        "audit",
        "--endpoints",
        etcd_server.endpoint,
        "--prefix",
        prefix,
        "--encryption-config",
        str(enc_config.path),
        "-o",
        "json",
    ]
    _, doc = run_json(capsys, *audit)
    assert doc["summary"]["stale"] == n - n // len(MIX)  # only key_id 2, type 1 is fresh now
    code, _, err = run_cli(
        capsys,
        *_live("rewrite", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--to",
        "kms-provider",
        "--yes",
    )
    assert code == 0, err
    assert kms_plugin.encrypt_calls == 1  # one seed for the whole run, as the apiserver does
    code, doc = run_json(capsys, *audit, "--fail-on", "stale", "--fail-on", "plaintext")
    assert code == 0
    assert doc["summary"]["stale"] == 0 and doc["summary"]["plaintext"] == 0
    assert {(r["format"], r["key_id"], r["dek_source_type"]) for r in doc["records"]} == {
        ("kms-v2", "2", "HKDF_SHA256_XNONCE_AES_GCM_SEED")
    }
    # and the content survived: decrypt gives back every Secret
    code, listing = run_json(
        capsys,
        *_live("decrypt", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--all",
        "-o",
        "json",
    )
    assert code == 0 and len(listing["items"]) == n


def test_rewritten_kms_v2_value_has_the_apiserver_layout(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    run_cli(
        capsys,
        *_live("rewrite", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--to",
        "kms-provider",
        "--yes",
    )
    key = secret_key(4, prefix=prefix)  # was secretbox
    value = _value(etcd, key)
    assert value.startswith(KMS_PREFIX)
    obj = decode_encrypted_object(value[len(KMS_PREFIX) :])
    assert obj.dek_source_type == DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert obj.key_id == "1"
    assert dict(obj.annotations) == {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}
    # independent of our chain: base64 plugin unwrap + HKDF seed open with AAD = the etcd key
    seed = base64.b64decode(obj.encrypted_dek_source)
    assert open_with_seed(seed, obj.encrypted_data, aad=key) == secret_plaintext(4)


def test_rewrite_to_aesgcm_uses_the_first_key_and_the_etcd_key_as_aad(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    code, _, err = run_cli(
        capsys,
        *_live("rewrite", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--to",
        "aesgcm",
        "--yes",
    )
    assert code == 0, err
    secret = base64.b64decode(enc_config.keys["aesgcm:key1"])
    head = b"k8s:enc:aesgcm:v1:key1:"
    for i in range(9):
        key = secret_key(i, prefix=prefix)
        value = _value(etcd, key)
        assert value.startswith(head)
        assert open_aesgcm(secret, value[len(head) :], aad=key) == secret_plaintext(i)


def test_second_run_changes_nothing(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    n = seed_mix(etcd, enc_config.config, prefix, n=9)
    args = [
        "etcd",
        "rewrite",
        "--endpoints",
        etcd_server.endpoint,
        "--prefix",
        prefix,
        "--encryption-config",
        str(enc_config.path),
        "--to",
        "kms-provider",
        "--yes",
        "-o",
        "json",
    ]
    run_cli(capsys, *args)
    after_first = _values(etcd, prefix)
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    assert out.count('"action": "skipped"') == n
    assert _values(etcd, prefix) == after_first


def test_concurrent_write_during_rewrite_is_not_lost(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    target = secret_key(1, prefix=prefix)  # aesgcm:key1
    concurrent = secret_plaintext(1000)  # a different Secret body, written "by the apiserver" in plaintext
    done: list[bytes] = []

    def interfere(kv) -> None:
        if kv.key == target and not done:
            etcd.put(target, concurrent)
            done.append(kv.key)

    chains = ChainSet(enc_config.config)
    try:
        records = list(
            rewrite(etcd, chains=chains, to="kms-provider", prefix=prefix, apply=True, before_write=interfere)
        )
        by_key = {r.key: r for r in records}
        assert by_key[target.decode()].action == "rewritten"
        assert by_key[target.decode()].conflicts == 1
        value = _value(etcd, target)
        assert value.startswith(KMS_PREFIX)
        # the concurrent write's content is what got encrypted, not the stale read
        assert chains.chain("secrets").read(value, key=target).plaintext == concurrent
    finally:
        chains.close()


def test_identity_needs_an_explicit_yes(
    etcd: EtcdClient, enc_config, prefix: str, etcd_server, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    chains = ChainSet(enc_config.config)
    try:
        with pytest.raises(ConfigError, match="plaintext"):
            list(rewrite(etcd, chains=chains, to="identity", prefix=prefix, apply=True))
    finally:
        chains.close()
    code, _, _ = run_cli(
        capsys,
        *_live("rewrite", etcd_server, prefix),
        "--encryption-config",
        str(enc_config.path),
        "--to",
        "identity",
        "--yes",
    )
    assert code == 0
    assert all(v.startswith(b"k8s\x00") for v in _values(etcd, prefix).values())


def test_unknown_target_and_unreadable_values_are_errors_not_writes(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    bad_key = f"{prefix}/secrets/ns/unreadable".encode()
    etcd.put(bad_key, b"k8s:enc:aesgcm:v1:key1:" + b"\x00" * 64)
    before = _values(etcd, prefix)
    base = [
        "etcd",
        "rewrite",
        "--endpoints",
        etcd_server.endpoint,
        "--prefix",
        prefix,
        "--encryption-config",
        str(enc_config.path),
    ]
    code, out, _ = run_cli(capsys, *base, "--to", "nosuch", "--yes")
    assert code == 1 and "no provider named 'nosuch'" in out
    assert _values(etcd, prefix) == before
    code, out, _ = run_cli(capsys, *base, "--to", "kms-provider", "--yes")
    assert code == 1
    assert "error: " + bad_key.decode() in out
    assert _value(etcd, bad_key) == before[bad_key]


def test_rewrite_refuses_snapshots_and_contradictory_flags(enc_config, capsys, tmp_path) -> None:
    snap = tmp_path / "s.db"
    snap.write_bytes(b"x")
    base = ["etcd", "rewrite", "--encryption-config", str(enc_config.path), "--to", "kms-provider"]
    assert run_cli(capsys, *base)[0] == 2
    assert run_cli(capsys, *base, "--endpoints", "http://127.0.0.1:1", "--dry-run", "--yes")[0] == 2
