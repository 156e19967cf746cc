"""The injector's mutation: AdmissionReviews built like the API server's, patches applied with jsonpatch and
the result validated against the Pod schema (kubernetes-validate), so a patch the API server would reject
fails here."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from kubeshield.errors import InvalidRequest
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.node.identity import Binding, Identity
from kubeshield.node.injector.mutate import InjectorConfig
from kubeshield.node.injector.webhook import review
from kubeshield.node.sealing_keys import SealingKeyFile

K8S_VERSION = "1.33.0"
CONFIG = InjectorConfig(
    image="ghcr.io/kubeshield/kubeshield:0.1.0",
    release_url="https://kubeshield-release.kubeshield.svc:8443",
    release_ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> dict[str, str]:
    backend = InMemoryBackend()
    path = tmp_path_factory.mktemp("k") / "k.json"
    SealingKeyFile(path).create(backend)
    keys = SealingKeyFile(path).open(backend)
    return {
        "app": keys.seal(b"db-pass", binding=Binding(Identity("ns-a", "app"))),
        "other": keys.seal(b"x", binding=Binding(Identity("ns-a", "other"))),
    }


def pod(annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "annotations": annotations, "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "app",  # the ServiceAccount admission plugin runs before mutating webhooks
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
            "containers": [
                {"name": "app", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"]}
            ],
            **spec,
        },
    }
    return body


def admission(
    obj: dict[str, Any], *, namespace: str = "ns-a", operation: str = "CREATE", kind: str = "Pod"
) -> dict:
    gvk = {"group": "", "version": "v1", "kind": kind}
    gvr = {"group": "", "version": "v1", "resource": kind.lower() + "s"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "subResource": "",
            "requestKind": gvk,
            "requestResource": gvr,
            "requestSubResource": "",
            "name": "",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": []},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply(obj: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), patch)
    named = copy.deepcopy(patched)
    named["metadata"].setdefault("name", "web-x1y2z")
    kubernetes_validate.validate(named, K8S_VERSION, strict=True)
    return patched


def test_injection_adds_volumes_init_container_and_native_sidecar(sealed) -> None:
    obj = pod(
        {
            "kubeshield.io/inject": "true",
            "kubeshield.io/secret-db": sealed["app"],
            "kubeshield.io/secret-api": "configmap:sealed-values/api",
            "kubeshield.io/file-db": "db/password",
        }
    )
    request = admission(obj)
    answer = review(request, config=CONFIG)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == request["request"]["uid"]
    out = apply(obj, answer)
    spec = out["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kubeshield-secrets"]["emptyDir"]["medium"] == "Memory"
    sources = volumes["kubeshield-inputs"]["projected"]["sources"]
    token = sources[0]["serviceAccountToken"]
    assert token == {"audience": "kubeshield", "expirationSeconds": 600, "path": "token"}
    assert sources[1]["downwardAPI"]["items"] == [
        {"path": "sealed/db", "fieldRef": {"fieldPath": "metadata.annotations['kubeshield.io/secret-db']"}}
    ]
    assert sources[2]["configMap"] == {
        "name": "sealed-values",
        "items": [{"key": "api", "path": "sealed/api"}],
    }
    init, side = spec["initContainers"]
    assert (init["name"], side["name"], side["restartPolicy"]) == (
        "kubeshield-init",
        "kubeshield-refresh",
        "Always",
    )
    assert "restartPolicy" not in init and "--once" in init["args"] and "--refresh=5m" in side["args"]
    assert init["command"] == ["kubeshield", "node", "fetch"] and "--file=db=db/password" in init["args"]
    assert init["securityContext"]["runAsUser"] == 1000 and init["securityContext"]["runAsGroup"] == 3000
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["env"] == [{"name": "KUBESHIELD_CA_PEM", "value": CONFIG.release_ca_pem}]
    # the token and the inputs are only in kubeshield's containers; the app sees the values read-only
    app = spec["containers"][0]
    assert app["volumeMounts"] == [
        {"name": "kubeshield-secrets", "mountPath": "/kubeshield/secrets", "readOnly": True}
    ]
    assert app["command"] == ["nginx"]
    assert out["metadata"]["annotations"]["kubeshield.io/inject-status"] == "injected"
    # a second admission of the injected pod changes nothing (idempotent)
    again = review(admission(out), config=CONFIG)
    assert again["response"] == {"uid": again["response"]["uid"], "allowed": True}


def test_existing_init_containers_volumes_and_mounts_are_appended_to(sealed) -> None:
    obj = pod(
        {
            "kubeshield.io/inject": "true",
            "kubeshield.io/secret-db": sealed["app"],
            "kubeshield.io/init-first": "true",
            "kubeshield.io/pre-populate-only": "true",
        },
        initContainers=[{"name": "migrate", "image": "busybox"}],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    obj["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    out = apply(obj, review(admission(obj), config=CONFIG))
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["kubeshield-init", "migrate"]  # no sidecar
    assert [v["name"] for v in out["spec"]["volumes"]] == ["data", "kubeshield-secrets", "kubeshield-inputs"]
    assert [m["name"] for m in out["spec"]["containers"][0]["volumeMounts"]] == ["data", "kubeshield-secrets"]


def test_env_wrapping_is_explicit_and_warns(sealed) -> None:
    obj = pod(
        {
            "kubeshield.io/inject": "true",
            "kubeshield.io/secret-db": sealed["app"],
            "kubeshield.io/env": "true",
            "kubeshield.io/format": "dotenv",
        }
    )
    answer = review(admission(obj), config=CONFIG)
    assert any("environment variables" in w for w in answer["response"]["warnings"])
    app = apply(obj, answer)["spec"]["containers"][0]
    assert app["command"][:2] == ["/bin/sh", "-c"] and app["command"][-1] == "nginx"
    assert ". /kubeshield/secrets/.kubeshield.env" in app["command"][2]
    assert app["args"] == ["-g", "daemon off;"]
    no_command = pod(
        {
            "kubeshield.io/inject": "true",
            "kubeshield.io/secret-db": sealed["app"],
            "kubeshield.io/env": "true",
        }
    )
    del no_command["spec"]["containers"][0]["command"]
    refused = review(admission(no_command), config=CONFIG)["response"]
    assert refused["allowed"] is False and "explicit command" in refused["status"]["message"]


@pytest.mark.parametrize(
    ("annotations", "change", "message"),
    [
        ({"kubeshield.io/secret-db": "other"}, None, "sealed for ns-a:other, but the pod runs as ns-a:app"),
        ({"kubeshield.io/secret-db": "not-sealed"}, None, "not a kubeshield sealed value"),
        ({"kubeshield.io/secret-DB": "app"}, None, "must be lower-case"),
        (
            {"kubeshield.io/secret-db": "app", "kubeshield.io/formatt": "json"},
            None,
            "unknown kubeshield annotation",
        ),
        ({"kubeshield.io/secret-db": "app", "kubeshield.io/format": "yaml"}, None, "files, dotenv or json"),
        ({"kubeshield.io/secret-db": "app", "kubeshield.io/file-db": "../x"}, None, "without '..'"),
        (
            {"kubeshield.io/secret-db": "app", "kubeshield.io/refresh-interval": "soon"},
            None,
            "not a duration",
        ),
        (
            {"kubeshield.io/secret-db": "app", "kubeshield.io/containers": "nope"},
            None,
            "no container named nope",
        ),
        ({}, None, "no kubeshield.io/secret-<name>"),
        ({"kubeshield.io/secret-db": "app"}, "no-uid", "the app's uid is not known"),
        ({"kubeshield.io/secret-db": "app"}, "own-volume", "already has kubeshield volumes"),
    ],
)
def test_refusals_are_allowed_false_with_a_reason(sealed, annotations, change, message) -> None:
    values = {k: sealed.get(v, v) for k, v in annotations.items()}
    obj = pod({"kubeshield.io/inject": "true", **values})
    if change == "no-uid":
        del obj["spec"]["securityContext"]
    if change == "own-volume":
        obj["spec"]["volumes"] = [{"name": "kubeshield-secrets", "emptyDir": {}}]
    response = review(admission(obj), config=CONFIG)["response"]
    assert response["allowed"] is False and message in response["status"]["message"], response
    assert "db-pass" not in json.dumps(response)


def test_pods_left_alone(sealed) -> None:
    annotated = pod({"kubeshield.io/inject": "true", "kubeshield.io/secret-db": sealed["app"]})
    for request in (
        admission(pod({})),  # not annotated
        admission(annotated, namespace="kube-system"),
        admission(annotated, namespace="kubeshield"),  # the injector's own namespace
        admission(annotated, operation="UPDATE"),
    ):
        response = review(request, config=CONFIG)["response"]
        assert response["allowed"] is True and "patch" not in response


def test_non_pods_and_other_versions() -> None:
    response = review(admission({"kind": "ConfigMap"}, kind="ConfigMap"), config=CONFIG)["response"]
    assert response["allowed"] is False and "core/v1 Pods only" in response["status"]["message"]
    for doc in (
        {**admission(pod({})), "apiVersion": "admission.k8s.io/v1beta1"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "Other"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
    ):
        with pytest.raises(InvalidRequest):
            review(doc, config=CONFIG)


def test_a_broken_patch_would_be_caught_by_the_schema(sealed) -> None:
    """The validation in apply() is what catches a patch the API server would reject."""
    obj = pod({"kubeshield.io/inject": "true", "kubeshield.io/secret-db": sealed["app"]})
    answer = review(admission(obj), config=CONFIG)
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    for op in patch:
        if op["path"] == "/spec/volumes/-":  # the projected inputs volume: a mode written as a string
            op["value"]["projected"]["defaultMode"] = "0444"
    answer["response"]["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    with pytest.raises(kubernetes_validate.ValidationError):
        apply(obj, answer)
