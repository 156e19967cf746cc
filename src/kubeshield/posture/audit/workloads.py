"""Workloads: how pods expose the Secrets they hold, and pods that can read everyone else's.

Evaluated once per workload: Pods without an owner, and the objects that embed a pod template
(Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet and ReplicationController without an
owner). Namespaces ``kube-system``, ``kube-public`` and ``kube-node-lease`` are the control plane's and
are not reported.

IDs:

* ``KS-WL-001`` a Secret passed as an environment variable (``env[].valueFrom.secretKeyRef``, ``envFrom``)
* ``KS-WL-002`` a ServiceAccount token is mounted but the ServiceAccount has no RBAC grant: the token
  serves nothing and only waits to be stolen
* ``KS-WL-003`` a privileged or hostPath pod on a node that runs other namespaces' pods (it can read
  their Secrets from the node)
* ``KS-PSS-001`` the workload breaks Pod Security baseline (latest); ``KS-PSS-002`` it breaks restricted
  in a namespace that asks for restricted (enforce, audit or warn)
* ``KS-PSA-001`` a namespace without a Pod Security ``enforce`` label of baseline or restricted
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from kubeshield.posture.audit.inventory import SYSTEM_NAMESPACES, Inventory, object_ref
from kubeshield.posture.audit.rbac import Grant
from kubeshield.posture.errors import InvalidObject
from kubeshield.posture.findings import Finding, Report
from kubeshield.posture.pss import LATEST, LevelVersion, aggregate_detail, evaluate, extract_pod
from kubeshield.posture.pss.api import LABEL_PREFIX, policy_from_labels

__all__ = ["check_namespaces", "check_workloads"]

Obj = Mapping[str, Any]
_WORKLOAD_KINDS = (
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicaSet",
    "ReplicationController",
    "PodTemplate",
)


def _m(value: Any) -> Obj:
    return value if isinstance(value, Mapping) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ns(obj: Obj) -> str:
    return str(_m(obj.get("metadata")).get("namespace") or "default")


def _namespace_labels(inv: Inventory) -> dict[str, Mapping[str, str]]:
    return {
        str(_m(ns.get("metadata")).get("name", "")): {
            str(k): str(v) for k, v in _m(_m(ns.get("metadata")).get("labels")).items()
        }
        for ns in inv.kind("Namespace")
    }


def check_namespaces(inv: Inventory, report: Report) -> None:
    for name, labels in sorted(_namespace_labels(inv).items()):
        if name in SYSTEM_NAMESPACES:
            continue
        policy = policy_from_labels(labels)
        if policy.enforce.level == "privileged":
            report.add(
                Finding(
                    "KS-PSA-001",
                    "no-pod-security-enforce",
                    "medium",
                    f"Namespace {name} does not enforce Pod Security: privileged and hostPath pods are "
                    f"admitted",
                    f"kubectl label ns {name} {LABEL_PREFIX}enforce=baseline (or restricted)",
                    object=f"Namespace {name}",
                    evidence=f"{LABEL_PREFIX}enforce={labels.get(LABEL_PREFIX + 'enforce', '<unset>')}",
                )
            )


def _top_level(obj: Obj) -> bool:
    return not _l(_m(obj.get("metadata")).get("ownerReferences"))


def check_workloads(inv: Inventory, grants: list[Grant], report: Report) -> None:
    ns_labels = _namespace_labels(inv)
    bound_sas = {g.subject for g in grants if g.subject_kind == "ServiceAccount"}
    service_accounts = {
        f"{_ns(sa)}/{_m(sa.get('metadata')).get('name', '')}": sa for sa in inv.kind("ServiceAccount")
    }
    for kind in _WORKLOAD_KINDS:
        for obj in inv.kind(kind):
            if _ns(obj) in SYSTEM_NAMESPACES or not _top_level(obj):
                continue
            try:
                ref = extract_pod(obj)
            except InvalidObject as exc:
                report.errors.append(str(exc))
                continue
            if ref is None:
                continue
            label = object_ref(obj)
            _env_secrets(label, ref.spec, report)
            _unused_token(label, _ns(obj), ref.spec, service_accounts, bound_sas, report)
            _pss(label, ns_labels.get(_ns(obj), {}), ref.metadata, ref.spec, report)
    _shared_nodes(inv, report)


def _env_secrets(label: str, spec: Obj, report: Report) -> None:
    for c in _l(spec.get("initContainers")) + _l(spec.get("containers")):
        c = _m(c)
        refs = []
        for e in _l(c.get("env")):
            key_ref = _m(_m(_m(e).get("valueFrom")).get("secretKeyRef"))
            if key_ref:
                refs.append(f"{_m(e).get('name')}<-{key_ref.get('name')}.{key_ref.get('key')}")
        for e in _l(c.get("envFrom")):
            secret_ref = _m(_m(e).get("secretRef"))
            if secret_ref:
                refs.append(f"*<-{secret_ref.get('name')}")
        if refs:
            report.add(
                Finding(
                    "KS-WL-001",
                    "secret-in-env",
                    "medium",
                    f"{label} container {c.get('name')} gets Secrets as environment variables",
                    "Mount the Secret as a read-only volume instead: environment variables leak into crash "
                    "dumps, child processes, /proc/<pid>/environ and logs",
                    object=f"{label} container {c.get('name')}",
                    evidence=", ".join(refs),
                )
            )


def _unused_token(
    label: str, ns: str, spec: Obj, service_accounts: Mapping[str, Obj], bound: set[str], report: Report
) -> None:
    sa_name = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    key = f"{ns}/{sa_name}"
    sa = service_accounts.get(key, {})
    if spec.get("automountServiceAccountToken") is False:
        return
    if spec.get("automountServiceAccountToken") is None and sa.get("automountServiceAccountToken") is False:
        return
    if key in bound:
        return
    report.add(
        Finding(
            "KS-WL-002",
            "unused-token",
            "low",
            f"{label} mounts a token for ServiceAccount {key}, which no RBAC binding grants anything",
            "Set automountServiceAccountToken: false on the pod (or the ServiceAccount)",
            object=label,
            evidence=f"serviceAccountName={sa_name}, automountServiceAccountToken not false",
        )
    )


def _pss(label: str, labels: Mapping[str, str], meta: Obj, spec: Obj, report: Report) -> None:
    baseline = evaluate(LevelVersion("baseline", LATEST), meta, spec)
    if baseline:
        report.add(
            Finding(
                "KS-PSS-001",
                "pss-baseline",
                "high",
                f"{label} breaks Pod Security baseline",
                "Fix the listed fields; then label the namespace pod-security.kubernetes.io/enforce=baseline",
                object=label,
                evidence=aggregate_detail(baseline),
            )
        )
    policy = policy_from_labels(labels)
    wanted = [lv for lv in (policy.enforce, policy.audit, policy.warn) if lv.level == "restricted"]
    if wanted:
        restricted = evaluate(wanted[0], meta, spec)
        extra = [v for v in restricted if v.check not in {b.check for b in baseline}]
        if extra:
            report.add(
                Finding(
                    "KS-PSS-002",
                    "pss-restricted",
                    "medium",
                    f"{label} breaks Pod Security restricted, which its namespace asks for",
                    "Set the restricted securityContext fields listed",
                    object=label,
                    evidence=aggregate_detail(extra),
                )
            )


def _dangerous(spec: Obj) -> list[str]:
    why = []
    containers = (
        _l(spec.get("initContainers")) + _l(spec.get("containers")) + _l(spec.get("ephemeralContainers"))
    )
    if any(_m(_m(c).get("securityContext")).get("privileged") is True for c in containers):
        why.append("privileged")
    if any(_m(v).get("hostPath") is not None for v in _l(spec.get("volumes"))):
        why.append("hostPath")
    if spec.get("hostPID") is True:
        why.append("hostPID")
    return why


def _shared_nodes(inv: Inventory, report: Report) -> None:
    by_node: dict[str, set[str]] = defaultdict(set)
    pods = inv.kind("Pod")
    for pod in pods:
        node = _m(pod.get("spec")).get("nodeName")
        if isinstance(node, str) and node:
            by_node[node].add(_ns(pod))
    for pod in pods:
        spec = _m(pod.get("spec"))
        node = spec.get("nodeName")
        ns = _ns(pod)
        if not isinstance(node, str) or not node or ns in SYSTEM_NAMESPACES:
            continue
        why = _dangerous(spec)
        others = sorted(by_node[node] - {ns})
        if why and others:
            report.add(
                Finding(
                    "KS-WL-003",
                    "dangerous-pod-shares-node",
                    "critical",
                    f"{object_ref(pod)} is {'/'.join(why)} on node {node}, which runs pods of namespaces "
                    f"{', '.join(others)}: it can read their Secrets from the node",
                    "Remove privileged/hostPath, or pin such pods to dedicated nodes (taints and a "
                    "nodeSelector)",
                    object=object_ref(pod),
                    evidence=f"node {node}: {', '.join(why)}",
                )
            )
