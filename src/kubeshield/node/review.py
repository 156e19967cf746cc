"""Proof of a pod's identity: a TokenReview of its ServiceAccount token, checked against the live pod.

``PodVerifier.verify(token)`` returns the :class:`PodIdentity` the token proves, or raises:

* :class:`TokenRejected` (HTTP 401): the API server does not authenticate the token (expired, wrong
  signer, revoked, a deleted pod's bound token), it was not issued for our audience, it is not a
  ServiceAccount's, or it names no pod while pod-bound tokens are required;
* :class:`PodRejected` (HTTP 403): the pod named in the token is gone, has another uid (deleted and
  re-created), runs as another ServiceAccount, or has finished;
* :class:`~kubeshield.errors.BackendUnavailable`: the API server cannot be reached (retry later).

Audience rule (formats.md §5.4): the review is sent with ``spec.audiences = [audience]`` and the answer's
``status.audiences`` must contain it; an empty ``status.audiences`` means the API server's own audience
and is refused, so a token a pod uses to talk to the API server cannot be replayed here.

Successful reviews are cached by the SHA-256 of the token for ``cache_ttl`` seconds and never beyond the
token's own ``exp`` (read from the JWT payload only after the API server accepted it), so a pod that is
deleted stays able to fetch for at most ``cache_ttl``. The cache never holds the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubeshield.errors import PolicyDenied
from kubeshield.node.identity import Identity

__all__ = [
    "PodIdentity",
    "PodLookup",
    "PodRejected",
    "PodVerifier",
    "ReviewAnswer",
    "TokenRejected",
    "TokenReviewer",
]

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
_MAX_CACHE = 10_000


class TokenRejected(PolicyDenied):
    """The token does not prove a usable identity (HTTP 401). The message never holds the token."""


class PodRejected(PolicyDenied):
    """The token is valid but its pod may not receive values now (HTTP 403)."""


class ReviewAnswer(Protocol):
    """What a TokenReview answer offers (``kubeshield.kube.TokenReview`` has this shape)."""

    @property
    def authenticated(self) -> bool: ...
    @property
    def username(self) -> str: ...
    @property
    def extra(self) -> Mapping[str, tuple[str, ...]]: ...
    @property
    def audiences(self) -> tuple[str, ...]: ...
    @property
    def error(self) -> str: ...


class TokenReviewer(Protocol):
    def token_review(self, token: str, audiences: Sequence[str] = ()) -> ReviewAnswer: ...


#: ``(namespace, name) -> pod object`` or ``None`` when the pod does not exist
PodLookup = Callable[[str, str], Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """What a verified token proves. ``pod_*`` are empty for tokens that are not pod-bound."""

    identity: Identity
    pod_name: str = ""
    pod_uid: str = ""
    node_name: str = ""
    audiences: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    expires_at: float | None = None
    cached: bool = False


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, without verifying anything (use only after a TokenReview accepted it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class PodVerifier:
    """TokenReview + live-pod checks, with a short cache of successes. Thread-safe."""

    def __init__(
        self,
        *,
        reviewer: TokenReviewer,
        pods: PodLookup | None,
        audience: str,
        require_pod_bound: bool = True,
        cache_ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
        on_review: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._reviewer = reviewer
        self._pods = pods
        self._audience = audience
        self._require_pod_bound = require_pod_bound
        self._ttl = cache_ttl
        self._clock = clock
        self._on_review = on_review or (lambda outcome, cached: None)
        self._cache: OrderedDict[bytes, tuple[float, PodIdentity]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def checks_pods(self) -> bool:
        return self._pods is not None

    def verify(self, token: str) -> PodIdentity:
        if not isinstance(token, str) or not token or len(token) > 16384:
            self._on_review("rejected", False)
            raise TokenRejected("no bearer token, or a token longer than 16 KiB")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = self._clock()
        if self._ttl > 0:
            with self._lock:
                hit = self._cache.get(digest)
                if hit is not None and hit[0] > now:
                    self._cache.move_to_end(digest)
                    self._on_review("authenticated", True)
                    return PodIdentity(**{**_fields(hit[1]), "cached": True})
                if hit is not None:
                    del self._cache[digest]
        found = self._review(token)
        if self._ttl > 0:
            until = now + self._ttl
            if found.expires_at is not None:
                until = min(until, found.expires_at)
            if until > now:
                with self._lock:
                    self._cache[digest] = (until, found)
                    while len(self._cache) > _MAX_CACHE:
                        self._cache.popitem(last=False)
        return found

    def _review(self, token: str) -> PodIdentity:
        answer = self._reviewer.token_review(token, [self._audience])
        if not answer.authenticated:
            self._on_review("rejected", False)
            why = f" ({answer.error[:200]})" if answer.error else ""
            raise TokenRejected(f"the API server did not authenticate the token{why}")
        if self._audience not in answer.audiences:
            self._on_review("rejected", False)
            raise TokenRejected(f"the token was not issued for the audience {self._audience!r}")
        identity = Identity.from_username(answer.username)
        if identity is None:
            self._on_review("rejected", False)
            raise TokenRejected("the token is not a ServiceAccount token")
        extra = answer.extra
        pod_name = (extra.get(POD_NAME) or ("",))[0]
        pod_uid = (extra.get(POD_UID) or ("",))[0]
        node_name = (extra.get(NODE_NAME) or ("",))[0]
        if self._require_pod_bound and not (pod_name and pod_uid):
            self._on_review("rejected", False)
            raise TokenRejected(
                "the token is not bound to a pod (use a projected serviceAccountToken volume or the CSI "
                "driver's tokenRequests)"
            )
        labels: dict[str, str] = {}
        if self._pods is not None and pod_name:
            labels = self._check_pod(identity, pod_name, pod_uid)
        self._on_review("authenticated", False)
        return PodIdentity(
            identity=identity,
            pod_name=pod_name,
            pod_uid=pod_uid,
            node_name=node_name,
            audiences=tuple(answer.audiences),
            labels=labels,
            expires_at=token_expiry(token),
        )

    def _check_pod(self, identity: Identity, name: str, uid: str) -> dict[str, str]:
        assert self._pods is not None
        pod = self._pods(identity.namespace, name)
        where = f"pod {identity.namespace}/{name}"
        if pod is None:
            self._on_review("pod-rejected", False)
            raise PodRejected(f"{where} no longer exists")
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        if uid and meta.get("uid") != uid:
            self._on_review("pod-rejected", False)
            raise PodRejected(f"{where} was re-created (its uid is not the token's)")
        if (spec.get("serviceAccountName") or "default") != identity.service_account:
            self._on_review("pod-rejected", False)
            raise PodRejected(f"{where} does not run as ServiceAccount {identity.service_account}")
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self._on_review("pod-rejected", False)
            raise PodRejected(f"{where} has finished ({phase})")
        labels = meta.get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}


def _fields(p: PodIdentity) -> dict[str, Any]:
    return {name: getattr(p, name) for name in PodIdentity.__dataclass_fields__}
