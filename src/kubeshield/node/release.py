"""The release service, transport-free: values go only to a pod whose token proves the sealed-for identity.

API (served over HTTPS by :mod:`.release_http`; JSON bodies; ``Authorization: Bearer <token>``):

``POST /v1/release``  the token is the pod's projected ServiceAccount token for the kubeshield audience::

    {"objects": [{"name": "db-password", "sealed": "kubeshield:node:v1:..."}, ...],
     "replyKey": {"kty": "EC", "crv": "P-256", "x": "...", "y": "..."}}
    -> 200 {"jwe": "<JWE compact, ECDH-ES + A256GCM, to replyKey>"}   whose plaintext is
           {"identity": "ns:sa", "pod": {"name", "uid"}, "objects": [{"name", "value": B64, "keyVersion"}]}
       (or {"release": <that object>} when no replyKey is sent and node.release.allowPlainReplies is true)

``POST /v1/seal``  the token is the *caller's* own (a user or CI token); its RBAC is checked with a
SubjectAccessReview (``sealVerb`` ``sealResource`` in the target namespace, default ``create secrets``: the
right needed to hand that workload a plain Secret)::

    {"namespace": "ns-a", "serviceAccount": "app", "value": B64, "audience": "...", "selector": "app=web"}
    -> 200 {"sealed": "kubeshield:node:v1:...", "keyVersion": N}

``GET /v1/public-key``  -> the primary public sealing key (``KubeshieldNodeSealingPublicKey`` JSON).

Every request is all or nothing: the first object that may not be released refuses the whole request
with the object's index and name. Status codes: 400 malformed or a value that does not open, 401 token,
403 identity/pod/selector/RBAC, 413 too large, 429 rate limited (``Retry-After``), 503 the API server
or key backend is unreachable. Every outcome is counted and audited (:mod:`.audit`); messages name
objects and identities, never values or tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kubeshield.errors import (
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    KubeshieldError,
)
from kubeshield.keys.jwe import encrypt_to_jwk
from kubeshield.node.audit import AuditLog
from kubeshield.node.identity import Binding, Identity, parse_selector
from kubeshield.node.metrics import NodeMetrics
from kubeshield.node.ratelimit import RateLimiter
from kubeshield.node.review import PodIdentity, PodRejected, PodVerifier, TokenRejected, TokenReviewer
from kubeshield.node.sealed import MAX_PLAINTEXT, SealedValue, parse_sealed
from kubeshield.node.sealing_keys import SealingKeys
from kubeshield.node.settings import ReleaseSettings

__all__ = [
    "MAX_OBJECTS",
    "AccessReviewer",
    "HttpError",
    "ReleaseService",
    "check_release",
    "release_values",
    "released_document",
]

MAX_OBJECTS = 256
_NAME_MAX = 253


class HttpError(Exception):
    """An answer other than 200: ``status`` and a message safe to send (no secret)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AccessReviewer(Protocol):
    """``kubeshield.kube.KubeClient.subject_access_review`` has this shape."""

    def subject_access_review(
        self,
        *,
        user: str,
        verb: str,
        groups: Sequence[str] = (),
        uid: str | None = None,
        extra: Mapping[str, Sequence[str]] | None = None,
        resource: str | None = None,
        namespace: str | None = None,
    ) -> Any: ...


def _object_name(item: Mapping[str, Any], i: int) -> str:
    name = item.get("name")
    if not isinstance(name, str) or not name or len(name) > _NAME_MAX:
        raise HttpError(400, f"objects[{i}].name: required, 1..{_NAME_MAX} characters")
    return name


def check_release(sealed: SealedValue, *, pod: PodIdentity, checks_pods: bool, where: str) -> None:
    """Refuse (``HttpError(403)``) unless ``pod`` may receive ``sealed``: identity, audience, selector."""
    binding = sealed.binding
    if binding.identity != pod.identity:
        raise HttpError(403, f"{where}: sealed for {binding.identity}; the token is for {pod.identity}")
    if binding.audience is not None and binding.audience not in pod.audiences:
        raise HttpError(403, f"{where}: sealed for tokens of audience {binding.audience!r}")
    if binding.selector:
        if not checks_pods or not pod.pod_name:
            raise HttpError(
                403,
                f"{where}: sealed for pods with labels {binding.describe()}; this server cannot see them",
            )
        if not binding.matches_labels(pod.labels):
            raise HttpError(
                403, f"{where}: sealed for {binding.describe()}; pod {pod.pod_name} does not match"
            )


def release_values(
    keys: SealingKeys,
    pod: PodIdentity,
    objects: Sequence[tuple[str, str]],
    *,
    checks_pods: bool,
) -> list[tuple[str, bytes, int]]:
    """Open every ``(name, sealed text)`` for ``pod`` or refuse all (``HttpError`` naming the object).

    Returns ``(name, value, key version)`` in order. The same rules serve the release server and the
    CSI provider's local mode.
    """
    values: list[tuple[str, bytes, int]] = []
    for i, (name, text) in enumerate(objects):
        where = f"objects[{i}] ({name})"
        try:
            sealed = parse_sealed(text)
        except InvalidCiphertext:
            raise HttpError(400, f"{where}: not a kubeshield sealed value") from None
        check_release(sealed, pod=pod, checks_pods=checks_pods, where=where)
        try:
            value = keys.open(sealed)
        except KeyNotFound as exc:
            raise HttpError(400, f"{where}: {exc}") from None
        except InvalidCiphertext:
            raise HttpError(
                400, f"{where}: the sealed value does not open (tampered, or sealed with another key)"
            ) from None
        values.append((name, value, sealed.key_version))
    return values


def released_document(pod: PodIdentity, values: Sequence[tuple[str, bytes, int]]) -> dict[str, Any]:
    return {
        "identity": str(pod.identity),
        "pod": {"name": pod.pod_name, "uid": pod.pod_uid},
        "objects": [
            {"name": name, "value": base64.b64encode(value).decode("ascii"), "keyVersion": version}
            for name, value, version in values
        ],
    }


class ReleaseService:
    """The release API's logic. Thread-safe. Clock injected (rate limits, audit times)."""

    def __init__(
        self,
        *,
        keys: SealingKeys,
        verifier: PodVerifier,
        settings: ReleaseSettings,
        metrics: NodeMetrics | None = None,
        audit: AuditLog | None = None,
        user_reviewer: TokenReviewer | None = None,
        access_reviewer: AccessReviewer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._verifier = verifier
        self._settings = settings
        self.metrics = metrics or NodeMetrics()
        self._audit = audit or AuditLog()
        self._user_reviewer = user_reviewer
        self._access = access_reviewer
        self._clock = clock
        self._per_client = RateLimiter(rate=settings.rate_per_client, burst=settings.burst, clock=clock)
        self._per_identity = RateLimiter(rate=settings.rate_per_identity, burst=settings.burst, clock=clock)

    # --- helpers ------------------------------------------------------------------------------------

    def _limit(self, limiter: RateLimiter, key: str, what: str) -> None:
        ok, wait = limiter.allow(key)
        if not ok:
            raise HttpError(429, f"rate limited ({what}); retry in {math.ceil(wait)}s", retry_after=wait)

    def refresh_keys(self) -> None:
        self._keys.refresh()

    # --- POST /v1/release ---------------------------------------------------------------------------

    def release(self, *, token: str, body: Mapping[str, Any], client: str) -> dict[str, Any]:
        start = time.perf_counter()
        pod: PodIdentity | None = None
        names: list[str] = []
        versions: list[int] = []
        try:
            self._limit(self._per_client, client, "per client")
            objects, reply_key = self._parse_release(body)
            names = [n for n, _ in objects]
            try:
                pod = self._verifier.verify(token)
            except TokenRejected as exc:
                raise HttpError(401, f"token: {exc}") from None
            except PodRejected as exc:
                raise HttpError(403, f"pod: {exc}") from None
            self._limit(self._per_identity, str(pod.identity), "per ServiceAccount")
            values = release_values(self._keys, pod, objects, checks_pods=self._verifier.checks_pods)
            versions = [v for _, _, v in values]
            doc = released_document(pod, values)
            payload = json.dumps(doc, separators=(",", ":")).encode()
            if reply_key is not None:
                try:
                    reply: dict[str, Any] = {"jwe": encrypt_to_jwk(payload, reply_key, what="replyKey")}
                except InvalidRequest as exc:
                    raise HttpError(400, str(exc)) from None
            else:
                reply = {"release": doc}
            self._done("released", pod, names, versions, client, "")
            self.metrics.released_objects.inc(len(values))
            return reply
        except HttpError as exc:
            self._done(_refusal_label(exc.status), pod, names, versions, client, str(exc))
            raise
        except KubeshieldError as exc:  # the API server or the key backend failed (retry later)
            self._done("unavailable", pod, names, versions, client, type(exc).__name__)
            raise HttpError(503, f"unavailable: {type(exc).__name__}: {exc}") from None
        finally:
            self.metrics.release_seconds.observe(time.perf_counter() - start)

    def _parse_release(self, body: Mapping[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
        unknown = set(body) - {"objects", "replyKey"}
        if unknown:
            raise HttpError(400, f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        items = body.get("objects")
        if not isinstance(items, list) or not items:
            raise HttpError(400, "objects: a non-empty list is required")
        if len(items) > MAX_OBJECTS:
            raise HttpError(413, f"objects: at most {MAX_OBJECTS} per request")
        objects: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) - {"name", "sealed"}:
                raise HttpError(400, f"objects[{i}]: an object with name and sealed")
            name = _object_name(item, i)
            if name in seen:
                raise HttpError(400, f"objects[{i}].name: {name!r} appears twice")
            seen.add(name)
            text = item.get("sealed")
            if not isinstance(text, str):
                raise HttpError(
                    400, f"objects[{i}] ({name}).sealed: required (the text from kubeshield node seal)"
                )
            objects.append((name, text))
        reply_key = body.get("replyKey")
        if reply_key is None and not self._settings.allow_plain_replies:
            raise HttpError(400, "replyKey: required (replies are encrypted to the caller's ephemeral key)")
        if reply_key is not None and not isinstance(reply_key, dict):
            raise HttpError(400, "replyKey: must be an EC P-256 JWK")
        return objects, reply_key

    def _done(
        self,
        outcome: str,
        pod: PodIdentity | None,
        names: list[str],
        versions: list[int],
        client: str,
        reason: str,
    ) -> None:
        self.metrics.releases.labels(outcome=outcome).inc()
        self._audit.record(
            "release",
            outcome=outcome,
            identity=str(pod.identity) if pod else "",
            pod=pod.pod_name if pod else "",
            pod_uid=pod.pod_uid if pod else "",
            objects=names,
            key_versions=versions if outcome == "released" else (),
            client=client,
            reason=reason,
        )

    # --- POST /v1/seal ------------------------------------------------------------------------------

    def seal(self, *, token: str, body: Mapping[str, Any], client: str) -> dict[str, Any]:
        actor = ""
        identity = ""
        try:
            self._limit(self._per_client, client, "per client")
            if self._user_reviewer is None or self._access is None:
                raise HttpError(404, "sealing through this server is not enabled")
            unknown = set(body) - {"namespace", "serviceAccount", "value", "audience", "selector"}
            if unknown:
                raise HttpError(400, f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
            try:
                target = Identity(str(body.get("namespace", "")), str(body.get("serviceAccount", "")))
                selector = body.get("selector") or ""
                if not isinstance(selector, str):
                    raise InvalidRequest("selector: a string such as app=web")
                audience = body.get("audience")
                if audience is not None and not isinstance(audience, str):
                    raise InvalidRequest("audience: a string")
                binding = Binding(target, audience, parse_selector(selector))
                value = base64.b64decode(str(body.get("value", "")), validate=True)
            except InvalidRequest as exc:
                raise HttpError(400, str(exc)) from None
            except (binascii.Error, ValueError):
                raise HttpError(400, "value: must be base64") from None
            if len(value) > MAX_PLAINTEXT:
                raise HttpError(413, f"value: at most {MAX_PLAINTEXT} bytes")
            identity = str(target)
            if not token:
                raise HttpError(401, "token: a bearer token is required")
            answer = self._user_reviewer.token_review(token, ())
            if not answer.authenticated:
                raise HttpError(401, "token: the API server did not authenticate the token")
            actor = answer.username
            verdict = self._access.subject_access_review(
                user=answer.username,
                groups=tuple(getattr(answer, "groups", ())),
                uid=getattr(answer, "uid", None) or None,
                extra=dict(answer.extra) or None,
                verb=self._settings.seal_verb,
                resource=self._settings.seal_resource,
                namespace=target.namespace,
            )
            if not verdict.allowed:
                raise HttpError(
                    403,
                    f"{actor} may not {self._settings.seal_verb} {self._settings.seal_resource} in namespace "
                    f"{target.namespace}, so it may not seal values for {target}",
                )
            sealed = self._keys.seal(value, binding=binding)
            self.metrics.seals.labels(outcome="sealed").inc()
            self._audit.record("seal", outcome="sealed", identity=identity, actor=actor, client=client,
                               key_versions=[self._keys.primary_version])  # fmt: skip
            return {"sealed": sealed, "keyVersion": self._keys.primary_version}
        except HttpError as exc:
            self.metrics.seals.labels(outcome=_refusal_label(exc.status)).inc()
            self._audit.record("seal", outcome=_refusal_label(exc.status), identity=identity, actor=actor,
                               client=client, reason=str(exc))  # fmt: skip
            raise
        except KubeshieldError as exc:
            self.metrics.seals.labels(outcome="unavailable").inc()
            self._audit.record("seal", outcome="unavailable", identity=identity, actor=actor, client=client,
                               reason=type(exc).__name__)  # fmt: skip
            raise HttpError(503, f"unavailable: {type(exc).__name__}") from None

    # --- GET /v1/public-key -------------------------------------------------------------------------

    def public_key(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self._keys.public_key().to_json())
        return doc


def _refusal_label(status: int) -> str:
    return {
        400: "invalid",
        401: "token-rejected",
        403: "forbidden",
        404: "not-found",
        413: "too-large",
        429: "rate-limited",
        503: "unavailable",
    }.get(status, "error")
