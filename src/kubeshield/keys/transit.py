"""The ``transit`` key backend: a KEK held by HashiCorp Vault or OpenBao's Transit secrets engine.

The KEK never leaves the key service; this backend sends DEK seeds to ``/v1/<mount>/encrypt/<key>`` and
``/v1/<mount>/decrypt/<key>`` over HTTPS (httpx, no hvac).

Ciphertext (``Wrapped.ciphertext``) is the Transit ciphertext string, ASCII-encoded, unchanged::

    b"vault:v" <key version, decimal> b":" base64( nonce(12) || AEAD ciphertext || tag(16) )

so a 32-byte seed gives about 90 bytes (far below the KMS limit of 1024). The caller's ``aad`` is bound
with Transit's ``associated_data`` (supported for ``aes256-gcm96`` by Vault 1.15+ and OpenBao 2.x)::

    associated_data = b"kubeshield-transit-v1\\x00" || aad

The domain prefix keeps a ciphertext that some other Transit client made with the same key (and no
associated data, or other associated data) from being accepted as one of ours.

key_id is ``transit:<mount>/<key>:v<version>-<created>``: the latest version of the Transit key and that
version's creation time (Unix seconds, as the key service reports it in ``keys``), read from
``/v1/<mount>/keys/<key>`` at start-up and by :meth:`TransitKeyBackend.refresh` (cached for
``refresh_interval`` seconds), so a rotation made in the key service is picked up. ``wrap`` asks Transit
for exactly that version (``key_version``), so the key_id returned always names the version that
encrypted. Ids are never reused: versions only grow, and a key deleted and re-created under the same
name starts again at ``v1`` with a new creation time, so its ids differ from the old key's (a refresh
that sees this logs it and moves to the new key; a re-creation within the same second as the original
is the one case the creation time cannot tell apart). Decrypting data whose key_id names a version with
another creation time than the key has now (its key was deleted) raises
:class:`~kubeshield.errors.KeyNotFound` when Transit refuses the ciphertext.

Older releases wrote ``transit:<mount>/<key>:v<version>`` (no creation time). Such key_ids are still
accepted by ``unwrap`` and name that version of the key as it is now.

``min_decryption_version``: versions below it are retired by the operator and the key service refuses
them. ``unwrap`` of such a ciphertext raises :class:`~kubeshield.errors.KeyNotFound` (mapped to
NOT_FOUND: the data is intact but its KEK version was retired; re-encrypt before retiring, or lower the
setting to recover), not ``InvalidCiphertext``: the two call for different actions. The check is local
against the cached setting, and after a refused decrypt the setting is re-read once so a change made in
the key service since the last refresh is reported the same way.

HTTP statuses map through one table (:mod:`kubeshield.keys._transit_http`): 400 is ``InvalidCiphertext``
on decrypt and ``InvalidRequest`` otherwise, 401/403 ``BackendAuthError`` (after one re-login where the
auth method allows it), 404 ``KeyNotFound``, 412/429/5xx and connection errors ``BackendUnavailable``,
timeouts ``BackendTimeout``. Errors and logs never hold a response body or a token.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from kubeshield.config.addresses import check_credential_url
from kubeshield.config.settings import TransitAuthSettings, TransitSettings
from kubeshield.errors import (
    BackendAuthError,
    BackendError,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
)
from kubeshield.keys._transit_auth import (
    AppRoleAuth,
    AuthStatus,
    KubernetesAuth,
    TokenAuth,
    TokenSession,
    TransitAuth,
)
from kubeshield.keys._transit_http import TransitHTTP
from kubeshield.keys.base import Health, InitCheck, InitReport, Wrapped
from kubeshield.keys.health import round_trip

__all__ = [
    "AppRoleAuth",
    "AuthStatus",
    "KubernetesAuth",
    "TokenAuth",
    "TransitAuth",
    "TransitKeyBackend",
    "auth_from_settings",
    "check_address",
]

_AAD_DOMAIN: Final = b"kubeshield-transit-v1\x00"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_MOUNT_RE: Final = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_CIPHERTEXT_RE: Final = re.compile(rb"vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})")
_SUPPORTED_TYPES: Final = frozenset({"aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"})
_RECHECK_AFTER_FAILURE: Final = 1.0  # seconds between metadata re-reads caused by refused decrypts
_VERSION_RE: Final = re.compile(r"v([1-9][0-9]{0,9})(?:-([0-9]{1,12}))?")

_log = logging.getLogger("kubeshield.keys.transit")


@dataclass(frozen=True, slots=True)
class _KeyState:
    latest: int
    min_decryption: int
    created: Mapping[int, int]  # version -> creation time reported by the key service


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class TransitKeyBackend:
    """KEK versions of one Transit key. Thread-safe. See the module docstring for formats and errors."""

    name = "transit"

    def __init__(
        self,
        *,
        address: str,
        mount: str = "transit",
        key: str,
        auth: TransitAuth,
        ca_file: str | None = None,
        timeout: float = 2.0,
        call_budget: float = 2.5,
        namespace: str | None = None,
        refresh_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        _check_names(mount=mount, key=key)
        if refresh_interval < 0:
            raise ConfigError("transit refresh interval must not be negative")
        if call_budget <= 0:
            raise ConfigError("transit call budget must be positive")
        check_address(address)
        self._mount = mount
        self._key = key
        self._clock = clock
        self._rng = rng
        self._refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._state: _KeyState | None = None
        self._closed = False
        self._last_read = float("-inf")
        self._http = TransitHTTP(
            address=address, ca_file=ca_file, timeout=timeout, namespace=namespace, transport=transport
        )
        self._call_budget = call_budget
        self._session = TokenSession(http=self._http, auth=auth, clock=clock)
        try:
            self.refresh(force=True)
        except BaseException:
            self._http.close()
            raise

    @classmethod
    def from_settings(cls, settings: TransitSettings) -> TransitKeyBackend:
        """Build from ``keys.transit``; the credential is read from the files its ``auth`` names."""
        return cls(
            address=settings.address,
            mount=settings.mount,
            key=settings.key,
            auth=auth_from_settings(settings.auth),
            ca_file=str(settings.ca_file) if settings.ca_file is not None else None,
        )

    @classmethod
    def initialize(cls, settings: TransitSettings, *, exist_ok: bool = False) -> InitReport:
        """``kubeshield keys init``: create the Transit key if missing (and allowed), then check it.

        An existing key is checked, not refused (``exist_ok`` changes nothing here: the key service, not
        kubeshield, owns the key). When the token may not create the key, or the mount is missing, the
        error says which ``bao`` command to run (``vault`` takes the same arguments).
        """
        del exist_ok
        mount, key = settings.mount, settings.key
        _check_names(mount=mount, key=key)
        check_address(settings.address)
        http = TransitHTTP(
            address=settings.address,
            ca_file=str(settings.ca_file) if settings.ca_file is not None else None,
            timeout=5.0,
        )
        session = TokenSession(http=http, auth=auth_from_settings(settings.auth), clock=time.time)
        create = f"bao write {mount}/keys/{key} type=aes256-gcm96"
        try:
            token = session.token()
            created = False
            try:
                http.request("GET", f"{mount}/keys/{key}", op="read key", token=token)
            except KeyNotFound:
                created = True
            except BackendAuthError:
                raise BackendAuthError(
                    f"this token may not read transit key {mount}/{key} (or the mount does not exist): "
                    f'give it the plugin policy of docs/backends.md (path "{mount}/keys/{key}" '
                    'capabilities ["read"]), or create the key as an operator: '
                    f"bao secrets enable -path={mount} transit; {create}"
                ) from None
            if created:
                try:
                    http.request(
                        "POST",
                        f"{mount}/keys/{key}",
                        op="create key",
                        token=token,
                        body={"type": "aes256-gcm96"},
                    )
                except BackendAuthError:
                    raise BackendAuthError(
                        f"transit key {mount}/{key} does not exist and this token may not create it; "
                        f"as an operator, run: {create}"
                    ) from None
                except KeyNotFound:
                    raise KeyNotFound(
                        f"there is no transit mount at {mount!r}; as an operator, run: "
                        f"bao secrets enable -path={mount} transit; {create}"
                    ) from None
            capabilities = _capabilities(http, token, mount=mount, key=key)
        finally:
            http.close()
        backend = cls.from_settings(settings)
        try:
            health = backend.check_health()
            return InitReport(
                backend="transit",
                created=created,
                key_id=backend.key_id(),
                location=f"transit key {mount}/{key} at {settings.address}",
                checks=(
                    InitCheck("encrypt and decrypt with this token", health.ok, health.detail, required=True),
                    *capabilities,
                ),
            )
        finally:
            backend.close()

    # -- KeyBackend ---------------------------------------------------------------------------------

    def key_id(self) -> str:
        state = self._current()
        return self._key_id_for(state.latest, state)

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        if not isinstance(plaintext, bytes):
            raise TypeError("plaintext must be bytes")
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        if not plaintext:
            raise InvalidRequest("plaintext must not be empty")
        state = self._current()
        version = state.latest
        body = {
            "plaintext": _b64(plaintext),
            "associated_data": _b64(_AAD_DOMAIN + aad),
            "key_version": version,
        }
        data = self._data(self._call("POST", f"{self._mount}/encrypt/{self._key}", op="encrypt", body=body))
        ciphertext = data.get("ciphertext")
        if (
            not isinstance(ciphertext, str)
            or data.get("key_version", version) != version
            or not ciphertext.startswith(f"vault:v{version}:")
            or not _CIPHERTEXT_RE.fullmatch(ciphertext.encode("ascii", "replace"))
        ):
            raise BackendError("transit encrypt: the key service sent an unexpected reply")
        return Wrapped(ciphertext=ciphertext.encode("ascii"), key_id=self._key_id_for(version, state))

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        if not isinstance(wrapped, Wrapped):
            raise TypeError("wrapped must be a Wrapped")
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        match = _CIPHERTEXT_RE.fullmatch(wrapped.ciphertext)
        if match is None:
            raise InvalidCiphertext()
        version = int(match.group(1))
        created: int | None = None
        if wrapped.key_id:
            id_version, created = self._parse_key_id(wrapped.key_id)
            if id_version != version:
                raise InvalidCiphertext()
        state = self._current()
        self._check_decryptable(version, state)
        body = {
            "ciphertext": wrapped.ciphertext.decode("ascii"),
            "associated_data": _b64(_AAD_DOMAIN + aad),
        }
        try:
            reply = self._call("POST", f"{self._mount}/decrypt/{self._key}", op="decrypt", body=body)
        except InvalidCiphertext:
            self._recheck_min_decryption(version)
            now_created = self._current().created.get(version)
            if created is not None and now_created is not None and now_created != created:
                raise KeyNotFound(
                    f"the key_id names version v{version} of a transit key {self._mount}/{self._key} "
                    "that was deleted: the key of that name now is another key"
                ) from None
            raise
        plaintext = self._data(reply).get("plaintext")
        if not isinstance(plaintext, str):
            raise BackendError("transit decrypt: the key service sent an unexpected reply")
        try:
            return base64.b64decode(plaintext, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BackendError("transit decrypt: the key service sent an unexpected reply") from exc

    def check_health(self) -> Health:
        """Re-read the key, then a wrap/unwrap round trip (:func:`kubeshield.keys.health.round_trip`)."""
        return round_trip(self, clock=self._clock, rng=self._rng, before=self.refresh)

    def close(self) -> None:
        self._closed = True
        self._http.close()

    # -- Refreshable, Rotatable ---------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the key's versions (at most once per ``refresh_interval`` unless ``force``).

        Return True when the current key_id changed.
        """
        with self._refresh_lock:
            if not force and self._clock() - self._last_read < self._refresh_interval:
                return False
            before = self._state
            state = self._read_state()
            if before is not None and _recreated(before, state):
                _log.warning(
                    "the transit key was deleted and re-created under the same name; its key_ids change",
                    extra={"fields": {"key": f"{self._mount}/{self._key}", "event": "transit_key_recreated"}},
                )
            with self._lock:
                self._state = state
                self._last_read = self._clock()
        if before is None:
            return False
        return self._key_id_for(before.latest, before) != self._key_id_for(state.latest, state)

    def rotate(self) -> str:
        """Create a new version of the Transit key in the key service and return its key_id."""
        self._call("POST", f"{self._mount}/keys/{self._key}/rotate", op="rotate", body={})
        self.refresh(force=True)
        return self.key_id()

    def auth_status(self) -> AuthStatus:
        """Login and renewal counters of the credential (no secret)."""
        return self._session.status()

    # -- internals ----------------------------------------------------------------------------------

    def _key_id_for(self, version: int, state: _KeyState) -> str:
        """``transit:<mount>/<key>:v<version>-<created>`` (see the module docstring)."""
        created = state.created.get(version)
        suffix = f"-{created}" if created is not None and created >= 0 else ""
        return f"transit:{self._mount}/{self._key}:v{version}{suffix}"

    def _parse_key_id(self, key_id: str) -> tuple[int, int | None]:
        """(version, creation time or None for a key_id of an older release); KeyNotFound if not ours."""
        prefix = f"transit:{self._mount}/{self._key}:"
        match = _VERSION_RE.fullmatch(key_id[len(prefix) :]) if key_id.startswith(prefix) else None
        if match is None or not key_id.isascii():
            raise KeyNotFound("the key_id does not name a version of this transit key")
        created = match.group(2)
        return int(match.group(1)), int(created) if created is not None else None

    def _current(self) -> _KeyState:
        state = self._state
        if state is None:  # pragma: no cover - __init__ always loads it
            raise BackendError("transit key state is not loaded")
        return state

    def _check_decryptable(self, version: int, state: _KeyState) -> None:
        if version < state.min_decryption:
            raise KeyNotFound(
                f"transit key {self._mount}/{self._key} version v{version} is below its "
                f"min_decryption_version ({state.min_decryption}): that version was retired"
            )

    def _recheck_min_decryption(self, version: int) -> None:
        """After a refused decrypt: maybe the operator raised min_decryption_version since our last read."""
        if self._clock() - self._last_read < _RECHECK_AFTER_FAILURE:
            return
        try:
            self.refresh(force=True)
        except KeyNotFound:
            raise
        except BackendError:
            return
        self._check_decryptable(version, self._current())

    def _read_state(self) -> _KeyState:
        data = self._data(self._call("GET", f"{self._mount}/keys/{self._key}", op="read key"))
        key_type = data.get("type")
        if key_type not in _SUPPORTED_TYPES:
            raise ConfigError(
                f"transit key {self._mount}/{self._key} has type {key_type!r}; "
                f"use one of {', '.join(sorted(_SUPPORTED_TYPES))}"
            )
        if data.get("derived") or data.get("convergent_encryption"):
            raise ConfigError(f"transit key {self._mount}/{self._key} is derived; use a non-derived key")
        latest = data.get("latest_version")
        min_dec = data.get("min_decryption_version")
        keys = data.get("keys")
        if not isinstance(latest, int) or not isinstance(min_dec, int) or not isinstance(keys, dict):
            raise BackendError("transit read key: the key service sent an unexpected reply")
        try:
            created = {int(v): int(t) for v, t in keys.items() if isinstance(t, int)}
        except ValueError as exc:
            raise BackendError("transit read key: the key service sent an unexpected reply") from exc
        if latest < 1:
            raise BackendError("transit read key: the key service sent an unexpected reply")
        return _KeyState(latest=latest, min_decryption=max(min_dec, 1), created=created)

    def _call(
        self, method: str, path: str, *, op: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call, with one re-login on a refused token, all within ``call_budget`` seconds."""
        if self._closed:
            raise BackendUnavailable("transit backend is closed")
        decrypt = op == "decrypt"
        deadline = time.monotonic() + self._call_budget
        token = self._session.token()
        try:
            return self._http.request(
                method, path, op=op, token=token, body=body, decrypt=decrypt, deadline=deadline
            )
        except BackendAuthError:
            if not self._session.invalidate(token):
                raise
        token = self._session.token()
        return self._http.request(
            method, path, op=op, token=token, body=body, decrypt=decrypt, deadline=deadline
        )

    @staticmethod
    def _data(reply: dict[str, Any]) -> dict[str, Any]:
        data = reply.get("data")
        if not isinstance(data, dict):
            raise BackendError("transit: the key service sent an unexpected reply")
        return data


def auth_from_settings(settings: TransitAuthSettings) -> TransitAuth:
    """``keys.transit.auth`` -> the auth object; a missing field raises ``ConfigError`` naming it."""
    if settings.method == "token":
        if settings.token_file is None:
            raise ConfigError("keys.transit.auth.tokenFile: required when method is token")
        return TokenAuth(token_file=str(settings.token_file))
    if settings.method == "approle":
        if not settings.role_id:
            raise ConfigError("keys.transit.auth.roleId: required when method is approle")
        if settings.secret_id_file is None:
            raise ConfigError("keys.transit.auth.secretIdFile: required when method is approle")
        return AppRoleAuth(role_id=settings.role_id, secret_id_file=str(settings.secret_id_file))
    if settings.method == "kubernetes":
        if not settings.role:
            raise ConfigError("keys.transit.auth.role: required when method is kubernetes")
        if settings.jwt_file is None:
            return KubernetesAuth(role=settings.role)
        return KubernetesAuth(role=settings.role, jwt_file=str(settings.jwt_file))
    raise ConfigError(f"keys.transit.auth.method: unknown method {settings.method!r}")


def _capabilities(http: TransitHTTP, token: str, *, mount: str, key: str) -> tuple[InitCheck, ...]:
    """What the token may do on the paths the plugin uses (``sys/capabilities-self``)."""
    paths = {
        "read the key (rotation is seen)": f"{mount}/keys/{key}",
        "rotate (`kubeshield keys rotate`)": f"{mount}/keys/{key}/rotate",
    }
    try:
        reply = http.request(
            "POST",
            "sys/capabilities-self",
            op="capabilities",
            token=token,
            body={"paths": list(paths.values())},
        )
    except BackendError as exc:
        return tuple(InitCheck(what, None, f"not checked ({type(exc).__name__})") for what in paths)
    data = reply.get("data") if isinstance(reply.get("data"), dict) else reply
    checks = []
    for what, path in paths.items():
        caps = data.get(path) if isinstance(data, dict) else None
        names = [str(c) for c in caps] if isinstance(caps, list) else []
        wanted = "read" if path.endswith(f"/keys/{key}") else "update"
        allowed = "root" in names or wanted in names
        checks.append(InitCheck(what, allowed, ", ".join(names) or "none"))
    return tuple(checks)


def _recreated(old: _KeyState, new: _KeyState) -> bool:
    """Whether ``new`` is another key than ``old`` under the same name (fewer versions, or other times)."""
    return new.latest < old.latest or any(
        version in new.created and new.created[version] != created for version, created in old.created.items()
    )


def _check_names(*, mount: str, key: str) -> None:
    """Mount and key names go into URL paths: letters, digits, ``_ . -`` (and ``/`` in a mount)."""
    if not _MOUNT_RE.fullmatch(mount) or ".." in mount:
        raise ConfigError("transit mount must be a path of letters, digits, '_', '.', '-'")
    if not _NAME_RE.fullmatch(key) or key in {".", ".."}:
        raise ConfigError("transit key must be a name of letters, digits, '_', '.', '-'")


def check_address(address: str) -> None:
    """``keys.transit.address`` must be https, or http to a loopback address (the token travels on it)."""
    check_credential_url(address, field="keys.transit.address", carries="the token and every DEK seed")
