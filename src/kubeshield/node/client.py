"""The release service's client (the CSI provider and ``kubeshield node fetch`` use it).

    client = ReleaseClient("https://kubeshield-release.kubeshield.svc:8443", ca_file="/etc/ks/ca.crt")
    released = client.release(token, [("db-password", "kubeshield:node:v1:...")])
    released.values["db-password"]   # bytes, decrypted here from the JWE sent to our ephemeral key

Each call makes a fresh P-256 key; the server's JWE reply is opened with it and the key is dropped, so a
proxy or log on the way sees only ciphertext. Connections are reused (a small pool, HTTP/1.1 keep-alive).
Refusals raise :class:`ReleaseRefused` (a ``PolicyDenied``) with the server's message and status; a
transport failure or a 5xx raises ``BackendUnavailable``. Nothing raised holds a value or the token.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubeshield.errors import BackendUnavailable, InvalidCiphertext, PolicyDenied
from kubeshield.keys.jwe import decrypt_jwe, generate_ephemeral_key, public_jwk

__all__ = ["ReleaseClient", "ReleaseRefused", "Released"]

_MAX_REPLY = 16 << 20


class ReleaseRefused(PolicyDenied):
    """The release server refused (4xx). ``status`` is the HTTP status; the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"release refused ({status}): {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Released:
    identity: str
    pod_name: str
    pod_uid: str
    values: dict[str, bytes] = field(repr=False)
    key_versions: dict[str, int] = field(default_factory=dict)


class ReleaseClient:
    def __init__(
        self,
        url: str,
        *,
        ca_file: str | Path | None = None,
        ca_pem: str | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        timeout: float = 10.0,
        pool: int = 8,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"release server URL {url!r} must be https://HOST[:PORT]")
        self._host, self._tls = parts.hostname, parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._timeout = timeout
        self._ctx: ssl.SSLContext | None = None
        if self._tls:
            ctx = ssl.create_default_context(
                cafile=str(ca_file) if ca_file else None, cadata=ca_pem if ca_pem else None
            )
            if cert is not None and key is not None:
                ctx.load_cert_chain(str(cert), str(key))
            self._ctx = ctx
        self._idle: list[http.client.HTTPConnection] = []
        self._pool = pool
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self._tls:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ctx
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._pool:
                self._idle.append(conn)
                return
        conn.close()

    def __enter__(self) -> ReleaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _call(
        self, method: str, path: str, *, token: str | None, doc: dict[str, Any] | None
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        body = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in (0, 1):  # a pooled connection the server closed meanwhile gets one retry
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read(_MAX_REPLY + 1)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise BackendUnavailable(
                    f"release server {self._host}:{self._port}: {type(exc).__name__}"
                ) from None
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            break
        if len(data) > _MAX_REPLY:
            raise BackendUnavailable("release server reply is too large")
        try:
            reply = json.loads(data)
        except ValueError:
            raise BackendUnavailable(f"release server answered {resp.status} without JSON") from None
        if not isinstance(reply, dict):
            raise BackendUnavailable("release server answered with a non-object")
        if resp.status != 200:
            message = str(reply.get("error", ""))[:500]
            if 400 <= resp.status < 500 and resp.status != 429:
                raise ReleaseRefused(resp.status, message)
            raise BackendUnavailable(f"release server error {resp.status}: {message}")
        return reply

    def release(self, token: str, objects: Sequence[tuple[str, str]]) -> Released:
        """Ask for the values of ``objects`` (``(name, sealed text)``) with the pod's ``token``."""
        key = generate_ephemeral_key()
        reply = self._call(
            "POST",
            "/v1/release",
            token=token,
            doc={"objects": [{"name": n, "sealed": s} for n, s in objects], "replyKey": public_jwk(key)},
        )
        jwe = reply.get("jwe")
        if not isinstance(jwe, str):
            raise BackendUnavailable("release server sent no JWE")
        try:
            doc = json.loads(decrypt_jwe(jwe, key))
            values = {str(o["name"]): base64.b64decode(o["value"], validate=True) for o in doc["objects"]}
            versions = {str(o["name"]): int(o["keyVersion"]) for o in doc["objects"]}
            pod = doc.get("pod") or {}
            released = Released(
                str(doc["identity"]), str(pod.get("name", "")), str(pod.get("uid", "")), values, versions
            )
        except (InvalidCiphertext, ValueError, KeyError, TypeError, binascii.Error):
            raise BackendUnavailable("release server sent a reply that does not open") from None
        if set(values) != {n for n, _ in objects}:
            raise BackendUnavailable("release server answered for other objects than asked")
        return released

    def seal(
        self,
        token: str,
        value: bytes,
        *,
        namespace: str,
        service_account: str,
        audience: str | None = None,
        selector: str | None = None,
    ) -> str:
        """Seal through the server with the caller's own ``token`` (its RBAC is checked there)."""
        doc: dict[str, Any] = {
            "namespace": namespace,
            "serviceAccount": service_account,
            "value": base64.b64encode(value).decode("ascii"),
        }
        if audience:
            doc["audience"] = audience
        if selector:
            doc["selector"] = selector
        reply = self._call("POST", "/v1/seal", token=token, doc=doc)
        sealed = reply.get("sealed")
        if not isinstance(sealed, str):
            raise BackendUnavailable("release server sent no sealed value")
        return sealed

    def public_key(self) -> dict[str, Any]:
        return self._call("GET", "/v1/public-key", token=None, doc=None)
