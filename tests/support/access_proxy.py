"""Test support for ``kubeshield.access.proxy.LocalProxy``: a serving certificate made at test time,
a ``ClusterCredential`` for the Kubernetes API stand-in, a proxy running on its own event loop in a
thread (so synchronous tests and real kubectl can use it), and a kubeconfig pointing kubectl at it.

    pki = ServingPKI.make()
    with ProxyThread(credential=lambda: cred, bearer=b"...", pki=pki) as proxy:
        proxy_kubeconfig(tmp_path / "kc", url=proxy.url, ca_pem=pki.ca_pem, token="...")

Also ``UpgradeEcho``: a tiny TLS server that answers an HTTP Upgrade with 101 and then echoes bytes,
for the proxy's splice until the stand-in serves exec.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import secrets
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeshield.access.audit import AuditLog
from kubeshield.access.credential import ClusterCredential
from kubeshield.access.proxy import LocalProxy
from kubeshield.access.upstream import load_chain_from_memory
from tests.support.kubeapi import KubeAPI

__all__ = [
    "ProxyThread",
    "RawResponse",
    "ServingPKI",
    "UpgradeEcho",
    "new_bearer",
    "open_tls",
    "proxy_kubeconfig",
    "raw_request",
    "read_response",
    "request_bytes",
    "standin_credential",
]


def new_bearer() -> bytes:
    return secrets.token_urlsafe(32).encode()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class ServingPKI:
    """A throwaway CA and a serving certificate for 127.0.0.1/localhost (all in memory)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def make(cls, name: str = "kubeshield-test-local-ca") -> ServingPKI:
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeshield-proxy")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca_pem=ca.public_bytes(serialization.Encoding.PEM),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_pem_key(key),
        )

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def standin_credential(
    api: KubeAPI,
    *,
    user: str = "alice",
    groups: tuple[str, ...] = ("system:masters",),
    context: str = "standin",
    token: str | None = None,
    ca_pem: bytes | None = None,
) -> ClusterCredential:
    """A credential for the stand-in: a client certificate minted for ``user`` (or a token)."""
    ca = ca_pem if ca_pem is not None else api.ca_path.read_bytes()
    if token is not None:
        return ClusterCredential(context=context, server=api.url, ca_pem=ca, token=token, subject=user)
    issued = api.mint_client_cert(user, groups, stem=f"proxy-{user}-{secrets.token_hex(4)}")
    return ClusterCredential(
        context=context,
        server=api.url,
        ca_pem=ca,
        client_cert_pem=issued.cert.read_bytes(),
        client_key_pem=issued.key.read_bytes(),
        subject=user,
    )


class ProxyThread:
    """A ``LocalProxy`` on an event loop of its own thread; ``url`` once started."""

    def __init__(
        self,
        *,
        credential: Callable[[], ClusterCredential],
        bearer: bytes,
        pki: ServingPKI,
        audit: AuditLog | None = None,
        redact_secrets: bool = False,
        max_request_bytes: int = 3 * 1024 * 1024,
    ) -> None:
        self._kwargs: dict[str, Any] = dict(
            credential=credential,
            bearer=bearer,
            serving_cert_pem=pki.cert_pem,
            serving_key_pem=pki.key_pem,
            audit=audit,
            redact_secrets=redact_secrets,
            max_request_bytes=max_request_bytes,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-proxy", daemon=True)
        self.proxy: LocalProxy | None = None
        self.url = ""

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> ProxyThread:
        self._thread.start()

        async def make() -> LocalProxy:
            return LocalProxy(**self._kwargs)

        self.proxy = self.run(make())
        self.run(self.proxy.start())
        self.url = self.proxy.url
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.run(self.proxy.stop())
            self.proxy = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proxy_kubeconfig(
    path: Path, *, url: str, ca_pem: bytes, token: str | None, namespace: str | None = None
) -> Path:
    """A kubeconfig for kubectl -> the proxy: the local CA inline and the bearer secret as a token."""
    user: dict[str, Any] = {"token": token} if token is not None else {}
    context: dict[str, Any] = {"cluster": "proxy", "user": "me"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "proxy",
                "cluster": {
                    "server": url,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": "proxy", "context": context}],
        "current-context": "proxy",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(doc))
    return path


class UpgradeEcho:
    """A TLS server on 127.0.0.1 that answers any request carrying ``Upgrade`` with 101 and then echoes
    every byte back until the client closes; other requests get 400 (``silent``: no answer at all;
    ``reply``: these bytes).
    It records the request heads."""

    def __init__(self, pki: ServingPKI, *, silent: bool = False, reply: bytes | None = None) -> None:
        self._pki = pki
        self._silent = silent
        self._reply = reply
        self.heads: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="upgrade-echo", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if self._silent:  # an apiserver that never answers
                await reader.read()
                return
            if self._reply is not None and b"\r\nupgrade:" not in head.lower():
                writer.write(self._reply)
                await reader.read()
                return
            if b"\r\nupgrade:" not in head.lower():
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello\n"
            )
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def start(self) -> UpgradeEcho:
        self._thread.start()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_chain_from_memory(ctx, cert_pem=self._pki.cert_pem, key_pem=self._pki.key_pem)

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)

        future: Future[asyncio.Server] = asyncio.run_coroutine_threadsafe(start(), self._loop)
        self._server = future.result(30)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        server = self._server
        if server is not None:

            async def stop() -> None:
                server.close()
                for writer in list(self._writers):
                    writer.transport.abort()
                await asyncio.sleep(0.01)

            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> UpgradeEcho:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def open_tls(url: str, ca_pem: bytes, *, timeout: float = 30.0) -> ssl.SSLSocket:
    """A TLS socket to ``url`` trusting ``ca_pem`` (for hand-written requests)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=parts.hostname)
    except BaseException:
        sock.close()
        raise


def read_response(sock: ssl.SSLSocket, *, method: str = "GET") -> RawResponse:
    """Read one HTTP response from ``sock`` (the socket stays open for the next one)."""
    import http.client

    resp = http.client.HTTPResponse(sock, method=method)  # type: ignore[arg-type]
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    status = resp.status
    resp.close()  # closes its file object only; the socket stays open for the next request
    return RawResponse(status, headers, body)


def raw_request(url: str, ca_pem: bytes, raw: bytes, *, method: str = "GET") -> RawResponse:
    with open_tls(url, ca_pem) as sock:
        sock.sendall(raw)
        return read_response(sock, method=method)


def request_bytes(
    method: str,
    path: str,
    *,
    bearer: bytes | None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if bearer is not None:
        lines.append(f"Authorization: Bearer {bearer.decode()}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
