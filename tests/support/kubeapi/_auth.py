"""Who is calling, and may they: client certificates, static tokens, ServiceAccount JWTs, a policy hook.

ServiceAccount tokens are real RS256 JWTs signed by a key made at test time, with the claims
kube-apiserver puts in projected tokens (``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``nbf``, ``jti`` and
``kubernetes.io`` with namespace, serviceaccount, and for pod-bound tokens pod name/uid). Reviewing one
checks the signature, issuer, expiry, audiences, and that the ServiceAccount (and the bound pod) still
exist with the uids the token names, as the apiserver's ServiceAccount token authenticator does.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.kubeapi._status import ApiStatus

__all__ = ["Attributes", "Decision", "TokenAuthority", "User"]

ISSUER = "https://kubernetes.default.svc.cluster.local"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


@dataclass(frozen=True)
class Attributes:
    """What a request (or a SubjectAccessReview) asks to do, as the apiserver's authorizer sees it."""

    user: str
    groups: tuple[str, ...]
    verb: str
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""  # non-resource requests only


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


Policy = Callable[[Attributes], Decision]


def allow_all(_: Attributes) -> Decision:
    return Decision(True, "the stand-in allows every authenticated user")


class TokenAuthority:
    """Mints and reviews ServiceAccount JWTs with one RSA key made at construction."""

    def __init__(
        self,
        *,
        issuer: str = ISSUER,
        api_audiences: Sequence[str] = (ISSUER,),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.issuer = issuer
        self.api_audiences = tuple(api_audiences)
        self._clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = uuid.uuid4().hex[:16]

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def mint(
        self,
        *,
        namespace: str,
        service_account: str,
        sa_uid: str,
        audiences: Sequence[str],
        expiration_seconds: int = 3600,
        pod: tuple[str, str] | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        issued_at: dt.datetime | None = None,
    ) -> tuple[str, dt.datetime]:
        """A signed token and its expiry. ``signing_key`` lets a test sign with a key we do not trust."""
        now = issued_at or self._clock()
        expires = now + dt.timedelta(seconds=expiration_seconds)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": list(audiences or self.api_audiences),
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": sa_uid},
            },
        }
        if pod is not None:
            claims["kubernetes.io"]["pod"] = {"name": pod[0], "uid": pod[1]}
        token = jwt.encode(claims, signing_key or self._key, algorithm="RS256", headers={"kid": self.key_id})
        return token, expires

    def review(
        self,
        token: str,
        audiences: Sequence[str],
        *,
        lookup: Callable[[str, str, str], dict[str, Any] | None],
    ) -> tuple[User | None, tuple[str, ...], str]:
        """``(user, audiences, error)``: the user when the token is valid for one of ``audiences``
        (the API's own audiences when none are asked). ``lookup(plural, namespace, name)`` reads the
        live objects the token is bound to."""
        wanted = tuple(audiences) or self.api_audiences
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "RS256":
                return None, (), "invalid bearer token"
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iat", "sub", "iss"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            return None, (), "[invalid bearer token, service account token has expired]"
        except jwt.PyJWTError:
            return None, (), "[invalid bearer token, square/go-jose: error in cryptographic primitive]"
        token_aud = claims.get("aud")
        token_aud = [token_aud] if isinstance(token_aud, str) else list(token_aud or ())
        matched = tuple(a for a in wanted if a in token_aud)
        if not matched:
            return (
                None,
                (),
                "[invalid bearer token, token audiences "
                + repr(token_aud)
                + " is invalid for the target audiences "
                + repr(list(wanted))
                + "]",
            )
        private = claims.get("kubernetes.io") or {}
        namespace = str(private.get("namespace") or "")
        sa = private.get("serviceaccount") or {}
        sa_obj = lookup("serviceaccounts", namespace, str(sa.get("name") or ""))
        if sa_obj is None or sa_obj["metadata"]["uid"] != sa.get("uid"):
            return None, (), "[invalid bearer token, service account token has been invalidated]"
        extra: dict[str, tuple[str, ...]] = {CREDENTIAL_ID: (f"JTI={claims.get('jti', '')}",)}
        pod = private.get("pod")
        if pod:
            pod_obj = lookup("pods", namespace, str(pod.get("name") or ""))
            if pod_obj is None or pod_obj["metadata"]["uid"] != pod.get("uid"):
                return (
                    None,
                    (),
                    "[invalid bearer token, pod bound to the token has been deleted or recreated]",
                )
            extra[POD_NAME] = (str(pod["name"]),)
            extra[POD_UID] = (str(pod["uid"]),)
        user = User(
            name=str(claims["sub"]),
            groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
            uid=str(sa.get("uid")),
            extra=extra,
        )
        return user, matched, ""


def user_from_peercert(peercert: dict[str, Any] | None) -> User | None:
    """CN is the user name, each O a group (as the apiserver's x509 authenticator maps them)."""
    if not peercert:
        return None
    name, groups = "", []
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                name = value
            elif attr == "organizationName":
                groups.append(value)
    if not name:
        return None
    return User(name=name, groups=(*groups, "system:authenticated"))


def forbidden_status(attrs: Attributes, reason: str) -> ApiStatus:
    from tests.support.kubeapi._status import forbidden

    return forbidden(
        attrs.user, attrs.verb, attrs.api_group, attrs.resource, attrs.name, attrs.namespace, reason
    )
