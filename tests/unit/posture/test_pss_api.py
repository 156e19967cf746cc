# ruff: noqa: E501 - tables of cases read best one case a line
"""Levels, versions, namespace labels, workload extraction, field validation and Go quoting."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.posture.errors import InvalidObject
from kubeshield.posture.pss import LATEST, NEWEST_VERSION, LevelVersion, Version, evaluate, extract_pod
from kubeshield.posture.pss._text import go_quote, join_quote, pluralize
from kubeshield.posture.pss.api import Policy, parse_level, parse_version, policy_from_labels

P = "pod-security.kubernetes.io/"


@pytest.mark.parametrize(
    ("text", "minor", "error"),
    [("latest", None, False), ("v1.0", 0, False), ("v1.25", 25, False), ("v1.01", None, True),
     ("1.25", None, True), ("v2.0", None, True), ("v1.", None, True), ("", None, True)],
)  # fmt: skip
def test_parse_version(text: str, minor: int | None, error: bool) -> None:
    version, err = parse_version(text)
    assert (err is not None) == error
    assert version.minor == minor  # an invalid version evaluates as latest


def test_invalid_level_fails_closed_to_restricted() -> None:
    assert parse_level("baseline") == ("baseline", None)
    level, err = parse_level("Baseline")
    assert level == "restricted" and err is not None


def test_labels_and_the_warn_default() -> None:
    policy = policy_from_labels({P + "enforce": "restricted", P + "enforce-version": "v1.30"})
    assert str(policy.enforce) == "restricted:v1.30"
    assert str(policy.warn) == "restricted:v1.30"  # warn follows a stricter enforce, with its version
    assert str(policy.audit) == "privileged:latest"
    policy = policy_from_labels({P + "enforce": "baseline", P + "warn-version": "v1.20"})
    assert str(policy.warn) == "baseline:v1.20"  # an explicit warn-version is kept
    policy = policy_from_labels({P + "enforce": "baseline", P + "warn": "privileged"})
    assert str(policy.warn) == "privileged:latest"  # an explicit warn level is kept
    policy = policy_from_labels({P + "audit": "restricted", P + "audit-version": "v1.5"})
    assert str(policy.audit) == "restricted:v1.5" and not policy.errors


def test_label_errors_name_the_label() -> None:
    policy = policy_from_labels({P + "enforce": "strict", P + "audit-version": "1.2"})
    assert policy.enforce.level == "restricted"
    assert policy.warn.level == "privileged"  # an invalid enforce does not pull warn along
    assert policy.errors == (
        f'metadata.labels[{P}enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted',
        f'metadata.labels[{P}audit-version]: Invalid value: "1.2": must be "latest" or "v1.x"',
    )


def test_defaults_apply_to_unlabelled_namespaces() -> None:
    defaults = Policy(enforce=LevelVersion("baseline", Version(30)))
    assert str(policy_from_labels({}, defaults).enforce) == "baseline:v1.30"


def test_go_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\there\n") == '"tab\\there\\n"'
    assert go_quote("\x01é\u200b") == '"\\x01é\\u200b"'
    assert join_quote([]) == "" and join_quote(["a", "b"]) == '"a", "b"'
    assert pluralize("x", "xs", 1) == "x" and pluralize("x", "xs", 0) == "xs"


def _deployment(template_spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
            "spec": {"template": {"metadata": {"annotations": {"a": "b"}}, "spec": template_spec}}}  # fmt: skip


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}}, "spec"),
        ({"apiVersion": "v1", "kind": "PodTemplate", "template": {"spec": {}}}, "template.spec"),
        ({"apiVersion": "v1", "kind": "ReplicationController", "spec": {"template": {"spec": {}}}}, "spec.template.spec"),
        ({"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": {"template": {"spec": {}}}}, "spec.template.spec"),
        ({"apiVersion": "apps/v1", "kind": "DaemonSet", "spec": {"template": {"spec": {}}}}, "spec.template.spec"),
        ({"apiVersion": "apps/v1", "kind": "ReplicaSet", "spec": {"template": {"spec": {}}}}, "spec.template.spec"),
        ({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {}}}}, "spec.template.spec"),
        ({"apiVersion": "batch/v1", "kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}},
         "spec.jobTemplate.spec.template.spec"),
    ],
)  # fmt: skip
def test_every_workload_kind_is_extracted(obj: dict[str, Any], path: str) -> None:
    ref = extract_pod(obj)
    assert ref is not None and ref.path == path


def test_objects_without_a_pod() -> None:
    assert extract_pod({"apiVersion": "v1", "kind": "ConfigMap"}) is None
    assert (
        extract_pod({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {}}) is None
    )  # another group
    assert (
        extract_pod({"apiVersion": "v1", "kind": "ReplicationController", "spec": {}}) is None
    )  # optional template


def test_the_template_metadata_is_evaluated() -> None:
    obj = _deployment({"containers": [{"name": "a"}]})
    obj["spec"]["template"]["metadata"]["annotations"] = {
        "container.apparmor.security.beta.kubernetes.io/a": "unconfined"
    }
    ref = extract_pod(obj)
    assert ref is not None
    assert [v.check for v in evaluate(LevelVersion("baseline", LATEST), ref.metadata, ref.spec)] == [
        "appArmorProfile"
    ]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hostNetwork": "yes"}, "spec.template.spec.hostNetwork must be a boolean"),
        ({"containers": {"name": "a"}}, "spec.template.spec.containers must be a list"),
        ({"containers": [{"securityContext": {"privileged": 1}}]}, "spec.template.spec.containers[0].securityContext.privileged must be a boolean"),
        ({"containers": [{"securityContext": {"runAsUser": True}}]}, "containers[0].securityContext.runAsUser must be an integer"),
        ({"containers": [{"securityContext": {"capabilities": {"add": "NET_RAW"}}}]}, "capabilities.add must be a list of strings"),
        ({"securityContext": {"sysctls": [{"name": 3}]}}, "securityContext.sysctls[0].name must be a string"),
        ({"initContainers": [{"ports": [{"hostPort": "80"}]}]}, "initContainers[0].ports[0].hostPort must be an integer"),
    ],
)  # fmt: skip
def test_malformed_fields_are_named(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidObject, match="Deployment n/d: ") as info:
        extract_pod(_deployment(spec))
    assert field in str(info.value)


def test_malformed_template_is_named() -> None:
    with pytest.raises(InvalidObject, match=r"spec\.template must be an object"):
        extract_pod(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {"template": []},
            }
        )


# -- properties ---------------------------------------------------------------------------------------------

_bools = st.sampled_from([None, True, False])
_sc = st.fixed_dictionaries(
    {},
    optional={
        "privileged": st.booleans(),
        "allowPrivilegeEscalation": st.booleans(),
        "runAsNonRoot": st.booleans(),
        "runAsUser": st.integers(0, 2),
        "procMount": st.sampled_from(["Default", "Unmasked"]),
        "capabilities": st.fixed_dictionaries({}, optional={"add": st.lists(st.sampled_from(["NET_RAW", "CHOWN", "NET_BIND_SERVICE", "SYS_ADMIN"]), max_size=3),
                                                             "drop": st.lists(st.sampled_from(["ALL", "NET_RAW"]), max_size=2)}),
        "seccompProfile": st.fixed_dictionaries({"type": st.sampled_from(["RuntimeDefault", "Localhost", "Unconfined"])}),
        "seLinuxOptions": st.fixed_dictionaries({}, optional={"type": st.sampled_from(["container_t", "spc_t", "container_engine_t"]), "user": st.just("u")}),
        "appArmorProfile": st.fixed_dictionaries({"type": st.sampled_from(["RuntimeDefault", "Unconfined"])}),
        "windowsOptions": st.fixed_dictionaries({"hostProcess": st.booleans()}),
    },
)  # fmt: skip
_container = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c"])},
    optional={
        "securityContext": _sc,
        "ports": st.lists(st.fixed_dictionaries({"hostPort": st.integers(0, 3)}), max_size=2),
    },
)
_volume = st.sampled_from(
    [
        {"name": "h", "hostPath": {"path": "/"}},
        {"name": "e", "emptyDir": {}},
        {"name": "n", "nfs": {}},
        {"name": "s", "secret": {}},
    ]
)
_spec = st.fixed_dictionaries(
    {"containers": st.lists(_container, min_size=1, max_size=3)},
    optional={
        "initContainers": st.lists(_container, max_size=2),
        "hostNetwork": st.booleans(),
        "hostPID": st.booleans(),
        "hostUsers": st.booleans(),
        "os": st.fixed_dictionaries({"name": st.sampled_from(["linux", "windows"])}),
        "volumes": st.lists(_volume, max_size=3),
        "securityContext": st.fixed_dictionaries({}, optional={"runAsNonRoot": st.booleans(), "seccompProfile": st.fixed_dictionaries({"type": st.sampled_from(["RuntimeDefault", "Unconfined"])}),
                                                               "sysctls": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["kernel.msgmax", "net.ipv4.tcp_rmem"])}), max_size=2)}),
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(spec=_spec, minor=st.integers(0, NEWEST_VERSION))
def test_restricted_allowed_implies_baseline_allowed(spec: dict[str, Any], minor: int) -> None:
    restricted = evaluate(LevelVersion("restricted", Version(minor)), {}, spec)
    baseline = evaluate(LevelVersion("baseline", Version(minor)), {}, spec)
    if not restricted:
        assert not baseline
    # every baseline violation that restricted does not override is reported by restricted too
    overridden = {"hostPathVolumes", "seccompProfile_baseline", "capabilities_baseline", "procMount"}
    assert {v.check for v in baseline} - overridden <= {v.check for v in restricted}


@settings(max_examples=200, deadline=None)
@given(spec=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                             ["containers", "securityContext", "privileged", "name", "volumes", "hostPath", "capabilities", "add", "ports", "hostPort", "sysctls"]), inner, max_size=4),
                         max_leaves=20))  # fmt: skip
def test_arbitrary_input_is_refused_or_evaluated(spec: Any) -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    try:
        ref = extract_pod(obj)
    except InvalidObject as exc:
        assert str(exc).startswith("Pod p: ")
        return
    assert ref is not None
    for level in ("baseline", "restricted"):
        evaluate(LevelVersion(level, LATEST), ref.metadata, ref.spec)
