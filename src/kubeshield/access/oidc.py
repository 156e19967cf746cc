"""OpenID Connect from the user's side (device code, auth code + PKCE) and the small HTTP client both
the login and the relay use (standard library: ``urllib`` over an explicit TLS context).

* :func:`discover` reads ``<issuer>/.well-known/openid-configuration`` and insists that its ``issuer``
  is exactly the one asked for (OIDC Discovery 4.3), so a document cannot point the relay elsewhere.
* :func:`start_device_flow` / :func:`poll_device_flow` (RFC 8628): the person opens the verification
  URL on any device and types the user code; the CLI polls the token endpoint at the interval the
  provider asks for, slowing down by 5 s on ``slow_down``.
* :func:`auth_code_flow` (RFC 6749 + RFC 7636 S256 + RFC 8252 loopback redirect): a one-shot listener
  on ``http://127.0.0.1:<random port>/callback``; ``state`` (256 random bits) is compared in constant
  time and a callback with a wrong state is answered 400 and ignored (another local process cannot
  end the login by guessing), ``nonce`` goes into the ID token and the relay checks it, and RFC 9207's
  ``iss`` parameter is checked when the provider sends it.

Only a public client is used (no client secret exists on a user's machine). Tokens are returned in
:class:`Tokens` whose ``repr`` shows none of them; no error message holds a token or a code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from kubeshield.errors import KubeshieldError

__all__ = [
    "ASYMMETRIC_ALGS",
    "DEFAULT_ALGS",
    "DeviceAuthorization",
    "HttpReply",
    "LoginError",
    "ProviderMetadata",
    "Tokens",
    "auth_code_flow",
    "discover",
    "http_request",
    "pkce_pair",
    "poll_device_flow",
    "start_device_flow",
    "tls_context",
]

#: every algorithm an ID token may be signed with here (public-key signatures only; never none or HMAC)
ASYMMETRIC_ALGS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: what a relay accepts unless its settings say otherwise
DEFAULT_ALGS: tuple[str, ...] = ("RS256", "PS256", "ES256", "ES384", "RS384", "PS384")

_MAX_BODY = 1 << 20
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginError(KubeshieldError):
    """A login step failed: the provider or the relay refused, could not be reached, or timed out."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes = field(repr=False)
    content_type: str

    def json(self, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise LoginError(f"{what}: the answer is not JSON (HTTP {self.status})") from None
        if not isinstance(doc, dict):
            raise LoginError(f"{what}: the answer is not a JSON object (HTTP {self.status})")
        return doc


def tls_context(*, ca_file: Path | None = None, ca_pem: bytes | None = None) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file``/``ca_pem``, else the system store."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file is not None or ca_pem is not None:
            ctx.load_verify_locations(
                cafile=str(ca_file) if ca_file is not None else None,
                cadata=ca_pem.decode("ascii") if ca_pem is not None else None,
            )
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise LoginError(f"cannot load the CA bundle {ca_file or '(inline)'}: {type(exc).__name__}") from None
    return ctx


def http_request(
    url: str,
    *,
    context: ssl.SSLContext | None,
    method: str = "GET",
    form: Mapping[str, str] | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpReply:
    """One request; an HTTP error status is returned (not raised); transport failures raise LoginError."""
    data: bytes | None = None
    all_headers = {"Accept": "application/json", **(headers or {})}
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers["Content-Type"] = "application/json"
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("https", "http"):
        raise LoginError(f"{_where(url)}: not an http(s) URL")
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context)]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(_MAX_BODY + 1)
            status = int(response.status)
            ctype = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(_MAX_BODY + 1)
            return HttpReply(int(exc.code), body[:_MAX_BODY], exc.headers.get("Content-Type", ""))
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
        if isinstance(reason, ssl.SSLCertVerificationError):
            text = f"its TLS certificate is not trusted ({reason.verify_message})"
        raise LoginError(f"cannot reach {_where(url)}: {text}") from None
    except (OSError, ValueError) as exc:
        raise LoginError(f"cannot reach {_where(url)}: {type(exc).__name__}") from None
    if len(body) > _MAX_BODY:
        raise LoginError(f"{_where(url)}: the answer is larger than {_MAX_BODY} bytes")
    return HttpReply(status, body, ctype)


def _where(url: str) -> str:
    """The URL without query or fragment (a query can hold a code)."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, p.path, "", ""))


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    token_endpoint: str
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    code_challenge_methods: tuple[str, ...] = ()


def discover(issuer: str, *, context: ssl.SSLContext | None, timeout: float = 30.0) -> ProviderMetadata:
    """The provider's metadata; ``LoginError`` if absent, not JSON, or naming another issuer."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    reply = http_request(url, context=context, timeout=timeout)
    if reply.status != 200:
        raise LoginError(f"OpenID discovery at {_where(url)}: HTTP {reply.status}")
    doc = reply.json("OpenID discovery")
    if doc.get("issuer") != issuer:
        raise LoginError(
            f"OpenID discovery: the document names issuer {str(doc.get('issuer'))[:80]!r}, not {issuer!r}"
        )
    for name in ("jwks_uri", "token_endpoint"):
        if not isinstance(doc.get(name), str):
            raise LoginError(f"OpenID discovery: {name} is missing")
    methods = doc.get("code_challenge_methods_supported") or []
    return ProviderMetadata(
        issuer=issuer,
        jwks_uri=doc["jwks_uri"],
        token_endpoint=doc["token_endpoint"],
        authorization_endpoint=_opt_str(doc, "authorization_endpoint"),
        device_authorization_endpoint=_opt_str(doc, "device_authorization_endpoint"),
        code_challenge_methods=tuple(m for m in methods if isinstance(m, str)),
    )


def _opt_str(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True, repr=False)
class Tokens:
    """What the token endpoint returned. ``repr`` shows no token."""

    id_token: str
    access_token: str | None = None
    expires_in: float | None = None
    nonce: str | None = None

    def __repr__(self) -> str:
        return "Tokens(<hidden>)"


def _tokens(reply: HttpReply, *, nonce: str | None = None) -> Tokens:
    doc = reply.json("token endpoint")
    id_token = doc.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise LoginError("token endpoint: no id_token in the answer (is the openid scope allowed?)")
    access = doc.get("access_token")
    expires = doc.get("expires_in")
    return Tokens(
        id_token=id_token,
        access_token=access if isinstance(access, str) else None,
        expires_in=float(expires) if isinstance(expires, int | float) else None,
        nonce=nonce,
    )


def _oauth_error(reply: HttpReply) -> str:
    try:
        doc = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError):
        return f"HTTP {reply.status}"
    error = doc.get("error") if isinstance(doc, dict) else None
    return str(error)[:64] if isinstance(error, str) else f"HTTP {reply.status}"


# --- device code (RFC 8628) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """A started device flow. ``device_code`` is the polling secret (not shown); the rest is for the user."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def start_device_flow(
    meta: ProviderMetadata,
    *,
    client_id: str,
    scopes: Sequence[str],
    context: ssl.SSLContext | None,
) -> DeviceAuthorization:
    if meta.device_authorization_endpoint is None:
        raise LoginError("the provider offers no device authorization endpoint (use --flow auth-code)")
    reply = http_request(
        meta.device_authorization_endpoint,
        context=context,
        method="POST",
        form={"client_id": client_id, "scope": " ".join(scopes)},
    )
    if reply.status != 200:
        raise LoginError(f"device authorization refused: {_oauth_error(reply)}")
    doc = reply.json("device authorization")
    for name in ("device_code", "user_code", "verification_uri"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise LoginError(f"device authorization: {name} is missing")
    interval = doc.get("interval", 5)
    expires = doc.get("expires_in", 600)
    return DeviceAuthorization(
        device_code=doc["device_code"],
        user_code=doc["user_code"],
        verification_uri=doc["verification_uri"],
        verification_uri_complete=_opt_str(doc, "verification_uri_complete"),
        expires_in=float(expires) if isinstance(expires, int | float) else 600.0,
        interval=max(1.0, float(interval)) if isinstance(interval, int | float) else 5.0,
    )


def poll_device_flow(
    meta: ProviderMetadata,
    auth: DeviceAuthorization,
    *,
    client_id: str,
    context: ssl.SSLContext | None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Tokens:
    """Poll until the person approves (Tokens), denies, or the code expires (LoginError)."""
    deadline = clock() + auth.expires_in
    interval = auth.interval
    while True:
        sleep(interval)
        if clock() > deadline:
            raise LoginError("device login: the code expired before it was approved; run login again")
        reply = http_request(
            meta.token_endpoint,
            context=context,
            method="POST",
            form={"grant_type": DEVICE_GRANT, "device_code": auth.device_code, "client_id": client_id},
        )
        if reply.status == 200:
            return _tokens(reply)
        error = _oauth_error(reply)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5.0
            continue
        if error == "access_denied":
            raise LoginError("device login: the request was denied at the provider")
        if error == "expired_token":
            raise LoginError("device login: the code expired before it was approved; run login again")
        raise LoginError(f"device login: the token endpoint refused: {error}")


# --- authorization code + PKCE (RFC 7636, RFC 8252) ---------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE verifier (43 characters, 256 bits) and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _Callback(BaseHTTPRequestHandler):
    server: _CallbackServer

    def log_message(self, format: str, *args: Any) -> None:  # the URL holds the code: never logged
        pass

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path != "/callback":
            self._reply(404, "not found")
            return
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        state = query.get("state", "")
        if not hmac.compare_digest(state.encode(), self.server.state.encode()):
            self._reply(400, "This login link does not belong to the running login. Ignored.")
            return
        self.server.result = query
        self._reply(200, "Login complete: you can close this window and return to the terminal.")
        self.server.done.set()

    def _reply(self, status: int, text: str) -> None:
        body = f"<!DOCTYPE html><html><body><p>{text}</p></body></html>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _CallbackServer(HTTPServer):
    state: str
    result: dict[str, str] | None
    done: threading.Event

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        sock.settimeout(10.0)
        return sock, addr


def auth_code_flow(
    meta: ProviderMetadata,
    *,
    client_id: str,
    scopes: Sequence[str],
    context: ssl.SSLContext | None,
    open_url: Callable[[str], None],
    timeout: float = 300.0,
) -> Tokens:
    """Run the browser login; ``open_url(url)`` shows or opens the authorization URL. Returns Tokens
    whose ``nonce`` is the one sent (the relay checks the ID token carries it)."""
    if meta.authorization_endpoint is None:
        raise LoginError("the provider offers no authorization endpoint (use --flow device)")
    if meta.code_challenge_methods and "S256" not in meta.code_challenge_methods:
        raise LoginError("the provider does not support PKCE S256; refusing a login without it")
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    server = _CallbackServer(("127.0.0.1", 0), _Callback)
    server.state, server.result, server.done = state, None, threading.Event()
    port = server.server_address[1]
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if "?" in meta.authorization_endpoint else "?"
        open_url(f"{meta.authorization_endpoint}{sep}{query}")
        if not server.done.wait(timeout):
            raise LoginError(f"browser login: no answer within {int(timeout)} s; run login again")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    result: dict[str, str] = server.result or {}
    if "error" in result:
        raise LoginError(f"browser login: the provider answered {result['error'][:64]!r}")
    iss = result.get("iss")
    if iss is not None and iss != meta.issuer:
        raise LoginError("browser login: the answer names another issuer (RFC 9207 iss); refused")
    code = result.get("code")
    if not code:
        raise LoginError("browser login: the answer holds no code")
    reply = http_request(
        meta.token_endpoint,
        context=context,
        method="POST",
        form={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )
    if reply.status != 200:
        raise LoginError(f"browser login: the token endpoint refused the code: {_oauth_error(reply)}")
    return _tokens(reply, nonce=nonce)
