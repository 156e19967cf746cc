# ruff: noqa: E501 - tables of cases read best one case a line
"""The exposure audit's checks one by one: encryption configs, audit policies, kubelets, RBAC matching and
aggregation, workloads, certificates, bad input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshield.config.encryption import parse_encryption_config
from kubeshield.posture._docs import Document
from kubeshield.posture.audit import audit_inventory
from kubeshield.posture.audit.controlplane import check_encryption_config, secret_audit_levels
from kubeshield.posture.audit.inventory import container_flags, from_objects, load_inventory
from kubeshield.posture.audit.pieces import check_certificates
from kubeshield.posture.audit.rbac import label_selector_matches, rule_allows
from kubeshield.posture.findings import Report

KEY = "c2VjcmV0LWlzLTMyLWJ5dGVzLWxvbmctLS0tLS0tLS0="


def enc(*providers: dict[str, Any], resources: tuple[str, ...] = ("secrets",)) -> Report:
    config = parse_encryption_config(
        {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
         "resources": [{"resources": list(resources), "providers": list(providers)}]}
    )  # fmt: skip
    report = Report()
    check_encryption_config(config, where="enc.yaml", report=report)
    return report


KMS2 = {"kms": {"apiVersion": "v2", "name": "ks", "endpoint": "unix:///run/ks.sock"}}
KMS1 = {"kms": {"name": "old", "endpoint": "unix:///run/old.sock"}}


@pytest.mark.parametrize(
    ("providers", "resources", "expected"),
    [
        ((KMS2, {"identity": {}}), ("secrets",), set()),
        ((KMS2,), ("*.*",), set()),
        ((KMS2,), ("configmaps",), {("KS-ENC-002", "critical")}),
        (({"identity": {}}, KMS2), ("secrets",), {("KS-ENC-003", "critical")}),
        (({"aescbc": {"keys": [{"name": "k", "secret": KEY}]}},), ("secrets",), {("KS-ENC-004", "high")}),
        ((KMS2, {"aescbc": {"keys": [{"name": "k", "secret": KEY}]}}), ("secrets",), {("KS-ENC-004", "low")}),
        (({"aesgcm": {"keys": [{"name": "k", "secret": KEY}]}},), ("secrets",), {("KS-ENC-005", "medium")}),
        (
            ({"secretbox": {"keys": [{"name": "k", "secret": KEY}]}},),
            ("secrets",),
            {("KS-ENC-005", "medium")},
        ),
        ((KMS1,), ("secrets",), {("KS-ENC-005", "medium")}),
    ],
)
def test_encryption_configs(
    providers: tuple[dict[str, Any], ...], resources: tuple[str, ...], expected: set[tuple[str, str]]
) -> None:
    assert {(f.id, f.severity) for f in enc(*providers, resources=resources).findings} == expected


@pytest.mark.parametrize(
    ("rules", "levels"),
    [
        ([], dict.fromkeys(("get", "list", "watch", "create", "update", "patch", "delete"), "None")),
        ([{"level": "Metadata"}], dict.fromkeys(("get", "list", "watch", "create", "update", "patch", "delete"), "Metadata")),
        ([{"level": "Metadata", "resources": [{"group": "", "resources": ["secrets"]}]}, {"level": "RequestResponse"}],
         dict.fromkeys(("get", "list", "watch", "create", "update", "patch", "delete"), "Metadata")),
        ([{"level": "None", "userGroups": ["system:authenticated"], "verbs": ["watch"]}, {"level": "Request", "verbs": ["create"]}],
         {"get": "None", "list": "None", "watch": "None", "create": "Request", "update": "None", "patch": "None", "delete": "None"}),
        ([{"level": "RequestResponse", "resources": [{"group": "", "resources": ["secrets"], "resourceNames": ["one"]}]},
          {"level": "RequestResponse", "users": ["admin"]}, {"level": "Metadata", "namespaces": ["kube-system"]},
          {"level": "Request", "resources": [{"group": "apps"}]}, {"level": "Metadata", "nonResourceURLs": ["/healthz"]}],
         dict.fromkeys(("get", "list", "watch", "create", "update", "patch", "delete"), "None")),
    ],
)  # fmt: skip
def test_audit_policy_levels(rules: list[dict[str, Any]], levels: dict[str, str]) -> None:
    assert secret_audit_levels({"rules": rules}) == levels


def _node(tmp_path: Path, flags: list[str], files: dict[str, Any]) -> Report:
    for rel, doc in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc))
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kube-apiserver", "namespace": "kube-system"},
                "spec": {"containers": [{"name": "a", "command": ["/usr/local/bin/kube-apiserver", *flags]}]}}  # fmt: skip
    (tmp_path / "kube-apiserver.yaml").write_text(yaml.safe_dump(manifest))
    return audit_inventory(load_inventory(tmp_path))


def test_apiserver_without_encryption_or_audit(tmp_path: Path) -> None:
    report = _node(tmp_path, ["--secure-port=6443"], {})
    assert {f.id for f in report.findings} == {"KS-ENC-001", "KS-AUDIT-001"}


def test_audit_policy_without_backend_and_without_secret_reads(tmp_path: Path) -> None:
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "rules": [{"level": "None", "resources": [{"group": "", "resources": ["secrets"]}]}],
    }
    report = _node(tmp_path, ["--audit-policy-file", "/etc/k/audit.yaml", "--encryption-provider-config=/etc/k/missing.yaml",
                              "--encryption-provider-config-automatic-reload=true"], {"etc/k/audit.yaml": policy})  # fmt: skip
    assert {f.id for f in report.findings} == {"KS-AUDIT-003", "KS-AUDIT-004"}
    assert any(
        "missing.yaml (--encryption-provider-config) is not in the directory" in s for s in report.skipped
    )


def test_a_broken_encryption_config_is_an_error_naming_the_file(tmp_path: Path) -> None:
    bad = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
           "resources": [{"resources": ["secrets"], "providers": [{"aescbc": {"keys": [{"name": "k", "secret": "short"}]}}]}]}  # fmt: skip
    report = _node(
        tmp_path,
        ["--encryption-provider-config=/e/enc.yaml", "--audit-policy-file=/none"],
        {"e/enc.yaml": bad},
    )
    assert (
        len(report.errors) == 1
        and report.errors[0].startswith("e/enc.yaml: ")
        and "secret" in report.errors[0]
    )
    assert "short" not in report.errors[0]


def test_malformed_yaml_is_an_error_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: Pod\n  spec: [oops\n")
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n")
    report = audit_inventory(load_inventory(tmp_path))
    (error,) = report.errors
    assert error.startswith(
        f"{tmp_path / 'bad.yaml'}: line 2: malformed YAML: mapping values are not allowed"
    )
    assert [f.id for f in report.findings] == ["KS-PSA-001"]


def test_container_flags() -> None:
    assert container_flags({"command": ["kube-apiserver", "--a=1", "--b", "2", "--c"], "args": ["--d=x=y"]}) == {
        "a": "1", "b": "2", "c": "true", "d": "x=y"
    }  # fmt: skip


def test_kubelet_defaults_are_not_findings(tmp_path: Path) -> None:
    (tmp_path / "kubelet.yaml").write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: 0\n"
    )
    assert audit_inventory(load_inventory(tmp_path)).findings == []


def test_rule_matching() -> None:
    assert rule_allows(
        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, verb="get", group="", resource="secrets"
    )
    assert rule_allows(
        {"verbs": ["create"], "apiGroups": [""], "resources": ["*/exec"]},
        verb="create",
        group="",
        resource="pods",
        subresource="exec",
    )
    assert not rule_allows(
        {"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]},
        verb="create",
        group="",
        resource="pods",
        subresource="exec",
    )
    assert not rule_allows(
        {"verbs": ["get"], "apiGroups": ["apps"], "resources": ["secrets"]},
        verb="get",
        group="",
        resource="secrets",
    )
    assert not rule_allows(
        {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets/status"]},
        verb="get",
        group="",
        resource="secrets",
    )
    assert label_selector_matches(
        {
            "matchExpressions": [
                {"key": "a", "operator": "In", "values": ["1", "2"]},
                {"key": "b", "operator": "DoesNotExist"},
            ]
        },
        {"a": "2"},
    )
    assert not label_selector_matches(
        {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}
    )
    assert not label_selector_matches(
        {"matchLabels": {"x": "y"}, "matchExpressions": [{"key": "z", "operator": "Exists"}]}, {"x": "y"}
    )


def _rbac(*objects: dict[str, Any]) -> Report:
    return audit_inventory(from_objects(objects))


def _crb(name: str, role: str, subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"kind": "ClusterRole", "name": role},
        "subjects": [subject],
    }


def test_broad_groups_and_named_secrets() -> None:
    report = _rbac(
        {"kind": "ClusterRole", "metadata": {"name": "all"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["watch"]}]},
        {"kind": "ClusterRole", "metadata": {"name": "one"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["tls"]}]},
        _crb("everyone", "all", {"kind": "Group", "name": "system:authenticated"}),
        _crb("robot", "one", {"kind": "ServiceAccount", "name": "bot", "namespace": "ci"}),
        {"kind": "RoleBinding", "metadata": {"name": "x", "namespace": "ci"}, "roleRef": {"kind": "ClusterRole", "name": "nope"}, "subjects": []},
    )  # fmt: skip
    got = {(f.id, f.object, f.severity, f.title) for f in report.findings}
    assert got == {
        (
            "KS-RBAC-001",
            "Group system:authenticated",
            "critical",
            "Group system:authenticated can watch Secrets in every namespace",
        ),
        (
            "KS-RBAC-001",
            "ServiceAccount ci/bot",
            "medium",
            "ServiceAccount ci/bot can get Secrets in every namespace (named Secrets only)",
        ),
    }
    assert report.errors == ["RoleBinding ci/x: references ClusterRole 'nope', which does not exist"]


def test_aggregation_is_transitive_and_loops_are_safe() -> None:
    report = _rbac(
        {"kind": "ClusterRole", "metadata": {"name": "top"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "top"}}]}},
        {"kind": "ClusterRole", "metadata": {"name": "mid", "labels": {"agg": "top"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "mid"}}]}},
        {"kind": "ClusterRole", "metadata": {"name": "leaf", "labels": {"agg": "mid"}}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["list"]}],
         "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "top"}}]}},
        _crb("b", "top", {"kind": "User", "name": "eve"}),
    )  # fmt: skip
    assert [(f.id, f.object) for f in report.findings] == [("KS-RBAC-001", "User eve")]


def test_privileged_pod_alone_on_its_node_is_only_a_pss_finding() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
           "spec": {"nodeName": "n1", "automountServiceAccountToken": False, "containers": [{"name": "c", "securityContext": {"privileged": True}}]}}  # fmt: skip
    neighbour = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": "a"},
                 "spec": {"nodeName": "n1", "automountServiceAccountToken": False, "containers": [{"name": "c"}]}}  # fmt: skip
    assert {f.id for f in _rbac(pod, neighbour).findings} == {"KS-PSS-001"}


def test_certificates(tmp_path: Path) -> None:
    from tests.support.tls import make_ca

    now = dt.datetime.now(dt.UTC)
    ca = make_ca(tmp_path)
    soon = ca.issue("soon", valid_until=now + dt.timedelta(days=3))
    gone = ca.issue("gone", valid_from=now - dt.timedelta(days=9), valid_until=now - dt.timedelta(days=1))
    fine = ca.issue("fine", valid_until=now + dt.timedelta(days=90))
    (tmp_path / "junk.crt").write_text("not a certificate")
    report = Report()
    check_certificates(
        [soon.cert, gone.cert, fine.cert, tmp_path / "junk.crt"], report, warn_days=30, now=lambda: now
    )
    assert [(f.severity, Path(str(f.file)).name) for f in report.findings] == [
        ("medium", "soon.crt"),
        ("high", "gone.crt"),
    ]
    assert "expires in 2 days" in report.findings[0].title or "expires in 3 days" in report.findings[0].title
    assert len(report.errors) == 1 and "junk.crt: cannot read a PEM certificate" in report.errors[0]


def test_documents_from_lists(tmp_path: Path) -> None:
    from kubeshield.posture._docs import load_documents

    (tmp_path / "l.yaml").write_text(
        "apiVersion: v1\nkind: PodList\nitems:\n- {kind: Pod, metadata: {name: a}}\n- {kind: Pod, metadata: {name: b}}\n---\n- just a list\n"
    )
    from kubeshield.posture.errors import InvalidObject

    with pytest.raises(InvalidObject, match="document 2 is not an object"):
        load_documents(tmp_path / "l.yaml")
    (tmp_path / "l.yaml").write_text(
        "apiVersion: v1\nkind: PodList\nitems:\n- {kind: Pod, metadata: {name: a}}\n- {kind: Pod, metadata: {name: b}}\n"
    )
    docs = load_documents(tmp_path / "l.yaml")
    assert [d.obj["metadata"]["name"] for d in docs] == ["a", "b"] and all(
        isinstance(d, Document) for d in docs
    )
