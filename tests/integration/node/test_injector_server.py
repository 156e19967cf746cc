"""The injector webhook over HTTPS: malformed requests get an HTTP error, refusals an AdmissionReview with
allowed: false, and the server keeps answering; its metrics count outcomes only."""

from __future__ import annotations

import http.client
import json
import ssl
import uuid

import pytest

from kubeshield.node.injector.mutate import InjectorConfig
from kubeshield.node.injector.webhook import InjectorServer
from kubeshield.node.settings import ServerTLS
from tests.integration.node.conftest import NodeWorld


@pytest.fixture
def webhook(node_world: NodeWorld):
    cert = node_world.ca.issue("webhook", ips=("127.0.0.1",), server=True)
    config = InjectorConfig(image="img", release_url=node_world.release_url)
    server = InjectorServer(config, listen="127.0.0.1:0", tls=ServerTLS(cert.cert, cert.key)).start()
    yield server
    server.shutdown()


def _call(
    server: InjectorServer, ca, method: str, path: str, body: bytes = b"", ctype: str = "application/json"
):
    host, port = server.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=10
    )
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _review(kind: str, api_version: str = "admission.k8s.io/v1") -> bytes:
    gvk = {"group": "" if kind == "Pod" else "apps", "version": "v1", "kind": kind}
    return json.dumps(
        {
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": gvk,
                "operation": "CREATE",
                "namespace": "ns-a",
                "object": {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            },
        }
    ).encode()


def test_webhook_http_edges(node_world: NodeWorld, webhook: InjectorServer) -> None:
    ca = node_world.ca.path
    status, body = _call(webhook, ca, "POST", "/mutate", _review("Pod", "admission.k8s.io/v1beta1"))
    assert status == 400 and b"admissionReviewVersions: [v1]" in body
    assert _call(webhook, ca, "POST", "/mutate", b"{}", ctype="text/plain")[0] == 415
    assert _call(webhook, ca, "POST", "/mutate", b"not json")[0] == 400
    assert _call(webhook, ca, "GET", "/mutate")[0] == 405
    status, body = _call(webhook, ca, "POST", "/mutate", _review("Deployment"))
    answer = json.loads(body)["response"]
    assert status == 200 and answer["allowed"] is False and "Pods only" in answer["status"]["message"]
    status, body = _call(webhook, ca, "POST", "/mutate", _review("Pod"))  # not annotated: left alone
    assert status == 200 and json.loads(body)["response"]["allowed"] is True
    status, body = _call(webhook, ca, "GET", "/metrics")
    text = body.decode()
    assert 'kubeshield_node_injections_total{outcome="bad-request"} 1.0' in text
    assert 'kubeshield_node_injections_total{outcome="refused"} 1.0' in text
    assert 'kubeshield_node_injections_total{outcome="skipped"} 1.0' in text
