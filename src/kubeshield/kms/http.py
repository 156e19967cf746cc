"""The plugin's small HTTP server for probes and metrics (``--health-addr HOST:PORT``).

* ``/livez``   200 while the process runs. It never touches the key backend, so a KMS outage can never
  make Kubernetes restart the plugin (and throw away caches), kms-contract §7 pitfall 2.
* ``/healthz`` 200 when the last deep backend round trip succeeded and is recent, else 503.
* ``/readyz``  200 when the gRPC server is serving, the backend is healthy *and* every extra readiness
  check passes (e.g. the TLS certificate does not expire within its margin), else 503 with the reason.
* ``/metrics`` Prometheus text exposition of the plugin's own registry.

Bodies are short fixed texts plus the health ``detail`` (which backends keep free of secrets).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from kubeshield.errors import ConfigError
from kubeshield.kms.logging import fields, get_logger
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.service import HealthState

__all__ = ["HealthServer", "HealthSource", "ReadinessCheck", "parse_host_port"]

#: An extra ``/readyz`` condition: ``(ok, why-not)``; it must be cheap and must not raise.
ReadinessCheck = Callable[[], tuple[bool, str]]


class HealthSource(Protocol):
    """What the health endpoints read: the plugin's KMSService, or the relay's replica pool."""

    def is_healthy(self) -> bool: ...

    def last_health(self) -> HealthState | None: ...


_log = get_logger("kms.http")


def parse_host_port(addr: str) -> tuple[str, int]:
    """``127.0.0.1:8081`` / ``[::1]:8081`` / ``:8081`` -> (host, port). Raises ConfigError."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"health address {addr!r} must be HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"health address {addr!r} has a port above 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port


class HealthServer:
    """Threaded HTTP server for /livez, /healthz, /readyz and /metrics."""

    def __init__(
        self,
        addr: str,
        *,
        service: HealthSource,
        metrics: KMSMetrics,
        serving: Callable[[], bool] = lambda: True,
        readiness: Sequence[ReadinessCheck] = (),
    ) -> None:
        host, port = parse_host_port(addr)
        self._service = service
        self._metrics = metrics
        self._serving = serving
        self._readiness = tuple(readiness)
        handler = self._handler_class()
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on health address {addr!r}: {exc.strerror}") from None
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kubeshield-http", daemon=True)
        self._thread.start()
        _log.info("health server listening", extra=fields(port=self.port))

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def _respond(self, path: str) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        if path == "/livez":
            return 200, b"ok\n", text
        if path == "/healthz":
            if self._service.is_healthy():
                return 200, b"ok\n", text
            return 503, self._health_text(), text
        if path == "/readyz":
            if not self._serving():
                return 503, b"not serving\n", text
            if not self._service.is_healthy():
                return 503, self._health_text(), text
            for check in self._readiness:
                ok, why = self._check(check)
                if not ok:
                    return 503, f"not ready: {why}\n".encode(), text
            return 200, b"ok\n", text
        if path == "/metrics":
            return 200, self._metrics.render(), CONTENT_TYPE_LATEST
        return 404, b"not found\n", text

    @staticmethod
    def _check(check: ReadinessCheck) -> tuple[bool, str]:
        try:
            return check()
        except Exception as exc:  # a readiness check must not take the probe server down
            _log.warning("readiness check failed", extra=fields(error=type(exc).__name__))
            return False, f"readiness check failed ({type(exc).__name__})"

    def _health_text(self) -> bytes:
        state = self._service.last_health()
        detail = state.detail if state is not None else "not checked yet"
        return f"unhealthy: {detail}\n".encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "kubeshield"
            sys_version = ""

            def do_GET(self) -> None:
                code, body, content_type = outer._respond(self.path.split("?", 1)[0])
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                _log.debug("http request", extra=fields(request=format % args))

        return Handler
