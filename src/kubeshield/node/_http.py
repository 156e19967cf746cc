"""A small threaded HTTPS server for the release service and the injector webhook (standard library).

``JsonServer(listen, routes, tls=...)`` serves ``routes[(method, path)] -> handler(request) -> Reply``.
Bodies are bounded (``max_body``), must be JSON objects where a handler wants one, and every failure
is a JSON ``{"error": "<message>"}`` with its status; an unexpected exception is logged here (type
only) and answered ``500 internal error``, so nothing about a value or a token reaches the client or
the log. TLS 1.2+; with ``client_ca`` a client certificate signed by it is required (mutual TLS).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubeshield.errors import ConfigError

__all__ = ["JsonServer", "Reply", "Request", "RequestError", "server_tls_context"]

log = logging.getLogger("kubeshield.node.http")


class RequestError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    client: str

    def json(self) -> dict[str, Any]:
        if self.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise RequestError(415, "Content-Type must be application/json")
        try:
            doc = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "body: not JSON") from None
        if not isinstance(doc, dict):
            raise RequestError(400, "body: a JSON object is expected")
        return doc

    def bearer(self) -> str:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    doc: Any = None
    body: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply]


def server_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS: cannot load {cert} / {key}: {type(exc).__name__}") from None
    return ctx


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the services log what matters
        pass

    def _send(self, reply: Reply) -> None:
        body = reply.body if reply.body is not None else json.dumps(reply.doc).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        handler = self.server.routes.get((method, path))
        try:
            if handler is None:
                known = {p for (_, p) in self.server.routes}
                raise RequestError(405 if path in known else 404, "no such endpoint")
            body = b""
            if method == "POST":
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    raise RequestError(400, "Content-Length: not a number") from None
                if length > self.server.max_body:
                    raise RequestError(413, f"body: at most {self.server.max_body} bytes")
                if length <= 0:
                    raise RequestError(400, "body: required")
                body = self.rfile.read(length)
            request = Request(
                method=method,
                path=path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                client=str(self.client_address[0]),
            )
            self._send(handler(request))
        except RequestError as exc:
            headers = {}
            if exc.retry_after is not None:
                headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
            if exc.status == 413:
                self.close_connection = True
            self._send(Reply(exc.status, {"error": str(exc)}, headers=headers))
        except Exception as exc:  # never leak internals
            log.error("%s %s: internal error (%s)", method, path, type(exc).__name__, exc_info=True)
            self._send(Reply(500, {"error": "internal error"}))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    routes: Mapping[tuple[str, str], Handler]
    max_body: int
    tls: ssl.SSLContext | None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.settimeout(30.0)  # a stalled client cannot hold a thread forever
        # headers and body go out in two writes: without NODELAY, Nagle + the peer's delayed ACK add ~40 ms
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:  # handshake in the worker thread, not the accept loop
            try:
                wrapped = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
            try:
                super().finish_request(wrapped, client_address)
            finally:
                wrapped.close()
            return
        super().finish_request(request, client_address)


class JsonServer:
    """Serve ``routes`` on ``listen`` (HOST:PORT; port 0 picks one) until ``shutdown``."""

    def __init__(
        self,
        listen: str,
        routes: Mapping[tuple[str, str], Handler],
        *,
        tls: ssl.SSLContext | None,
        max_body: int = 8 << 20,
    ) -> None:
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"listen: {listen!r} must be HOST:PORT")
        try:
            self._httpd = _Server((host.strip("[]") or "0.0.0.0", int(port)), _Handler)
        except OSError as exc:
            raise ConfigError(f"listen: cannot bind {listen}: {exc.strerror}") from None
        self._httpd.routes = routes
        self._httpd.max_body = max_body
        self._httpd.tls = tls
        self.tls = tls is not None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> JsonServer:
        self._thread = threading.Thread(target=self.serve_forever, name="kubeshield-node-http", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
