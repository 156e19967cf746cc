"""OpenBao / Vault KV (v1 and v2) read as the pod: ``auth/<mount>/login`` with its token, then the KV read.

Object reference (in a SecretProviderClass ``objects`` entry)::

    openbao: {store: bao, path: secret/data/app, key: password, encoding: utf-8, role: app}

``path`` is the API path (KV v2 puts ``data/`` after the mount, as vault-csi-provider's ``secretPath``
does); a KV v2 answer's ``data.data`` is used automatically. Without ``key`` the object is the secret's
JSON. ``encoding`` (``utf-8`` default, ``base64``, ``hex``) decodes the value, as vault-csi-provider does.
``role`` (or the SecretProviderClass parameter ``openbaoRole``) is the ``auth/<mount>/role/<role>`` that
binds ServiceAccounts and namespaces. The login token is revoked after the read. Standard library HTTP only.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from kubeshield.errors import BackendUnavailable, InvalidRequest, PolicyDenied
from kubeshield.node.settings import StoreSettings

__all__ = ["OpenBaoStore"]

_MAX_REPLY = 8 << 20


class OpenBaoStore:
    def __init__(self, name: str, settings: StoreSettings) -> None:
        assert settings.address is not None
        parts = urlsplit(settings.address)
        if not parts.hostname:
            raise InvalidRequest(f"store {name}: address has no host")
        self.name = name
        self.audience = settings.audience or "vault"
        self._host, self._tls = parts.hostname, parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._base = parts.path.rstrip("/")
        self._mount = settings.auth_mount.strip("/")
        self._timeout = settings.timeout
        self._ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)

    def _call(
        self, method: str, path: str, *, token: str | None, doc: dict[str, Any] | None
    ) -> tuple[int, Any]:
        conn: http.client.HTTPConnection
        if self._tls:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ctx
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        try:
            conn.request(
                method,
                f"{self._base}/v1/{path}",
                body=json.dumps(doc).encode() if doc else None,
                headers=headers,
            )
            resp = conn.getresponse()
            data = resp.read(_MAX_REPLY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnavailable(f"store {self.name}: {type(exc).__name__}") from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, None

    @staticmethod
    def _errors(doc: Any) -> str:
        errors = doc.get("errors") if isinstance(doc, dict) else None
        # OpenBao's error strings name paths and roles, never secret data; keep them short anyway
        return "; ".join(str(e)[:160] for e in errors[:3]) if isinstance(errors, list) and errors else ""

    def login(self, jwt: str, role: str) -> str:
        status, doc = self._call(
            "POST", f"auth/{quote(self._mount)}/login", token=None, doc={"jwt": jwt, "role": role}
        )
        if status != 200:
            why = self._errors(doc)
            if status in (400, 401, 403):
                detail = f"{status}: {why}" if why else str(status)
                raise PolicyDenied(f"store {self.name}: login with role {role!r} refused ({detail})")
            raise BackendUnavailable(f"store {self.name}: login failed ({status})")
        try:
            return str(doc["auth"]["client_token"])
        except (KeyError, TypeError):
            raise BackendUnavailable(f"store {self.name}: login answer has no token") from None

    def read(self, *, token: str, ref: Mapping[str, Any], pod: Mapping[str, str]) -> tuple[bytes, str]:
        role = str(ref.get("role") or "")
        if not role:
            raise InvalidRequest(
                "openbao objects need a role (openbao.role or the SecretProviderClass parameter openbaoRole)"
            )
        client_token = self.login(token, role)
        try:
            path = str(ref["path"]).strip("/")
            status, doc = self._call("GET", quote(path, safe="/"), token=client_token, doc=None)
        finally:
            self._call("POST", "auth/token/revoke-self", token=client_token, doc=None)
        if status == 404:
            raise InvalidRequest(f"store {self.name}: no secret at {path}")
        if status in (401, 403):
            raise PolicyDenied(f"store {self.name}: role {role!r} may not read {path}")
        if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
            raise BackendUnavailable(f"store {self.name}: reading {path} failed ({status})")
        data: dict[str, Any] = doc["data"]
        version = ""
        if isinstance(data.get("data"), dict):  # KV v2
            meta = data.get("metadata") or {}
            version = str(meta.get("version", "")) if isinstance(meta, dict) else ""
            data = data["data"]
        key = ref.get("key")
        if key is None:
            content = json.dumps(data, sort_keys=True).encode()
        else:
            if key not in data:
                raise InvalidRequest(f"store {self.name}: {path} has no key {key!r}")
            raw = data[key]
            content = raw.encode() if isinstance(raw, str) else json.dumps(raw, sort_keys=True).encode()
        return _decode(content, str(ref.get("encoding") or "utf-8"), f"store {self.name}: {path}"), version


def _decode(content: bytes, encoding: str, where: str) -> bytes:
    enc = encoding.lower()
    try:
        if enc in ("utf-8", "utf8"):
            return content
        if enc == "base64":
            return base64.b64decode(content, validate=True)
        if enc == "hex":
            return bytes.fromhex(content.decode("ascii"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"{where}: the value is not valid {enc}") from None
    raise InvalidRequest(f"{where}: encoding must be utf-8, base64 or hex")
