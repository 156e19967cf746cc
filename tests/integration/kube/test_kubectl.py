"""The proof that the stand-in speaks the protocol: the real kubectl v1.35 against it."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import yaml

from kubeshield.kube import KubeClient, resources
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi.fixtures import Kubectl

DEADLINE = 60.0


@pytest.fixture(params=["client-cert", "bearer-token"])
def kc(request, kube_api: KubeAPI, kube_ns: str, tmp_path: Path) -> Path:
    """A kubeconfig for a non-admin user, by client certificate or by bearer token."""
    if request.param == "client-cert":
        return kube_api.kubeconfig(tmp_path / "kc", user="alice", groups=("devs",), namespace=kube_ns)
    token = kube_api.add_token("bob", ["devs"])
    return kube_api.kubeconfig(tmp_path / "kt", token=token, namespace=kube_ns)


def _names(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def test_version_and_api_resources(kubectl: Kubectl, kc: Path):
    version = json.loads(kubectl.run("version", "-o", "json", kubeconfig=kc).stdout)
    assert version["serverVersion"]["minor"] == "35"
    out = kubectl.run("api-resources", "-o", "wide", kubeconfig=kc).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert {
        "secrets",
        "configmaps",
        "pods",
        "deployments",
        "customresourcedefinitions",
        "tokenreviews",
    } <= set(rows)
    assert "cm" in rows["configmaps"] and "apps/v1" in rows["deployments"]
    namespaced = kubectl.run(
        "api-resources", "--namespaced=false", "-o", "name", kubeconfig=kc
    ).stdout.split()
    assert "namespaces" in namespaced and "secrets" not in namespaced


def test_create_get_patch_delete(kubectl: Kubectl, kc: Path, kube: KubeClient):
    kubectl.run("create", "configmap", "cfg", "--from-literal=a=1", kubeconfig=kc)
    kubectl.run("create", "secret", "generic", "sec", "--from-literal=pw=s3cr3t", kubeconfig=kc)
    assert base64.b64decode(kube.get(resources.SECRETS, "sec")["data"]["pw"]) == b"s3cr3t"
    assert kube.get(resources.SECRETS, "sec")["type"] == "Opaque"
    table = kubectl.run("get", "configmaps,secrets", kubeconfig=kc).stdout
    assert "configmap/cfg" in table and "secret/sec" in table and "Opaque" in table
    as_json = json.loads(kubectl.run("get", "cm", "cfg", "-o", "json", kubeconfig=kc).stdout)
    assert as_json["data"] == {"a": "1"} and as_json["metadata"]["uid"]
    as_yaml = yaml.safe_load(kubectl.run("get", "secret", "sec", "-o", "yaml", kubeconfig=kc).stdout)
    assert as_yaml["data"]["pw"] == base64.b64encode(b"s3cr3t").decode()
    kubectl.run("patch", "cm", "cfg", "-p", '{"data":{"b":"2"}}', kubeconfig=kc)
    kubectl.run(
        "patch", "cm", "cfg", "--type=json", "-p", '[{"op":"remove","path":"/data/a"}]', kubeconfig=kc
    )
    kubectl.run("label", "cm", "cfg", "team=blue", kubeconfig=kc)
    got = kube.get(resources.CONFIG_MAPS, "cfg")
    assert got["data"] == {"b": "2"} and got["metadata"]["labels"] == {"team": "blue"}
    kubectl.run("delete", "cm", "cfg", kubeconfig=kc)
    assert _names(kubectl.run("get", "cm", kubeconfig=kc).stdout) == []
    missing = kubectl.run("get", "cm", "cfg", kubeconfig=kc, check=False)
    assert missing.returncode == 1 and 'configmaps "cfg" not found' in missing.stderr


MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: main
        image: nginx:1
      - name: side
        image: busybox:1
"""


def test_apply_client_side_then_server_side(kubectl: Kubectl, kc: Path, kube: KubeClient):
    assert (
        "deployment.apps/web created" in kubectl.run("apply", "-f", "-", kubeconfig=kc, input=MANIFEST).stdout
    )
    changed = MANIFEST.replace("nginx:1", "nginx:2").replace("replicas: 1", "replicas: 2")
    assert "configured" in kubectl.run("apply", "-f", "-", kubeconfig=kc, input=changed).stdout
    web = kube.get(resources.DEPLOYMENTS, "web")
    assert [c["image"] for c in web["spec"]["template"]["spec"]["containers"]] == ["nginx:2", "busybox:1"]
    assert web["spec"]["replicas"] == 2 and web["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in web["metadata"]["annotations"]

    ssa = MANIFEST.replace("name: web", "name: api", 1)
    out = kubectl.run("apply", "--server-side", "-f", "-", kubeconfig=kc, input=ssa).stdout
    assert "deployment.apps/api serverside-applied" in out
    api = kube.get(resources.DEPLOYMENTS, "api")
    assert any(
        m["manager"] == "kubectl" and m["operation"] == "Apply" for m in api["metadata"]["managedFields"]
    )
    # another manager takes the image; kubectl's apply conflicts, then --force-conflicts wins it back
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api"},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nginx:9"}]}}},
        },
        field_manager="other",
        force=True,
    )
    conflict = kubectl.run("apply", "--server-side", "-f", "-", kubeconfig=kc, input=ssa, check=False)
    assert conflict.returncode == 1 and "conflict" in conflict.stderr.lower()
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", "-", kubeconfig=kc, input=ssa)
    assert (
        kube.get(resources.DEPLOYMENTS, "api")["spec"]["template"]["spec"]["containers"][0]["image"]
        == "nginx:1"
    )


def test_selectors(kubectl: Kubectl, kc: Path, kube: KubeClient):
    for name, tier in (("one", "front"), ("two", "back"), ("three", "front")):
        kube.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"tier": tier}}}
        )
    front = kubectl.run("get", "cm", "-l", "tier=front", "-o", "name", kubeconfig=kc).stdout.split()
    assert front == ["configmap/one", "configmap/three"]
    not_front = kubectl.run("get", "cm", "-l", "tier!=front", "-o", "name", kubeconfig=kc).stdout.split()
    assert not_front == ["configmap/two"]
    by_field = kubectl.run("get", "cm", "--field-selector", "metadata.name=two", "-o", "name", kubeconfig=kc)
    assert by_field.stdout.split() == ["configmap/two"]
    assert "configmap/one" in kubectl.run("get", "cm", "--chunk-size=1", "-o", "name", kubeconfig=kc).stdout


def test_get_watch_receives_events(kubectl: Kubectl, kc: Path, kube: KubeClient):
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w-first"}})
    proc = kubectl.popen("get", "cm", "-w", "-o", "name", kubeconfig=kc)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "configmap/w-first"
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w-second"}})
        assert proc.stdout.readline().strip() == "configmap/w-second"
        kube.patch(resources.CONFIG_MAPS, "w-first", {"data": {"x": "y"}})
        assert proc.stdout.readline().strip() == "configmap/w-first"
    finally:
        proc.kill()
        proc.communicate(timeout=DEADLINE)  # reaps it and closes its pipes


def test_get_watch_table_output(kubectl: Kubectl, kc: Path, kube: KubeClient):
    proc = kubectl.popen("get", "secrets", "-w", kubeconfig=kc)
    try:
        assert proc.stdout is not None
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "watched"}, "type": "Opaque"})
        lines: list[str] = []
        end = time.monotonic() + DEADLINE
        while not any("watched" in line for line in lines) and time.monotonic() < end:
            lines.append(proc.stdout.readline())
        row = next(line for line in lines if "watched" in line).split()
        assert row[:3] == ["watched", "Opaque", "0"]
    finally:
        proc.kill()
        proc.communicate(timeout=DEADLINE)  # reaps it and closes its pipes


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.kubeshield.io
spec:
  group: example.kubeshield.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def test_crd_then_custom_objects(kubectl: Kubectl, kube_api: KubeAPI, kube_ns: str, tmp_path: Path):
    admin = kube_api.kubeconfig(tmp_path / "admin", credential=kube_api.admin, namespace=kube_ns)
    applied = kubectl.run("apply", "-f", "-", kubeconfig=admin, input=CRD, check=False)
    assert applied.returncode == 0, applied.stderr
    widget = "apiVersion: example.kubeshield.io/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"
    kubectl.run("create", "-f", "-", kubeconfig=admin, input=widget)
    kubectl.run("apply", "-f", "-", kubeconfig=admin, input=widget.replace("size: 3", "size: 4"))
    got = json.loads(kubectl.run("get", "wd", "w1", "-o", "json", kubeconfig=admin).stdout)
    assert got["spec"] == {"size": 4} and got["metadata"]["generation"] == 2
    kubectl.run("apply", "--server-side", "-f", "-", kubeconfig=admin, input=widget.replace("w1", "w2"))
    assert kubectl.run("get", "widgets", "-o", "name", kubeconfig=admin).stdout.split() == [
        "widget.example.kubeshield.io/w1",
        "widget.example.kubeshield.io/w2",
    ]
    assert (
        "widgets"
        in kubectl.run("api-resources", "--api-group=example.kubeshield.io", kubeconfig=admin).stdout
    )
    kubectl.run("delete", "widget", "w1", kubeconfig=admin)
    assert kubectl.run("get", "widgets", "-o", "name", kubeconfig=admin).stdout.split() == [
        "widget.example.kubeshield.io/w2"
    ]


def test_denied_user_gets_forbidden(kubectl: Kubectl, kube_api: KubeAPI, kube_ns: str, tmp_path: Path):
    config = kube_api.kubeconfig(tmp_path / "eve", user="eve", namespace=kube_ns)
    kube_api.deny(user="eve", verb="list", resource="secrets")
    try:
        refused = kubectl.run("get", "secrets", kubeconfig=config, check=False)
        assert refused.returncode == 1
        assert 'User "eve" cannot list resource "secrets"' in refused.stderr
        answer = kubectl.run("auth", "can-i", "list", "secrets", kubeconfig=config, check=False)
        assert answer.returncode == 1 and answer.stdout.strip() == "no - denied by the stand-in's deny-list"
        assert kubectl.run("auth", "can-i", "list", "configmaps", kubeconfig=config).stdout.strip() == "yes"
    finally:
        kube_api.clear_denies()


def test_whoami_shows_the_certificate_identity(kubectl: Kubectl, kube_api: KubeAPI, tmp_path: Path):
    config = kube_api.kubeconfig(tmp_path / "dave", user="dave", groups=("ops", "audit"))
    who = json.loads(kubectl.run("auth", "whoami", "-o", "json", kubeconfig=config).stdout)
    assert who["status"]["userInfo"]["username"] == "dave"
    assert who["status"]["userInfo"]["groups"] == ["ops", "audit", "system:authenticated"]


def test_unknown_credentials_are_refused(kubectl: Kubectl, kube_api: KubeAPI, tmp_path: Path):
    config = kube_api.kubeconfig(tmp_path / "bad", token="forged-token")
    refused = kubectl.run("get", "cm", kubeconfig=config, check=False)
    assert refused.returncode == 1 and "You must be logged in to the server" in refused.stderr


def test_subresource_extension_point_serves_kubectl_logs(
    kubectl: Kubectl, kube_api: KubeAPI, kube_ns: str, kube: KubeClient, tmp_path: Path
):
    from aiohttp import web

    from tests.support.kubeapi import SubresourceContext

    seen: list[tuple[str, str, str]] = []

    async def logs(request: web.Request, ctx: SubresourceContext) -> web.StreamResponse:
        seen.append((ctx.user.name, ctx.namespace or "", ctx.name))
        return web.Response(text=f"hello from {ctx.name}/{request.query.get('container', '')}\n")

    kube_api.register_subresource("pods", "log", logs, verbs=("get",), kind="Pod")
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "talker"},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        }
    )
    config = kube_api.kubeconfig(tmp_path / "logs", user="lena", namespace=kube_ns)
    assert kubectl.run("logs", "talker", kubeconfig=config).stdout == "hello from talker/main\n"
    assert seen == [("lena", kube_ns, "talker")]
    kube_api.deny(user="lena", resource="pods/log")
    try:
        refused = kubectl.run("logs", "talker", kubeconfig=config, check=False)
        assert refused.returncode == 1 and "forbidden" in refused.stderr
        missing = kubectl.run("logs", "nobody", kubeconfig=config, check=False)
        assert missing.returncode == 1 and 'pods "nobody" not found' in missing.stderr
    finally:
        kube_api.clear_denies()
        kube_api.unregister_subresource("pods", "log")
