"""One node world for the session: the Kubernetes API stand-in (real HTTPS, TokenReview of real signed,
pod-bound ServiceAccount JWTs), namespaces ns-a and ns-b, a local keyring wrapping the node sealing key,
and the release server over HTTPS talking to the stand-in as its own user."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshield.errors import KubeAlreadyExists
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kube import KubeClient, resources
from kubeshield.node.identity import Binding, Identity, parse_selector
from kubeshield.node.kube_link import pod_lookup
from kubeshield.node.metrics import NodeMetrics
from kubeshield.node.release_http import ReleaseServer
from kubeshield.node.sealing_keys import SealingKeyFile, SealingKeys
from kubeshield.node.settings import NodeConfig, load_node_config
from kubeshield.node.wiring import build_release_service
from tests.support.kubeapi._server import KubeAPI
from tests.support.kubeapi.fixtures import kube_api  # noqa: F401
from tests.support.tls import CA

SPC_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "secretproviderclasses.secrets-store.csi.x-k8s.io"},
    "spec": {
        "group": "secrets-store.csi.x-k8s.io",
        "scope": "Namespaced",
        "names": {
            "plural": "secretproviderclasses",
            "singular": "secretproviderclass",
            "kind": "SecretProviderClass",
        },
        "versions": [
            {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {"type": "object"}}}
        ],
    },
}


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class NodeWorld:
    api: KubeAPI
    admin: KubeClient
    workdir: Path
    ca: CA
    backend: LocalKeyBackend
    keys: SealingKeys
    config_doc: dict[str, Any]
    config_path: Path
    config: NodeConfig
    release: ReleaseServer
    metrics: NodeMetrics

    @property
    def release_url(self) -> str:
        return self.release.url

    def pod(
        self, namespace: str, sa: str, *, labels: dict[str, str] | None = None, **spec: Any
    ) -> dict[str, Any]:
        """A running pod of ``namespace:sa`` in the stand-in (the ServiceAccount made when missing)."""
        try:
            self.admin.create(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}, namespace=namespace
            )
        except KubeAlreadyExists:
            pass
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{sa}-{secrets.token_hex(3)}", "labels": labels or {}},
            "spec": {
                "serviceAccountName": sa,
                "containers": [{"name": "app", "image": "nginx:1.27"}],
                **spec,
            },
        }
        return self.admin.create(body, namespace=namespace)

    def token(self, pod: dict[str, Any], audience: str = "kubeshield", seconds: int = 600) -> str:
        """What the kubelet gets for a projected token: a TokenRequest bound to the pod."""
        meta = pod["metadata"]
        token, _ = self.admin.create_token(
            pod["spec"]["serviceAccountName"],
            namespace=meta["namespace"],
            audiences=[audience],
            expiration_seconds=seconds,
            bound_pod=(meta["name"], meta["uid"]),
        )
        return token

    def seal(
        self, value: bytes, namespace: str, sa: str, *, audience: str | None = None, selector: str = ""
    ) -> str:
        return self.keys.seal(
            value, binding=Binding(Identity(namespace, sa), audience, parse_selector(selector))
        )

    def spc(
        self, namespace: str, name: str, parameters: dict[str, str], provider: str = "kubeshield"
    ) -> None:
        body = {
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": name},
            "spec": {"provider": provider, "parameters": parameters},
        }
        try:
            self.admin.create(body, namespace=namespace)
        except KubeAlreadyExists:
            self.admin.delete(resources.SECRET_PROVIDER_CLASSES, name, namespace=namespace)
            self.admin.create(body, namespace=namespace)


@pytest.fixture(scope="session")
def node_world(kube_api: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:  # noqa: F811
    work = tmp_path_factory.mktemp("node")
    admin = KubeClient.from_kubeconfig(kube_api.admin_kubeconfig)
    for ns in ("ns-a", "ns-b"):
        try:
            admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        except KubeAlreadyExists:
            pass
    try:
        admin.create(SPC_CRD)
    except KubeAlreadyExists:
        pass
    ca = CA(work / "pki")
    server_cert = ca.issue("release", ips=("127.0.0.1",), server=True)
    (work / "pass").write_text("correct horse battery staple\n")
    (work / "pass").chmod(0o600)
    backend = LocalKeyBackend.create(path=work / "keyring", passphrase=b"correct horse battery staple")
    SealingKeyFile(work / "sealing.json").create(backend)
    release_kubeconfig = kube_api.kubeconfig(work / "release.kubeconfig", user="kubeshield-release")
    doc: dict[str, Any] = {
        "keys": {
            "backend": "local",
            "local": {"keyring": str(work / "keyring"), "passphraseFile": str(work / "pass")},
        },
        "node": {
            "sealingKeys": str(work / "sealing.json"),
            "audience": "kubeshield",
            "release": {
                "listen": "127.0.0.1:8443",
                "tls": {"cert": str(server_cert.cert), "key": str(server_cert.key)},
                "tokenReviewCacheTtl": "2s",
                "ratePerClient": 10000,
                "ratePerIdentity": 10000,
                "burst": 10000,
            },
            "csi": {"mode": "release", "hmacKeyFile": str(work / "hmac.key")},
        },
    }
    config = load_node_config(write_config(work / "node.yaml", doc))
    release_kube = KubeClient.from_kubeconfig(release_kubeconfig)
    metrics = NodeMetrics()
    keys = SealingKeyFile(work / "sealing.json").open(backend)
    service = build_release_service(
        config,
        reviewer=release_kube,
        pods=pod_lookup(release_kube),
        access=release_kube,
        keys=keys,
        metrics=metrics,
    )
    release = ReleaseServer(service, config.node.release, listen="127.0.0.1:0").start()
    doc["node"]["client"] = {"url": release.url, "caFile": str(ca.path)}
    config_path = write_config(work / "node.yaml", doc)
    world = NodeWorld(
        api=kube_api,
        admin=admin,
        workdir=work,
        ca=ca,
        backend=backend,
        keys=keys,
        config_doc=doc,
        config_path=config_path,
        config=load_node_config(config_path),
        release=release,
        metrics=metrics,
    )
    try:
        yield world
    finally:
        release.shutdown()
        release_kube.close()
        admin.close()
        shutil.rmtree(work, ignore_errors=True)
