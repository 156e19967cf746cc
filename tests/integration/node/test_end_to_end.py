"""Done when (issue 12): a value sealed for ns-a:app is released to a pod of ns-a:app and refused to
ns-a:other and to ns-b:app, through both the CSI provider and the injector.

Everything on the path is real except the kubelet and the API server's own process: the Kubernetes API
stand-in (HTTPS, TokenRequest/TokenReview of RS256 JWTs bound to live pods), the release server over
HTTPS, the CSI provider on its unix socket driven like the Secrets Store CSI driver drives it
(driver.py), the injector webhook over HTTPS answering AdmissionReviews, and the injected init
container's own command line (``kubeshield node fetch``) run as a process.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import jsonpatch
import pytest
import yaml

from kubeshield.node.csi.server import CsiProviderServer
from kubeshield.node.injector.mutate import INPUTS_PATH, InjectorConfig
from kubeshield.node.injector.webhook import InjectorServer
from kubeshield.node.settings import ServerTLS
from kubeshield.node.wiring import build_csi_provider
from tests.integration.node.conftest import NodeWorld
from tests.integration.node.driver import Driver, details

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")
VALUE = b"s3cr3t-db-password"


@pytest.fixture
def sealed(node_world: NodeWorld) -> str:
    return node_world.seal(VALUE, "ns-a", "app")


@pytest.fixture
def csi(node_world: NodeWorld, tmp_path: Path):
    sockets = tmp_path / "providers"
    sockets.mkdir()
    server = CsiProviderServer(build_csi_provider(node_world.config), sockets / "kubeshield.sock")
    try:
        yield Driver(node_world.admin, [tmp_path / "other-dir", sockets])
    finally:
        server.stop()


def test_through_the_csi_provider(node_world: NodeWorld, sealed: str, csi: Driver, tmp_path: Path) -> None:
    objects = yaml.safe_dump(
        [{"objectName": "db-password", "sealed": sealed, "fileName": "db/password", "mode": "0440"}]
    )
    for ns in ("ns-a", "ns-b"):
        node_world.spc(ns, "app-secrets", {"objects": objects})
    assert csi.version("kubeshield") == "0.1.0"

    pod = node_world.pod("ns-a", "app")
    target = tmp_path / "ns-a-app"
    target.mkdir()
    versions = csi.mount(pod, "app-secrets", target)
    assert (target / "db" / "password").read_bytes() == VALUE
    assert stat.S_IMODE(os.stat(target / "db" / "password").st_mode) == 0o440
    assert (target / "..data").is_symlink() and list(versions) == ["db-password"]

    for ns, sa in (("ns-a", "other"), ("ns-b", "app")):
        refused = node_world.pod(ns, sa)
        target = tmp_path / f"{ns}-{sa}"
        target.mkdir()
        with pytest.raises(grpc.RpcError) as err:
            csi.mount(refused, "app-secrets", target)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"sealed for ns-a:app; the token is for {ns}:{sa}" in details(err.value)
        assert VALUE.decode() not in details(err.value) and list(target.iterdir()) == []


def _post(url: str, ca: Path, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=10
    )
    conn.request("POST", "/mutate", body=json.dumps(doc), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


def _admission(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": gvk,
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def _app_pod(sa: str, sealed: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"web-{uuid.uuid4().hex[:6]}",
            "annotations": {"kubeshield.io/inject": "true", "kubeshield.io/secret-db-password": sealed},
        },
        "spec": {
            "serviceAccountName": sa,
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "web", "image": "nginx:1.27"}],
        },
    }


def _run_init_container(
    node_world: NodeWorld, pod: dict[str, Any], root: Path
) -> subprocess.CompletedProcess[str]:
    """Play the kubelet for the injected pod: fill its volumes, then run kubeshield-init's command."""
    spec = pod["spec"]
    (init,) = [c for c in spec["initContainers"] if c["name"] == "kubeshield-init"]
    (inputs,) = [v for v in spec["volumes"] if v["name"] == "kubeshield-inputs"]
    secrets_mount = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "kubeshield-secrets")
    inputs_dir, out_dir = root / "inputs", root / "secrets"
    (inputs_dir / "sealed").mkdir(parents=True)
    out_dir.mkdir()
    for source in inputs["projected"]["sources"]:
        if "serviceAccountToken" in source:  # the kubelet's TokenRequest, bound to this pod
            tok = source["serviceAccountToken"]
            (inputs_dir / tok["path"]).write_text(
                node_world.token(pod, tok["audience"], tok["expirationSeconds"])
            )
        for item in source.get("downwardAPI", {}).get("items", []):
            key = item["fieldRef"]["fieldPath"].split("['", 1)[1].rstrip("']")
            (inputs_dir / item["path"]).write_text(pod["metadata"]["annotations"][key])
    args = [
        a.replace(INPUTS_PATH, str(inputs_dir)).replace(secrets_mount, str(out_dir)) for a in init["args"]
    ]
    env = {"PATH": os.environ["PATH"], **{e["name"]: e["value"] for e in init.get("env", [])}}
    return subprocess.run(
        [KUBESHIELD, *init["command"][1:], *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_through_the_injector(node_world: NodeWorld, sealed: str, tmp_path: Path) -> None:
    cert = node_world.ca.issue("injector", ips=("127.0.0.1",), server=True)
    config = InjectorConfig(
        image="ghcr.io/kubeshield/kubeshield:0.1.0",
        release_url=node_world.release_url,
        release_ca_pem=node_world.ca.path.read_text(),
    )
    webhook = InjectorServer(config, listen="127.0.0.1:0", tls=ServerTLS(cert.cert, cert.key)).start()
    try:
        pod = _app_pod("app", sealed)
        status, review = _post(webhook.url, node_world.ca.path, _admission(pod, "ns-a"))
        assert status == 200 and review["response"]["allowed"] is True
        patch = json.loads(base64.b64decode(review["response"]["patch"]))
        created = node_world.admin.create(jsonpatch.apply_patch(copy.deepcopy(pod), patch), namespace="ns-a")
        done = _run_init_container(node_world, created, tmp_path / "app")
        assert done.returncode == 0, done.stderr
        written = tmp_path / "app" / "secrets" / "db-password"
        assert written.read_bytes() == VALUE and stat.S_IMODE(os.stat(written).st_mode) == 0o400
        assert VALUE.decode() not in done.stdout + done.stderr

        for ns, sa in (("ns-a", "other"), ("ns-b", "app")):
            # the webhook already refuses the pod at admission ...
            status, review = _post(webhook.url, node_world.ca.path, _admission(_app_pod(sa, sealed), ns))
            assert status == 200 and review["response"]["allowed"] is False
            assert (
                f"sealed for ns-a:app, but the pod runs as {ns}:{sa}"
                in review["response"]["status"]["message"]
            )
            # ... and a pod that got the init container some other way is refused by the release service
            other = _app_pod(sa, sealed)
            other["metadata"]["annotations"]["kubeshield.io/secret-db-password"] = node_world.seal(
                b"x", ns, sa
            )
            _status, own = _post(webhook.url, node_world.ca.path, _admission(other, ns))
            injected = jsonpatch.apply_patch(other, json.loads(base64.b64decode(own["response"]["patch"])))
            injected["metadata"]["annotations"]["kubeshield.io/secret-db-password"] = (
                sealed  # swapped in later
            )
            created = node_world.admin.create(injected, namespace=ns)
            done = _run_init_container(node_world, created, tmp_path / f"{ns}-{sa}")
            assert done.returncode == 1
            expected = f"objects[0] (db-password): sealed for ns-a:app; the token is for {ns}:{sa}"
            assert f"release refused (403): {expected}" in done.stderr
            assert list((tmp_path / f"{ns}-{sa}" / "secrets").iterdir()) == []
    finally:
        webhook.shutdown()
