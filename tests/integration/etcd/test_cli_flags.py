"""The etcd commands' flags agree with etcdctl and with each other (issue 16 item 8 and "Smaller").

Real etcd with client-certificate TLS; every command gets the same ``KUBESHIELD_*`` variables.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from bench.seed_etcd import secret_key
from kubeshield.etcd.client import EtcdClient
from tests.integration.etcd._helpers import live_args as _live
from tests.integration.etcd._helpers import run_cli, run_json, seed_mix
from tests.support.etcd import Base64KMSPlugin, EtcdServer, encryption_config_yaml


@pytest.fixture
def tls_env(tls_etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, prefix: str) -> EtcdServer:
    tls = tls_etcd.tls
    assert tls is not None
    for name in [n for n in os.environ if n.startswith("KUBESHIELD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KUBESHIELD_ENDPOINTS", tls_etcd.endpoint)
    monkeypatch.setenv("KUBESHIELD_CACERT", str(tls.ca))
    monkeypatch.setenv("KUBESHIELD_CERT", str(tls.client_cert))
    monkeypatch.setenv("KUBESHIELD_KEY", str(tls.client_key))
    monkeypatch.setenv("KUBESHIELD_PREFIX", prefix)
    return tls_etcd


def _tls_client(server: EtcdServer) -> EtcdClient:
    tls = server.tls
    assert tls is not None
    return EtcdClient(
        [server.endpoint], cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)
    )


def test_the_same_variables_work_for_audit_decrypt_and_rewrite(
    tls_env: EtcdServer, enc_config, prefix: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: decrypt read the TLS key from --client-key only, so with these variables audit worked and
    decrypt failed (and its error named the wrong flag)."""
    with _tls_client(tls_env) as client:
        n = seed_mix(client, enc_config.config, prefix, n=9)
    monkeypatch.setenv("KUBESHIELD_ENCRYPTION_CONFIG", str(enc_config.path))
    code, doc = run_json(capsys, "etcd", "audit", "-o", "json")
    assert code == 0 and doc["summary"]["total"] == n
    code, doc = run_json(capsys, "etcd", "decrypt", "--all", "-o", "json")
    assert code == 0 and len(doc["items"]) == n
    code, _, err = run_cli(capsys, "etcd", "rewrite", "--to", "kms-provider")
    assert code == 0, err
    assert "dry run" in err
    monkeypatch.setenv("KUBESHIELD_OBJECT", secret_key(3, prefix=prefix).decode())
    code, doc = run_json(capsys, "etcd", "decrypt", "-o", "json")
    assert code == 0 and [i["metadata"]["name"] for i in doc["items"]] == ["secret-0000003"]


def test_decrypt_takes_the_tls_key_with_key_and_objects_with_object(
    tls_etcd: EtcdServer, enc_config, prefix: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = tls_etcd.tls
    assert tls is not None
    for name in [n for n in os.environ if n.startswith("KUBESHIELD_")]:
        monkeypatch.delenv(name)
    with _tls_client(tls_etcd) as client:
        seed_mix(client, enc_config.config, prefix, n=9)
    base = [
        *_live("decrypt", tls_etcd, prefix),
        "--encryption-config", str(enc_config.path),
        "--cacert", str(tls.ca), "--cert", str(tls.client_cert),
    ]  # fmt: skip
    wanted = secret_key(4, prefix=prefix).decode()
    code, out, err = run_cli(capsys, *base, "--key", str(tls.client_key), "--object", wanted, "-o", "yaml")
    assert code == 0, err
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out)] == ["secret-0000004"]
    assert "deprecated" not in err
    # the old spelling in full: --client-key for TLS, --key for the object; both still work, with warnings
    code, out, err = run_cli(
        capsys, *base, "--client-key", str(tls.client_key), "--key", wanted, "-o", "yaml"
    )
    assert code == 0, err
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out)] == ["secret-0000004"]
    assert "--client-key ($KUBESHIELD_CLIENT_KEY) is deprecated" in err
    assert "--key ETCDKEY is deprecated for choosing objects: use --object ETCDKEY" in err


def test_errors_name_the_flag_the_user_gave(
    tls_etcd: EtcdServer, enc_config, prefix: str, capsys, tmp_path
) -> None:
    tls = tls_etcd.tls
    assert tls is not None
    base = [
        *_live("decrypt", tls_etcd, prefix),
        "--encryption-config", str(enc_config.path),
        "--cacert", str(tls.ca), "--cert", str(tls.client_cert), "--all", "-o", "yaml",
    ]  # fmt: skip
    missing = str(tmp_path / "missing.key")
    code, _, err = run_cli(capsys, *base, "--key", missing)
    assert code == 1 and f"--key: cannot read {missing}" in err
    code, _, err = run_cli(capsys, *base, "--client-key", missing)
    assert code == 1 and f"--client-key: cannot read {missing}" in err
    code, _, err = run_cli(capsys, *base, "--key", str(tls.client_key), "--client-key", missing)
    assert code == 2 and "disagree" in err


def test_ambiguous_key_values_are_refused_not_guessed(enc_config, capsys, tmp_path: Path) -> None:
    # a --prefix whose keys are also files: "--key <prefix>/secrets/ns/s" could be either
    prefix = str(tmp_path / "registry")
    as_file = tmp_path / "registry" / "secrets" / "ns" / "s"
    as_file.parent.mkdir(parents=True)
    as_file.write_text("not a key")
    base = [
        "etcd", "decrypt", "--endpoints", "http://127.0.0.1:1", "--prefix", prefix,
        "--encryption-config", str(enc_config.path), "-o", "yaml",
    ]  # fmt: skip
    code, _, err = run_cli(capsys, *base, "--key", str(as_file))
    assert code == 2 and "is ambiguous" in err and "--object" in err
    code, _, err = run_cli(capsys, *base, "--key", f"{prefix}/secrets/ns/a", "--namespace", "ns")
    assert code == 2 and "is the etcd TLS client key" in err
    code, _, err = run_cli(capsys, *base, "--key", f"{prefix}/secrets/ns/a", "--key", "/etc/tls.key")
    assert code == 2 and "choose objects with --object" in err
    # a key that cannot be an etcd key is the TLS key: then no selector was given
    code, _, err = run_cli(capsys, *base, "--key", str(tmp_path / "tls.key"))
    assert code == 2 and "choose exactly one of --object, --namespace, --all" in err


def test_the_old_object_variable_is_explained(enc_config, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBESHIELD_ETCD_KEY", "/etc/kubeshield/etcd.key")  # kms serve's etcd TLS key
    code, _, err = run_cli(
        capsys,
        "etcd", "decrypt", "--endpoints", "http://127.0.0.1:1",
        "--encryption-config", str(enc_config.path), "-o", "yaml",
    )  # fmt: skip
    assert code == 2
    assert "$KUBESHIELD_ETCD_KEY no longer selects objects" in err


def test_timeouts_are_durations_everywhere(
    kms_plugin: Base64KMSPlugin, capsys, monkeypatch: pytest.MonkeyPatch, etcd_server: EtcdServer, prefix: str
) -> None:
    """Before: KUBESHIELD_TIMEOUT=3s (valid for encryption-config) made kms status fail with
    "'3s' is not a valid float"."""
    monkeypatch.setenv("KUBESHIELD_TIMEOUT", "3s")
    code, out, err = run_cli(capsys, "kms", "status", "--socket", str(kms_plugin.socket_path))
    assert code == 0, err
    assert "healthz:  ok" in out
    code, out, _ = run_cli(capsys, "kms", "encryption-config", "--socket", "/run/k.sock")
    assert code == 0 and "timeout: 3s" in out
    code, out, _ = run_cli(capsys, "kms", "encryption-config", "--socket", "/run/k.sock", "--timeout", "1.5")
    assert code == 0 and "timeout: 1500ms" in out
    code, _, _ = run_cli(capsys, *_live("audit", etcd_server, prefix), "--timeout", "1m30s")
    assert code == 0
    for bad in ("3x", "-1s", "0"):
        code, _, err = run_cli(
            capsys, "kms", "status", "--socket", str(kms_plugin.socket_path), "--timeout", bad
        )
        assert code == 2, bad
        assert "--timeout" in err


def test_decrypting_an_empty_namespace_says_why(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    code, out, err = run_cli(
        capsys, *_live("decrypt", etcd_server, prefix), "--encryption-config", str(enc_config.path),
        "--namespace", "empty", "-o", "yaml",
    )  # fmt: skip
    assert code == 1 and out == ""
    assert f"nothing to decrypt: no Secrets found under {prefix}/secrets/empty/" in err


def test_audit_table_lists_every_problem_without_inventing_hidden_ones(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, kms_plugin, prefix: str, capsys
) -> None:
    """Before: plaintext values that were also stale were counted twice, so the table said
    '... and more; use -o json' with nothing hidden."""
    seed_mix(etcd, enc_config.config, prefix, n=9)  # one plaintext value: stale too (identity is not first)
    code, out, _ = run_cli(
        capsys, *_live("audit", etcd_server, prefix), "--encryption-config", str(enc_config.path)
    )
    assert code == 0
    assert "stored in plaintext" in out
    assert "and more" not in out
    etcd.put_many((f"{prefix}/secrets/bulk/s{i:05d}".encode(), b"k8s\x00junk") for i in range(1001))
    code, out, _ = run_cli(
        capsys, *_live("audit", etcd_server, prefix), "--encryption-config", str(enc_config.path)
    )
    problems = sum(1 for line in out.splitlines() if line.startswith("  /"))
    assert problems == 1000
    assert "... and 9 more; use -o json for every record" in out  # 1009 problem records in all


def test_resources_name_their_group(capsys, enc_config) -> None:
    code, _, err = run_cli(
        capsys, "etcd", "audit", "--endpoints", "http://127.0.0.1:1", "--resources", "deployments"
    )
    assert code == 2 and "name it with its group (deployments.apps)" in err


def test_grouped_resources_are_audited_under_the_apiservers_path(
    etcd_server: EtcdServer, etcd: EtcdClient, kms_plugin, kms_v1_plugin, prefix: str, tmp_path: Path, capsys
) -> None:
    """Issue 15 item 8 end to end: '*.apps' covers deployments.apps, stored at /registry/deployments/."""
    text, _ = encryption_config_yaml(
        kms_v2_endpoint=kms_plugin.endpoint, kms_v1_endpoint=kms_v1_plugin.endpoint
    )
    text = text.replace("  - resources: [secrets]", "  - resources: ['*.apps']")
    config = tmp_path / "apps.yaml"
    config.write_text(text)
    etcd.put(f"{prefix}/deployments/default/web".encode(), b"k8s\x00plain")
    etcd.put(f"{prefix}/configmaps/default/cm".encode(), b"k8s\x00plain")
    code, doc = run_json(
        capsys, *_live("audit", etcd_server, prefix), "--encryption-config", str(config),
        "--resources", "deployments.apps,configmaps", "-o", "json",
    )  # fmt: skip
    assert code == 0
    by_resource = {r["resource"]: r for r in doc["records"]}
    assert set(by_resource) == {"deployments.apps", "configmaps"}
    assert (
        by_resource["deployments.apps"]["stale"] is True
    )  # *.apps applies: identity is not its first provider
    assert by_resource["configmaps"]["stale"] is False  # no rule: identity, as the apiserver reads it


def test_out_dir_parents_are_private(
    etcd_server: EtcdServer, etcd: EtcdClient, enc_config, prefix: str, tmp_path: Path, capsys
) -> None:
    seed_mix(etcd, enc_config.config, prefix, n=9)
    out = tmp_path / "restore" / "run-1"
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(
            capsys, *_live("decrypt", etcd_server, prefix), "--encryption-config", str(enc_config.path),
            "--all", "--out-dir", str(out),
        )  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0, err
    for directory in (tmp_path / "restore", out, out / "secrets", out / "secrets" / "ns-0"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_abstract_endpoints_are_read_with_a_warning_but_never_written_through(
    etcd_server: EtcdServer, etcd: EtcdClient, kms_v1_plugin, prefix: str, tmp_path: Path, capsys
) -> None:
    """Issue 15 item 2, client side: the tools may dial an abstract endpoint of an existing config
    (audit sends Status, decrypt encrypted DEKs), but a rewrite would send it a plaintext seed."""
    import uuid

    plugin = Base64KMSPlugin(Path(f"@ks-test-{uuid.uuid4().hex[:12]}")).start()
    try:
        text, _ = encryption_config_yaml(
            kms_v2_endpoint=plugin.endpoint, kms_v1_endpoint=kms_v1_plugin.endpoint
        )
        config = tmp_path / "abstract.yaml"
        config.write_text(text)
        seed_mix(etcd, yaml_config(text), prefix, n=9)
        code, doc = run_json(
            capsys, *_live("audit", etcd_server, prefix), "--encryption-config", str(config), "-o", "json"
        )
        assert code == 0 and doc["summary"]["errors"] == 0
        code, out, err = run_cli(
            capsys, *_live("decrypt", etcd_server, prefix), "--encryption-config", str(config),
            "--all", "-o", "yaml",
        )  # fmt: skip
        assert code == 0 and len(list(yaml.safe_load_all(out))) == 9
        assert "uses the abstract socket" in err
        before = plugin.encrypt_calls
        code, out, err = run_cli(
            capsys, *_live("rewrite", etcd_server, prefix), "--encryption-config", str(config),
            "--to", "kms-provider", "--yes",
        )  # fmt: skip
        assert code == 1
        assert "refusing to write through the abstract socket" in err
        assert plugin.encrypt_calls == before  # no seed was sent
        assert out == ""  # and no key was touched
    finally:
        plugin.stop()


def yaml_config(text: str):
    from kubeshield.config.encryption import parse_encryption_config

    return parse_encryption_config(yaml.safe_load(text))


def test_kms_serve_names_its_own_etcd_flags(tmp_path: Path) -> None:
    """kms serve spells its sync etcd's TLS --etcd-cacert/--etcd-cert/--etcd-key (it has its own
    --tls-cert/--tls-key); its errors must say those names, not --cert/--key."""
    import subprocess
    import sys

    kubeshield = str(Path(sys.executable).parent / "kubeshield")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    keyring = tmp_path / "keyring"
    subprocess.run(
        [kubeshield, "keys", "init", "--keyring", str(keyring)], env=env, check=True, capture_output=True
    )
    result = subprocess.run(
        [kubeshield, "kms", "serve", "--keyring", str(keyring), "--socket", str(tmp_path / "k.sock"),
         "--health-addr", "", "--etcd-endpoints", "http://127.0.0.1:1",
         "--etcd-cert", str(tmp_path / "c.crt")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--etcd-cert and --etcd-key must be given together" in result.stderr
