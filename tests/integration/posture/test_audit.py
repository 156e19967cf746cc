"""``kubeshield posture`` on a deliberately misconfigured cluster: every planted problem and nothing else;
the same cluster fixed: nothing. The kubeshield pieces against real components: an etcd snapshot with
plaintext and stale-key Secrets, a live KMS plugin and a dead one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.seed_etcd import seed_etcd
from kubeshield.etcd.client import EtcdClient
from kubeshield.posture.audit import AuditInputs, audit_inventory
from kubeshield.posture.audit.inventory import Inventory
from tests.integration.posture._cluster import PLANTED, PLANTED_ERRORS, write_cluster
from tests.support.etcd import (
    Base64KMSPlugin,
    Base64KMSv1Plugin,
    EtcdServer,
    encryption_config_yaml,
    save_snapshot,
    short_socket_dir,
)

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


def posture(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KUBESHIELD, "posture", *args], capture_output=True, text=True, timeout=120)


def test_every_planted_problem_and_nothing_else(tmp_path: Path) -> None:
    root = write_cluster(tmp_path / "broken")
    result = posture("--from-dir", str(root), "-o", "json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    got = {(f["id"], f.get("file") or f.get("object")) for f in data["findings"]}
    assert got == PLANTED
    assert len(data["findings"]) == len(PLANTED)
    assert set(data["errors"]) == PLANTED_ERRORS
    for f in data["findings"]:
        assert (
            f["fix"]
            and f["severity"] in ("critical", "high", "medium", "low")
            and len(f["fingerprint"]) == 32
        )
    sarif = json.loads(posture("--from-dir", str(root), "-o", "sarif").stdout)
    assert len(sarif["runs"][0]["results"]) == len(PLANTED)
    table = posture("--from-dir", str(root))
    assert table.returncode == 1 and f"{len(PLANTED)} findings" in table.stdout


def test_the_fixed_cluster_is_clean(tmp_path: Path) -> None:
    root = write_cluster(tmp_path / "fixed", fixed=True)
    result = posture("--from-dir", str(root), "-o", "json")
    data = json.loads(result.stdout)
    assert data["findings"] == [] and data["errors"] == [], data
    assert result.returncode == 0


def test_usage_errors() -> None:
    assert posture().returncode == 2
    assert posture("--from-dir", "/nonexistent-dir").returncode == 2


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plugins() -> Iterator[tuple[Base64KMSPlugin, Base64KMSv1Plugin, Path]]:
    d = short_socket_dir()
    v2 = Base64KMSPlugin(d / "kms.sock", key_id="1").start()
    v1 = Base64KMSv1Plugin(d / "kms-v1.sock").start()
    try:
        yield v2, v1, d
    finally:
        v2.stop()
        v1.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_kubeshield_pieces_against_real_components(tmp_path: Path, etcd: EtcdServer, plugins) -> None:
    v2, v1, socket_dir = plugins
    text, _ = encryption_config_yaml(kms_v2_endpoint=v2.endpoint, kms_v1_endpoint=v1.endpoint)
    enc = tmp_path / "enc.yaml"
    enc.write_text(text)
    from kubeshield.config.encryption import load_encryption_config

    config = load_encryption_config(enc)
    with EtcdClient([etcd.endpoint]) as client:
        seed_etcd(
            client,
            9,
            mix=("identity", "kms-v2:kms-provider@1", "kms-v2:kms-provider@2"),
            config=config,
            prefix="/registry",
        )
    snapshot = save_snapshot(etcd.endpoint, tmp_path / "etcd.db")
    report = audit_inventory(
        Inventory(),
        AuditInputs(
            etcd_snapshot=str(snapshot),
            encryption_config=str(enc),
            kms_sockets=(str(v2.socket_path), str(socket_dir / "gone.sock")),
        ),
    )
    got = {(f.id, f.object) for f in report.findings}
    assert got == {
        ("KS-ENC-010", "etcd snapshot etcd.db"),
        ("KS-KS-002", "etcd snapshot etcd.db"),
        ("KS-KS-001", f"KMS plugin {socket_dir / 'gone.sock'}"),
    }, report
    assert len(report.findings) == 3
    by_id = {f.id: f for f in report.findings}
    assert by_id["KS-ENC-010"].title == "3 Secrets are stored in plaintext in etcd"
    assert by_id["KS-KS-002"].title == "3 Secrets in etcd are stored under a stale key (2)"
    assert report.errors == []


def _registry(tmp_path: Path, *, age_days: float, period: str) -> Path:
    import time

    from kubeshield.keys.testing import InMemoryBackend
    from kubeshield.seal.registry import Registry

    tmp_path.mkdir(parents=True, exist_ok=True)
    registry = tmp_path / "seal-keys.json"
    made_at = time.time() - age_days * 86400
    Registry(registry, backend=InMemoryBackend(), key_size=2048, clock=lambda: made_at).init()
    config = tmp_path / "kubeshield.yaml"
    config.write_text(f"seal:\n  registry: {registry}\n  keyRenewPeriod: {period}\n")
    return config


def test_sealing_keys_older_than_their_renewal_period(tmp_path: Path) -> None:
    old = _registry(tmp_path / "old", age_days=45, period="720h")
    report = audit_inventory(Inventory(), AuditInputs(seal_config=str(old)))
    (finding,) = report.findings
    assert finding.id == "KS-KS-004" and finding.file == str(tmp_path / "old" / "seal-keys.json")
    assert finding.title.startswith(
        "The newest sealing key is 45 days old, older than the renewal period (30 days)"
    )
    fresh = _registry(tmp_path / "fresh", age_days=3, period="720h")
    assert audit_inventory(Inventory(), AuditInputs(seal_config=str(fresh))).findings == []
    off = _registry(tmp_path / "off", age_days=400, period="0s")
    report = audit_inventory(Inventory(), AuditInputs(seal_config=str(off)))
    assert report.findings == [] and any("renewal off" in s for s in report.skipped)
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"seal:\n  registry: {tmp_path / 'nope.json'}\n")
    report = audit_inventory(Inventory(), AuditInputs(seal_config=str(missing)))
    assert len(report.errors) == 1 and "no sealing-key registry here" in report.errors[0]
