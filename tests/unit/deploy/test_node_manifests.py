"""deploy/node/ validates offline (kubernetes-validate) and says what the node components need and no more.

cert-manager kinds and the SecretProviderClass have no schema in kubernetes-validate: they get structural
checks. The config each ConfigMap carries must load with ``load_node_config``'s rules, every flag a
container passes must be a flag of its command, and the example SecretProviderClass must parse as the
provider parses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from kubeshield.cli import cli
from kubeshield.node.csi.params import parse_mount
from kubeshield.node.sealed import parse_sealed
from kubeshield.node.settings import node_config_from_mapping

ROOT = Path(__file__).resolve().parents[3]
NODE = ROOT / "deploy" / "node"
K8S_VERSION = "1.33.0"
NO_SCHEMA = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"),
}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((NODE / name).read_text()) if d]


def _all() -> list[dict[str, Any]]:
    return [d for p in sorted(NODE.glob("*.yaml")) for d in _docs(p.name)]


def _kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def _flags(container: dict[str, Any]) -> None:
    command = container["command"]
    assert command[0] == "kubeshield"
    help_text = CliRunner().invoke(cli, [*command[1:], "--help"]).output
    for arg in container.get("args", []):
        flag = arg.split("=", 1)[0]
        assert flag.startswith("--") and f"{flag} " in help_text, f"{flag} is not a flag of {command}"


def test_every_manifest_validates() -> None:
    docs = _all()
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "DaemonSet",
        "CSIDriver",
        "MutatingWebhookConfiguration",
        "ClusterRoleBinding",
        "Service",
        "ConfigMap",
        "SecretProviderClass",
    }
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
            assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_node_manifest_is_caught() -> None:
    doc = _kind(_docs("injector.yaml"), "MutatingWebhookConfiguration")
    doc["webhooks"][0]["timeoutSeconds"] = "ten"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _config(docs: list[dict[str, Any]], name: str):
    return node_config_from_mapping(yaml.safe_load(_kind(docs, "ConfigMap", name)["data"]["node.yaml"]))


def test_release_server_rbac_is_least_privilege_and_its_config_loads() -> None:
    docs = _docs("release-server.yaml")
    config = _config(docs, "kubeshield-release-config")
    assert config.settings.keys.backend == "transit" and config.node.release.require_pod_bound
    assert config.node.release.tls is not None and config.node.audience == "kubeshield"
    delegator = _kind(docs, "ClusterRoleBinding", "kubeshield-release-auth-delegator")
    assert delegator["roleRef"]["name"] == "system:auth-delegator"  # TokenReview + SubjectAccessReview
    (rule,) = _kind(docs, "ClusterRole")["rules"]
    assert rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}  # no secrets, no list
    spec = _kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "kubeshield-release" and spec["securityContext"]["runAsNonRoot"]
    (container,) = spec["containers"]
    _flags(container)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert (
        str(config.node.sealing_keys.parent) in mounts and str(config.node.release.tls.cert.parent) in mounts
    )
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8443, "scheme": "HTTPS"}


def test_the_csi_provider_sits_where_the_driver_dials_and_holds_no_key() -> None:
    docs = _docs("csi-provider.yaml")
    config = _config(docs, "kubeshield-csi-provider-config")
    assert config.node.csi.mode == "release" and config.node.client is not None
    ds = _kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = ds["containers"]
    _flags(container)
    socket = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--socket="))
    assert (
        socket == "/etc/kubernetes/secrets-store-csi-providers/kubeshield.sock"
    )  # <dir>/<spec.provider>.sock
    volumes = {v["name"]: v for v in ds["volumes"]}
    assert volumes["providers"]["hostPath"]["path"] == "/etc/kubernetes/secrets-store-csi-providers"
    assert volumes["release-ca"]["secret"]["items"] == [
        {"key": "ca.crt", "path": "ca.crt"}
    ]  # not the TLS key
    assert ds["automountServiceAccountToken"] is False  # it needs no API access in release mode
    csidriver = _kind(_docs("csidriver.yaml"), "CSIDriver")["spec"]
    assert {"audience": config.node.audience, "expirationSeconds": 600} in csidriver["tokenRequests"]
    assert csidriver["requiresRepublish"] is True and csidriver["podInfoOnMount"] is True


def test_the_webhook_cannot_deadlock_and_fails_closed() -> None:
    docs = _docs("injector.yaml")
    config = _config(docs, "kubeshield-injector-config")
    (hook,) = _kind(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"] and hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail" and 1 <= hook["timeoutSeconds"] <= 30
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    excluded = next(e for e in hook["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn")
    assert {"kube-system", "kube-public", config.node.injector.namespace} <= set(excluded["values"])
    assert hook["clientConfig"]["service"]["namespace"] == config.node.injector.namespace
    (container,) = _kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    _flags(container)
    assert config.node.injector.release_url and config.node.injector.tls is not None


def test_the_example_app_parses_as_the_provider_and_injector_read_it() -> None:
    docs = _docs("example-app.yaml")
    spc = _kind(docs, "SecretProviderClass")
    attrs = {**spc["spec"]["parameters"], "csi.storage.k8s.io/pod.namespace": "shop"}
    params = parse_mount(json.dumps(attrs), "{}", "420")
    (obj,) = params.objects
    assert parse_sealed(obj.sealed).binding.describe() == "shop:web" and obj.mode == 0o400
    injected = _kind(docs, "Deployment", "web-injected")["spec"]["template"]
    text = injected["metadata"]["annotations"]["kubeshield.io/secret-db-password"]
    assert str(parse_sealed(text).binding.identity) == f"shop:{injected['spec']['serviceAccountName']}"
    ns = _kind(docs, "Namespace")
    assert ns["metadata"]["labels"]["kubeshield.io/injection"] == "enabled"
    volume = _kind(docs, "Deployment", "web-csi")["spec"]["template"]["spec"]["volumes"][0]["csi"]
    assert (
        volume["readOnly"] is True
        and volume["volumeAttributes"]["secretProviderClass"] == spc["metadata"]["name"]
    )


def test_certificates_name_the_services() -> None:
    docs = _docs("certificates.yaml")
    release = _kind(docs, "Certificate", "kubeshield-release-tls")["spec"]["dnsNames"]
    assert "kubeshield-release.kubeshield.svc" in release
    injector = _kind(docs, "Certificate", "kubeshield-injector-tls")["spec"]["dnsNames"]
    assert injector == ["kubeshield-injector.kubeshield.svc"]
    client_url = _config(_docs("csi-provider.yaml"), "kubeshield-csi-provider-config").node.client
    assert client_url is not None and client_url.url.split("//")[1].split(":")[0] in release
