"""``kubeshield posture``: the exposure audit. Offline from a directory of exported objects and node files
(:mod:`~kubeshield.posture.audit.inventory`), checks in :mod:`~.controlplane` (encryption at rest, audit
logging, kubelets), :mod:`~.rbac`, :mod:`~.workloads` and :mod:`~.pieces` (the kubeshield pieces)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubeshield.config.encryption import (
    EncryptionConfiguration,
    load_encryption_config,
    parse_encryption_config,
)
from kubeshield.errors import ConfigError, KubeshieldError
from kubeshield.posture.audit.controlplane import check_controlplane
from kubeshield.posture.audit.inventory import Inventory, load_inventory
from kubeshield.posture.audit.pieces import (
    check_certificates,
    check_kms_plugins,
    check_sealing_keys,
    check_stored_secrets,
    relay_certificate_paths,
)
from kubeshield.posture.audit.rbac import check_rbac
from kubeshield.posture.audit.workloads import check_namespaces, check_workloads
from kubeshield.posture.findings import Report

__all__ = ["AuditInputs", "audit_inventory", "run_audit"]


@dataclass(frozen=True)
class AuditInputs:
    from_dir: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    kms_sockets: tuple[str, ...] = ()
    etcd_snapshot: str | None = None
    encryption_config: str | None = None
    relay_certs: tuple[str, ...] = ()
    cert_warn_days: int = 30
    seal_config: str | None = None


def audit_inventory(
    inv: Inventory,
    inputs: AuditInputs = AuditInputs(),
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Report:
    report = Report(errors=list(inv.errors), skipped=list(inv.skipped))
    check_controlplane(inv, report)
    grants = check_rbac(inv, report)
    check_namespaces(inv, report)
    check_workloads(inv, grants, report)
    if inputs.kms_sockets:
        check_kms_plugins(inputs.kms_sockets, report)
    if inputs.etcd_snapshot:
        config = _encryption_config(inv, inputs, report)
        check_stored_secrets(inputs.etcd_snapshot, config, report)
    certs: list[str | Path] = [*inputs.relay_certs, *relay_certificate_paths(inv, report)]
    check_certificates(
        certs,
        report,
        warn_days=inputs.cert_warn_days,
        now=now,
        label=lambda p: inv.relative(p) if str(p) not in inputs.relay_certs else str(p),
    )
    if inputs.seal_config:
        check_sealing_keys(inputs.seal_config, report, now=now)
    seen: dict[str, object] = {}
    unique = []
    for f in report.findings:
        if f.fingerprint not in seen:
            seen[f.fingerprint] = f
            unique.append(f)
    report.findings = unique
    return report


def _encryption_config(inv: Inventory, inputs: AuditInputs, report: Report) -> EncryptionConfiguration | None:
    try:
        if inputs.encryption_config:
            return load_encryption_config(inputs.encryption_config)
        if len(inv.encryption_configs) == 1:
            return parse_encryption_config(inv.encryption_configs[0].obj)
    except ConfigError as exc:
        report.errors.append(f"EncryptionConfiguration: {exc}")
    return None


def run_audit(inputs: AuditInputs) -> Report:
    """Audit ``--from-dir`` offline, or the live cluster of ``--kubeconfig`` through its API."""
    if inputs.kubeconfig:
        from kubeshield.kube import KubeClient
        from kubeshield.posture.audit.live import load_live_inventory

        with KubeClient.from_kubeconfig(inputs.kubeconfig, context=inputs.context) as client:
            inv = load_live_inventory(client)
        return audit_inventory(inv, inputs)
    if inputs.from_dir is None:
        raise KubeshieldError("give a directory of exported objects or a kubeconfig")
    return audit_inventory(load_inventory(inputs.from_dir), inputs)
