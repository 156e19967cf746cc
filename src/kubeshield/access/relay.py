"""The login relay: an OIDC ID token and a CSR in, a short-lived client certificate out.

HTTP API (JSON over https; every error is ``{"error": "<message naming the problem>"}``)::

    GET  /v1/config        -> {"issuer", "clientId", "scopes", "flows": ["device", "auth-code"],
                               "clusters": ["<name>", ...], "attestation": {...} | null}
    GET  /v1/clusters      -> {"clusters": [{"name", "server", "caData": "<PEM>" | null,
                                             "tlsServerName": ... | null}]}
    POST /v1/certificates  <- {"idToken": "<JWS>", "csr": "<PEM>", "nonce": "<the flow's nonce>"?,
                               "lifetimeSeconds": N?, "evidence": {...}?}
                           -> {"certificate": "<PEM>", "caCertificate": "<PEM>", "expiresAt": RFC3339,
                               "user", "groups", "clusters": [... as /v1/clusters]}
    POST /v1/challenge     -> {"nonce": "<b64url>", "expiresIn": N}   (only with attestation.policy)
    POST /v1/attestation   <- {"nonce": "<b64url>"}                  (only with attestation.tcti)
                           -> {"caCertificate": "<PEM>", "tpm": <TPM evidence>}

``POST /v1/certificates``: the ID token is verified (:mod:`kubeshield.access.idtoken`: signature
against the provider's JWKS, issuer, audience, expiry, and the nonce whenever the login sends one:
the auth-code login sends the nonce it put in its authorization request, so a token minted for
another login does not pass as this one's; the nonce is inside the token, so this is a consistency
check, not a secret). Each ID token buys one certificate: a replay cache keyed by the token's
SHA-256, in memory, kept until the token expires (a token copied after use is worthless here; one
copied before use races its owner, who then sees the refusal). The CSR must prove possession of
its key (EC P-256/P-384 or RSA >= 2048). The user name is ``<usernamePrefix><usernameClaim>`` and
the groups ``<groupsPrefix><each of groupsClaim>``; a name that would land in Kubernetes' reserved
``system:`` namespace is refused (a provider's ``groups`` claim must never make anyone
``system:masters``). The certificate lives ``certificates.lifetime`` (default 15 minutes), or the
lifetime asked for, up to ``certificates.maxLifetime``. No impersonation: the certificate's subject
is the person, so the apiserver's audit log names them.

The service is the standard library's threaded ``http.server`` behind TLS (handshake in the worker
thread). Nothing here logs a token, a CSR or a certificate; the log line of an issuance names the
user, the groups, the serial number and the expiry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.idtoken import IdTokenError, IdTokenVerifier, JwksCache, JwksError, VerifiedIdToken
from kubeshield.access.oidc import LoginError, discover, http_request, tls_context
from kubeshield.access.relay_ca import CsrError, RelayCA, check_csr
from kubeshield.access.relay_settings import OidcSettings, RelaySettings, endpoint_from_json, endpoint_to_json
from kubeshield.errors import ConfigError, InvalidRequest, KubeshieldError, PolicyDenied
from kubeshield.keys.base import KeyBackend

if TYPE_CHECKING:
    from kubeshield.access.relay_attest import RelayAttestation

__all__ = [
    "ClaimMapping",
    "Relay",
    "RelayServer",
    "endpoint_from_json",
    "endpoint_to_json",
    "open_relay",
    "provider_jwks_fetch",
    "relay_tls_context",
]

log = logging.getLogger("kubeshield.access.relay")

_MAX_BODY = 256 * 1024
_MAX_NAME = 256
_MAX_GROUPS = 256
_REPLAY_ENTRIES = 100_000


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _clean_name(value: str, what: str) -> str:
    if not value or len(value) > _MAX_NAME:
        raise PolicyDenied(f"{what}: empty or longer than {_MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise PolicyDenied(f"{what}: holds control characters")
    if value.startswith("system:"):
        raise PolicyDenied(f"{what}: {value[:64]!r} is in Kubernetes' reserved system: namespace; refused")
    return value


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """How ID token claims become the certificate's user (CN) and groups (O)."""

    username_claim: str = "email"
    username_prefix: str = ""
    groups_claim: str | None = "groups"
    groups_prefix: str = ""

    @classmethod
    def from_settings(cls, oidc: OidcSettings) -> ClaimMapping:
        return cls(
            username_claim=oidc.username_claim,
            username_prefix=oidc.username_prefix or "",
            groups_claim=oidc.groups_claim,
            groups_prefix=oidc.groups_prefix or "",
        )

    def user(self, claims: Mapping[str, Any]) -> str:
        value = claims.get(self.username_claim)
        if not isinstance(value, str) or not value:
            raise PolicyDenied(f"ID token: the user name claim {self.username_claim!r} is missing or empty")
        if self.username_claim == "email" and claims.get("email_verified") is False:
            raise PolicyDenied("ID token: the email address is not verified (email_verified false)")
        return _clean_name(self.username_prefix + value, "user name")

    def groups(self, claims: Mapping[str, Any]) -> list[str]:
        if self.groups_claim is None:
            return []
        value = claims.get(self.groups_claim)
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(g, str) for g in items):
            raise PolicyDenied(f"ID token: the groups claim {self.groups_claim!r} is not a list of strings")
        if len(items) > _MAX_GROUPS:
            raise PolicyDenied(f"ID token: more than {_MAX_GROUPS} groups")
        out: list[str] = []
        for g in items:
            name = _clean_name(self.groups_prefix + g, "group")
            if name not in out:
                out.append(name)
        return out


class _ReplayCache:
    """ID tokens already used (their SHA-256), kept until they expire; bounded."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock

    def use(self, token: str, *, until: float) -> bool:
        """Record ``token``; False if it was recorded before (a replay)."""
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        with self._lock:
            while self._seen:
                first, expiry = next(iter(self._seen.items()))
                if expiry > now and len(self._seen) < _REPLAY_ENTRIES:
                    break
                del self._seen[first]
            if digest in self._seen:
                return False
            self._seen[digest] = until
            return True


class Relay:
    """The relay's logic, independent of HTTP (the server below and tests call it).

    ``attest`` (optional) checks the login's evidence: ``attest(evidence_doc, csr_pem) -> str``
    returns a short description of what was verified or raises ``PolicyDenied``; with it a request
    without evidence is refused. ``challenge()`` makes the nonce for it; ``own_evidence(nonce)`` is
    the relay's own quote (:mod:`kubeshield.access.relay_attest`).
    """

    def __init__(
        self,
        *,
        oidc: OidcSettings,
        verifier: IdTokenVerifier,
        ca: RelayCA,
        clusters: Sequence[ClusterEndpoint],
        lifetime: timedelta = timedelta(minutes=15),
        max_lifetime: timedelta = timedelta(hours=1),
        attest: Callable[[object, bytes], str] | None = None,
        challenge: Callable[[], dict[str, Any]] | None = None,
        own_evidence: Callable[[object], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime > max_lifetime:
            raise ConfigError("certificates.lifetime: longer than certificates.maxLifetime")
        self.oidc = oidc
        self._verifier = verifier
        self._ca = ca
        self._clusters = list(clusters)
        self._mapping = ClaimMapping.from_settings(oidc)
        self._lifetime = lifetime
        self._max_lifetime = max_lifetime
        self._attest = attest
        self._challenge = challenge
        self._own_evidence = own_evidence
        self._clock = clock
        self._replays = _ReplayCache(clock)

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem

    def config(self) -> dict[str, Any]:
        return {
            "issuer": self.oidc.issuer,
            "clientId": self.oidc.client_id,
            "scopes": list(self.oidc.scopes),
            "flows": ["device", "auth-code"],
            "clusters": [c.name for c in self._clusters],
            "attestation": {
                "loginEvidenceRequired": self._attest is not None,
                "relayEvidence": self._own_evidence is not None,
            },
        }

    def clusters(self) -> dict[str, Any]:
        return {"clusters": [endpoint_to_json(c) for c in self._clusters]}

    def new_challenge(self) -> dict[str, Any]:
        if self._challenge is None:
            raise InvalidRequest("this relay requires no attestation: there is no challenge to ask for")
        return self._challenge()

    def evidence(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._own_evidence is None:
            raise InvalidRequest("this relay serves no attestation evidence of its own")
        return self._own_evidence(body.get("nonce"))

    def issue(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Verify the ID token (and evidence), check the CSR, sign. Errors are safe to show the caller."""
        token = body.get("idToken")
        if not isinstance(token, str) or not token:
            raise InvalidRequest("idToken: required (the ID token of the OIDC login)")
        nonce = body.get("nonce")
        if nonce is not None and (not isinstance(nonce, str) or not nonce):
            raise InvalidRequest("nonce: expected a non-empty string")
        if "csr" not in body:
            raise InvalidRequest("csr: required (a PEM certificate signing request)")
        lifetime = self._lifetime_of(body.get("lifetimeSeconds"))
        verified: VerifiedIdToken = self._verifier.verify(token, nonce=nonce)
        csr = check_csr(body["csr"])
        if self._attest is not None:
            if body.get("evidence") is None:
                raise PolicyDenied("evidence: this relay requires attestation evidence from the login side")
            csr_pem = body["csr"].encode("ascii") if isinstance(body["csr"], str) else bytes(body["csr"])
            attested = self._attest(body["evidence"], csr_pem)
        else:
            attested = None
        user = self._mapping.user(verified.claims)
        groups = self._mapping.groups(verified.claims)
        if not self._replays.use(token, until=verified.expires_at.timestamp() + 300):
            raise IdTokenError("ID token: already used for a certificate (each login buys one)")
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        cert = self._ca.issue(csr, user=user, groups=groups, lifetime=lifetime, now=now)
        log.info(
            "issued a client certificate: user=%s groups=%s serial=%x notAfter=%s%s",
            user,
            ",".join(groups) or "-",
            cert.serial_number,
            _rfc3339(cert.not_valid_after_utc),
            f" attested={attested}" if attested else "",
        )
        return {
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "caCertificate": self._ca.cert_pem.decode("ascii"),
            "expiresAt": _rfc3339(cert.not_valid_after_utc),
            "user": user,
            "groups": groups,
            "clusters": self.clusters()["clusters"],
        }

    def _lifetime_of(self, value: object) -> timedelta:
        if value is None:
            return self._lifetime
        if isinstance(value, bool) or not isinstance(value, int | float) or not value == value:
            raise InvalidRequest("lifetimeSeconds: expected a number of seconds")
        if value < 60:
            raise InvalidRequest("lifetimeSeconds: at least 60")
        if value > self._max_lifetime.total_seconds():
            raise InvalidRequest(
                f"lifetimeSeconds: at most {int(self._max_lifetime.total_seconds())} on this relay"
            )
        return timedelta(seconds=float(value))


# --- HTTP ------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATUS: tuple[tuple[type[KubeshieldError], int], ...] = (
    (JwksError, 503),
    (IdTokenError, 401),
    (PolicyDenied, 403),
    (CsrError, 400),
    (InvalidRequest, 400),
)


def relay_tls_context(*, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load {cert} / {key}: {type(exc).__name__}") from None
    return ctx


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HttpError(415, "Content-Type must be application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _HttpError(411, "Content-Length: required") from None
        if length > _MAX_BODY:
            self.close_connection = True
            raise _HttpError(413, f"body: at most {_MAX_BODY} bytes")
        raw = self.rfile.read(max(0, length))
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(400, "body: not JSON") from None
        if not isinstance(doc, dict):
            raise _HttpError(400, "body: a JSON object is expected")
        return doc

    def _dispatch(self, method: str) -> None:
        relay = self.server.relay
        path = self.path.split("?", 1)[0]
        routes: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
            ("GET", "/v1/config"): relay.config,
            ("GET", "/v1/clusters"): relay.clusters,
            ("POST", "/v1/attestation"): lambda: relay.evidence(self._body()),
            ("POST", "/v1/challenge"): relay.new_challenge,
            ("POST", "/v1/certificates"): lambda: relay.issue(self._body()),
        }
        try:
            handler = routes.get((method, path))
            if handler is None:
                known = {p for (_, p) in routes}
                raise _HttpError(405 if path in known else 404, "no such endpoint")
            self._send(200, handler())
        except _HttpError as exc:
            self._send(exc.status, {"error": str(exc)})
        except KubeshieldError as exc:
            status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
            if status == 500:
                log.error("%s %s: %s", method, path, type(exc).__name__)
                self._send(500, {"error": "internal error"})
            else:
                log.info("%s %s refused (%d): %s", method, path, status, exc)
                self._send(status, {"error": str(exc)})
        except Exception as exc:  # never leak internals
            log.error("%s %s: internal error (%s)", method, path, type(exc).__name__, exc_info=True)
            self._send(500, {"error": "internal error"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    relay: Relay
    tls: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.settimeout(30.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


@dataclass
class RelayServer:
    """Serve ``relay`` on ``listen`` (HOST:PORT, port 0 picks one) over ``tls`` until :meth:`shutdown`."""

    relay: Relay
    listen: str
    tls: ssl.SSLContext
    _httpd: _Server | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def bind(self) -> RelayServer:
        host, _, port = self.listen.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"listen: {self.listen!r} must be HOST:PORT")
        try:
            httpd = _Server((host.strip("[]") or "0.0.0.0", int(port)), _Handler)
        except OSError as exc:
            raise ConfigError(f"listen: cannot bind {self.listen}: {exc.strerror}") from None
        httpd.relay = self.relay
        httpd.tls = self.tls
        self._httpd = httpd
        return self

    @property
    def url(self) -> str:
        assert self._httpd is not None, "bind() first"
        host, port = self._httpd.server_address[:2]
        return f"https://{host!s}:{port}"

    def serve_forever(self) -> None:
        if self._httpd is None:
            self.bind()
        assert self._httpd is not None
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> RelayServer:
        if self._httpd is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="kubeshield-relay", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._httpd = None


# --- wiring ----------------------------------------------------------------------------------------


def provider_jwks_fetch(issuer: str, *, context: ssl.SSLContext | None) -> Callable[[], bytes]:
    """A JWKS fetch for :class:`JwksCache`: discovery once (lazily), then GET ``jwks_uri``.

    Any failure is a :class:`JwksError` (the relay answers 503: the provider is unreachable, which is
    not the login's fault; nothing is issued).
    """
    found: dict[str, str] = {}

    def fetch() -> bytes:
        try:
            if "jwks_uri" not in found:
                found["jwks_uri"] = discover(issuer, context=context).jwks_uri
            reply = http_request(found["jwks_uri"], context=context)
        except LoginError as exc:
            raise JwksError(f"the provider's signing keys: {exc}") from None
        if reply.status != 200:
            raise JwksError(f"the provider's JWKS: HTTP {reply.status}")
        return reply.body

    return fetch


def open_relay(
    settings: RelaySettings,
    *,
    backend: KeyBackend | None = None,
    attestation: RelayAttestation | None = None,
    clock: Callable[[], float] = time.time,
) -> Relay:
    """Open the CA (unwrapping its key with ``keys:``), read the clusters, and build the :class:`Relay`.

    ``backend`` replaces the one ``keys:`` selects (a seam for tests); the relay keeps neither the
    backend nor the wrapped key open after the CA key is in memory.
    """
    from kubeshield.keys.registry import open_primary

    opened = backend if backend is not None else open_primary(settings.keys)
    try:
        ca = RelayCA.open(settings.ca.file, backend=opened)
    finally:
        if backend is None:
            opened.close()
    if attestation is not None:
        attestation.ca_pem = ca.cert_pem
    oidc = settings.oidc
    context = tls_context(ca_file=oidc.ca_file) if oidc.issuer.startswith("https://") else None
    verifier = IdTokenVerifier(
        issuer=oidc.issuer,
        client_id=oidc.client_id,
        jwks=JwksCache(fetch=provider_jwks_fetch(oidc.issuer, context=context)),
        allowed_algs=oidc.allowed_algs,
        leeway=oidc.leeway,
        clock=clock,
    )
    return Relay(
        oidc=oidc,
        verifier=verifier,
        ca=ca,
        clusters=settings.endpoints(),
        lifetime=timedelta(seconds=settings.certificates.lifetime),
        max_lifetime=timedelta(seconds=settings.certificates.max_lifetime),
        attest=attestation.verify_login if attestation and attestation.requires_login_evidence else None,
        challenge=attestation.new_challenge if attestation and attestation.requires_login_evidence else None,
        own_evidence=attestation.own_evidence if attestation and attestation.serves_evidence else None,
        clock=clock,
    )
