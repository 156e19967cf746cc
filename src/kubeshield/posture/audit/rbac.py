"""RBAC: every subject that can read Secrets, and the paths that lead there.

Rules are matched as the apiserver's RBAC authorizer matches them (``*`` in verbs, apiGroups and
resources; ``*/subresource``; ``resourceNames`` narrows a rule to named objects). Aggregated ClusterRoles
get the rules of every ClusterRole their ``clusterRoleSelectors`` select. Bindings created by the
apiserver itself (label ``kubernetes.io/bootstrapping: rbac-defaults``) are the control plane's own and
are not reported.

IDs:

* ``KS-RBAC-001`` a subject can get, list or watch Secrets (cluster-wide: high; a broad group such as
  ``system:authenticated``: critical; one namespace: medium)
* ``KS-RBAC-002`` a namespace's ``default`` ServiceAccount can read Secrets (every pod that names no
  ServiceAccount gets that right)
* ``KS-RBAC-003`` ``escalate`` or ``bind`` on roles: the subject can grant itself any right, Secrets included
* ``KS-RBAC-004`` ``impersonate``: the subject can act as users who can read Secrets
* ``KS-RBAC-005`` ``pods/exec`` in a namespace whose pods mount Secrets: the subject can read them in the pod
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeshield.posture.audit.inventory import Inventory
from kubeshield.posture.findings import Finding, Report

__all__ = ["Grant", "check_rbac", "grants", "label_selector_matches", "rule_allows"]

Obj = Mapping[str, Any]
BROAD_GROUPS = frozenset({"system:authenticated", "system:unauthenticated", "system:serviceaccounts"})
_READ = ("get", "list", "watch")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def rule_allows(rule: Obj, *, verb: str, group: str, resource: str, subresource: str = "") -> bool:
    """Does one PolicyRule allow ``verb`` on ``group``/``resource`` (ignoring resourceNames)?"""
    verbs = _list(rule.get("verbs"))
    if "*" not in verbs and verb not in verbs:
        return False
    groups = _list(rule.get("apiGroups"))
    if "*" not in groups and group not in groups:
        return False
    combined = f"{resource}/{subresource}" if subresource else resource
    for r in _list(rule.get("resources")):
        if r == "*" or r == combined:
            return True
        if subresource and r == f"*/{subresource}":
            return True
    return False


def label_selector_matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in _list(selector.get("matchExpressions")):
        if not isinstance(expr, Mapping):
            return False
        key, op, values = str(expr.get("key", "")), expr.get("operator"), _list(expr.get("values"))
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class Grant:
    """A subject's rules through one binding, and where they apply (namespace None = cluster-wide)."""

    subject_kind: str
    subject: str  # user/group name, or "ns/name" for ServiceAccounts
    namespace: str | None
    binding: str  # "ClusterRoleBinding x" / "RoleBinding ns/x"
    role: str  # "ClusterRole y" / "Role ns/y"
    rules: tuple[Obj, ...]


@dataclass
class _Roles:
    cluster: dict[str, Obj] = field(default_factory=dict)
    namespaced: dict[tuple[str, str], Obj] = field(default_factory=dict)
    _effective: dict[str, tuple[Obj, ...]] = field(default_factory=dict)

    def cluster_rules(self, name: str, _seen: frozenset[str] = frozenset()) -> tuple[Obj, ...]:
        if name in self._effective:
            return self._effective[name]
        role = self.cluster[name]
        rules = [r for r in _list(role.get("rules")) if isinstance(r, Mapping)]
        aggregation = role.get("aggregationRule")
        if isinstance(aggregation, Mapping):
            for selector in _list(aggregation.get("clusterRoleSelectors")):
                if not isinstance(selector, Mapping):
                    continue
                for other, obj in self.cluster.items():
                    if other == name or other in _seen:
                        continue
                    labels = _meta(obj).get("labels") or {}
                    if isinstance(labels, Mapping) and label_selector_matches(selector, labels):
                        rules += self.cluster_rules(other, _seen | {name})
        self._effective[name] = tuple(rules)
        return self._effective[name]


def _bootstrap(obj: Obj) -> bool:
    labels = _meta(obj).get("labels")
    return isinstance(labels, Mapping) and labels.get("kubernetes.io/bootstrapping") == "rbac-defaults"


def grants(inv: Inventory, report: Report) -> Iterator[Grant]:
    roles = _Roles()
    for obj in inv.kind("ClusterRole"):
        roles.cluster[str(_meta(obj).get("name", ""))] = obj
    for obj in inv.kind("Role"):
        meta = _meta(obj)
        roles.namespaced[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = obj
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in inv.kind(kind):
            if _bootstrap(binding):
                continue
            meta = _meta(binding)
            ns = str(meta.get("namespace", "")) if kind == "RoleBinding" else None
            label = f"{kind} {ns + '/' if ns else ''}{meta.get('name', '<unnamed>')}"
            ref = binding.get("roleRef") if isinstance(binding.get("roleRef"), Mapping) else {}
            assert isinstance(ref, Mapping)
            ref_kind, ref_name = str(ref.get("kind", "")), str(ref.get("name", ""))
            if ref_kind == "ClusterRole":
                if ref_name not in roles.cluster:
                    report.errors.append(
                        f"{label}: references ClusterRole {ref_name!r}, which does not exist"
                    )
                    continue
                rules, role = roles.cluster_rules(ref_name), f"ClusterRole {ref_name}"
            elif ref_kind == "Role" and ns is not None:
                found = roles.namespaced.get((ns, ref_name))
                if found is None:
                    report.errors.append(f"{label}: references Role {ns}/{ref_name}, which does not exist")
                    continue
                rules = tuple(r for r in _list(found.get("rules")) if isinstance(r, Mapping))
                role = f"Role {ns}/{ref_name}"
            else:
                report.errors.append(f"{label}: roleRef kind {ref_kind!r} is not valid here")
                continue
            for subject in _list(binding.get("subjects")):
                if not isinstance(subject, Mapping):
                    continue
                skind = str(subject.get("kind", ""))
                name = str(subject.get("name", ""))
                if skind == "ServiceAccount":
                    name = f"{subject.get('namespace') or ns or ''}/{name}"
                yield Grant(skind, name, ns, label, role, rules)


def _secret_mounting_pods(inv: Inventory) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for pod in inv.kind("Pod"):
        spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
        assert isinstance(spec, Mapping)
        mounts = False
        for v in _list(spec.get("volumes")):
            if not isinstance(v, Mapping):
                continue
            if v.get("secret") is not None:
                mounts = True
            projected = v.get("projected")
            if isinstance(projected, Mapping) and any(
                isinstance(s, Mapping) and s.get("secret") is not None
                for s in _list(projected.get("sources"))
            ):
                mounts = True
        for c in _list(spec.get("containers")) + _list(spec.get("initContainers")):
            if not isinstance(c, Mapping):
                continue
            if any(
                isinstance(e, Mapping)
                and isinstance(e.get("valueFrom"), Mapping)
                and e["valueFrom"].get("secretKeyRef")
                for e in _list(c.get("env"))
            ):
                mounts = True
            if any(isinstance(e, Mapping) and e.get("secretRef") for e in _list(c.get("envFrom"))):
                mounts = True
        if mounts:
            meta = _meta(pod)
            out[str(meta.get("namespace", ""))].append(str(meta.get("name", "")))
    return out


def _subject_label(kind: str, name: str) -> str:
    return f"{kind} {name}"


def check_rbac(inv: Inventory, report: Report) -> list[Grant]:
    all_grants = list(grants(inv, report))
    mounting = _secret_mounting_pods(inv)
    reads: dict[tuple[str, str, str | None], list[tuple[Grant, list[str], bool]]] = defaultdict(list)
    for g in all_grants:
        verbs = sorted(
            {v for v in _READ for r in g.rules if rule_allows(r, verb=v, group="", resource="secrets")}
        )
        if verbs:
            named_only = all(
                _list(r.get("resourceNames"))
                for r in g.rules
                if any(rule_allows(r, verb=v, group="", resource="secrets") for v in verbs)
            )
            reads[(g.subject_kind, g.subject, g.namespace)].append((g, verbs, named_only))
        _paths(g, mounting, report)
    for (kind, subject, ns), entries in sorted(
        reads.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        verbs = sorted({v for _, vs, _ in entries for v in vs})
        via = "; ".join(f"{g.binding} -> {g.role}" for g, _, _ in entries)
        named = all(n for _, _, n in entries)
        scope = "in every namespace" if ns is None else f"in namespace {ns}"
        default_sa = kind == "ServiceAccount" and subject.rpartition("/")[2] == "default"
        broad = kind == "Group" and (subject in BROAD_GROUPS or subject.startswith("system:serviceaccounts:"))
        broad = broad or (kind == "User" and subject == "system:anonymous")
        if default_sa:
            fid, severity = "KS-RBAC-002", "high"
            title = f"The default ServiceAccount {subject} can {'/'.join(verbs)} Secrets {scope}"
            fix = (
                "Bind the right to a dedicated ServiceAccount, not default; set "
                "automountServiceAccountToken: false on default"
            )
        else:
            fid = "KS-RBAC-001"
            severity = "critical" if broad else ("high" if ns is None else "medium")
            if named and not broad:
                severity = "low" if ns is not None else "medium"
            title = f"{_subject_label(kind, subject)} can {'/'.join(verbs)} Secrets {scope}"
            if named:
                title += " (named Secrets only)"
            fix = (
                "Grant Secret reads only to the workloads that need them, per namespace and by "
                "resourceNames; prefer get over list/watch"
            )
        report.add(
            Finding(
                fid, "secrets-read", severity, title, fix, object=_subject_label(kind, subject), evidence=via
            )
        )
    return all_grants


def _paths(g: Grant, mounting: Mapping[str, Sequence[str]], report: Report) -> None:
    who = _subject_label(g.subject_kind, g.subject)
    scope = "in every namespace" if g.namespace is None else f"in namespace {g.namespace}"
    via = f"{g.binding} -> {g.role}"
    escalate = sorted(
        {
            v
            for v in ("escalate", "bind")
            for r in g.rules
            for res in ("roles", "clusterroles")
            if rule_allows(r, verb=v, group="rbac.authorization.k8s.io", resource=res)
        }
    )
    if escalate:
        report.add(
            Finding(
                "KS-RBAC-003",
                "rbac-escalate",
                "high",
                f"{who} can {'/'.join(escalate)} roles {scope}: it can grant itself Secret access",
                "Remove escalate/bind from the role; grant role management only to administrators",
                object=who,
                evidence=via,
            )
        )
    impersonate = sorted(
        {
            res
            for r in g.rules
            for res in ("users", "groups", "serviceaccounts")
            if rule_allows(r, verb="impersonate", group="", resource=res)
        }
    )
    if impersonate:
        report.add(
            Finding(
                "KS-RBAC-004",
                "rbac-impersonate",
                "high",
                f"{who} can impersonate {', '.join(impersonate)} {scope}: it can act as anyone who "
                f"reads Secrets",
                "Remove impersonate, or limit it with resourceNames to the identities that are needed",
                object=who,
                evidence=via,
            )
        )
    if any(
        rule_allows(r, verb=v, group="", resource="pods", subresource="exec")
        for r in g.rules
        for v in ("create", "get")
    ):
        namespaces = (
            sorted(mounting) if g.namespace is None else [g.namespace] if g.namespace in mounting else []
        )
        if namespaces:
            pods = [f"{ns}/{p}" for ns in namespaces for p in sorted(mounting[ns])][:5]
            report.add(
                Finding(
                    "KS-RBAC-005",
                    "rbac-pods-exec",
                    "medium",
                    f"{who} can exec into pods {scope} that mount Secrets ({', '.join(pods)})",
                    "Drop pods/exec from the role, or move Secret-consuming pods to a namespace it "
                    "cannot exec in",
                    object=who,
                    evidence=via,
                )
            )
