"""Live mode against the Kubernetes API stand-in (real HTTPS, client certificates), fed with the real
kubectl: the misconfigured cluster's objects are applied with ``kubectl apply``; ``kubeshield posture
--kubeconfig`` must report the planted problems the API can show (node files cannot be read through it,
and say so), and so must an offline run on what ``kubectl get -o yaml`` exports. The Pod Security webhook
reads namespace labels through the same API, and fails closed when it cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeshield.kube import KubeClient, resources
from kubeshield.posture.pss.admission import Admission
from kubeshield.posture.pss.live import KubeNamespaces
from tests.integration.posture._cluster import PLANTED, PLANTED_ERRORS, write_cluster
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi.fixtures import Kubectl, kubectl, kubectl_binary  # noqa: F401

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")
API_VISIBLE = {p for p in PLANTED if not p[1].startswith(("node/", "worker-1/"))}
LIVE_EXPECTED = API_VISIBLE | {
    ("KS-ENC-006", "Pod kube-system/kube-apiserver-cp-1"),  # the apiserver's flags, from its mirror pod
    (
        "KS-PSA-001",
        "Namespace default",
    ),  # the stand-in has a default namespace without labels, as clusters do
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeAPI, Path, Path]]:
    """A stand-in of its own (other tests' namespaces would be findings here), loaded with kubectl."""
    base = tmp_path_factory.mktemp("posture-live")
    api = KubeAPI(base / "api").start()
    try:
        admin = api.kubeconfig(base / "admin.kubeconfig", credential=api.admin)
        tool = Kubectl(kubectl_binary(), base / "home")
        source = write_cluster(base / "cluster")
        # the stand-in serves no OpenAPI documents, so kubectl's client-side schema check is off
        tool.run("apply", "--validate=false", "-f", str(source / "objects/namespaces.yaml"), kubeconfig=admin)
        for rel in (
            "clusterroles.yaml",
            "roles.yaml",
            "bindings",
            "serviceaccounts.yaml",
            "workloads.yaml",
            "pods.yaml",
        ):
            tool.run("apply", "--validate=false", "-R", "-f", str(source / "objects" / rel), kubeconfig=admin)
        yield api, admin, base
    finally:
        api.stop()


def _findings(stdout: str) -> tuple[set[tuple[str, str]], list[str], list[str]]:
    data = json.loads(stdout)
    return (
        {(f["id"], f.get("file") or f.get("object")) for f in data["findings"]},
        data["errors"],
        data["skipped"],
    )


def test_live_mode_reports_what_the_api_shows(cluster: tuple[KubeAPI, Path, Path]) -> None:
    _, admin, _ = cluster
    result = subprocess.run(
        [KUBESHIELD, "posture", "--kubeconfig", str(admin), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    found, errors, skipped = _findings(result.stdout)
    assert found == LIVE_EXPECTED
    assert set(errors) == PLANTED_ERRORS
    assert any(
        "/etc/kubernetes/enc/enc.yaml (--encryption-provider-config) is a node file" in s for s in skipped
    )
    assert any(s.startswith("kubelet configurations: not readable through the API") for s in skipped)


def test_exported_with_kubectl_gives_the_same_findings(cluster: tuple[KubeAPI, Path, Path]) -> None:
    _, admin, base = cluster
    dump = base / "dump"
    dump.mkdir(exist_ok=True)
    tool = Kubectl(kubectl_binary(), base / "home")
    exports = {
        "objects.yaml": (
            "get",
            "ns,pods,deploy,sts,ds,rs,jobs,cronjobs,sa,roles,rolebindings",
            "-A",
            "-o",
            "yaml",
        ),
        "rbac.yaml": ("get", "clusterroles,clusterrolebindings", "-o", "yaml"),
    }
    for name, args in exports.items():
        (dump / name).write_text(tool.run(*args, kubeconfig=admin).stdout)
    result = subprocess.run(
        [KUBESHIELD, "posture", "--from-dir", str(dump), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found, errors, _ = _findings(result.stdout)
    assert found == LIVE_EXPECTED
    assert set(errors) == PLANTED_ERRORS


def test_a_reader_without_rbac_rights_is_told_what_it_could_not_see(
    cluster: tuple[KubeAPI, Path, Path],
) -> None:
    api, _, base = cluster
    api.deny(user="auditor", resource="clusterrolebindings")
    try:
        kubeconfig = api.kubeconfig(base / "auditor.kubeconfig", user="auditor")
        result = subprocess.run(
            [KUBESHIELD, "posture", "--kubeconfig", str(kubeconfig), "-o", "json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        found, _, skipped = _findings(result.stdout)
        assert "clusterrolebindings: these credentials may not list them (403)" in skipped
        assert (
            "KS-RBAC-001",
            "User alice",
        ) not in found  # granted through a ClusterRoleBinding it could not read
        assert ("KS-RBAC-002", "ServiceAccount shop/default") in found  # a RoleBinding, still visible
    finally:
        api.clear_denies()


PRIVILEGED_SPEC = {"containers": [{"name": "a", "image": "i", "securityContext": {"privileged": True}}]}


def _review(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p",
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": PRIVILEGED_SPEC},
        },
    }


def test_the_webhook_reads_namespace_labels_through_the_api(cluster: tuple[KubeAPI, Path, Path]) -> None:
    api, _, base = cluster
    clock = [0.0]
    kubeconfig = api.kubeconfig(base / "webhook.kubeconfig", user="pss-webhook")  # not system:masters
    with KubeClient.from_kubeconfig(kubeconfig) as client:
        admission = Admission(namespaces=KubeNamespaces(client, ttl=5, clock=lambda: clock[0]))
        denied = admission.review(_review("shop"))["response"]
        assert (
            denied["allowed"] is False
            and 'violates PodSecurity "baseline:latest": privileged' in denied["status"]["message"]
        )
        assert admission.review(_review("nowhere"))["response"]["status"]["code"] == 500
        client.patch(
            resources.NAMESPACES,
            "shop",
            {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
        )
        assert admission.review(_review("shop"))["response"]["allowed"] is False  # cached for ttl seconds
        clock[0] += 6
        assert admission.review(_review("shop"))["response"]["allowed"] is True
        api.deny(user="pss-webhook", resource="namespaces")
        try:
            clock[0] += 6
            failed = admission.review(_review("shop"))["response"]
            assert failed["allowed"] is False and failed["status"]["code"] == 500  # fail closed
        finally:
            api.clear_denies()
            client.patch(
                resources.NAMESPACES,
                "shop",
                {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
            )
