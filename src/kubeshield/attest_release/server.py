"""The release server (``kubeshield attest release-server``): RCAR over HTTP (:mod:`.protocol`).

Config (YAML, camelCase; unknown fields are errors naming the field)::

    listen: 127.0.0.1:8443
    tls: {cert: server.crt, key: server.key}      # optional; the JWE protects the resource either way
    allowSample: false                            # the no-protection sample TEE; refused unless true
    nonceTtl: 60                                  # seconds a challenge stays valid (single use)
    maxSessions: 1024                             # outstanding challenges; beyond it: 503
    resources:
      custody-keyring:
        keyring: /var/lib/kubeshield/keyring      # every KEK version of this keyring
        passphraseFile: /etc/kubeshield/passphrase
        policy: {version: 1, tee: [tpm], claims: {ak_sha256: {in: [...]}, pcr7: {equals: ...}}}
      sealing-key:
        file: /etc/kubeshield/sealing.key         # a 0600 key file
        policy: {...}

Every release and refusal is logged with the resource, TEE, session id prefix and the failed rules;
never the nonce, the key, the evidence or the resource.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from kubeshield.attest import EvidenceFormatError, Policy, verify_evidence
from kubeshield.attest.policy import policy_from_mapping
from kubeshield.attest_release.protocol import PROTOCOL_VERSION, binding, encrypt_resource
from kubeshield.attest_release.resources import FileResource, KeyringResource, Resource
from kubeshield.errors import ConfigError, InvalidRequest, KubeshieldError

__all__ = ["ReleaseConfig", "ReleaseServer", "ReleaseService", "load_release_config"]

log = logging.getLogger("kubeshield.attest.release")
_TEES = ("tpm", "sgx", "tdx", "snp", "sample")
_MAX_BODY = 4 << 20


@dataclass(frozen=True, slots=True)
class ResourceEntry:
    source: Resource
    policy: Policy


@dataclass(frozen=True, slots=True)
class ReleaseConfig:
    listen: str = "127.0.0.1:8443"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_sample: bool = False
    nonce_ttl: float = 60.0
    max_sessions: int = 1024
    resources: Mapping[str, ResourceEntry] = field(default_factory=dict)


def _resource(name: str, doc: object, source: str) -> ResourceEntry:
    where = f"{source}: resources.{name}"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a mapping")
    unknown = set(doc) - {"keyring", "passphraseFile", "file", "policy"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if ("keyring" in doc) == ("file" in doc):
        raise ConfigError(f"{where}: give exactly one of keyring or file")
    if "policy" not in doc or not isinstance(doc["policy"], dict):
        raise ConfigError(f"{where}.policy: required (a release without a policy would be unconditional)")
    policy = policy_from_mapping(doc["policy"], source=f"{where}.policy")
    src: Resource
    if "keyring" in doc:
        pf = doc.get("passphraseFile")
        src = KeyringResource(Path(str(doc["keyring"])), Path(str(pf)) if pf else None)
    else:
        if "passphraseFile" in doc:
            raise ConfigError(f"{where}.passphraseFile: applies to keyring resources only")
        src = FileResource(Path(str(doc["file"])))
    return ResourceEntry(src, policy)


def load_release_config(path: str | Path) -> ReleaseConfig:
    source = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the config: {type(exc).__name__}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: must be a mapping")
    unknown = set(doc) - {"listen", "tls", "allowSample", "nonceTtl", "maxSessions", "resources"}
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    res = doc.get("resources")
    if not isinstance(res, dict) or not res:
        raise ConfigError(f"{source}: resources: at least one resource is required")
    tls = doc.get("tls") or {}
    if not isinstance(tls, dict) or set(tls) - {"cert", "key"} or (tls and set(tls) != {"cert", "key"}):
        raise ConfigError(f"{source}: tls: needs cert and key")
    ttl = doc.get("nonceTtl", 60)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= 3600:
        raise ConfigError(f"{source}: nonceTtl: seconds, 1..3600")
    maxs = doc.get("maxSessions", 1024)
    if isinstance(maxs, bool) or not isinstance(maxs, int) or not 1 <= maxs <= 1_000_000:
        raise ConfigError(f"{source}: maxSessions: 1..1000000")
    allow = doc.get("allowSample", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{source}: allowSample: true or false")
    return ReleaseConfig(
        listen=str(doc.get("listen", "127.0.0.1:8443")),
        tls_cert=Path(tls["cert"]) if tls else None,
        tls_key=Path(tls["key"]) if tls else None,
        allow_sample=allow,
        nonce_ttl=float(ttl),
        max_sessions=maxs,
        resources={str(k): _resource(str(k), v, source) for k, v in res.items()},
    )


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Session:
    nonce: str
    tee: str
    resource: str
    expires: float


class ReleaseService:
    """The transport-free core: ``auth`` and ``attest``. Thread-safe; clock and randomness injected."""

    def __init__(
        self,
        config: ReleaseConfig,
        *,
        clock: Callable[[], float] = time.time,
        token: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._config = config
        self._clock = clock
        self._token = token
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]

    def auth(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if body.get("version") != PROTOCOL_VERSION:
            raise HttpError(400, f"version: this server speaks {PROTOCOL_VERSION}")
        tee, resource = body.get("tee"), body.get("resource")
        if tee not in _TEES:
            raise HttpError(400, f"tee: unknown TEE type (known: {', '.join(_TEES)})")
        if tee == "sample" and not self._config.allow_sample:
            raise HttpError(403, "tee: the sample TEE gives no protection and is not enabled on this server")
        if not isinstance(resource, str) or resource not in self._config.resources:
            raise HttpError(404, "resource: no such resource")
        now = self._clock()
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= self._config.max_sessions:
                raise HttpError(503, "too many outstanding challenges; retry later")
            sid, nonce = self._token(18), self._token(32)
            self._sessions[sid] = _Session(nonce, str(tee), resource, now + self._config.nonce_ttl)
        return {"session": sid, "nonce": nonce, "expiresAt": int(now + self._config.nonce_ttl)}

    def attest(self, body: Mapping[str, Any]) -> dict[str, Any]:
        sid = body.get("session")
        if not isinstance(sid, str):
            raise HttpError(400, "session: required")
        now = self._clock()
        with self._lock:  # consume the challenge: one attempt per nonce, whatever its outcome
            session = self._sessions.pop(sid, None)
        if session is None:
            raise HttpError(401, "session: unknown or already used (a nonce is good for one attempt)")
        if session.expires < now:
            raise HttpError(401, "session: the challenge expired; request a new one")
        jwk = body.get("tee-pubkey")
        try:
            expected = binding(session.nonce, jwk if isinstance(jwk, dict) else {})
            evidence = _b64(body.get("evidence"), "evidence")
            collateral = (
                _b64(body["collateral"], "collateral") if body.get("collateral") is not None else None
            )
        except InvalidRequest as exc:
            raise HttpError(400, str(exc)) from None
        entry = self._config.resources[session.resource]
        try:
            result = verify_evidence(
                evidence,
                at=datetime.fromtimestamp(now, UTC),
                collateral=collateral,
                expected_report_data=expected,
                allow_sample=self._config.allow_sample,
            )
        except EvidenceFormatError as exc:
            self._log(sid, session, False, [str(exc)])
            raise HttpError(403, f"evidence: {exc}") from None
        if result.tee != session.tee:
            self._log(sid, session, False, ["tee"])
            raise HttpError(403, f"evidence: {result.tee} evidence for a {session.tee} challenge")
        decision = entry.policy.evaluate(result)
        if not decision.allowed:
            self._log(sid, session, False, list(decision.failures))
            raise HttpError(403, "policy: " + decision.reason)
        try:
            material = entry.source.material()
        except KubeshieldError as exc:
            log.error("release: resource %s unavailable: %s", session.resource, exc)
            raise HttpError(503, "resource: unavailable on the server") from None
        token = encrypt_resource(material, jwk)  # type: ignore[arg-type]
        self._log(sid, session, True, [])
        return {"jwe": token}

    @staticmethod
    def _log(sid: str, session: _Session, allowed: bool, failures: list[str]) -> None:
        log.info(
            "release: %s resource=%s tee=%s session=%s%s",
            "released" if allowed else "refused",
            session.resource,
            session.tee,
            sid[:6],
            "" if allowed else f" failed={'; '.join(f[:200] for f in failures)}",
        )


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{what}: must be base64") from None


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # requests are logged by the service
        pass

    def _reply(self, status: int, doc: Mapping[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        routes = {"/kbs/v0/auth": self.server.service.auth, "/kbs/v0/attest": self.server.service.attest}
        handler = routes.get(self.path)
        try:
            if handler is None:
                raise HttpError(404, "no such endpoint")
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                raise HttpError(400, "Content-Length: not a number") from None
            if not 0 < length <= _MAX_BODY:
                raise HttpError(413 if length > _MAX_BODY else 400, "body: 1..4 MiB of JSON expected")
            try:
                body = json.loads(self.rfile.read(length))
            except (ValueError, UnicodeDecodeError):
                raise HttpError(400, "body: not JSON") from None
            if not isinstance(body, dict):
                raise HttpError(400, "body: a JSON object expected")
            self._reply(200, handler(body))
        except HttpError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except Exception:  # never leak internals
            log.exception("release: internal error")
            self._reply(500, {"error": "internal error"})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    service: ReleaseService


class ReleaseServer:
    """``ReleaseService`` served over HTTP(S) on ``config.listen``."""

    def __init__(self, config: ReleaseConfig, *, service: ReleaseService | None = None) -> None:
        host, _, port = config.listen.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"listen: {config.listen!r} must be HOST:PORT")
        self._httpd = _HTTPServer((host.strip("[]") or "127.0.0.1", int(port)), _Handler)
        self._httpd.service = service or ReleaseService(config)
        if config.tls_cert is not None and config.tls_key is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.tls = config.tls_cert is not None

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

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
