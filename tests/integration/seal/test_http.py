"""The controller's HTTP API and metrics over real HTTP on 127.0.0.1 (formats.md section 1.5)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kubeshield.keys.testing import InMemoryBackend
from kubeshield.seal.certs import pem_of
from kubeshield.seal.http import ApiServer, MetricsServer, RateLimiter, SealMetrics
from kubeshield.seal.objects import Document, parse_secret
from kubeshield.seal.registry import Registry
from kubeshield.seal.sealing import seal_secret
from kubeshield.seal.service import SealService


def _call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(
        url, data=body, method="POST" if body is not None else "GET", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture
def api(tmp_path: Path):
    registry = Registry(tmp_path / "seal-keys.json", backend=InMemoryBackend(), key_size=2048)
    registry.init()
    service = SealService(registry)
    metrics = SealMetrics()
    server = ApiServer(
        "127.0.0.1:0", service=service, metrics=metrics, limiter=RateLimiter(rate=1000.0, burst=1000)
    ).start()
    metrics_server = MetricsServer("127.0.0.1:0", service=service, metrics=metrics).start()
    try:
        yield service, f"http://127.0.0.1:{server.port}", f"http://127.0.0.1:{metrics_server.port}", registry
    finally:
        server.stop()
        metrics_server.stop()


def _sealed(service: SealService, name: str = "db") -> dict:
    doc = Document(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "prod"},
            "stringData": {"password": "hunter2"},
        },
        "t",
    )
    return seal_secret(service.keys.latest.public_key, parse_secret(doc))


def test_endpoints(api) -> None:
    service, base, metrics_url, registry = api
    assert _call(base + "/healthz")[:2] == (200, b"ok\n")
    code, pem, headers = _call(base + "/v1/cert.pem")
    assert code == 200 and headers["Content-Type"] == "application/x-pem-file"
    assert pem == pem_of(registry.load()[-1].certificate)
    good = _sealed(service)
    assert _call(base + "/v1/verify", json.dumps(good).encode())[0] == 200
    moved = {**good, "metadata": {**good["metadata"], "name": "other"}}
    code, body, _ = _call(base + "/v1/verify", json.dumps(moved).encode())
    assert code == 409 and body == b""
    code, body, _ = _call(base + "/v1/verify", b'{"kind": "SealedSecret"}')
    assert code == 400 and b"expected apiVersion bitnami.com/v1alpha1" in body
    assert _call(base + "/v1/verify")[0] == 405
    # rotate: re-encrypted with the newest key, same scope, template kept
    registry.rotate()
    service.reload()
    code, body, headers = _call(base + "/v1/rotate", json.dumps(good).encode())
    assert code == 200 and headers["Content-Type"] == "application/json"
    rotated = json.loads(body)
    assert rotated["metadata"]["annotations"]["kubeshield.io/sealing-key"] == service.keys.latest.fingerprint
    assert rotated["spec"]["template"] == good["spec"]["template"]
    assert rotated["spec"]["encryptedData"]["password"] != good["spec"]["encryptedData"]["password"]
    assert _call(base + "/v1/verify", json.dumps(rotated).encode())[0] == 200
    assert _call(base + "/v1/rotate", json.dumps(moved).encode())[0] == 409
    assert _call(base + "/nope")[0] == 404
    # metrics: outcomes, paths and codes only; never a name or a value
    code, text, _ = _call(metrics_url + "/metrics")
    assert code == 200
    assert b"kubeshield_seal_keys 2.0" in text
    assert b'kubeshield_seal_http_requests_total{code="409",path="/v1/verify"} 1.0' in text
    assert b"hunter2" not in text and b"prod" not in text and base64.b64encode(b"hunter2") not in text


def test_verify_and_rotate_are_rate_limited(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.json", backend=InMemoryBackend(), key_size=2048)
    registry.init()
    service = SealService(registry)
    clock = [1000.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: clock[0])
    server = ApiServer("127.0.0.1:0", service=service, metrics=SealMetrics(), limiter=limiter).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        body = json.dumps(_sealed(service)).encode()
        codes = [_call(base + "/v1/verify", body)[0] for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # one plus a burst of two, then refused
        code, _, headers = _call(base + "/v1/verify", body)
        assert code == 429 and int(headers["Retry-After"]) >= 1
        # another client (X-Forwarded-For) and another path have their own allowance
        assert _call(base + "/v1/verify", body, {"X-Forwarded-For": "10.0.0.9"})[0] == 200
        assert _call(base + "/v1/rotate", body)[0] == 200
        assert _call(base + "/v1/cert.pem")[0] == 200  # not limited
        clock[0] += 1.0  # the clock is injected: one interval later one more request passes
        assert _call(base + "/v1/verify", body)[0] == 200
    finally:
        server.stop()


def test_cli_talks_to_the_controller_api(api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubeshield.cli import main

    service, base, _metrics, registry = api
    (tmp_path / "s.json").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db", "namespace": "prod"},
                "stringData": {"password": "hunter2"},
            }
        )
    )
    assert main(["seal", "--fetch-cert", "--controller-url", base]) == 0
    assert capsys.readouterr().out.encode() == pem_of(registry.load()[-1].certificate)
    sealed = tmp_path / "sealed.yaml"
    assert main(["seal", "--controller-url", base, "-f", str(tmp_path / "s.json"), "-w", str(sealed)]) == 0
    assert main(["seal", "--validate", "--controller-url", base, "-f", str(sealed)]) == 0
    registry.rotate()
    service.reload()
    assert main(["seal", "--re-encrypt", "--controller-url", base, "-f", str(sealed)]) == 0
    assert service.keys.latest.fingerprint in sealed.read_text()
    text = sealed.read_text().replace("name: db", "name: other")
    (tmp_path / "moved.yaml").write_text(text)
    capsys.readouterr()
    assert main(["seal", "--validate", "--controller-url", base, "-f", str(tmp_path / "moved.yaml")]) == 1
    assert "unable to decrypt sealed secret: other" in capsys.readouterr().err
