"""The probe/metrics HTTP server: /livez never touches the backend; /healthz and /readyz do."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kubeshield.errors import BackendUnavailable, ConfigError
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kms.http import HealthServer, parse_host_port
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.service import KMSService


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Serving:
    value = True

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def setup() -> Iterator[tuple[HealthServer, InMemoryBackend, KMSService, Serving]]:
    backend = InMemoryBackend()
    metrics = KMSMetrics()
    service = KMSService(backend, metrics=metrics)
    serving = Serving()
    server = HealthServer("127.0.0.1:0", service=service, metrics=metrics, serving=serving)
    server.start()
    try:
        yield server, backend, service, serving
    finally:
        server.stop()


def test_probes_follow_backend_health(
    setup: tuple[HealthServer, InMemoryBackend, KMSService, Serving],
) -> None:
    server, backend, service, serving = setup
    service.check_health_now()
    assert _get(server.port, "/livez") == (200, "ok\n")
    assert _get(server.port, "/healthz") == (200, "ok\n")
    assert _get(server.port, "/readyz") == (200, "ok\n")
    backend.fail_health = BackendUnavailable("down")
    service.check_health_now()
    calls = backend.wrap_calls
    assert _get(server.port, "/livez") == (200, "ok\n")
    assert backend.wrap_calls == calls  # livez never touches the backend
    code, body = _get(server.port, "/healthz")
    assert code == 503 and "unhealthy" in body
    assert _get(server.port, "/readyz")[0] == 503
    backend.fail_health = None
    service.check_health_now()
    serving.value = False
    assert _get(server.port, "/readyz") == (503, "not serving\n")


def test_metrics_and_404(setup: tuple[HealthServer, InMemoryBackend, KMSService, Serving]) -> None:
    server, _, service, _ = setup
    service.check_health_now()
    code, body = _get(server.port, "/metrics")
    assert code == 200 and "kubeshield_backend_healthy 1.0" in body
    assert _get(server.port, "/nope")[0] == 404


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:8081", ("127.0.0.1", 8081)), ("[::1]:9", ("::1", 9)), (":80", ("0.0.0.0", 80))],
)
def test_parse_host_port(addr: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(addr) == expected


@pytest.mark.parametrize("addr", ["8081", "host:", "host:99999", "host:x"])
def test_parse_host_port_rejects(addr: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(addr)


def test_readiness_checks_fail_only_readyz_with_their_reason() -> None:
    backend = InMemoryBackend()
    metrics = KMSMetrics()
    service = KMSService(backend, metrics=metrics)
    state = {"ok": True}

    def certificate() -> tuple[bool, str]:
        return state["ok"], "TLS serving certificate 'tls.crt' expires at 2030-01-01T00:00:00+00:00"

    def broken() -> tuple[bool, str]:
        raise OSError("stat failed")

    server = HealthServer("127.0.0.1:0", service=service, metrics=metrics, readiness=[certificate])
    server.start()
    try:
        service.check_health_now()
        assert _get(server.port, "/readyz") == (200, "ok\n")
        state["ok"] = False
        code, body = _get(server.port, "/readyz")
        assert code == 503 and body.startswith("not ready: TLS serving certificate") and "expires at" in body
        assert _get(server.port, "/livez") == (200, "ok\n")  # a certificate never restarts the process
        assert _get(server.port, "/healthz") == (200, "ok\n")
    finally:
        server.stop()
    server = HealthServer("127.0.0.1:0", service=service, metrics=metrics, readiness=[broken])
    server.start()
    try:
        code, body = _get(server.port, "/readyz")
        assert code == 503 and "readiness check failed (OSError)" in body  # fail closed, server stays up
        assert _get(server.port, "/livez")[0] == 200
    finally:
        server.stop()
