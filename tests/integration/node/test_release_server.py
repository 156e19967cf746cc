"""The release server over HTTPS against the Kubernetes API stand-in: every kind of bad token and value is
refused with its status and a clear message, the server keeps serving, mTLS, sealing with RBAC, metrics."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeshield.errors import BackendUnavailable
from kubeshield.kube import resources
from kubeshield.node.audit import AUDIT_LOGGER
from kubeshield.node.client import ReleaseClient, ReleaseRefused
from kubeshield.node.release_http import ReleaseServer
from kubeshield.node.sealed import parse_sealed
from kubeshield.node.settings import ReleaseSettings, ServerTLS
from tests.integration.node.conftest import NodeWorld


@pytest.fixture
def client(node_world: NodeWorld):
    c = ReleaseClient(node_world.release_url, ca_file=node_world.ca.path)
    yield c
    c.close()


def _refused(client: ReleaseClient, token: str, objects) -> ReleaseRefused:
    with pytest.raises(ReleaseRefused) as err:
        client.release(token, objects)
    return err.value


def test_bad_tokens(node_world: NodeWorld, client: ReleaseClient) -> None:
    api = node_world.api
    sealed = node_world.seal(b"v", "ns-a", "app")
    pod = node_world.pod("ns-a", "app")
    meta = pod["metadata"]
    bound = (meta["name"], meta["uid"])
    assert client.release(node_world.token(pod), [("a", sealed)]).values == {"a": b"v"}
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "wrong audience": (node_world.token(pod, audience="vault"), "token audiences"),
        "api audience": (api.mint_sa_token("ns-a", "app", pod=bound), "token audiences"),
        "expired": (
            api.mint_sa_token(
                "ns-a", "app", audiences=["kubeshield"], pod=bound, expiration_seconds=600, issued_at=past
            ),
            "has expired",
        ),
        "wrong signer": (
            api.mint_sa_token("ns-a", "app", audiences=["kubeshield"], pod=bound, signing_key=stranger),
            "did not authenticate",
        ),
        "not pod-bound": (api.mint_sa_token("ns-a", "app", audiences=["kubeshield"]), "not bound to a pod"),
        "garbage": ("not-a-jwt", "did not authenticate"),
    }
    for what, (token, message) in cases.items():
        err = _refused(client, token, [("a", sealed)])
        assert err.status == 401 and message in str(err), (what, str(err))
        assert token not in str(err)
    # a deleted pod's token no longer authenticates; neither does it once the pod is re-created
    gone = node_world.pod("ns-a", "app")
    token = node_world.token(gone)
    node_world.admin.delete(resources.PODS, gone["metadata"]["name"], namespace="ns-a")
    assert "deleted or recreated" in str(_refused(client, token, [("a", sealed)]))
    recreated = node_world.admin.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": gone["metadata"]["name"]},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "x"}]},
        },
        namespace="ns-a",
    )
    assert recreated["metadata"]["uid"] != gone["metadata"]["uid"]
    assert _refused(client, token, [("a", sealed)]).status == 401
    # and the server still serves good requests
    assert client.release(node_world.token(pod), [("a", sealed)]).values == {"a": b"v"}


def test_bad_values(node_world: NodeWorld, client: ReleaseClient, tmp_path: Path) -> None:
    pod = node_world.pod("ns-a", "app", labels={"tier": "front"})
    token = node_world.token(pod)
    good = node_world.seal(b"v", "ns-a", "app")
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    from kubeshield.keys.testing import InMemoryBackend
    from kubeshield.node.sealing_keys import SealingKeyFile

    other = InMemoryBackend()
    SealingKeyFile(tmp_path / "o.json").create(other)
    SealingKeyFile(tmp_path / "o.json").rotate(other)
    SealingKeyFile(tmp_path / "o.json").rotate(other)
    unknown_version = (
        SealingKeyFile(tmp_path / "o.json").public_key().seal(b"v", binding=parse_sealed(good).binding)
    )
    cases = [
        (
            [("a", node_world.seal(b"v", "ns-a", "other"))],
            403,
            "sealed for ns-a:other; the token is for ns-a:app",
        ),
        ([("a", node_world.seal(b"v", "ns-a", "app", selector="tier=back"))], 403, "does not match"),
        ([("a", node_world.seal(b"v", "ns-a", "app", audience="vault"))], 403, "audience 'vault'"),
        ([("a", good), ("b", tampered)], 400, "objects[1] (b): the sealed value does not open"),
        ([("a", unknown_version)], 400, "key version 3, which is not held here"),
        ([("a", "kubeshield:node:v2:xyz")], 400, "not a kubeshield sealed value"),
    ]
    for objects, status, message in cases:
        err = _refused(client, token, objects)
        assert (err.status, message in str(err)) == (status, True), str(err)
    selected = node_world.seal(b"front", "ns-a", "app", selector="tier=front")
    assert client.release(token, [("a", selected)]).values == {"a": b"front"}


def _raw(url: str, ca: Path, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=10
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def _announce_large_body(url: str, ca: Path, length: int) -> int:
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=10
    )
    try:
        conn.putrequest("POST", "/v1/release")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_http_edges_metrics_and_audit(node_world: NodeWorld, client: ReleaseClient, caplog) -> None:
    url, ca = node_world.release_url, node_world.ca.path
    json_h = {"Content-Type": "application/json"}
    assert _raw(url, ca, "POST", "/v1/release", b"{}", {"Content-Type": "text/plain"})[0] == 415
    assert _raw(url, ca, "POST", "/v1/release", b"[1]", json_h)[0] == 400
    assert _announce_large_body(url, ca, 9 << 20) == 413  # refused from the header, before any body is read
    assert _raw(url, ca, "GET", "/v1/release")[0] == 405
    assert _raw(url, ca, "GET", "/nope")[0] == 404
    status, body, _ = _raw(
        url,
        ca,
        "POST",
        "/v1/release",
        json.dumps({"objects": [{"name": "a", "sealed": "x"}]}).encode(),
        json_h,
    )
    assert status == 400 and b"replyKey: required" in body
    status, body, _ = _raw(url, ca, "GET", "/v1/public-key")
    assert status == 200 and json.loads(body)["kind"] == "KubeshieldNodeSealingPublicKey"
    assert _raw(url, ca, "GET", "/readyz")[0] == 200 and _raw(url, ca, "GET", "/healthz")[0] == 200
    pod = node_world.pod("ns-a", "app")
    token = node_world.token(pod)
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    client.release(token, [("db", node_world.seal(b"metric-value", "ns-a", "app"))])
    status, body, _headers = _raw(url, ca, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and 'kubeshield_node_releases_total{outcome="released"}' in text
    assert "kubeshield_node_token_reviews_total" in text and "ns-a" not in text and token not in text
    line = next(json.loads(r.getMessage()) for r in reversed(caplog.records) if r.name == AUDIT_LOGGER)
    assert (
        line["outcome"] == "released"
        and line["pod"] == pod["metadata"]["name"]
        and line["client"] == "127.0.0.1"
    )
    assert "metric-value" not in caplog.text and token not in caplog.text


def test_rate_limited_with_retry_after(node_world: NodeWorld) -> None:
    from kubeshield.kube import KubeClient
    from kubeshield.node.kube_link import pod_lookup
    from kubeshield.node.wiring import build_release_service

    kube = KubeClient.from_kubeconfig(node_world.api.admin_kubeconfig)
    settings = ReleaseSettings(
        tls=node_world.config.node.release.tls, rate_per_client=1, rate_per_identity=1, burst=1
    )
    config = node_world.config
    import dataclasses

    config = dataclasses.replace(config, node=dataclasses.replace(config.node, release=settings))
    service = build_release_service(
        config, reviewer=kube, pods=pod_lookup(kube), access=None, keys=node_world.keys
    )
    server = ReleaseServer(service, settings, listen="127.0.0.1:0").start()
    try:
        c = ReleaseClient(server.url, ca_file=node_world.ca.path)
        pod = node_world.pod("ns-a", "app")
        sealed = node_world.seal(b"v", "ns-a", "app")
        c.release(node_world.token(pod), [("a", sealed)])
        with pytest.raises(BackendUnavailable, match="429"):
            c.release(node_world.token(pod), [("a", sealed)])
        status, _body, headers = _raw(
            server.url, node_world.ca.path, "POST", "/v1/release", b"{}", {"Content-Type": "application/json"}
        )
        assert status == 429 and int(headers["Retry-After"]) >= 1
        c.close()
    finally:
        server.shutdown()
        kube.close()


def test_mutual_tls_refuses_a_client_without_a_certificate(node_world: NodeWorld) -> None:
    cert = node_world.ca.issue("release-mtls", ips=("127.0.0.1",), server=True)
    settings = ReleaseSettings(tls=ServerTLS(cert.cert, cert.key, node_world.ca.path))
    server = ReleaseServer(node_world.release.service, settings, listen="127.0.0.1:0").start()
    try:
        pod = node_world.pod("ns-a", "app")
        sealed = node_world.seal(b"v", "ns-a", "app")
        anonymous = ReleaseClient(server.url, ca_file=node_world.ca.path)
        with pytest.raises(BackendUnavailable):
            anonymous.release(node_world.token(pod), [("a", sealed)])
        client_cert = node_world.ca.issue("csi-node-1")
        known = ReleaseClient(
            server.url, ca_file=node_world.ca.path, cert=client_cert.cert, key=client_cert.key
        )
        assert known.release(node_world.token(pod), [("a", sealed)]).values == {"a": b"v"}
        known.close()
    finally:
        server.shutdown()


def test_sealing_through_the_server_checks_the_callers_rbac(
    node_world: NodeWorld, client: ReleaseClient
) -> None:
    api = node_world.api
    alice = api.add_token("alice", ("developers",))
    api.deny(user="alice", verb="create", resource="secrets", namespace="ns-b")
    try:
        sealed = client.seal(alice, b"from-alice", namespace="ns-a", service_account="app")
        assert node_world.keys.open(parse_sealed(sealed)) == b"from-alice"
        with pytest.raises(ReleaseRefused) as denied:
            client.seal(alice, b"x", namespace="ns-b", service_account="app")
        assert denied.value.status == 403 and "alice may not create secrets in namespace ns-b" in str(
            denied.value
        )
        with pytest.raises(ReleaseRefused) as unknown:
            client.seal("bogus", b"x", namespace="ns-a", service_account="app")
        assert unknown.value.status == 401
    finally:
        api.clear_denies()
