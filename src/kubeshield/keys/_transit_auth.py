"""Authentication to Vault/OpenBao for the Transit backend: token, AppRole, Kubernetes.

Private to :mod:`kubeshield.keys.transit`, which re-exports the three settings classes.

The token is kept only in memory (and in the file it was read from, for token auth). A session logs in
lazily on first use, renews its token when two thirds of the lease have passed, and logs in again when
renewal is refused or the lease can no longer be extended. Renewal happens on use: the KMS plugin's
periodic health round trip keeps an idle plugin's token alive. When the key service refuses a token
(HTTP 403), the caller invalidates it; the next use logs in again (AppRole, Kubernetes) or re-reads the
token file (token auth, so an agent that rotates the file is followed). A token that is refused again
raises :class:`~kubeshield.errors.BackendAuthError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kubeshield.errors import BackendAuthError, BackendError, ConfigError, InvalidRequest, KeyNotFound
from kubeshield.keys._transit_http import TransitHTTP

__all__ = ["AppRoleAuth", "AuthStatus", "KubernetesAuth", "TokenAuth", "TokenSession", "TransitAuth"]

_RENEW_FRACTION: Final = 2.0 / 3.0
_DEFAULT_SA_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A token read from ``token_file`` (re-read when the key service refuses it)."""

    token_file: str


@dataclass(frozen=True, slots=True)
class AppRoleAuth:
    """AppRole login with ``role_id`` and the secret_id held in ``secret_id_file``."""

    role_id: str
    secret_id_file: str
    mount: str = "approle"

    def __repr__(self) -> str:
        return f"AppRoleAuth(role_id=<hidden>, secret_id_file={self.secret_id_file!r}, mount={self.mount!r})"


@dataclass(frozen=True, slots=True)
class KubernetesAuth:
    """Kubernetes auth: the pod's service-account JWT from ``jwt_file`` logs in as ``role``."""

    role: str
    jwt_file: str = _DEFAULT_SA_TOKEN
    mount: str = "kubernetes"


TransitAuth = TokenAuth | AppRoleAuth | KubernetesAuth


@dataclass(frozen=True, slots=True)
class AuthStatus:
    """What the session knows about its credential (no secret). Times come from the injected clock."""

    method: str
    logged_in: bool
    logins: int
    renewals: int
    expires_at: float | None  # None: no expiry known (e.g. a root token)


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"transit {what} cannot be read: {path} ({exc.strerror})") from exc
    if not value:
        raise ConfigError(f"transit {what} is empty: {path}")
    return value


def _validate_auth(auth: TransitAuth) -> None:
    if isinstance(auth, TokenAuth):
        if not auth.token_file:
            raise ConfigError("transit auth tokenFile is required")
    elif isinstance(auth, AppRoleAuth):
        if not auth.role_id:
            raise ConfigError("transit auth roleId is required")
        if not auth.secret_id_file:
            raise ConfigError("transit auth secretIdFile is required")
    elif isinstance(auth, KubernetesAuth):
        if not auth.role:
            raise ConfigError("transit auth role is required")
        if not auth.jwt_file:
            raise ConfigError("transit auth jwtFile is required")
    else:
        raise TypeError("auth must be TokenAuth, AppRoleAuth or KubernetesAuth")


class TokenSession:
    """Holds one Vault/OpenBao token and keeps it valid. Thread-safe."""

    def __init__(self, *, http: TransitHTTP, auth: TransitAuth, clock: Callable[[], float]) -> None:
        _validate_auth(auth)
        self._http = http
        self._auth = auth
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._rejected: str | None = None  # a token file value already refused
        self._renewable = False
        self._lease = 0.0
        self._login_lease = 0.0
        self._expires_at: float | None = None
        self._renew_at: float | None = None
        self._logins = 0
        self._renewals = 0

    @property
    def method(self) -> str:
        return {TokenAuth: "token", AppRoleAuth: "approle", KubernetesAuth: "kubernetes"}[type(self._auth)]

    def status(self) -> AuthStatus:
        with self._lock:
            return AuthStatus(
                self.method, self._token is not None, self._logins, self._renewals, self._expires_at
            )

    def token(self) -> str:
        """A token that should be valid now, logging in or renewing first when needed."""
        with self._lock:
            if self._token is None:
                self._login()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._renew_or_relogin()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> bool:
        """The key service refused ``token``. Return True when a retry with a new token makes sense."""
        with self._lock:
            if self._token != token:
                return True  # another thread already replaced it
            self._token = None
            self._expires_at = self._renew_at = None
            if isinstance(self._auth, TokenAuth):
                self._rejected = token
                try:
                    fresh = _read_secret_file(self._auth.token_file, "token file")
                except ConfigError:
                    return False
                return fresh != token
            return True

    # -- internals, called with the lock held ------------------------------------------------------

    def _login(self) -> None:
        auth = self._auth
        if isinstance(auth, TokenAuth):
            token = _read_secret_file(auth.token_file, "token file")
            if token == self._rejected:
                raise BackendAuthError("transit: the token in the token file was refused by the key service")
            reply = self._http.request("GET", "auth/token/lookup-self", op="token lookup", token=token)
            data = reply.get("data")
            if not isinstance(data, dict):
                raise BackendError("transit token lookup: the key service sent an unexpected reply")
            ttl = float(data.get("ttl") or 0)
            self._install(token, lease=ttl, renewable=bool(data.get("renewable")))
            self._rejected = None
            return
        if isinstance(auth, AppRoleAuth):
            secret_id = _read_secret_file(auth.secret_id_file, "secretIdFile")
            body = {"role_id": auth.role_id, "secret_id": secret_id}
        else:
            jwt = _read_secret_file(auth.jwt_file, "jwtFile")
            body = {"role": auth.role, "jwt": jwt}
        try:
            reply = self._http.request("POST", f"auth/{auth.mount}/login", op="login", token=None, body=body)
        except (InvalidRequest, KeyNotFound) as exc:  # Vault answers a refused login with 400
            raise BackendAuthError(f"transit login to auth/{auth.mount} was refused: {exc}") from exc
        client_token, lease, renewable = _auth_block(reply, op="login")
        self._install(client_token, lease=lease, renewable=renewable)

    def _install(self, token: str, *, lease: float, renewable: bool) -> None:
        now = self._clock()
        self._token = token
        self._renewable = renewable
        self._lease = self._login_lease = lease
        self._logins += 1
        self._schedule(now, lease)

    def _schedule(self, now: float, lease: float) -> None:
        if lease <= 0:  # a token without TTL (root, or periodic with no ttl): nothing to renew
            self._expires_at = self._renew_at = None
            return
        self._expires_at = now + lease
        self._renew_at = now + lease * _RENEW_FRACTION

    def _renew_or_relogin(self) -> None:
        can_login = not isinstance(self._auth, TokenAuth)
        if self._renewable and self._token is not None:
            try:
                reply = self._http.request(
                    "POST", "auth/token/renew-self", op="token renew", token=self._token, body={}
                )
                _, lease, renewable = _auth_block(reply, op="token renew")
            except BackendAuthError:
                self._token = None
            except BackendError:
                if self._expires_at is not None and self._clock() < self._expires_at:
                    return  # key service unreachable: keep the token while it lasts
                raise
            else:
                self._renewals += 1
                self._renewable = renewable
                self._lease = lease
                # Near the token's max TTL renewal stops extending the lease; log in afresh instead.
                if can_login and lease < self._login_lease / 3:
                    self._token = None
                else:
                    self._schedule(self._clock(), lease)
                    return
        elif not can_login:
            # A non-renewable token from a file: re-read the file when its lease runs low (an agent
            # may have replaced it); otherwise keep using it until the key service refuses it.
            token = _read_secret_file(self._auth.token_file, "token file")  # type: ignore[union-attr]
            if token != self._token:
                self._token = None
            else:
                self._renew_at = self._expires_at
                return
        else:
            self._token = None
        if self._token is None:
            self._login()


def _auth_block(reply: dict[str, Any], *, op: str) -> tuple[str, float, bool]:
    auth = reply.get("auth")
    if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
        raise BackendError(f"transit {op}: the key service sent an unexpected reply")
    return auth["client_token"], float(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
