"""Real kubectl v1.35 through ``LocalProxy`` to the Kubernetes API stand-in: get, list, watch (``get -w``),
server-side apply, delete, exec and port-forward (the upgrade splice, over WebSocket and SPDY), and the
refusals kubectl prints (wrong bearer, untrusted apiserver, a body over the limit); redaction as kubectl
shows it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.access.audit import AuditLog
from kubeshield.access.credential import ClusterCredential
from kubeshield.access.redact import DATA_MARKER
from tests.support.access_kubectl import EchoServer, Lines, echo_through, forwarded_port, stop
from tests.support.access_proxy import (
    ProxyThread,
    ServingPKI,
    new_bearer,
    proxy_kubeconfig,
    standin_credential,
)
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi import fixtures as _kubeapi_fixtures
from tests.support.kubeapi.fixtures import Kubectl

kube_api = _kubeapi_fixtures.kube_api  # the stand-in fixtures, in this module only
kube_ns = _kubeapi_fixtures.kube_ns
kubectl = _kubeapi_fixtures.kubectl

DEADLINE = 60.0
TRANSPORTS = {
    "websocket": ({}, "GET"),
    "spdy": (
        {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"},
        "POST",
    ),
}


@pytest.fixture(scope="module")
def pki() -> ServingPKI:
    return ServingPKI.make()


@pytest.fixture(scope="module")
def alice(kube_api: KubeAPI) -> ClusterCredential:
    return standin_credential(kube_api, user="alice", groups=("system:masters",))


@pytest.fixture
def bearer() -> bytes:
    return new_bearer()


@pytest.fixture
def proxy(alice: ClusterCredential, bearer: bytes, pki: ServingPKI) -> Iterator[ProxyThread]:
    with ProxyThread(credential=lambda: alice, bearer=bearer, pki=pki) as running:
        yield running


@pytest.fixture
def config(proxy: ProxyThread, pki: ServingPKI, bearer: bytes, kube_ns: str, tmp_path: Path) -> Path:
    return proxy_kubeconfig(
        tmp_path / "proxy.kubeconfig",
        url=proxy.url,
        ca_pem=pki.ca_pem,
        token=bearer.decode(),
        namespace=kube_ns,
    )


def test_get_list_apply_and_delete_through_the_proxy(
    kubectl: Kubectl, config: Path, kube_api: KubeAPI, kube_ns: str, tmp_path: Path
) -> None:
    kubectl.run("create", "configmap", "plain", "--from-literal=k=v", kubeconfig=config)
    got = json.loads(kubectl.run("get", "configmap", "plain", "-o", "json", kubeconfig=config).stdout)
    assert got["data"] == {"k": "v"}
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  labels: {app: web}\ndata:\n  a: '1'\n"
    )
    out = kubectl.run("apply", "--server-side", "-f", str(manifest), kubeconfig=config).stdout
    assert "serverside-applied" in out
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  labels: {app: web}\ndata:\n  a: '2'\n"
    )
    kubectl.run("apply", "--server-side", "-f", str(manifest), kubeconfig=config)
    listed = kubectl.run("get", "configmaps", "-l", "app=web", "-o", "name", kubeconfig=config).stdout.split()
    assert listed == ["configmap/applied"]
    stored = kube_api.store.get(kube_api.store.type_of("", "v1", "configmaps"), kube_ns, "applied")
    assert stored["data"] == {"a": "2"}
    assert any(m.get("operation") == "Apply" for m in stored["metadata"].get("managedFields", []))
    table = kubectl.run("get", "configmaps", kubeconfig=config).stdout
    assert "applied" in table and "plain" in table
    kubectl.run("delete", "configmap", "plain", "applied", kubeconfig=config)
    assert kubectl.run("get", "configmaps", "-o", "name", kubeconfig=config).stdout.strip() == ""
    # the apiserver saw the credential's user, never the proxy's bearer
    assert {r.user for r in kube_api.requests if r.path.startswith(f"/api/v1/namespaces/{kube_ns}/")} == {
        "alice"
    }


def test_get_watch_streams_through_the_proxy(
    kubectl: Kubectl, config: Path, kube_api: KubeAPI, kube_ns: str
) -> None:
    rtype = kube_api.store.type_of("", "v1", "configmaps")
    before = kube_api.open_watches()
    watch = kubectl.popen("get", "configmaps", "-w", "-o", "name", kubeconfig=config)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            lines.put(line.strip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while kube_api.open_watches() <= before:
            assert time.monotonic() < deadline, "kubectl's watch did not reach the stand-in"
            assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
            time.sleep(0.05)
        names = [f"w-{i}" for i in range(5)]
        for name in names:
            kube_api.store.create(rtype, kube_ns, {"metadata": {"name": name}})
        seen: list[str] = []
        while len(seen) < len(names):
            seen.append(lines.get(timeout=DEADLINE))
        assert seen == [f"configmap/{n}" for n in names]
    finally:
        watch.terminate()
        watch.wait(30)
        reader.join(30)
        for stream in (watch.stdout, watch.stderr):
            if stream is not None:
                stream.close()
    deadline = time.monotonic() + DEADLINE
    while kube_api.open_watches() > before:  # kubectl gone: its upstream watch ends too
        assert time.monotonic() < deadline, "the watch of a terminated kubectl stayed open upstream"
        time.sleep(0.05)


def test_kubectl_with_a_wrong_bearer_is_refused(
    kubectl: Kubectl, proxy: ProxyThread, pki: ServingPKI, kube_ns: str, tmp_path: Path
) -> None:
    config = proxy_kubeconfig(
        tmp_path / "wrong.kubeconfig", url=proxy.url, ca_pem=pki.ca_pem, token="not-the-secret-" * 3
    )
    done = kubectl.run("get", "configmaps", "-n", kube_ns, kubeconfig=config, check=False)
    assert done.returncode == 1
    print(done.stderr)
    assert "You must be logged in to the server" in done.stderr


def test_kubectl_sees_why_an_untrusted_apiserver_is_refused(
    kubectl: Kubectl, kube_api: KubeAPI, pki: ServingPKI, bearer: bytes, tmp_path: Path
) -> None:
    cred = standin_credential(kube_api, user="gina", ca_pem=ServingPKI.make("not-the-cluster-ca").ca_pem)
    with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
        config = proxy_kubeconfig(tmp_path / "kc", url=proxy.url, ca_pem=pki.ca_pem, token=bearer.decode())
        done = kubectl.run("get", "--raw", "/api/v1/namespaces", kubeconfig=config, check=False)
    assert done.returncode == 1
    assert "the apiserver's certificate is not trusted" in done.stderr
    assert "PRIVATE KEY" not in done.stderr


def test_kubectl_sees_a_body_over_the_limit_refused(
    kubectl: Kubectl, alice: ClusterCredential, pki: ServingPKI, bearer: bytes, kube_ns: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "big.json"
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "big"},
                "data": {"k": "x" * 200_000},
            }
        )
    )
    with ProxyThread(credential=lambda: alice, bearer=bearer, pki=pki, max_request_bytes=100_000) as proxy:
        config = proxy_kubeconfig(
            tmp_path / "kc", url=proxy.url, ca_pem=pki.ca_pem, token=bearer.decode(), namespace=kube_ns
        )
        done = kubectl.run("create", "-f", str(manifest), kubeconfig=config, check=False)
        assert done.returncode == 1
        assert "larger than the limit of 100000 bytes" in done.stderr
        # and the proxy keeps serving
        assert kubectl.run("get", "configmaps", "-o", "name", kubeconfig=config).returncode == 0


def test_kubectl_sees_redacted_secrets_and_the_reads_are_audited(
    kubectl: Kubectl, alice: ClusterCredential, pki: ServingPKI, bearer: bytes, kube_ns: str, tmp_path: Path
) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log:
        with ProxyThread(
            credential=lambda: alice, bearer=bearer, pki=pki, audit=log, redact_secrets=True
        ) as proxy:
            config = proxy_kubeconfig(
                tmp_path / "kc", url=proxy.url, ca_pem=pki.ca_pem, token=bearer.decode(), namespace=kube_ns
            )
            kubectl.run(
                "create", "secret", "generic", "db", "--from-literal=password=hunter2", kubeconfig=config
            )
            shown = json.loads(kubectl.run("get", "secret", "db", "-o", "json", kubeconfig=config).stdout)
            table = kubectl.run("get", "secrets", kubeconfig=config).stdout
            # the reveal step with plain kubectl: the proxy URL with the reveal prefix
            revealed = kubectl.run(
                "--server",
                proxy.url + "/kubeshield/reveal",
                "get",
                "secret",
                "db",
                "-o",
                "jsonpath={.data.password}",
                kubeconfig=config,
            ).stdout
    assert shown["data"] == {"password": DATA_MARKER}
    assert "db" in table
    assert base64.b64decode(revealed) == b"hunter2"
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["verb"], e["name"], e["status"], e["revealed"]) for e in lines] == [
        ("create", "", 201, False),
        ("get", "db", 200, False),
        ("list", "", 200, False),
        ("get", "db", 200, True),
    ]
    assert "hunter2" not in (tmp_path / "audit.jsonl").read_text()
    assert subprocess.run(["grep", "-r", "aHVudGVyMg", str(tmp_path)], capture_output=True).returncode == 1


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_exec_and_port_forward_through_the_proxy(
    kubectl: Kubectl, config: Path, kube_api: KubeAPI, kube_ns: str, transport: str
) -> None:
    env, method = TRANSPORTS[transport]
    pod = kube_api.pods.run(kube_ns, "shell")
    try:
        (pod.directory / "motd").write_text("through the proxy\n")
        assert kubectl.run("exec", "shell", "--", "cat", "motd", kubeconfig=config, env=env).stdout == (
            "through the proxy\n"
        )
        failed = kubectl.run(
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
            kubeconfig=config,
            env=env,
            check=False,
        )
        assert (failed.returncode, failed.stdout) == (3, "out\n")
        assert failed.stderr.startswith("err\n")
        payload = os.urandom(256 * 1024).hex()  # 512 KiB each way: many frames through the splice
        digest = kubectl.run(
            "exec", "-i", "shell", "--", "sha256sum", kubeconfig=config, env=env, input=payload
        )
        assert digest.stdout.split()[0] == hashlib.sha256(payload.encode()).hexdigest()
    finally:
        kube_api.pods.delete(kube_ns, "shell")
    with EchoServer() as echo:
        kube_api.pods.run(kube_ns, "web", ports={8080: echo.port})
        try:
            proc = kubectl.popen("port-forward", "pod/web", ":8080", kubeconfig=config, env=env)
            lines = Lines(proc.stdout)
            try:
                port = forwarded_port(lines)
                big = os.urandom(128 * 1024)
                assert echo_through(port, b"ping") == b"ping"
                assert echo_through(port, big) == big
            finally:
                stop(proc, lines)
        finally:
            kube_api.pods.delete(kube_ns, "web")
    upgrades = {
        r.method
        for r in list(kube_api.requests)
        if r.path
        in (
            f"/api/v1/namespaces/{kube_ns}/pods/shell/exec",
            f"/api/v1/namespaces/{kube_ns}/pods/web/portforward",
        )
    }
    assert upgrades == {method}


def test_kubectl_as_impersonates_through_the_proxy(
    kubectl: Kubectl, config: Path, kube_api: KubeAPI, kube_ns: str
) -> None:
    kubectl.run("get", "configmaps", "--as", "carol", "--as-group", "dev", kubeconfig=config)
    users = {r.user for r in kube_api.requests if r.path == f"/api/v1/namespaces/{kube_ns}/configmaps"}
    assert users == {"carol"}
