"""Encryption at rest, audit logging and kubelet checks (node files and the apiserver's flags).

IDs:

* ``KS-ENC-001`` the apiserver has no ``--encryption-provider-config``: Secrets are plaintext in etcd
* ``KS-ENC-002`` the EncryptionConfiguration does not cover ``secrets``
* ``KS-ENC-003`` ``identity`` is the first provider for secrets: new Secrets are written in plaintext
* ``KS-ENC-004`` ``aescbc`` writes Secrets (CBC without authentication; deprecated by upstream)
* ``KS-ENC-005`` the first provider is not KMS v2 (a key in a file next to the apiserver, or KMS v1)
* ``KS-ENC-006`` ``--encryption-provider-config-automatic-reload`` is not on (key changes need restarts)
* ``KS-AUDIT-001`` no ``--audit-policy-file``; ``KS-AUDIT-004`` a policy but no audit backend
* ``KS-AUDIT-002`` Secret requests logged at ``Request``/``RequestResponse`` (Secret data in the audit log)
* ``KS-AUDIT-003`` Secret reads are not logged at all (``None``)
* ``KS-KUBELET-001`` anonymous authentication on; ``-002`` authorization ``AlwaysAllow``; ``-003`` the
  read-only port is open
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubeshield.config.encryption import EncryptionConfiguration, parse_encryption_config
from kubeshield.errors import ConfigError
from kubeshield.posture._docs import Document
from kubeshield.posture.audit.inventory import Inventory, apiserver_container, container_flags, object_ref
from kubeshield.posture.findings import Finding, Report

__all__ = [
    "check_audit_policy",
    "check_controlplane",
    "check_encryption_config",
    "check_kubelets",
    "secret_audit_levels",
]

_READ = ("get", "list", "watch")
_WRITE = ("create", "update", "patch", "delete")


def check_encryption_config(config: EncryptionConfiguration, *, where: str, report: Report) -> None:
    providers = config.providers_for("secrets")
    if providers is None:
        report.add(
            Finding(
                "KS-ENC-002",
                "secrets-not-covered",
                "critical",
                "The EncryptionConfiguration does not cover secrets: they are stored in plaintext",
                "Add a resources entry for secrets with a KMS v2 provider first "
                "(kubeshield kms encryption-config), then kubeshield etcd rewrite",
                file=where,
                evidence="no resources rule matches secrets",
            )
        )
        return
    first = providers[0]
    names = ", ".join(p.display_name for p in providers)
    if first.kind == "identity":
        report.add(
            Finding(
                "KS-ENC-003",
                "identity-first",
                "critical",
                "identity is the first provider for secrets: new Secrets are written in plaintext",
                "Put the KMS v2 provider first and keep identity last only while migrating; then "
                "kubeshield etcd rewrite",
                file=where,
                evidence=f"providers for secrets: {names}",
            )
        )
    if any(p.kind == "aescbc" for p in providers):
        writes = first.kind == "aescbc"
        report.add(
            Finding(
                "KS-ENC-004",
                "aescbc",
                "high" if writes else "low",
                "aescbc "
                + ("writes Secrets" if writes else "is still listed for secrets")
                + ": unauthenticated CBC with a key in a file, deprecated by Kubernetes",
                "Move to KMS v2 (kubeshield kms), rewrite stored values (kubeshield etcd rewrite), "
                "then drop aescbc",
                file=where,
                evidence=f"providers for secrets: {names}",
            )
        )
    if first.kind in ("aesgcm", "secretbox") or (first.kind == "kms" and first.api_version == "v1"):
        what = "KMS v1 (deprecated)" if first.kind == "kms" else f"{first.kind} with its key in a local file"
        report.add(
            Finding(
                "KS-ENC-005",
                "not-kms-v2",
                "medium",
                f"Secrets are written with {what}, not KMS v2",
                "Use a KMS v2 provider (kubeshield kms serve) so the key never sits next to the apiserver",
                file=where,
                evidence=f"first provider: {first.display_name}",
            )
        )


def _matches(rule: Mapping[str, Any], *, user: str, groups: Sequence[str], verb: str, namespace: str) -> bool:
    def listed(key: str, value: str) -> bool:
        values = rule.get(key)
        return not values or value in values

    if rule.get("nonResourceURLs"):
        return False
    if not listed("users", user) or not listed("verbs", verb) or not listed("namespaces", namespace):
        return False
    if rule.get("userGroups") and not any(g in rule["userGroups"] for g in groups):
        return False
    resources = rule.get("resources")
    if not resources:
        return True
    for entry in resources:
        if not isinstance(entry, Mapping):
            continue
        if str(entry.get("group", "") or "") not in ("", "*"):
            continue
        names = entry.get("resources") or []
        if entry.get("resourceNames"):
            continue
        if not names or any(n in ("secrets", "*", "*/*") for n in names):
            return True
    return False


def secret_audit_levels(policy: Mapping[str, Any]) -> dict[str, str]:
    """The level the policy logs each verb on Secrets at, for an ordinary authenticated user."""
    rules = [r for r in policy.get("rules") or [] if isinstance(r, Mapping)]
    out: dict[str, str] = {}
    for verb in (*_READ, *_WRITE):
        level = "None"
        for rule in rules:
            if _matches(rule, user="jane", groups=("system:authenticated",), verb=verb, namespace="default"):
                level = str(rule.get("level", "None"))
                break
        out[verb] = level
    return out


def check_audit_policy(doc: Document, *, where: str, report: Report) -> None:
    levels = secret_audit_levels(doc.obj)
    leaking = [v for v in _READ if levels[v] == "RequestResponse"]
    leaking += [v for v in _WRITE if levels[v] in ("Request", "RequestResponse")]
    if leaking:
        report.add(
            Finding(
                "KS-AUDIT-002",
                "audit-secret-bodies",
                "high",
                "The audit policy writes Secret data into the audit log",
                "Log secrets at Metadata: add `- level: Metadata` with resources "
                '[{group: "", resources: ["secrets"]}] before any broader rule',
                file=where,
                evidence=", ".join(f"{v}={levels[v]}" for v in leaking),
            )
        )
    if all(levels[v] == "None" for v in _READ):
        report.add(
            Finding(
                "KS-AUDIT-003",
                "audit-secret-reads-off",
                "medium",
                "The audit policy does not log reads of Secrets: who read them is not recorded",
                'Add `- level: Metadata` for resources [{group: "", resources: ["secrets"]}]',
                file=where,
                evidence=", ".join(f"{v}={levels[v]}" for v in _READ),
            )
        )


def _apiserver(inv: Inventory, doc: Document, report: Report) -> None:
    container = apiserver_container(doc.obj)
    assert container is not None
    flags = container_flags(container)
    # a static pod manifest is its own file; a mirror pod in an export (or from the API) is an object
    as_file = doc.file != "<api>" and sum(1 for d in inv.objects if d.file == doc.file) == 1
    where = inv.relative(doc.file) if as_file else object_ref(doc.obj)

    def finding(fid: str, rule: str, severity: str, title: str, fix: str, evidence: str) -> Finding:
        return Finding(
            fid,
            rule,
            severity,
            title,
            fix,
            file=where if as_file else None,
            object=None if as_file else where,
            evidence=evidence,
        )

    enc = flags.get("encryption-provider-config")
    if not enc:
        report.add(
            finding(
                "KS-ENC-001",
                "no-encryption-config",
                "critical",
                "kube-apiserver runs without --encryption-provider-config: Secrets are plaintext in etcd",
                "Generate one (kubeshield kms encryption-config), set --encryption-provider-config, then "
                "kubeshield etcd rewrite",
                "no --encryption-provider-config flag",
            )
        )
    else:
        if flags.get("encryption-provider-config-automatic-reload") != "true":
            report.add(
                finding(
                    "KS-ENC-006",
                    "no-automatic-reload",
                    "low",
                    "--encryption-provider-config-automatic-reload is off: key changes need an "
                    "apiserver restart",
                    "Set --encryption-provider-config-automatic-reload=true",
                    "flag not set to true",
                )
            )
        path = inv.resolve(enc)
        config_doc = inv.document_at(inv.encryption_configs, path) if path is not None else None
        if config_doc is None:
            report.skipped.append(f"{where}: {inv.missing(enc, '--encryption-provider-config')}")
        else:
            _encryption_doc(inv, config_doc, report)
    policy = flags.get("audit-policy-file")
    if not policy:
        report.add(
            finding(
                "KS-AUDIT-001",
                "no-audit-policy",
                "high",
                "kube-apiserver has no --audit-policy-file: Secret access is not audited",
                "Set --audit-policy-file with a policy that logs secrets at Metadata, and --audit-log-path",
                "no --audit-policy-file flag",
            )
        )
    else:
        if not flags.get("audit-log-path") and not flags.get("audit-webhook-config-file"):
            report.add(
                finding(
                    "KS-AUDIT-004",
                    "no-audit-backend",
                    "medium",
                    "An audit policy is set but no audit backend: nothing is written",
                    "Set --audit-log-path (and rotation flags) or --audit-webhook-config-file",
                    "no --audit-log-path or --audit-webhook-config-file",
                )
            )
        path = inv.resolve(policy)
        policy_doc = inv.document_at(inv.audit_policies, path) if path is not None else None
        if policy_doc is None:
            report.skipped.append(f"{where}: {inv.missing(policy, '--audit-policy-file')}")
        else:
            check_audit_policy(policy_doc, where=inv.relative(policy_doc.file), report=report)


def _encryption_doc(inv: Inventory, doc: Document, report: Report) -> None:
    try:
        config = parse_encryption_config(doc.obj)
    except ConfigError as exc:
        report.errors.append(f"{inv.relative(doc.file)}: {exc}")
        return
    check_encryption_config(config, where=inv.relative(doc.file), report=report)


def check_controlplane(inv: Inventory, report: Report) -> None:
    def mirror(doc: Document) -> bool:
        meta = doc.obj.get("metadata") if isinstance(doc.obj.get("metadata"), Mapping) else {}
        annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
        return isinstance(annotations, Mapping) and "kubernetes.io/config.mirror" in annotations

    manifests = [d for d in inv.apiservers if not mirror(d)] or inv.apiservers
    for doc in manifests:
        _apiserver(inv, doc, report)
    if not inv.apiservers:
        report.skipped.append("encryption at rest and audit flags: no kube-apiserver manifest found")
        for doc in inv.encryption_configs:
            _encryption_doc(inv, doc, report)
        for doc in inv.audit_policies:
            check_audit_policy(doc, where=inv.relative(doc.file), report=report)
    check_kubelets(inv, report)


def check_kubelets(inv: Inventory, report: Report) -> None:
    for doc in inv.kubelet_configs:
        cfg = doc.obj
        where = inv.relative(doc.file)
        authn = cfg.get("authentication") if isinstance(cfg.get("authentication"), Mapping) else {}
        authz = cfg.get("authorization") if isinstance(cfg.get("authorization"), Mapping) else {}
        assert isinstance(authn, Mapping) and isinstance(authz, Mapping)
        anonymous = authn.get("anonymous") if isinstance(authn.get("anonymous"), Mapping) else {}
        assert isinstance(anonymous, Mapping)
        if anonymous.get("enabled") is True:
            report.add(
                Finding(
                    "KS-KUBELET-001",
                    "kubelet-anonymous",
                    "high",
                    "The kubelet accepts anonymous requests",
                    "Set authentication.anonymous.enabled: false and authentication.webhook.enabled: true",
                    file=where,
                    evidence="authentication.anonymous.enabled: true",
                )
            )
        if authz.get("mode") == "AlwaysAllow":
            report.add(
                Finding(
                    "KS-KUBELET-002",
                    "kubelet-always-allow",
                    "critical",
                    "The kubelet authorizes every request (AlwaysAllow): anyone who reaches it can exec "
                    "into pods and read their Secrets",
                    "Set authorization.mode: Webhook",
                    file=where,
                    evidence="authorization.mode: AlwaysAllow",
                )
            )
        port = cfg.get("readOnlyPort")
        if isinstance(port, int) and not isinstance(port, bool) and port > 0:
            report.add(
                Finding(
                    "KS-KUBELET-003",
                    "kubelet-read-only-port",
                    "medium",
                    "The kubelet serves its unauthenticated read-only port (pod specs, env names)",
                    "Set readOnlyPort: 0",
                    file=where,
                    evidence=f"readOnlyPort: {port}",
                )
            )
