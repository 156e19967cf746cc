"""The Pod Security validating webhook: AdmissionReview v1 over HTTPS.

``POST`` any path with ``Content-Type: application/json`` and an AdmissionReview v1 body; the answer is
the AdmissionReview response of :class:`~kubeshield.posture.pss.admission.Admission`. A body that is not
JSON, not an AdmissionReview v1 or over 3 MiB is answered 400/413 with a message naming the problem (the
apiserver then applies the webhook's ``failurePolicy``). ``GET /healthz`` and ``/readyz`` answer ``ok``.

TLS 1.2 or newer only. With ``client_ca`` the caller must present a certificate issued by that CA (point
kube-apiserver's AdmissionConfiguration ``kubeConfigFile`` at a client certificate); without one, every
TLS client may ask for a decision (a decision discloses nothing but the policy).

Log lines (JSON on stderr) hold the request uid, resource, namespace, operation and decision; never the
object.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from kubeshield.errors import ConfigError
from kubeshield.posture.errors import AdmissionRequestError
from kubeshield.posture.pss.admission import Admission, StaticNamespaces

__all__ = ["MAX_BODY", "FileNamespaces", "WebhookServer", "json_log"]

MAX_BODY = 3 * 1024 * 1024


def json_log(message: str, **fields: Any) -> None:
    sys.stderr.write(json.dumps({"ts": round(time.time(), 3), "msg": message, **fields}) + "\n")
    sys.stderr.flush()


class FileNamespaces:
    """Namespace labels from exported YAML/JSON files (Namespace objects or Lists), re-read when a file
    changes, so an operator (or a sync job) can refresh them without a restart."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self._paths = [Path(p) for p in paths]
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._lock = threading.Lock()
        self._static = StaticNamespaces()
        self._reload()

    def _files(self) -> list[Path]:
        out: list[Path] = []
        for p in self._paths:
            if p.is_dir():
                out += sorted(
                    f for f in p.rglob("*") if f.suffix in (".yaml", ".yml", ".json") and f.is_file()
                )
            else:
                out.append(p)
        return out

    def _reload(self) -> None:
        files = self._files()
        try:
            stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except OSError as exc:
            raise ConfigError(f"cannot read namespace file: {exc}") from exc
        if stamp == self._stamp:
            return
        objects: list[Mapping[str, Any]] = []
        for f in files:
            try:
                docs = list(yaml.safe_load_all(f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise ConfigError(f"{f}: cannot read namespaces: {exc}") from exc
            for doc in docs:
                if (
                    isinstance(doc, Mapping)
                    and doc.get("kind") == "List"
                    and isinstance(doc.get("items"), list)
                ):
                    objects += [d for d in doc["items"] if isinstance(d, Mapping)]
                elif isinstance(doc, Mapping):
                    objects.append(doc)
        self._static = StaticNamespaces.from_objects(objects)
        self._stamp = stamp

    def labels(self, name: str) -> Mapping[str, str] | None:
        with self._lock:
            try:
                self._reload()
            except ConfigError as exc:
                json_log("namespace files unreadable; keeping the last good copy", error=str(exc))
            return self._static.labels(name)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stay silent

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:
        if self.path in ("/healthz", "/readyz", "/livez"):
            self._send(200, b"ok", "text/plain")
        else:
            self._error(404, "not found")

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._error(400, "a Content-Length header is required")
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._error(413, f"the body is larger than {MAX_BODY} bytes")
            return
        body = self.rfile.read(length)
        if self.headers.get_content_type() != "application/json":
            self._error(415, "Content-Type must be application/json")
            return
        try:
            review = json.loads(body)
            answer = self.server.admission.review(review)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "the body is not JSON")
            return
        except AdmissionRequestError as exc:
            json_log("admission request refused", error=str(exc))
            self._error(400, str(exc))
            return
        except Exception as exc:  # a bug: answer, so the apiserver applies failurePolicy at once
            json_log("admission failed", error=type(exc).__name__)
            self._error(500, "internal error")
            return
        response = answer["response"]
        request = review["request"]
        resource = request.get("resource") if isinstance(request.get("resource"), Mapping) else {}
        json_log(
            "admission",
            uid=response["uid"],
            resource=f"{resource.get('group', '')}/{resource.get('resource', '')}",
            namespace=request.get("namespace"),
            operation=request.get("operation"),
            allowed=response["allowed"],
            warnings=len(response.get("warnings", [])),
        )
        self._send(200, json.dumps(answer).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    admission: Admission

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake or a dropped connection: one log line, no traceback."""
        exc = sys.exc_info()[1]
        json_log(
            "connection failed",
            client=str(client_address[0]),
            error=type(exc).__name__,
            reason=str(exc)[:200],
        )


class WebhookServer:
    """The HTTPS server. ``start()`` serves on a thread; ``serve_forever()`` blocks."""

    def __init__(
        self,
        admission: Admission,
        *,
        host: str,
        port: int,
        cert: str | Path,
        key: str | Path,
        client_ca: str | Path | None = None,
        log: Callable[..., None] = json_log,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(cert), str(key))
            if client_ca is not None:
                context.load_verify_locations(str(client_ca))
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the webhook TLS files: {exc}") from exc
        self._httpd = _Server((host, port), _Handler, bind_and_activate=True)
        self._httpd.admission = admission
        # the handshake runs on the connection's own thread, so a slow client cannot stall accept()
        self._httpd.socket = context.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread: threading.Thread | None = None
        self._log = log

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pss-webhook", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self._log("pss webhook serving", address=f"{self.address[0]}:{self.address[1]}")
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
