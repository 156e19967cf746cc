"""The release client: one call that runs the RCAR exchange (:mod:`.protocol`) and returns the resource.

    material = request_resource("https://release:8443", "custody-keyring", attester=TpmAttester(tcti=...))

It speaks HTTP(S) with the standard library (no SDK); ``cafile`` pins the server's CA for HTTPS.
Refusals raise :class:`~kubeshield.errors.PolicyDenied` with the server's reason (which names the
failed rules and never holds secrets); transport failures raise ``BackendUnavailable``.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from kubeshield.attest.attester import Attester
from kubeshield.attest_release.protocol import (
    PROTOCOL_VERSION,
    binding,
    decrypt_resource,
    generate_tee_key,
    public_jwk,
)
from kubeshield.errors import BackendUnavailable, PolicyDenied

__all__ = ["request_resource"]


def _post(url: str, path: str, doc: dict[str, Any], *, timeout: float, cafile: str | None) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"release server URL {url!r} must be http(s)://HOST:PORT")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    body = json.dumps(doc).encode()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read(8 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise BackendUnavailable(
            f"release server {parts.hostname}:{parts.port}: {type(exc).__name__}"
        ) from None
    finally:
        conn.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise BackendUnavailable(f"release server answered {resp.status} without JSON") from None
    if resp.status != 200:
        message = str(reply.get("error", "")) if isinstance(reply, dict) else ""
        if resp.status in (401, 403, 404):
            raise PolicyDenied(f"release refused ({resp.status}): {message}")
        raise BackendUnavailable(f"release server error {resp.status}: {message}")
    if not isinstance(reply, dict):
        raise BackendUnavailable("release server answered with a non-object")
    return reply


def request_resource(
    url: str,
    resource: str,
    *,
    attester: Attester,
    timeout: float = 30.0,
    cafile: str | None = None,
) -> bytes:
    """Attest with ``attester`` and return the released ``resource`` (decrypted here, never stored)."""
    challenge = _post(
        url,
        "/kbs/v0/auth",
        {"version": PROTOCOL_VERSION, "tee": attester.tee, "resource": resource},
        timeout=timeout,
        cafile=cafile,
    )
    nonce, session = challenge.get("nonce"), challenge.get("session")
    if not isinstance(nonce, str) or not isinstance(session, str):
        raise BackendUnavailable("release server sent a malformed challenge")
    key = generate_tee_key()
    jwk = public_jwk(key)
    evidence = attester.evidence(binding(nonce, jwk))
    reply = _post(
        url,
        "/kbs/v0/attest",
        {"session": session, "tee-pubkey": jwk, "evidence": base64.b64encode(evidence).decode()},
        timeout=timeout,
        cafile=cafile,
    )
    token = reply.get("jwe")
    if not isinstance(token, str):
        raise BackendUnavailable("release server sent no JWE")
    return decrypt_resource(token, key)
