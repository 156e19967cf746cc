"""The kubeshield pieces themselves.

* ``KS-KS-001`` a kubeshield KMS plugin does not answer Status healthy (through ``kubeshield.kms.client``,
  judged exactly as kube-apiserver judges it);
* ``KS-KS-002`` Secrets in etcd are stored under a stale key (not the first provider's current key, or a
  KMS v2 key_id that is not the plugin's current one; ``kubeshield.etcd.audit``), and ``KS-ENC-010``
  Secrets stored in plaintext;
* ``KS-KS-003`` a relay or replica certificate expires within ``cert_warn_days`` (or has expired);
* ``KS-KS-004`` the newest sealing key of the sealed-secrets registry (``seal.registry`` of a
  ``kubeshield.yaml``) is older than ``seal.keyRenewPeriod``: renewal is not running, so new Secrets are
  still sealed with an old key. Only the registry's public half is read (``kubeshield.seal.registry``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from kubeshield.config.encryption import EncryptionConfiguration
from kubeshield.errors import KubeshieldError
from kubeshield.posture.audit.inventory import Inventory, container_flags, relay_container
from kubeshield.posture.findings import Finding, Report

__all__ = [
    "check_certificates",
    "check_kms_plugins",
    "check_sealing_keys",
    "check_stored_secrets",
    "relay_certificate_paths",
]


def check_kms_plugins(sockets: Sequence[str], report: Report, *, timeout: float = 3.0) -> None:
    from kubeshield.kms.client import KMSv2Client

    for socket in sockets:
        endpoint = socket if socket.startswith("unix://") else f"unix://{socket}"
        try:
            with KMSv2Client(endpoint, timeout=timeout) as client:
                client.status()
        except KubeshieldError as exc:
            report.add(
                Finding(
                    "KS-KS-001",
                    "kms-plugin-unhealthy",
                    "high",
                    f"The kubeshield KMS plugin at {socket} is not healthy: kube-apiserver cannot "
                    f"encrypt new Secrets",
                    "Check `kubeshield kms status --socket ...` and the plugin's /healthz; see "
                    "docs/backends.md",
                    object=f"KMS plugin {socket}",
                    evidence=f"{type(exc).__name__}: {exc}",
                )
            )


def check_stored_secrets(snapshot: str, config: EncryptionConfiguration | None, report: Report) -> None:
    from kubeshield.etcd.audit import AuditSummary, audit
    from kubeshield.etcd.snapshot import SnapshotReader
    from kubeshield.etcd.transformers import ChainSet

    summary = AuditSummary()
    stale: Counter[str] = Counter()
    chains = ChainSet(config) if config is not None else None
    try:
        with SnapshotReader(snapshot) as source:
            for record in audit(
                source, resources=("secrets",), config=config, chains=chains, summary=summary
            ):
                if record.error:
                    report.errors.append(f"{snapshot}: {record.key}: {record.error}")
                elif record.stale and record.format != "plaintext":  # plaintext is KS-ENC-010
                    stale[record.key_id or record.provider or record.format] += 1
    except KubeshieldError as exc:
        report.errors.append(f"{snapshot}: {type(exc).__name__}: {exc}")
        return
    finally:
        if chains is not None:
            chains.close()
    if summary.plaintext:
        report.add(
            Finding(
                "KS-ENC-010",
                "plaintext-in-etcd",
                "critical",
                f"{summary.plaintext} Secrets are stored in plaintext in etcd",
                "kubeshield etcd rewrite --to <kms provider> --yes, then check with kubeshield etcd "
                "audit --fail-on plaintext",
                object=f"etcd snapshot {Path(snapshot).name}",
                evidence=f"{summary.plaintext} of {summary.total} Secrets",
            )
        )
    for key, count in sorted(stale.items()):
        report.add(
            Finding(
                "KS-KS-002",
                "stale-key",
                "medium",
                f"{count} Secrets in etcd are stored under a stale key ({key})",
                "kubeshield etcd rewrite --to <current provider> --yes, then retire the old key",
                object=f"etcd snapshot {Path(snapshot).name}",
                evidence=f"{count} values under {key}",
            )
        )
    if config is None:
        report.skipped.append(f"{snapshot}: no EncryptionConfiguration, so stale keys were not judged")


def relay_certificate_paths(inv: Inventory, report: Report) -> list[Path]:
    out: list[Path] = []
    for doc in inv.relays:
        container = relay_container(doc.obj)
        assert container is not None
        flags = container_flags(container)
        for flag in ("tls-cert",):
            value = flags.get(flag)
            if not value:
                continue
            path = inv.resolve(value)
            if path is None:
                report.skipped.append(f"{inv.relative(doc.file)}: {inv.missing(value, '--' + flag)}")
            else:
                out.append(path)
    return out


def check_certificates(
    paths: Sequence[str | Path],
    report: Report,
    *,
    warn_days: int = 30,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    label: Callable[[str | Path], str] = str,
) -> None:
    at = now()
    for path in paths:
        try:
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            report.errors.append(f"{label(path)}: cannot read a PEM certificate: {exc}")
            continue
        leaf = certs[0]
        expires = leaf.not_valid_after_utc
        subject = leaf.subject.rfc4514_string() or "<no subject>"
        if expires <= at:
            severity, title = "high", f"The relay certificate {subject} expired on {expires:%Y-%m-%d}"
        elif expires - at <= timedelta(days=warn_days):
            days = (expires - at).days
            severity, title = (
                "medium",
                f"The relay certificate {subject} expires in {days} days ({expires:%Y-%m-%d})",
            )
        else:
            continue
        report.add(
            Finding(
                "KS-KS-003",
                "relay-cert-expiry",
                severity,
                title,
                "Renew it (cert-manager or your CA) and restart the relay/replicas; they reload on restart",
                file=label(path),
                evidence=f"notAfter {expires.isoformat()}",
            )
        )


def check_sealing_keys(
    config_path: str | Path, report: Report, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> None:
    """KS-KS-004 from the ``seal:`` section of a kubeshield.yaml (registry path, renew period)."""
    from kubeshield.config.loader import load_config
    from kubeshield.seal.registry import Registry

    try:
        settings = load_config(config_path)
        records = Registry(settings.seal.registry).load()
    except KubeshieldError as exc:
        report.errors.append(f"{config_path}: {type(exc).__name__}: {exc}")
        return
    period = settings.seal.key_renew_period
    where = str(settings.seal.registry)
    if not records:
        report.errors.append(f"{where}: the sealing-key registry holds no key")
        return
    newest = records[-1]
    age = now() - newest.not_before
    if period <= 0:
        report.skipped.append(f"{where}: seal.keyRenewPeriod is 0 (renewal off); key age not judged")
        return
    if age.total_seconds() > period:
        report.add(
            Finding(
                "KS-KS-004",
                "sealing-key-age",
                "medium",
                f"The newest sealing key is {age.days} days old, older than the renewal period "
                f"({period / 86400:g} days): new Secrets are still sealed with it",
                "Check that the seal controller runs (it renews on schedule), or `kubeshield seal keys "
                "rotate`; then re-encrypt old SealedSecrets (kubeshield seal --re-encrypt)",
                file=where,
                evidence=f"{newest.fingerprint} NotBefore {newest.not_before.isoformat()}",
            )
        )
