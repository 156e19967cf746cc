"""The Pod Security webhook over real HTTPS: decisions, refused requests, client-certificate checks, and
the CLI server process (started, asked, stopped by PID)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshield.posture.pss.admission import Admission, StaticNamespaces
from kubeshield.posture.pss.webhook import MAX_BODY, FileNamespaces, WebhookServer
from tests.support.tls import CA, make_ca

P = "pod-security.kubernetes.io/"
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "a", "image": "i", "securityContext": {"privileged": True}}]},
}


def review(ns: str = "team", api_version: str = "admission.k8s.io/v1") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "4b3f-uid",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p",
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": POD,
        },
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca", "webhook-ca")
    server = ca.issue("webhook", dns=("localhost",), ips=("127.0.0.1",), server=True)
    client = ca.issue("kube-apiserver")
    other = make_ca(d / "other", "other-ca")
    return {"ca": ca, "server": server, "client": client, "stranger": other.issue("kube-apiserver")}


def _server(pki: dict[str, Any], **kwargs: Any) -> WebhookServer:
    admission = Admission(namespaces=StaticNamespaces({"team": {P + "enforce": "baseline"}}))
    server = WebhookServer(
        admission, host="127.0.0.1", port=0, cert=pki["server"].cert, key=pki["server"].key, **kwargs
    )
    server.start()
    return server


@pytest.fixture
def plain(pki: dict[str, Any]) -> Iterator[WebhookServer]:
    server = _server(pki)
    yield server
    server.stop()


def _context(ca: CA, client: Any = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def post(
    server: WebhookServer, body: bytes, ctx: ssl.SSLContext, content_type: str = "application/json"
) -> tuple[int, Any]:
    host, port = server.address
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
    try:
        conn.request("POST", "/validate", body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data.startswith(b"{") else data
    finally:
        conn.close()


def test_denies_over_https(plain: WebhookServer, pki: dict[str, Any]) -> None:
    status, body = post(plain, json.dumps(review()).encode(), _context(pki["ca"]))
    assert status == 200
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["response"]["uid"] == "4b3f-uid"
    assert body["response"]["allowed"] is False
    assert body["response"]["status"]["message"].startswith(
        'pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged'
    )


def test_refuses_what_it_cannot_use(plain: WebhookServer, pki: dict[str, Any]) -> None:
    ctx = _context(pki["ca"])
    status, body = post(plain, json.dumps(review(api_version="admission.k8s.io/v1beta1")).encode(), ctx)
    assert status == 400 and "expected apiVersion admission.k8s.io/v1" in body["error"]
    status, body = post(plain, b"{not json", ctx)
    assert status == 400 and body["error"] == "the body is not JSON"
    status, body = post(plain, b"{}", ctx, content_type="text/plain")
    assert status == 415


def test_refuses_huge_bodies_without_reading_them(plain: WebhookServer, pki: dict[str, Any]) -> None:
    host, port = plain.address
    conn = http.client.HTTPSConnection(host, port, context=_context(pki["ca"]), timeout=30)
    conn.putrequest("POST", "/validate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


def test_health(plain: WebhookServer, pki: dict[str, Any]) -> None:
    host, port = plain.address
    conn = http.client.HTTPSConnection(host, port, context=_context(pki["ca"]), timeout=30)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok"
    finally:
        conn.close()


def test_client_certificates_are_required_when_configured(pki: dict[str, Any]) -> None:
    server = _server(pki, client_ca=pki["ca"].path)
    try:
        body = json.dumps(review()).encode()
        status, answer = post(server, body, _context(pki["ca"], pki["client"]))
        assert status == 200 and answer["response"]["allowed"] is False
        for who in (None, pki["stranger"]):  # no certificate; a certificate from another CA
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, OSError)):
                post(server, body, _context(pki["ca"], who))
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_old_tls_is_refused(plain: WebhookServer, pki: dict[str, Any]) -> None:
    ctx = _context(pki["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)):
        post(plain, b"{}", ctx)


def test_namespace_files_are_reread(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(
        yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"}}]}
        )
    )
    lookup = FileNamespaces([path])
    assert lookup.labels("a") == {} and lookup.labels("b") is None
    time.sleep(0.01)
    path.write_text(
        yaml.safe_dump(
            {"kind": "Namespace", "metadata": {"name": "b", "labels": {P + "enforce": "restricted"}}}
        )
    )
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert lookup.labels("b") == {P + "enforce": "restricted"} and lookup.labels("a") is None
    path.write_text("{{ broken")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 20_000_000))
    assert lookup.labels("b") == {P + "enforce": "restricted"}  # the last good copy is kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_server_process(tmp_path: Path, pki: dict[str, Any]) -> None:
    ns = tmp_path / "namespaces.yaml"
    ns.write_text(
        yaml.safe_dump(
            {"kind": "Namespace", "metadata": {"name": "team", "labels": {P + "enforce": "restricted"}}}
        )
    )
    config = tmp_path / "psa.yaml"
    config.write_text(
        "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\n"
        "exemptions: {usernames: [ci-bot]}\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "kubeshield"),
            "posture",
            "pss",
            "webhook",
            f"--listen=127.0.0.1:{port}",
            f"--tls-cert={pki['server'].cert}",
            f"--tls-key={pki['server'].key}",
            f"--namespaces={ns}",
            f"--config={config}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == f"https://127.0.0.1:{port}", proc.stderr.read() if proc.stderr else ""

        class Addr:
            address = ("127.0.0.1", port)

        status, body = post(Addr(), json.dumps(review()).encode(), _context(pki["ca"]))  # type: ignore[arg-type]
        assert (
            status == 200
            and 'violates PodSecurity "restricted:latest"' in body["response"]["status"]["message"]
        )
        exempt = review()
        exempt["request"]["userInfo"]["username"] = "ci-bot"
        status, body = post(Addr(), json.dumps(exempt).encode(), _context(pki["ca"]))  # type: ignore[arg-type]
        assert body["response"]["allowed"] is True and body["response"]["auditAnnotations"] == {
            "exempt": "user"
        }
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        logs = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert code == 0, logs
    assert '"allowed": false' in logs and "privileged" not in logs  # decisions logged, objects never


def test_an_internal_failure_is_answered_500_without_details(pki: dict[str, Any]) -> None:
    class Broken:
        def labels(self, name: str) -> Any:
            raise RuntimeError("secret-looking detail")

    admission = Admission(namespaces=Broken())
    server = WebhookServer(
        admission, host="127.0.0.1", port=0, cert=pki["server"].cert, key=pki["server"].key
    )
    server.start()
    try:
        status, body = post(server, json.dumps(review()).encode(), _context(pki["ca"]))
        assert status == 500 and body == {"error": "internal error"}
    finally:
        server.stop()
