"""OpenID Connect ID token verification: the relay's only reason to believe who a person is.

``IdTokenVerifier(issuer=..., client_id=..., jwks=JwksCache(fetch=...)).verify(token, nonce=...)``
checks, in this order, and refuses with one :class:`IdTokenError` per reason (the message names the
problem; it never holds the token or a signature):

1. shape: a JWS in compact form (three base64url parts, at most 16 KiB); an encrypted ID token (five
   parts) is refused, so is anything else;
2. header: ``alg`` must be one of ``allowed_algs`` (asymmetric only: RS256/384/512, PS256/384/512,
   ES256/384/512, EdDSA). ``alg: none`` is refused by name, and so is every HMAC algorithm (HS256...):
   a verifier that accepted HMAC with the provider's *public* key as the secret could be fooled by
   anyone holding that public key. A ``crit`` header is refused (no extension is understood here);
3. key: the JWKS key named by ``kid`` (or, without ``kid``, the one key of the algorithm's type); an
   unknown ``kid`` triggers one refresh of the JWKS (providers rotate keys), rate-limited so a flood
   of forged tokens cannot make the relay hammer the provider. The key's type and curve must match
   ``alg`` (an RSA key never verifies an ES256 token);
4. signature (joserfc);
5. claims: ``iss`` equals the configured issuer exactly; ``aud`` is the client id or a list holding
   it, and when the list names another audience too, ``azp`` must be the client id (OIDC Core
   3.1.3.7); ``exp`` in the future, ``iat`` and ``nbf`` not in the future, each with ``leeway``
   seconds for clock skew; ``sub`` a non-empty string; ``nonce`` equal to the one the flow sent
   (compared in constant time) whenever the caller passes one.

The JWKS comes from a ``fetch`` callable (the relay gives it an HTTP GET of the provider's
``jwks_uri``, :mod:`kubeshield.access.oidc`), so this module does no I/O and is tested with keys made
at test time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key

from kubeshield.access.oidc import ASYMMETRIC_ALGS, DEFAULT_ALGS
from kubeshield.errors import InvalidRequest, KubeshieldError

__all__ = [
    "ASYMMETRIC_ALGS",
    "DEFAULT_ALGS",
    "IdTokenError",
    "IdTokenVerifier",
    "JwksCache",
    "JwksError",
    "VerifiedIdToken",
]


_MAX_TOKEN = 16 * 1024
_MAX_JWKS = 256 * 1024
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

PublicKey = RSAKey | ECKey | OKPKey


class IdTokenError(InvalidRequest):
    """An ID token was refused. The message names the reason and never holds the token."""


class JwksError(KubeshieldError):
    """The provider's key set could not be fetched or is not a JWKS (the relay answers 503)."""


@dataclass(frozen=True, slots=True)
class VerifiedIdToken:
    """The claims of an ID token that passed every check."""

    claims: Mapping[str, Any] = field(repr=False)
    issuer: str
    subject: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"VerifiedIdToken(issuer={self.issuer!r}, subject={self.subject!r})"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _b64url(part: str, what: str) -> bytes:
    if not part or any(c not in _B64URL for c in part):
        raise IdTokenError(f"ID token: the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise IdTokenError(f"ID token: the {what} is not base64url") from None


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise IdTokenError(f"ID token: the {what} is not JSON") from None
    if not isinstance(doc, dict):
        raise IdTokenError(f"ID token: the {what} is not a JSON object")
    return doc


class JwksCache:
    """The provider's signing keys, fetched on first use and again when a token names an unknown kid.

    ``fetch()`` returns the JWKS document (bytes). A refresh happens at most once per
    ``min_refresh_interval`` seconds; keys of type ``oct`` (symmetric) and keys marked ``use: enc``
    are ignored: neither can sign an ID token that anybody else can verify.
    """

    def __init__(
        self,
        *,
        fetch: Callable[[], bytes],
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_refresh = min_refresh_interval
        self._clock = clock
        self._keys: list[tuple[str | None, PublicKey]] | None = None
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def keys(self) -> list[tuple[str | None, PublicKey]]:
        """``(kid, key)`` pairs, fetched when none are held yet."""
        with self._lock:
            if self._keys is None:
                self._load()
            assert self._keys is not None
            return list(self._keys)

    def refresh(self) -> bool:
        """Fetch again unless the last fetch was less than ``min_refresh_interval`` ago. True if fetched."""
        with self._lock:
            if self._clock() - self._fetched_at < self._min_refresh:
                return False
            self._load()
            return True

    def _load(self) -> None:
        self._fetched_at = self._clock()
        raw = self._fetch()
        if len(raw) > _MAX_JWKS:
            raise JwksError(f"the provider's JWKS is larger than {_MAX_JWKS} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise JwksError("the provider's JWKS is not JSON") from None
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise JwksError("the provider's JWKS has no keys list")
        keys: list[tuple[str | None, PublicKey]] = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
            try:
                key = import_key(public)
            except (JoseError, ValueError, TypeError, KeyError):
                continue
            if not isinstance(key, RSAKey | ECKey | OKPKey):
                continue
            kid = entry.get("kid")
            keys.append((kid if isinstance(kid, str) else None, key))
        self._keys = keys


def _key_fits(key: PublicKey, alg: str) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    if alg in _EC_CURVES:
        return isinstance(key, ECKey) and key.as_dict(private=False).get("crv") == _EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, OKPKey) and key.as_dict(private=False).get("crv") in ("Ed25519", "Ed448")
    return False


class IdTokenVerifier:
    """Verifies ID tokens of one provider (``issuer``) for one client (``client_id``); see the module doc."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        jwks: JwksCache,
        allowed_algs: Collection[str] = DEFAULT_ALGS,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        if not client_id:
            raise ValueError("client_id must not be empty")
        algs = tuple(allowed_algs)
        if not algs:
            raise ValueError("allowed_algs must not be empty")
        bad = [a for a in algs if a not in ASYMMETRIC_ALGS]
        if bad:
            raise ValueError(
                f"allowed_algs: {', '.join(bad)} not allowed (public-key algorithms only: "
                f"{', '.join(sorted(ASYMMETRIC_ALGS))})"
            )
        if not 0 <= leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        self.issuer = issuer
        self.client_id = client_id
        self._jwks = jwks
        self._algs = algs
        self._leeway = leeway
        self._clock = clock

    def verify(self, token: object, *, nonce: str | None = None) -> VerifiedIdToken:
        """The verified claims of ``token``, or :class:`IdTokenError` naming the first check that failed."""
        if not isinstance(token, str):
            raise IdTokenError("ID token: expected a string")
        if len(token) > _MAX_TOKEN:
            raise IdTokenError(f"ID token: longer than {_MAX_TOKEN} characters")
        parts = token.split(".")
        if len(parts) == 5:
            raise IdTokenError("ID token: encrypted (JWE) ID tokens are not supported")
        if len(parts) != 3:
            raise IdTokenError("ID token: not a JWS in compact form (header.payload.signature)")
        header = _json_object(_b64url(parts[0], "header"), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise IdTokenError("ID token: the header has no alg")
        if alg.lower() == "none":
            raise IdTokenError("ID token: alg none (an unsigned token) is refused")
        if alg.upper().startswith("HS"):
            raise IdTokenError(
                f"ID token: alg {_short(alg)} (HMAC) is refused: ID tokens must carry the provider's "
                "public-key signature"
            )
        if alg not in self._algs:
            raise IdTokenError(
                f"ID token: alg {_short(alg)} is not allowed (allowed: {', '.join(self._algs)})"
            )
        if "crit" in header:
            raise IdTokenError("ID token: the header has critical extensions (crit), none is supported")
        if not parts[2]:
            raise IdTokenError("ID token: the signature is empty")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise IdTokenError("ID token: the header's kid is not a string")
        key = self._key_for(kid, alg)
        try:
            jws.deserialize_compact(token, key, algorithms=[alg])
        except JoseError:
            raise IdTokenError("ID token: the signature does not verify with the provider's key") from None
        except (ValueError, TypeError):
            raise IdTokenError("ID token: the signature is malformed") from None
        claims = _json_object(_b64url(parts[1], "payload"), "payload")
        return self._check_claims(claims, nonce=nonce)

    def _key_for(self, kid: str | None, alg: str) -> PublicKey:
        for attempt in range(2):
            candidates = [key for key_kid, key in self._jwks.keys() if kid is None or key_kid == kid]
            fitting = [key for key in candidates if _key_fits(key, alg)]
            if kid is not None and candidates and not fitting:
                raise IdTokenError(f"ID token: key {_short(kid)} of the provider is not a key for {alg}")
            if len(fitting) == 1:
                return fitting[0]
            if len(fitting) > 1:
                raise IdTokenError(f"ID token: no kid in the header and the provider has several {alg} keys")
            if attempt == 0 and not self._jwks.refresh():
                break
        named = f"key {_short(kid)}" if kid is not None else f"a {alg} key"
        raise IdTokenError(f"ID token: the provider's JWKS has no {named}")

    def _check_claims(self, claims: Mapping[str, Any], *, nonce: str | None) -> VerifiedIdToken:
        iss = claims.get("iss")
        if iss != self.issuer:
            raise IdTokenError(f"ID token: issuer {_short(iss)} is not the expected {self.issuer!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise IdTokenError("ID token: aud is missing or not a string or list of strings")
        if self.client_id not in audiences:
            raise IdTokenError(f"ID token: audience {_short(aud)} does not include {self.client_id!r}")
        azp = claims.get("azp")
        if len(audiences) > 1 and azp is None:
            raise IdTokenError("ID token: several audiences and no azp naming this client")
        if azp is not None and azp != self.client_id:
            raise IdTokenError(f"ID token: azp {_short(azp)} is not {self.client_id!r}")
        now = self._clock()
        exp = self._required(claims, "exp")
        if now >= exp + self._leeway:
            raise IdTokenError(f"ID token: expired at {_iso(exp)} (now {_iso(now)})")
        iat = self._required(claims, "iat")
        if iat > now + self._leeway:
            raise IdTokenError(f"ID token: issued in the future ({_iso(iat)}; now {_iso(now)})")
        nbf = self._number(claims, "nbf", required=False)
        if nbf is not None and nbf > now + self._leeway:
            raise IdTokenError(f"ID token: not valid before {_iso(nbf)} (now {_iso(now)})")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise IdTokenError("ID token: sub is missing or empty")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str):
                raise IdTokenError("ID token: the flow sent a nonce and the token carries none")
            if not hmac.compare_digest(got.encode(), nonce.encode()):
                raise IdTokenError("ID token: the nonce is not the one this login sent")
        return VerifiedIdToken(
            claims=dict(claims), issuer=iss, subject=sub, expires_at=datetime.fromtimestamp(exp, tz=UTC)
        )

    @classmethod
    def _required(cls, claims: Mapping[str, Any], name: str) -> float:
        value = cls._number(claims, name, required=True)
        assert value is not None
        return value

    @staticmethod
    def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
        value = claims.get(name)
        if value is None:
            if required:
                raise IdTokenError(f"ID token: {name} is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise IdTokenError(f"ID token: {name} is not a number")
        if abs(value) > 1e11:
            raise IdTokenError(f"ID token: {name} is out of range")
        return float(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
