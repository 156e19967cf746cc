"""What the sync and async clients share: resource lookup, namespace defaults, list results, error mapping
of transport failures. Kept free of any one I/O style."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from kubeshield import __version__
from kubeshield.errors import KubeNotFound, KubeUnavailable
from kubeshield.kube import _wire
from kubeshield.kube.resources import BUILTIN, Resource, split_api_version

__all__ = ["USER_AGENT", "ObjectList", "Resolver", "transport_errors"]

JsonObject = dict[str, Any]
USER_AGENT = f"kubeshield/{__version__}"


@dataclass(frozen=True, slots=True)
class ObjectList:
    """One list answer: the objects (each with apiVersion and kind filled in), the list's
    resourceVersion (to watch from), and the token for the next page when paginating."""

    items: list[JsonObject]
    resource_version: str
    continue_token: str | None = None
    remaining: int | None = field(default=None)

    def __iter__(self) -> Iterator[JsonObject]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@contextlib.contextmanager
def transport_errors(target: _wire.Target) -> Iterator[None]:
    """Turn httpx2's transport failures into ``KubeUnavailable`` naming what we were doing."""
    try:
        yield
    except httpx2.TimeoutException as exc:
        raise KubeUnavailable(f"{target.describe()}: the API did not answer in time") from exc
    except httpx2.TransportError as exc:
        raise KubeUnavailable(f"{target.describe()}: cannot reach the API ({type(exc).__name__})") from exc


def as_list(resource: Resource, answer: Mapping[str, Any]) -> ObjectList:
    items = []
    for item in _wire.items_of(answer):
        # the API leaves TypeMeta off the items of built-in lists; callers want whole objects
        item.setdefault("apiVersion", resource.api_version)
        item.setdefault("kind", resource.kind)
        items.append(item)
    meta = answer.get("metadata") or {}
    remaining = meta.get("remainingItemCount")
    return ObjectList(
        items=items,
        resource_version=str(meta.get("resourceVersion") or ""),
        continue_token=str(meta["continue"]) if meta.get("continue") else None,
        remaining=int(remaining) if remaining is not None else None,
    )


class Resolver:
    """The resource types a client knows by ``(apiVersion, kind)``: the built-ins plus registered ones."""

    def __init__(self, default_namespace: str) -> None:
        self.default_namespace = default_namespace
        self._known: dict[tuple[str, str], Resource] = dict(BUILTIN)

    def register(self, *resources: Resource) -> None:
        for resource in resources:
            self._known[(resource.api_version, resource.kind)] = resource

    def lookup(self, api_version: str, kind: str) -> Resource | None:
        return self._known.get((api_version, kind))

    def of(self, obj: Mapping[str, Any], resource: Resource | None) -> Resource:
        if resource is not None:
            return resource
        api_version, kind = str(obj.get("apiVersion") or ""), str(obj.get("kind") or "")
        if not api_version or not kind:
            raise ValueError("the object needs apiVersion and kind (or pass resource=)")
        found = self.lookup(api_version, kind)
        if found is None:
            raise ValueError(
                f"unknown resource type {api_version}/{kind}: pass resource=, register() it or discover() it"
            )
        return found

    def namespace(
        self, resource: Resource, namespace: str | None, obj: Mapping[str, Any] | None = None
    ) -> str | None:
        if not resource.namespaced:
            return None
        if namespace:
            return namespace
        if obj is not None and (obj.get("metadata") or {}).get("namespace"):
            return str(obj["metadata"]["namespace"])
        return self.default_namespace


def discovery_path(api_version: str) -> str:
    group, version = split_api_version(api_version)
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


def resource_from_discovery(api_version: str, kind: str, answer: Mapping[str, Any]) -> Resource:
    group, version = split_api_version(api_version)
    for entry in answer.get("resources") or ():
        if entry.get("kind") == kind and "/" not in str(entry.get("name", "")):
            return Resource(group, version, kind, str(entry["name"]), bool(entry.get("namespaced")))
    raise KubeNotFound(
        f"the API serves no kind {kind} in {api_version}", code=404, reason="NotFound", kind=kind
    )


def name_of(obj: Mapping[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise ValueError("the object has no metadata.name")
    return str(name)
