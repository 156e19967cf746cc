"""Discovery documents (legacy and aggregated v2), a minimal OpenAPI v3, and Table rendering.

kubectl 1.35 asks ``/api`` and ``/apis`` for ``application/json;g=apidiscovery.k8s.io;v=v2;as=
APIGroupDiscoveryList`` first; answering with that Content-Type makes it skip the per-group requests.
For ``create``/``apply`` it checks, in ``/openapi/v3/<group-version>``, whether the PATCH operation of
the kind takes the ``fieldValidation`` query parameter; when it does, kubectl leaves validation to the
server and needs no schema. Those operations are what the OpenAPI documents here hold (no schemas, so
``kubectl explain`` has nothing to explain).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from tests.support.kubeapi._types import ResourceType

__all__ = [
    "AGGREGATED_TYPE",
    "aggregated",
    "api_group_list",
    "api_resource_list",
    "api_versions",
    "openapi_root",
    "openapi_v3",
    "table",
    "version_info",
]

AGGREGATED_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_GROUP_ORDER = [
    "",
    "apps",
    "batch",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "apiextensions.k8s.io",
]

# extra subresources each resource serves (beyond status), with their verbs and response kinds
SUBRESOURCES: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "serviceaccounts": [("token", ("create",), "TokenRequest")],
}


def version_info() -> dict[str, str]:
    return {
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": "v1.35.0-kubeshield-standin",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _group_key(group: str) -> tuple[int, str]:
    return (_GROUP_ORDER.index(group), "") if group in _GROUP_ORDER else (len(_GROUP_ORDER), group)


def _by_group(types: Iterable[ResourceType]) -> dict[str, dict[str, list[ResourceType]]]:
    groups: dict[str, dict[str, list[ResourceType]]] = defaultdict(lambda: defaultdict(list))
    for rtype in types:
        groups[rtype.group][rtype.version].append(rtype)
    return groups


def _sorted_versions(versions: Iterable[str]) -> list[str]:
    """Kubernetes version priority: GA before beta before alpha, higher first."""
    import re

    def key(v: str) -> tuple[int, int, int]:
        m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
        if not m:
            return (3, 0, 0)
        major, level, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
        rank = {None: 0, "beta": 1, "alpha": 2}[level]
        return (rank, -major, -minor)

    return sorted(versions, key=key)


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list(types: Iterable[ResourceType]) -> dict[str, Any]:
    groups = []
    for group, versions in sorted(_by_group(types).items(), key=lambda kv: _group_key(kv[0])):
        if not group:
            continue
        ordered = _sorted_versions(versions)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
        groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _legacy_entries(
    rtype: ResourceType, extra: Callable[[str], list[tuple[str, tuple[str, ...], str]]]
) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": rtype.plural,
        "singularName": rtype.singular,
        "namespaced": rtype.namespaced,
        "kind": rtype.kind,
        "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    entry["storageVersionHash"] = hashlib.sha256(f"{rtype.group}/{rtype.plural}".encode()).hexdigest()[:11]
    out = [entry]
    if rtype.status:
        out.append(
            {
                "name": f"{rtype.plural}/status",
                "singularName": "",
                "namespaced": rtype.namespaced,
                "kind": rtype.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    for sub, verbs, kind in extra(rtype.plural):
        out.append(
            {
                "name": f"{rtype.plural}/{sub}",
                "singularName": "",
                "namespaced": rtype.namespaced,
                "kind": kind,
                "verbs": list(verbs),
            }
        )
    return out


def api_resource_list(
    group: str,
    version: str,
    types: Iterable[ResourceType],
    extra: Callable[[str], list[tuple[str, tuple[str, ...], str]]],
) -> dict[str, Any] | None:
    chosen = [t for t in types if t.group == group and t.version == version]
    if not chosen:
        return None
    resources = [e for t in sorted(chosen, key=lambda t: t.plural) for e in _legacy_entries(t, extra)]
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _aggregated_resource(
    rtype: ResourceType, extra: Callable[[str], list[tuple[str, tuple[str, ...], str]]]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": rtype.plural,
        "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
        "scope": "Namespaced" if rtype.namespaced else "Cluster",
        "singularResource": rtype.singular,
        "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    subs = []
    if rtype.status:
        subs.append(
            {
                "subresource": "status",
                "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
                "verbs": ["get", "patch", "update"],
            }
        )
    for sub, verbs, kind in extra(rtype.plural):
        subs.append(
            {
                "subresource": sub,
                "responseKind": {"group": "", "version": "v1", "kind": kind},
                "verbs": list(verbs),
            }
        )
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated(
    types: Iterable[ResourceType],
    *,
    legacy: bool,
    extra: Callable[[str], list[tuple[str, tuple[str, ...], str]]],
) -> dict[str, Any]:
    items = []
    for group, versions in sorted(_by_group(types).items(), key=lambda kv: _group_key(kv[0])):
        if (group == "") != legacy:
            continue
        items.append(
            {
                "metadata": {"name": group, "creationTimestamp": None},
                "versions": [
                    {
                        "version": v,
                        "resources": [
                            _aggregated_resource(t, extra)
                            for t in sorted(versions[v], key=lambda t: t.plural)
                        ],
                        "freshness": "Current",
                    }
                    for v in _sorted_versions(versions)
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root(types: Iterable[ResourceType]) -> dict[str, Any]:
    paths = {}
    for group, versions in _by_group(types).items():
        for version, members in versions.items():
            digest = (
                hashlib.sha256(json.dumps(sorted((t.plural, t.namespaced, t.kind) for t in members)).encode())
                .hexdigest()
                .upper()[:64]
            )
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def openapi_v3(group: str, version: str, types: Iterable[ResourceType]) -> dict[str, Any] | None:
    members = [t for t in types if t.group == group and t.version == version]
    if not members:
        return None
    paths: dict[str, Any] = {}
    for t in members:
        base = f"/{_gv_path(group, version)}"
        if t.namespaced:
            base += "/namespaces/{namespace}"
        gvk = {"group": group, "version": version, "kind": t.kind}
        params = [
            {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for n in _QUERY
        ]
        ok = {"200": {"description": "OK"}}
        paths[f"{base}/{t.plural}"] = {
            "get": {
                "operationId": f"list{t.kind}",
                "x-kubernetes-action": "list",
                "x-kubernetes-group-version-kind": gvk,
                "responses": ok,
            },
            "post": {
                "operationId": f"create{t.kind}",
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": ok,
            },
        }
        if t.persisted:
            paths[f"{base}/{t.plural}/{{name}}"] = {
                "get": {
                    "operationId": f"read{t.kind}",
                    "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": gvk,
                    "responses": ok,
                },
                "put": {
                    "operationId": f"replace{t.kind}",
                    "x-kubernetes-action": "put",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": params,
                    "responses": ok,
                },
                "patch": {
                    "operationId": f"patch{t.kind}",
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": params,
                    "responses": ok,
                },
                "delete": {
                    "operationId": f"delete{t.kind}",
                    "x-kubernetes-action": "delete",
                    "x-kubernetes-group-version-kind": gvk,
                    "responses": ok,
                },
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0-kubeshield-standin"},
        "paths": paths,
        "components": {"schemas": {}},
    }


# --- tables (what kubectl get prints) ------------------------------------------------------------


def _age(created: str | None, now: dt.datetime) -> str:
    if not created:
        return "<unknown>"
    seconds = int((now - dt.datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _columns(rtype: ResourceType) -> list[tuple[str, str, Callable[[dict[str, Any]], Any]]]:
    cols: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
        ("Name", "string", lambda o: o["metadata"]["name"])
    ]
    if rtype.plural == "secrets":
        cols += [
            ("Type", "string", lambda o: o.get("type", "")),
            ("Data", "integer", lambda o: len(o.get("data") or {})),
        ]
    elif rtype.plural == "configmaps":
        cols += [("Data", "integer", lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))]
    elif rtype.plural in ("namespaces", "pods"):
        cols += [("Status", "string", lambda o: (o.get("status") or {}).get("phase", ""))]
    elif rtype.plural == "serviceaccounts":
        cols += [("Secrets", "integer", lambda o: len(o.get("secrets") or ()))]
    return cols


def table(
    rtype: ResourceType,
    objects: list[dict[str, Any]],
    *,
    include: str,
    now: dt.datetime,
    list_meta: dict[str, Any] | None = None,
    headers: bool = True,
) -> dict[str, Any]:
    cols = _columns(rtype)
    rows = []
    for obj in objects:
        if include == "Object":
            embedded: Any = obj
        elif include == "None":
            embedded = None
        else:
            embedded = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        cells = [get(obj) for _, _, get in cols]
        cells.append(_age(obj["metadata"].get("creationTimestamp"), now))
        row: dict[str, Any] = {"cells": cells}
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    definitions = [
        {
            "name": name,
            "type": typ,
            "format": "name" if name == "Name" else "",
            "description": "",
            "priority": 0,
        }
        for name, typ, _ in cols
    ] + [{"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta or {},
        "columnDefinitions": definitions if headers else [],
        "rows": rows,
    }
