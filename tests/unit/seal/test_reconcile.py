"""The controller's pure rules: who owns a Secret, what gets written, status and backoff."""

from __future__ import annotations

import itertools

import pytest

from kubeshield.seal.objects import Document, parse_sealed_secret
from kubeshield.seal.reconcile import backoff, is_controlled_by, plan, synced_status

SS = parse_sealed_secret(
    Document(
        {
            "apiVersion": "bitnami.com/v1alpha1",
            "kind": "SealedSecret",
            "metadata": {"name": "db", "namespace": "prod", "uid": "uid-1", "generation": 3},
            "spec": {"encryptedData": {}},
        },
        "t",
    )
)
OWNER = [
    {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "name": "db",
        "uid": "uid-1",
        "controller": True,
    }
]
DESIRED = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "db", "namespace": "prod", "labels": {"app": "db"}, "ownerReferences": OWNER},
    "type": "Opaque",
    "data": {"password": "bmV3"},
}


def _existing(**meta) -> dict:
    base = {"name": "db", "namespace": "prod", "resourceVersion": "7"}
    base.update(meta)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": base,
        "type": "Opaque",
        "data": {"password": "b2xk", "other": "a2VlcA=="},
    }


def test_create_when_absent() -> None:
    action = plan(sealed=SS, desired=DESIRED, existing=None)
    assert action.kind == "create" and action.secret == DESIRED
    assert action.secret is not DESIRED


def test_owned_secret_is_replaced_and_keeps_its_resource_version() -> None:
    action = plan(sealed=SS, desired=DESIRED, existing=_existing(ownerReferences=OWNER))
    assert action.kind == "update" and action.secret is not None
    assert action.secret["data"] == {"password": "bmV3"}  # owned: other keys go
    assert action.secret["metadata"]["resourceVersion"] == "7"
    assert action.secret["metadata"]["labels"] == {"app": "db"}
    assert plan(sealed=SS, desired=DESIRED, existing=action.secret).kind == "none"


def test_foreign_secret_is_never_touched() -> None:
    other_owner = [{**OWNER[0], "uid": "someone-else"}]
    for existing in (
        _existing(),
        _existing(ownerReferences=other_owner),
        _existing(annotations={"sealedsecrets.bitnami.com/managed": "True"}),
    ):
        action = plan(sealed=SS, desired=DESIRED, existing=existing)
        assert action.kind == "refuse" and action.secret is None
        assert action.message == 'Resource "db" already exists and is not managed by SealedSecret'
    assert not is_controlled_by(_existing(ownerReferences=[{**OWNER[0], "controller": False}]), SS)


def test_managed_annotation_takes_over() -> None:
    action = plan(
        sealed=SS,
        desired=DESIRED,
        existing=_existing(annotations={"sealedsecrets.bitnami.com/managed": "true"}),
    )
    assert action.kind == "update" and action.secret is not None
    assert action.secret["metadata"]["ownerReferences"] == OWNER
    assert "annotations" not in action.secret["metadata"]  # replaced by the template's (none)
    assert action.secret["data"] == {"password": "bmV3"}


@pytest.mark.parametrize("managed", [False, True])
def test_patch_annotation_merges_and_owns_only_when_managed(managed: bool) -> None:
    annotations = {"sealedsecrets.bitnami.com/patch": "true", "x": "y"}
    if managed:
        annotations["sealedsecrets.bitnami.com/managed"] = "true"
    action = plan(
        sealed=SS, desired=DESIRED, existing=_existing(annotations=annotations, labels={"keep": "1"})
    )
    assert action.kind == "update" and action.secret is not None
    assert action.secret["data"] == {"password": "bmV3", "other": "a2VlcA=="}
    assert action.secret["metadata"]["labels"] == {"keep": "1", "app": "db"}
    assert action.secret["metadata"]["annotations"] == annotations
    assert ("ownerReferences" in action.secret["metadata"]) == managed


def test_type_change_and_immutable_secrets_fail_with_a_reason() -> None:
    tls = {**DESIRED, "type": "kubernetes.io/tls"}
    action = plan(sealed=SS, desired=tls, existing=_existing(ownerReferences=OWNER))
    assert action.kind == "fail" and "cannot change" in action.message
    frozen = {**_existing(ownerReferences=OWNER), "immutable": True}
    action = plan(sealed=SS, desired=DESIRED, existing=frozen)
    assert action.kind == "fail" and "immutable" in action.message


def test_synced_status_transitions() -> None:
    status, changed = synced_status(
        None, generation=3, ok=False, message="m1", now="t1", reason="ErrUnsealFailed"
    )
    assert changed and status["observedGeneration"] == 3
    (cond,) = status["conditions"]
    assert cond == {
        "type": "Synced",
        "status": "False",
        "lastTransitionTime": "t1",
        "lastUpdateTime": "t1",
        "message": "m1",
        "reason": "ErrUnsealFailed",
    }
    same, changed = synced_status(status, generation=3, ok=False, message="m1", now="t2")
    assert not changed and same == status
    status2, changed = synced_status(status, generation=3, ok=False, message="m2", now="t3")
    assert changed and status2["conditions"][0]["lastTransitionTime"] == "t1"
    status3, changed = synced_status(status2, generation=4, ok=True, message="", now="t4")
    assert changed and status3["conditions"][0] == {
        "type": "Synced",
        "status": "True",
        "lastTransitionTime": "t4",
        "lastUpdateTime": "t4",
    }
    assert status3["observedGeneration"] == 4


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff(n) for n in range(0, 14)]
    assert delays[0] == 0 and delays[1] == 0.5 and delays[2] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(delays)) and delays[-1] == 300.0
