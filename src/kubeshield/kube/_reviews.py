"""TokenReview, SubjectAccessReview and Event bodies, and what their answers mean (no I/O)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeshield.kube.resources import Resource

__all__ = [
    "ACCESS_REVIEWS",
    "TOKEN_REVIEWS",
    "AccessReview",
    "TokenReview",
    "access_review_body",
    "event_body",
    "token_review_body",
]

TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", namespaced=False)
ACCESS_REVIEWS = Resource(
    "authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", namespaced=False
)

JsonObject = dict[str, Any]

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
_MAX_EVENT_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class TokenReview:
    """The API's verdict on a bearer token. ``error`` is the API's short reason when not authenticated."""

    authenticated: bool
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    audiences: tuple[str, ...] = ()
    error: str = ""

    @property
    def pod_name(self) -> str | None:
        """The pod a pod-bound ServiceAccount token was issued for, if any."""
        values = self.extra.get(POD_NAME)
        return values[0] if values else None

    @property
    def pod_uid(self) -> str | None:
        values = self.extra.get(POD_UID)
        return values[0] if values else None

    @property
    def service_account(self) -> tuple[str, str] | None:
        """``(namespace, name)`` when the token is a ServiceAccount's."""
        parts = self.username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return parts[2], parts[3]
        return None


@dataclass(frozen=True, slots=True)
class AccessReview:
    allowed: bool
    denied: bool = False
    reason: str = ""


def token_review_body(token: str, audiences: Sequence[str]) -> JsonObject:
    if not token:
        raise ValueError("token must not be empty")
    spec: JsonObject = {"token": token}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def parse_token_review(answer: Mapping[str, Any]) -> TokenReview:
    status = answer.get("status") or {}
    user = status.get("user") or {}
    extra = {str(k): tuple(str(v) for v in vs or ()) for k, vs in (user.get("extra") or {}).items()}
    authenticated = bool(status.get("authenticated"))
    return TokenReview(
        authenticated=authenticated,
        username=str(user.get("username") or "") if authenticated else "",
        uid=str(user.get("uid") or "") if authenticated else "",
        groups=tuple(str(g) for g in user.get("groups") or ()) if authenticated else (),
        extra=extra if authenticated else {},
        audiences=tuple(str(a) for a in status.get("audiences") or ()),
        error=str(status.get("error") or "")[:200],
    )


def token_request_body(
    audiences: Sequence[str], expiration_seconds: int, bound_pod: tuple[str, str] | None
) -> JsonObject:
    spec: JsonObject = {"audiences": list(audiences), "expirationSeconds": expiration_seconds}
    if bound_pod is not None:
        spec["boundObjectRef"] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "name": bound_pod[0],
            "uid": bound_pod[1],
        }
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


def parse_token_request(answer: Mapping[str, Any]) -> tuple[str, str]:
    """``(token, expirationTimestamp)`` of a TokenRequest answer."""
    status = answer.get("status") or {}
    return str(status.get("token", "")), str(status.get("expirationTimestamp", ""))


def access_review_body(
    *,
    user: str,
    groups: Sequence[str],
    uid: str | None,
    extra: Mapping[str, Sequence[str]] | None,
    verb: str,
    resource: str | None,
    group: str,
    namespace: str | None,
    name: str | None,
    subresource: str | None,
    non_resource_path: str | None,
) -> JsonObject:
    if not user and not groups:
        raise ValueError("a SubjectAccessReview needs a user or groups")
    if (resource is None) == (non_resource_path is None):
        raise ValueError("give exactly one of resource or non_resource_path")
    spec: JsonObject = {"user": user, "groups": list(groups)}
    if uid:
        spec["uid"] = uid
    if extra:
        spec["extra"] = {k: list(v) for k, v in extra.items()}
    if non_resource_path is not None:
        spec["nonResourceAttributes"] = {"path": non_resource_path, "verb": verb}
    else:
        attrs: JsonObject = {"verb": verb, "group": group, "resource": resource}
        for key, value in (("namespace", namespace), ("name", name), ("subresource", subresource)):
            if value:
                attrs[key] = value
        spec["resourceAttributes"] = attrs
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def parse_access_review(answer: Mapping[str, Any]) -> AccessReview:
    status = answer.get("status") or {}
    return AccessReview(
        allowed=bool(status.get("allowed")),
        denied=bool(status.get("denied")),
        reason=str(status.get("reason") or "")[:200],
    )


def _stamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    involved: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    type_: str,
    component: str,
    action: str | None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[str, JsonObject]:
    """A core/v1 Event about ``involved``; returns ``(namespace, event)``. The message is the caller's
    responsibility: it must never hold secret data (it is stored in plain text and shown by kubectl)."""
    if type_ not in ("Normal", "Warning"):
        raise ValueError("event type must be Normal or Warning")
    meta = involved.get("metadata") or {}
    if not meta.get("name"):
        raise ValueError("the involved object has no metadata.name")
    namespace = str(meta.get("namespace") or "default")
    now = _stamp(clock())
    ref = {
        "apiVersion": involved.get("apiVersion", ""),
        "kind": involved.get("kind", ""),
        "name": meta["name"],
        "namespace": meta.get("namespace", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    event: JsonObject = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{rng(8).hex()}", "namespace": namespace},
        "involvedObject": {k: v for k, v in ref.items() if v},
        "reason": reason,
        "message": message[:_MAX_EVENT_MESSAGE],
        "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": os.uname().nodename,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    if action:
        event["action"] = action
    return namespace, event
