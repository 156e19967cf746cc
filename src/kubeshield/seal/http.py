"""The controller's HTTP API (``pkg/controller/server.go``) and its Prometheus endpoint.

API listener (``--listen``, default ``:8080``):

===============  ======  ===================  ==================================================
path             method  body                 answers
===============  ======  ===================  ==================================================
``/healthz``     any     -                    ``200 ok\\n`` (text/plain)
``/v1/cert.pem`` GET     -                    ``200`` the current certificate (application/x-pem-file)
``/v1/verify``   POST    SealedSecret JSON    ``200`` unseals, ``409`` does not, ``400`` malformed,
                                              ``429`` rate limited
``/v1/rotate``   POST    SealedSecret JSON    ``200`` + the SealedSecret re-encrypted with the newest
                                              key, ``409`` does not unseal, ``400`` malformed, ``429``
===============  ======  ===================  ==================================================

``/v1/verify`` and ``/v1/rotate`` are decryption oracles, so both are rate limited (GCRA, keyed like
sealed-secrets by path + ``X-Forwarded-For``; ``--rate-limit`` per second, ``--rate-limit-burst``).
Metrics listener (``--metrics-listen``, default ``:8081``): ``/metrics``.

Answers never echo a value: 409 bodies are empty, 400 bodies name the field.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from kubeshield.errors import ConfigError
from kubeshield.seal.errors import SealError, UnsealFailed
from kubeshield.seal.service import SealService

__all__ = ["ApiServer", "MetricsServer", "RateLimiter", "SealMetrics", "parse_listen"]

_MAX_BODY = 1 << 20


def parse_listen(addr: str) -> tuple[str, int]:
    """``0.0.0.0:8080`` / ``[::1]:8080`` / ``:8080`` -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {addr!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class RateLimiter:
    """GCRA (the generic cell rate algorithm, as throttled's): ``rate`` per second, ``burst`` extra."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 0:
            raise ConfigError("--rate-limit must be > 0 and --rate-limit-burst >= 0")
        self._interval = 1.0 / rate
        self._tolerance = self._interval * burst
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, float]:
        """(allowed, seconds to wait before the next allowed request)."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(key, now), now)
            if tat - now > self._tolerance:
                return False, tat - now - self._tolerance
            self._tat[key] = tat + self._interval
            if len(self._tat) > 65536:  # bounded like throttled's memstore
                self._tat = {k: v for k, v in self._tat.items() if v > now}
            return True, 0.0


class SealMetrics:
    """The controller's metrics. Labels hold outcomes, paths and codes only: never a name or value."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.unseal = Counter(
            "kubeshield_seal_unseal", "SealedSecrets reconciled, by outcome", ["outcome"], registry=r
        )
        self.keys = Gauge("kubeshield_seal_keys", "Sealing keys in the registry", registry=r)
        self.key_age = Gauge(
            "kubeshield_seal_newest_key_age_seconds",
            "Age of the newest sealing key (its NotBefore)",
            registry=r,
        )
        self.rsa = Gauge(
            "kubeshield_seal_rsa_operations", "RSA private-key operations tried since start", registry=r
        )
        self.http = Counter(
            "kubeshield_seal_http_requests", "HTTP API requests", ["path", "code"], registry=r
        )
        self.reconcile = Histogram(
            "kubeshield_seal_reconcile_seconds", "Time to reconcile one SealedSecret", registry=r
        )

    def refresh(self, service: SealService) -> None:
        self.keys.set(len(service.keys))
        self.key_age.set(service.newest_key_age())
        self.rsa.set(service.keys.rsa_operations)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class ApiServer:
    """The API listener. ``start()`` serves in a thread; ``stop()`` shuts it down."""

    def __init__(
        self, addr: str, *, service: SealService, metrics: SealMetrics, limiter: RateLimiter
    ) -> None:
        host, port = parse_listen(addr)
        handler = _api_handler(service, metrics, limiter)
        self._server = _Server((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="seal-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MetricsServer:
    def __init__(self, addr: str, *, service: SealService, metrics: SealMetrics) -> None:
        host, port = parse_listen(addr)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    _reply(self, 404, b"not found\n", "text/plain; charset=utf-8")
                    return
                metrics.refresh(service)
                _reply(self, 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="seal-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _reply(
    handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str, **headers: str
) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def _api_handler(
    service: SealService, metrics: SealMetrics, limiter: RateLimiter
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(
            self,
            path: str,
            code: int,
            body: bytes = b"",
            content_type: str = "text/plain; charset=utf-8",
            **headers: str,
        ) -> None:
            metrics.http.labels(path=path, code=str(code)).inc()
            _reply(self, code, body, content_type, **headers)

        def _route(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                self._answer(path, 200, b"ok\n")
                return
            if path == "/v1/cert.pem":
                if self.command not in ("GET", "HEAD"):
                    self._answer(path, 405, b"method not allowed\n", Allow="GET")
                    return
                try:
                    pem = service.cert_pem()
                except LookupError:
                    self._answer(path, 500, b"cannot get certificate\n")
                    return
                self._answer(path, 200, pem, "application/x-pem-file")
                return
            if path not in ("/v1/verify", "/v1/rotate"):
                self._answer("other", 404, b"not found\n")
                return
            if self.command != "POST":
                self._answer(path, 405, b"method not allowed\n", Allow="POST")
                return
            allowed, wait = limiter.allow(path + "\x00" + self.headers.get("X-Forwarded-For", ""))
            if not allowed:
                self._answer(
                    path, 429, b"too many requests\n", **{"Retry-After": str(max(1, round(wait + 0.5)))}
                )
                return
            body = self._body()
            if body is None:
                self._answer(path, 400, b"cannot read the request body\n")
                return
            if path == "/v1/verify":
                result = service.verify(body)
                if result.malformed:
                    self._answer(path, 400, (result.malformed + "\n").encode())
                else:
                    self._answer(path, 200 if result.ok else 409)
                return
            try:
                rotated = service.rotate(body)
            except UnsealFailed:
                self._answer(path, 409)
                return
            except SealError as exc:
                self._answer(path, 400, (str(exc) + "\n").encode())
                return
            self._answer(path, 200, json.dumps(rotated).encode(), "application/json")

        def _body(self) -> bytes | None:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit() or int(length) > _MAX_BODY:
                return None
            return self.rfile.read(int(length))

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _route  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
