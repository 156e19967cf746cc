# ruff: noqa: E501 - tables of cases read best one case a line
"""Admission decisions on AdmissionReview v1 requests, as upstream's PodSecurity admission makes them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kubeshield.errors import ConfigError
from kubeshield.posture.errors import AdmissionRequestError
from kubeshield.posture.pss.admission import (
    Admission,
    AdmissionConfig,
    StaticNamespaces,
    load_admission_config,
)

P = "pod-security.kubernetes.io/"
NAMESPACES = StaticNamespaces(
    {
        "strict": {P + "enforce": "restricted"},
        "base": {
            P + "enforce": "baseline",
            P + "warn": "restricted",
            P + "audit": "restricted",
            P + "audit-version": "v1.24",
        },
        "open": {},
        "broken": {P + "enforce": "strickt"},
        "pinned": {P + "enforce": "baseline", P + "enforce-version": "v1.30"},
    }
)
PRIVILEGED_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "strict"},
    "spec": {"containers": [{"name": "a", "image": "img", "securityContext": {"privileged": True}}]},
}
PLAIN_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "a", "image": "img"}]},
}


def review(obj: Any, *, ns: str, resource: str = "pods", group: str = "", op: str = "CREATE", sub: str = "",
           user: str = "alice", old: Any = None, name: str = "p") -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": "v1", "kind": "X"},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "subResource": sub,
            "name": name,
            "namespace": ns,
            "operation": op,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": old,
        },
    }


def decide(body: dict[str, Any], config: AdmissionConfig | None = None) -> dict[str, Any]:
    out = Admission(namespaces=NAMESPACES, config=config or AdmissionConfig()).review(body)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == body["request"]["uid"]
    return out["response"]


def test_enforce_denies_with_upstreams_message() -> None:
    r = decide(review(PLAIN_POD, ns="strict"))
    assert r["allowed"] is False
    assert r["status"]["code"] == 403 and r["status"]["reason"] == "Forbidden"
    assert r["status"]["message"] == (
        'pods "p" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "a" must set securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "a" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "a" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "a" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
    )
    assert r["auditAnnotations"]["enforce-policy"] == "restricted:latest"
    assert "warnings" not in r  # no warnings on a request that is refused


def test_generate_name_pods_are_named_by_resource_only() -> None:
    r = decide(review(PRIVILEGED_POD, ns="pinned", name=""))
    assert r["status"]["message"].startswith(
        'pods is forbidden: violates PodSecurity "baseline:v1.30": privileged'
    )


def test_warn_and_audit_on_an_allowed_pod() -> None:
    r = decide(review(PLAIN_POD, ns="base"))
    assert r["allowed"] is True
    assert r["warnings"] == [
        'would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "a" must set '
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "a" must set '
        'securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "a" must set '
        'securityContext.runAsNonRoot=true), seccompProfile (pod or container "a" must set '
        'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
    ]
    audit = r["auditAnnotations"]["audit-violations"]
    assert audit.startswith('would violate PodSecurity "restricted:v1.24": allowPrivilegeEscalation != false')
    assert "seccompProfile" in audit and "runAsNonRoot" in audit
    assert r["auditAnnotations"]["enforce-policy"] == "baseline:latest"


def test_privileged_namespaces_are_not_evaluated() -> None:
    r = decide(review(PRIVILEGED_POD, ns="open"))
    assert r == {"uid": r["uid"], "allowed": True}


def test_unknown_namespace_fails_closed() -> None:
    r = decide(review(PLAIN_POD, ns="nowhere"))
    assert r["allowed"] is False and r["status"]["code"] == 500
    assert 'failed to lookup namespace "nowhere"' in r["status"]["message"]


def test_invalid_labels_evaluate_restricted_and_say_why() -> None:
    r = decide(review(PRIVILEGED_POD, ns="broken"))
    assert r["allowed"] is False
    assert 'violates PodSecurity "restricted:latest"' in r["status"]["message"]
    assert r["auditAnnotations"]["error"].startswith(f"Failed to parse policy: metadata.labels[{P}enforce]")


@pytest.mark.parametrize(
    ("config", "body", "reason"),
    [
        (
            AdmissionConfig(exempt_namespaces=frozenset({"strict"})),
            review(PRIVILEGED_POD, ns="strict"),
            "namespace",
        ),
        (
            AdmissionConfig(exempt_usernames=frozenset({"ci-bot"})),
            review(PRIVILEGED_POD, ns="strict", user="ci-bot"),
            "user",
        ),
    ],
)
def test_exemptions(config: AdmissionConfig, body: dict[str, Any], reason: str) -> None:
    r = decide(body, config)
    assert r["allowed"] is True and r["auditAnnotations"] == {"exempt": reason}


def test_runtime_class_exemption() -> None:
    pod = copy.deepcopy(PRIVILEGED_POD)
    pod["spec"]["runtimeClassName"] = "kata"
    config = AdmissionConfig(exempt_runtime_classes=frozenset({"kata"}))
    assert decide(review(pod, ns="strict"), config)["auditAnnotations"] == {"exempt": "runtimeClass"}
    pod["spec"]["runtimeClassName"] = "runc"
    assert decide(review(pod, ns="strict"), config)["allowed"] is False


def test_an_exempt_user_elsewhere_is_still_checked() -> None:
    config = AdmissionConfig(exempt_usernames=frozenset({"ci-bot"}))
    assert decide(review(PRIVILEGED_POD, ns="strict", user="alice"), config)["allowed"] is False


def test_workloads_are_warned_never_denied() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": PRIVILEGED_POD["spec"]}},
    }
    r = decide(review(deployment, ns="strict", resource="deployments", group="apps", name="d"))
    assert r["allowed"] is True
    assert r["warnings"][0].startswith(
        'would violate PodSecurity "restricted:latest": privileged (container "a"'
    )
    assert "enforce-policy" not in r["auditAnnotations"]
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": PRIVILEGED_POD["spec"]}}}}}  # fmt: skip
    r = decide(review(cron, ns="base", resource="cronjobs", group="batch", name="c"))
    assert r["allowed"] is True and "privileged" in r["warnings"][0]
    assert "privileged" in r["auditAnnotations"]["audit-violations"]


def test_updates_that_change_nothing_checked_are_allowed() -> None:
    old = copy.deepcopy(PRIVILEGED_POD)
    new = copy.deepcopy(PRIVILEGED_POD)
    new["metadata"]["labels"] = {"x": "y"}
    assert decide(review(new, ns="strict", op="UPDATE", old=old))["allowed"] is True
    new["spec"]["containers"][0]["image"] = "img:2"
    assert decide(review(new, ns="strict", op="UPDATE", old=old))["allowed"] is False
    grown = copy.deepcopy(old)
    grown["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": "busybox"}]
    r = decide(review(grown, ns="strict", op="UPDATE", old=old, sub="ephemeralcontainers"))
    assert r["allowed"] is False and "dbg" in r["status"]["message"]


@pytest.mark.parametrize("sub", ["status", "exec", "log", "binding", "eviction"])
def test_ignored_pod_subresources(sub: str) -> None:
    assert (
        decide(review(PRIVILEGED_POD, ns="strict", sub=sub, op="UPDATE", old=PRIVILEGED_POD))["allowed"]
        is True
    )


def test_delete_is_not_evaluated() -> None:
    assert decide(review(PRIVILEGED_POD, ns="strict", op="DELETE"))["allowed"] is True


def test_malformed_pods_are_refused_with_400() -> None:
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"hostNetwork": "yes"}}
    r = decide(review(bad, ns="strict"))
    assert r["allowed"] is False and r["status"]["code"] == 400
    assert "spec.hostNetwork must be a boolean" in r["status"]["message"]
    r = decide(review(None, ns="strict"))
    assert r["status"] == {
        "status": "Failure",
        "code": 400,
        "reason": "BadRequest",
        "message": "failed to decode pod",
    }


def test_namespace_labels_are_validated() -> None:
    ns: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "labels": {P + "enforce": "hard", P + "warn-version": "v9"}},
    }
    r = decide(review(ns, ns="", resource="namespaces", name="team"))
    assert r["allowed"] is False and r["status"]["code"] == 422
    assert r["status"]["message"] == (
        f'Namespace "team" is invalid: [metadata.labels[{P}enforce]: Invalid value: "hard": must be one of privileged, '
        f'baseline, restricted, metadata.labels[{P}warn-version]: Invalid value: "v9": must be "latest" or "v1.x"]'
    )
    ns["metadata"]["labels"] = {P + "enforce": "restricted"}
    assert decide(review(ns, ns="", resource="namespaces", name="team"))["allowed"] is True


def test_other_resources_are_allowed_unchecked() -> None:
    assert decide(review({"kind": "ConfigMap"}, ns="strict", resource="configmaps"))["allowed"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not a JSON object"),
        ({"kind": "Pod"}, "expected kind AdmissionReview"),
        (
            {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}},
            r"admissionReviewVersions: \[v1\]",
        ),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}, "has no request"),
        (
            {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}},
            "has no uid",
        ),
    ],
)
def test_requests_we_cannot_use(body: Any, message: str) -> None:
    with pytest.raises(AdmissionRequestError, match=message):
        Admission(namespaces=NAMESPACES).review(body)


def test_pod_security_configuration(tmp_path: Path) -> None:
    path = tmp_path / "psa.yaml"
    path.write_text(
        "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\n"
        "defaults: {enforce: baseline, enforce-version: v1.29, warn: restricted}\n"
        "exemptions: {usernames: [ci], namespaces: [kube-system], runtimeClasses: [kata]}\n"
    )
    config = load_admission_config(path)
    assert (
        str(config.defaults.enforce) == "baseline:v1.29" and str(config.defaults.warn) == "restricted:latest"
    )
    assert config.exempt_namespaces == {"kube-system"} and config.exempt_runtime_classes == {"kata"}
    r = Admission(namespaces=StaticNamespaces({"open": {}}), config=config).review(
        review(PRIVILEGED_POD, ns="open")
    )
    assert r["response"]["allowed"] is False and '"baseline:v1.29"' in r["response"]["status"]["message"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Other\n", "expected kind PodSecurityConfiguration"),
        (
            "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nextra: 1\n",
            "unknown field 'extra'",
        ),
        (
            "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults: {enforce: max}\n",
            "defaults.enforce",
        ),
        (
            "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions: {users: [a]}\n",
            "exemptions.users",
        ),
        ("[unclosed", "cannot read the PodSecurityConfiguration"),
    ],
)
def test_bad_configuration_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "psa.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_admission_config(path)
