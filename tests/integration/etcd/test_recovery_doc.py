"""docs/recovery.md, run as written (issue 16 item 9).

A "cluster" is built from real parts: a TLS etcd, a live ``kubeshield kms serve`` with a
passphrase-protected keyring, the EncryptionConfiguration that ``kubeshield kms encryption-config``
generates for it, Secrets rewritten through it by ``kubeshield etcd rewrite``, and an age backup of the
keyring. Then the disaster: the live plugin and its keyring are gone. The guide's first ``sh`` block is
run by bash, unchanged except that ``/backup``, ``/restore`` and the etcd address point into this test's
temp directories; the Secrets must come back byte for byte.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
import yaml

from kubeshield.envelope.objects import encode_secret
from kubeshield.etcd.client import EtcdClient
from tests.support.etcd import EtcdServer, etcd_binary, short_socket_dir

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
SECRETS = {f"app-{i}": {"token": f"token-{i}".encode(), "url": f"https://db-{i}/".encode()} for i in range(6)}
SECRETS["db-password"] = {"password": b"correct horse battery staple"}


def _doc_block() -> str:
    text = (ROOT / "docs" / "recovery.md").read_text()
    section = text[text.index("## Step by step, from a snapshot") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "recovery.md lost its step-by-step block"
    return match.group(1)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    env["PATH"] = f"{BIN}:{etcd_binary('etcdctl').parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args[:3]}: {result.stderr}"
    return result


@pytest.fixture
def restore_dir() -> Iterator[Path]:
    """A short path for /restore: the recovery plugin's socket lives there (sun_path is 107 bytes)."""
    path = short_socket_dir() / "restore"
    try:
        yield path
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _live_cluster(work: Path, tls_etcd: EtcdServer) -> None:
    """Build the state a control plane leaves behind: encrypted Secrets, a config, a keyring backup."""
    tls = tls_etcd.tls
    assert tls is not None
    for name, src in (("ca.crt", tls.ca), ("client.crt", tls.client_cert), ("client.key", tls.client_key)):
        shutil.copy(src, work / name)
    live = short_socket_dir()
    try:
        passphrase = live / "passphrase"
        passphrase.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        passphrase.chmod(0o600)
        keyring, socket_path = live / "keyring", live / "kms.sock"
        _run(
            "kubeshield",
            "keys",
            "init",
            "--keyring",
            str(keyring),
            "--passphrase-file",
            str(passphrase),
            cwd=work,
        )
        config = _run("kubeshield", "kms", "encryption-config", "--socket", str(socket_path), cwd=work).stdout
        (work / "encryption-config.yaml").write_text(config)
        with EtcdClient(
            [tls_etcd.endpoint], cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)
        ) as client:
            for name, data in SECRETS.items():
                value = encode_secret(name=name, namespace="payments", data=data, uid=f"uid-{name}")
                client.put(f"/registry/secrets/payments/{name}".encode(), value)
        log = (work / "live-plugin.log").open("wb")
        plugin = subprocess.Popen(
            ["kubeshield", "kms", "serve", "--keyring", str(keyring), "--passphrase-file", str(passphrase),
             "--socket", str(socket_path), "--health-addr", ""],
            env=_env(), stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not socket_path.exists():
                assert plugin.poll() is None and time.monotonic() < deadline, "live plugin did not start"
                time.sleep(0.05)
            _run(
                "kubeshield", "etcd", "rewrite", "--endpoints", tls_etcd.endpoint,
                "--cacert", "ca.crt", "--cert", "client.crt", "--key", "client.key",
                "--encryption-config", "encryption-config.yaml", "--to", "kubeshield", "--yes", cwd=work,
            )  # fmt: skip
        finally:
            os.kill(plugin.pid, signal.SIGTERM)
            plugin.wait(timeout=30)
            log.close()
        identity = pyrage.x25519.Identity.generate()
        (work / "ops-1.txt").write_text(str(identity) + "\n")
        (work / "backup").mkdir()
        _run(
            "kubeshield", "keys", "backup", "--keyring", str(keyring), "--passphrase-file", str(passphrase),
            "--out", str(work / "backup" / "keyring-20260101.age"), "--recipient", str(identity.to_public()),
            cwd=work,
        )  # fmt: skip
    finally:
        shutil.rmtree(live)  # the disaster: the live plugin, its keyring and its passphrase are gone


@pytest.fixture(scope="module")
def cluster_state(tls_etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cluster") / "work"
    work.mkdir()
    _live_cluster(work, tls_etcd)
    return work


@pytest.fixture
def work(cluster_state: Path, tmp_path: Path) -> Path:
    """A fresh copy of what the operator brings: certificates, config, backup, identity."""
    return Path(shutil.copytree(cluster_state, tmp_path / "work"))


def test_recovery_guide_runs_as_written(tls_etcd: EtcdServer, work: Path, restore_dir: Path) -> None:
    stored = []
    tls = tls_etcd.tls
    assert tls is not None
    with EtcdClient(
        [tls_etcd.endpoint], cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)
    ) as client:
        stored = [kv.value for kv in client.iter_prefix(b"/registry/secrets/payments/")]
    assert len(stored) == len(SECRETS)
    assert all(v.startswith(b"k8s:enc:kms:v2:kubeshield:") for v in stored)  # encrypted at rest

    block = _doc_block()
    assert "--passphrase-file /restore/passphrase" in block and "--health-addr ''" in block
    script = (
        block.replace("https://127.0.0.1:2379", tls_etcd.endpoint)
        .replace("/backup/", f"{work}/backup/")
        .replace("/restore", str(restore_dir))
    )
    runner = (
        "set -euo pipefail\n"
        "trap 'for p in $(jobs -p); do kill \"$p\" 2>/dev/null || true; done; wait' EXIT\n" + script
    )
    result = subprocess.run(
        ["bash", "-c", runner], cwd=work, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deadline exceeded" not in result.stderr.lower()

    # step 5: every Secret as a file, 0600 in 0700 directories, equal to what was stored
    files = sorted((restore_dir / "secrets" / "secrets" / "payments").glob("*.yaml"))
    assert [f.stem for f in files] == sorted(SECRETS)
    for directory in (restore_dir / "secrets", restore_dir / "secrets" / "secrets", files[0].parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        doc = yaml.safe_load(path.read_text())
        assert {k: base64.b64decode(v) for k, v in doc["data"].items()} == SECRETS[path.stem]
    # the namespace and the single-object variants printed the same Secrets
    assert result.stdout.count("kind: Secret") == len(SECRETS)
    assert "Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ==" in result.stdout  # db-password, as JSON
    # the plaintext went to stdout and the files only, never to the log
    assert "correct horse" not in result.stderr


def test_without_step_3_the_guide_stops_at_once_naming_the_socket(
    tls_etcd: EtcdServer, work: Path, restore_dir: Path
) -> None:
    """The old step 3 (a sed for a socket path the generated config does not contain) left the config
    pointing at the dead live plugin: every key then waited out 3 s."""
    block = _doc_block()
    before_step_3 = block[: block.index("# 3.")]
    step_4 = block[block.index("# 4.") : block.index("# 5.")]
    script = (before_step_3 + step_4).replace("https://127.0.0.1:2379", tls_etcd.endpoint)
    script = script.replace("/backup/", f"{work}/backup/").replace("/restore", str(restore_dir))
    runner = (
        "set -uo pipefail\n"
        "trap 'for p in $(jobs -p); do kill \"$p\" 2>/dev/null || true; done; wait' EXIT\n" + script
    )
    result = subprocess.run(
        ["bash", "-c", runner], cwd=work, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert "KMSUnreachable: KMS provider 'kubeshield'" in result.stderr
    assert "does not exist" in result.stderr or "connection refused" in result.stderr
    assert "--kms-endpoint kubeshield=unix:///PATH" in result.stderr
