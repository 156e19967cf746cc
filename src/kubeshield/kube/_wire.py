"""The REST protocol without I/O: build requests, decode responses, map Status objects to errors.

Both clients (sync ``KubeClient`` and ``AsyncKubeClient``) send what these functions build and hand
what comes back to ``decode``; nothing here touches the network, so it is tested without a server.

Error mapping keeps only the Status fields that say *what* failed (code, reason, kind, name, the field
paths of ``details.causes``). The Status ``message`` is not copied: the apiserver builds it from request
data (a validation message can quote a value), and a Secret value must never reach an exception.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeshield.errors import (
    KubeAlreadyExists,
    KubeBadRequest,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeInvalid,
    KubeNotFound,
    KubeUnauthorized,
    KubeUnavailable,
)
from kubeshield.kube.resources import Resource

__all__ = [
    "JsonObject",
    "LabelSelector",
    "PatchType",
    "Request",
    "Target",
    "decode",
    "error_from_status",
    "field_selector",
    "label_selector",
]

JsonObject = dict[str, Any]
LabelSelector = str | Mapping[str, str | Sequence[str] | None]
FieldSelector = str | Mapping[str, str]

_JSON = "application/json"


class PatchType(enum.Enum):
    """The four patch flavours of the API, by the Content-Type each is sent with."""

    JSON = "application/json-patch+json"
    MERGE = "application/merge-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"
    APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is about, for error messages: kind, name and namespace (no data)."""

    resource: Resource
    name: str = ""
    namespace: str = ""

    def describe(self) -> str:
        what = f'{self.resource.plural} "{self.name}"' if self.name else self.resource.plural
        return f"{what} in namespace {self.namespace!r}" if self.namespace else what


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    target: Target
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = (("Accept", _JSON),)
    body: bytes | None = None
    stream: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)


def label_selector(selector: LabelSelector | None) -> str | None:
    """A label selector string from a mapping: ``{"app": "x"}`` -> ``app=x``, ``{"tier": None}`` -> ``tier``
    (exists), ``{"env": ["a", "b"]}`` -> ``env in (a,b)``. A string passes through unchanged."""
    if selector is None or isinstance(selector, str):
        return selector or None
    parts: list[str] = []
    for key, value in selector.items():
        if value is None:
            parts.append(key)
        elif isinstance(value, str):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key} in ({','.join(value)})")
    return ",".join(parts) or None


def field_selector(selector: FieldSelector | None) -> str | None:
    """A field selector string: ``{"metadata.name": "x"}`` -> ``metadata.name=x``."""
    if selector is None or isinstance(selector, str):
        return selector or None
    return ",".join(f"{k}={v}" for k, v in selector.items()) or None


def _params(**kwargs: str | int | bool | None) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for key, value in kwargs.items():
        if value is None or value is False:
            continue
        out.append((key, "true" if value is True else str(value)))
    return tuple(out)


def _json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def get(resource: Resource, name: str, namespace: str | None, subresource: str | None = None) -> Request:
    return Request(
        "GET",
        resource.object_path(name, namespace, subresource),
        Target(resource, name, namespace or ""),
    )


def list_(
    resource: Resource,
    namespace: str | None,
    *,
    labels: LabelSelector | None = None,
    fields: FieldSelector | None = None,
    limit: int | None = None,
    continue_token: str | None = None,
    resource_version: str | None = None,
) -> Request:
    return Request(
        "GET",
        resource.collection_path(namespace),
        Target(resource, "", namespace or ""),
        params=_params(
            labelSelector=label_selector(labels),
            fieldSelector=field_selector(fields),
            limit=limit,
            # the API forbids resourceVersion together with continue
            resourceVersion=None if continue_token else resource_version,
            **{"continue": continue_token},
        ),
    )


def watch(
    resource: Resource,
    namespace: str | None,
    *,
    resource_version: str | None,
    labels: LabelSelector | None = None,
    fields: FieldSelector | None = None,
    timeout_seconds: int | None = None,
) -> Request:
    return Request(
        "GET",
        resource.collection_path(namespace),
        Target(resource, "", namespace or ""),
        params=_params(
            watch=True,
            allowWatchBookmarks=True,
            resourceVersion=resource_version,
            labelSelector=label_selector(labels),
            fieldSelector=field_selector(fields),
            timeoutSeconds=timeout_seconds,
        ),
        stream=True,
    )


def create(
    resource: Resource,
    namespace: str | None,
    obj: Mapping[str, Any],
    *,
    field_manager: str | None,
    dry_run: bool,
    subresource_of: str | None = None,
    subresource: str | None = None,
) -> Request:
    if subresource_of is not None:
        path = resource.object_path(subresource_of, namespace, subresource)
    else:
        path = resource.collection_path(namespace)
    return Request(
        "POST",
        path,
        Target(
            resource, str(obj.get("metadata", {}).get("name", "") or subresource_of or ""), namespace or ""
        ),
        params=_params(fieldManager=field_manager, dryRun="All" if dry_run else None),
        headers=(("Accept", _JSON), ("Content-Type", _JSON)),
        body=_json_body(obj),
    )


def replace(
    resource: Resource,
    name: str,
    namespace: str | None,
    obj: Mapping[str, Any],
    *,
    field_manager: str | None,
    dry_run: bool,
    subresource: str | None = None,
) -> Request:
    return Request(
        "PUT",
        resource.object_path(name, namespace, subresource),
        Target(resource, name, namespace or ""),
        params=_params(fieldManager=field_manager, dryRun="All" if dry_run else None),
        headers=(("Accept", _JSON), ("Content-Type", _JSON)),
        body=_json_body(obj),
    )


def patch(
    resource: Resource,
    name: str,
    namespace: str | None,
    body: Any,
    *,
    patch_type: PatchType,
    field_manager: str | None,
    force: bool,
    dry_run: bool,
    subresource: str | None = None,
) -> Request:
    if patch_type is PatchType.APPLY and not field_manager:
        raise ValueError("server-side apply needs a field_manager")
    if force and patch_type is not PatchType.APPLY:
        raise ValueError("force is only meaningful for server-side apply")
    if patch_type is PatchType.JSON and not isinstance(body, list):
        raise TypeError("a JSON patch is a list of operations")
    return Request(
        "PATCH",
        resource.object_path(name, namespace, subresource),
        Target(resource, name, namespace or ""),
        params=_params(fieldManager=field_manager, force=force, dryRun="All" if dry_run else None),
        headers=(("Accept", _JSON), ("Content-Type", patch_type.value)),
        body=_json_body(body),
    )


def delete(
    resource: Resource,
    name: str,
    namespace: str | None,
    *,
    propagation: str | None,
    grace_period: int | None,
    uid: str | None,
    resource_version: str | None,
    dry_run: bool,
) -> Request:
    if propagation not in (None, "Background", "Foreground", "Orphan"):
        raise ValueError(f"propagation must be Background, Foreground or Orphan, not {propagation!r}")
    options: JsonObject = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if propagation:
        options["propagationPolicy"] = propagation
    if grace_period is not None:
        options["gracePeriodSeconds"] = grace_period
    preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
    if preconditions:
        options["preconditions"] = preconditions
    if dry_run:
        options["dryRun"] = ["All"]
    return Request(
        "DELETE",
        resource.object_path(name, namespace),
        Target(resource, name, namespace or ""),
        headers=(("Accept", _JSON), ("Content-Type", _JSON)),
        body=_json_body(options),
    )


def _loads(content: bytes, target: Target) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        raise KubeUnavailable(
            f"the API answered {target.describe()} with a body that is not JSON", code=0
        ) from None


def decode(status: int, content: bytes, target: Target, *, retry_after: str | None = None) -> JsonObject:
    """The JSON object of a 2xx response, or the ``KubeError`` a non-2xx response stands for."""
    if 200 <= status < 300:
        obj = _loads(content, target)
        if not isinstance(obj, dict):
            raise KubeUnavailable(f"the API answered {target.describe()} with a non-object", code=status)
        return obj
    parsed: Any = None
    try:
        parsed = json.loads(content) if content else None
    except ValueError:
        parsed = None
    raise error_from_status(
        status, parsed if isinstance(parsed, dict) else None, target, retry_after=retry_after
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_from_status(
    code: int, status: Mapping[str, Any] | None, target: Target, *, retry_after: str | None = None
) -> KubeError:
    """The error a Status object (or a bare HTTP code) stands for. Only structured fields are kept."""
    status = status if (status and status.get("kind") == "Status") else {}
    code = int(status.get("code") or code)
    reason = str(status.get("reason") or "")
    details = status.get("details") or {}
    name = str(details.get("name") or target.name)
    kind = str(details.get("kind") or target.resource.plural)
    where = f" in namespace {target.namespace!r}" if target.namespace else ""
    what = f'{kind} "{name}"{where}' if name else f"{kind}{where}"
    fields = _cause_fields(details)
    cls: type[KubeError] = KubeError
    if code == 404:
        cls, message = KubeNotFound, f"{what}: not found"
    elif code == 409 and reason == "AlreadyExists":
        cls, message = KubeAlreadyExists, f"{what}: already exists"
    elif code == 409:
        hint = f" (conflicting fields: {', '.join(fields)})" if fields else ""
        cls, message = KubeConflict, f"{what}: conflict, changed meanwhile or owned by another manager{hint}"
    elif code == 410:
        cls, message = KubeGone, f"{what}: resourceVersion or continue token too old ({reason or 'Gone'})"
    elif code == 422:
        listing = f": {', '.join(fields)}" if fields else ""
        return KubeInvalid(
            f"{what} is invalid{listing}",
            code=code,
            reason=reason,
            kind=kind,
            name=name,
            namespace=target.namespace,
            fields=fields,
        )
    elif code == 401:
        cls, message = KubeUnauthorized, f"{what}: the API did not accept our credential"
    elif code == 403:
        cls, message = KubeForbidden, f"{what}: forbidden for our identity"
    elif code == 400:
        cls, message = KubeBadRequest, f"{what}: bad request ({reason or 'BadRequest'})"
    elif code == 429 or code >= 500:
        cls, message = KubeUnavailable, f"{what}: the API is unavailable (HTTP {code} {reason})".rstrip()
    else:
        message = f"{what}: HTTP {code} {reason}".rstrip()
    return cls(
        message,
        code=code,
        reason=reason,
        kind=kind,
        name=name,
        namespace=target.namespace,
        retry_after=_retry_after(retry_after) if cls is KubeUnavailable else None,
    )


def _cause_fields(details: Mapping[str, Any]) -> tuple[str, ...]:
    causes = details.get("causes") or ()
    fields = [str(c.get("field")) for c in causes if isinstance(c, dict) and c.get("field")]
    return tuple(dict.fromkeys(fields))


def watch_line(line: bytes | str, target: Target) -> tuple[str, JsonObject]:
    """One line of a watch stream -> ``(type, object)``; an ERROR event raises what its Status means."""
    event = _loads(line.encode() if isinstance(line, str) else line, target)
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubeUnavailable(f"the API sent a malformed watch event for {target.describe()}")
    kind = str(event.get("type", ""))
    if kind == "ERROR":
        raise error_from_status(int(event["object"].get("code") or 500), event["object"], target)
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        raise KubeUnavailable(f"the API sent a watch event of unknown type for {target.describe()}")
    return kind, event["object"]


def items_of(listing: Mapping[str, Any]) -> Iterable[JsonObject]:
    items = listing.get("items") or []
    return [i for i in items if isinstance(i, dict)]
