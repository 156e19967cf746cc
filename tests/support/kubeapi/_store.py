"""The stand-in's state and the apiserver semantics over it (thread-safe; no HTTP here).

* one resourceVersion counter for every write; a bounded history of watch events (an older
  resourceVersion is 410 Gone, as after an etcd compaction);
* optimistic concurrency: a write carrying a stale ``metadata.resourceVersion`` is 409 Conflict;
* ``metadata.uid``, ``creationTimestamp``, ``generation`` (bumped on spec changes, never on status),
  ``generateName``; status subresources (the main resource ignores status, ``/status`` ignores the rest);
* Secret ``stringData`` folded into ``data``, immutable Secrets/ConfigMaps;
* deletion: finalizers (deletionTimestamp first), owner references with background, foreground (done
  synchronously) and orphan propagation, namespaces taking their objects with them;
* CRDs: creating one serves its kind at once (discovery included); deleting it removes its objects.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import datetime as dt
import itertools
import json
import re
import secrets as pysecrets
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.support.kubeapi import _merge
from tests.support.kubeapi._selectors import FieldSelector, LabelSelector
from tests.support.kubeapi._status import (
    STALE,
    ApiStatus,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid,
    not_found,
)
from tests.support.kubeapi._types import BUILTIN_TYPES, ResourceType, types_from_crd

__all__ = ["Event", "Store", "Watcher"]

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class Event:
    rv: int
    storage: tuple[str, str]
    type: str  # ADDED MODIFIED DELETED, or BOOKMARK (never stored in the history)
    object: Obj


@dataclass
class Watcher:
    """One open watch: the store calls ``deliver`` (under its lock, in commit order) for every event."""

    storage: tuple[str, str]
    deliver: Callable[[Event], None]
    namespace: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def wants(self, event: Event) -> bool:
        if event.type == "BOOKMARK":
            return True
        meta = event.object.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(event.object)


def _now(clock: Callable[[], dt.datetime]) -> str:
    return clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_status_fields(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k != "status"}


def _spec_part(obj: Obj, rtype: ResourceType) -> Any:
    """What generation tracks: spec for built-ins, everything but metadata and status for CRs/CRDs."""
    if rtype.crd or rtype.kind == "CustomResourceDefinition":
        return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
    return obj.get("spec")


class Store:
    """All objects of the stand-in, by storage (group, plural) and (namespace, name)."""

    def __init__(
        self,
        *,
        history: int = 1000,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        snapshot_limit: int = 64,
    ) -> None:
        self.lock = threading.RLock()
        self._clock = clock
        self._rv = 0
        self._history: deque[Event] = deque(maxlen=history)
        self._compacted = 0  # history has every event with rv > _compacted
        self._objects: dict[tuple[str, str], dict[Key, Obj]] = {}
        self._applied: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_types: dict[str, list[ResourceType]] = {}
        self._watchers: list[Watcher] = []
        self._snapshots: OrderedDict[str, list[Obj]] = OrderedDict()
        self._snapshot_limit = snapshot_limit
        self._cluster_ips = itertools.count(1)
        for rtype in BUILTIN_TYPES:
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        for name in _INITIAL_NAMESPACES:
            self.create(self.type_of("", "v1", "namespaces"), None, {"metadata": {"name": name}})

    # --- types -------------------------------------------------------------------------------------

    def type_of(self, group: str, version: str, plural: str) -> ResourceType:
        with self.lock:
            rtype = self._types.get((group, version, plural))
        if rtype is None:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource", {})
        return rtype

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self.lock:
            return self._types.get((group, version, plural))

    def types(self) -> list[ResourceType]:
        with self.lock:
            return list(self._types.values())

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        with self.lock:
            for rtype in self._types.values():
                if rtype.group == group and rtype.version == version and rtype.kind == kind:
                    return rtype
        return None

    def _register_crd(self, crd: Obj) -> None:
        name = crd["metadata"]["name"]
        for old in self._crd_types.pop(name, []):
            self._types.pop((old.group, old.version, old.plural), None)
        served = types_from_crd(crd)
        for rtype in served:
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        self._crd_types[name] = served

    def _unregister_crd(self, crd: Obj) -> None:
        served = self._crd_types.pop(crd["metadata"]["name"], [])
        for rtype in served:
            self._types.pop((rtype.group, rtype.version, rtype.plural), None)
        if served:
            storage = served[0].storage
            for key in list(self._objects.get(storage, {})):
                self._remove(served[0], key, propagation="Background")

    # --- events ------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, rtype: ResourceType, kind: str, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        event = Event(rv, rtype.storage, kind, copy.deepcopy(obj))
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].rv
        self._history.append(event)
        for watcher in list(self._watchers):
            if watcher.storage == event.storage and watcher.wants(event):
                watcher.deliver(event)

    def compact(self) -> None:
        """Forget the watch history (as an etcd compaction does): older resourceVersions become 410."""
        with self.lock:
            self._history.clear()
            self._compacted = self._rv
            self._snapshots.clear()

    def subscribe(self, watcher: Watcher, since: int | None) -> list[Event]:
        """Register ``watcher``; returns the backlog after ``since`` (or the current objects as ADDED
        events when ``since`` is None). Raises 410 when ``since`` is older than the history."""
        with self.lock:
            if since is None:
                backlog = [
                    Event(self._rv, watcher.storage, "ADDED", copy.deepcopy(obj))
                    for _, obj in sorted(self._objects.get(watcher.storage, {}).items())
                ]
                backlog = [e for e in backlog if watcher.wants(e)]
            else:
                if since < self._compacted:
                    raise gone(f"too old resource version: {since} ({self._compacted + 1})")
                backlog = [
                    e
                    for e in self._history
                    if e.rv > since and e.storage == watcher.storage and watcher.wants(e)
                ]
            self._watchers.append(watcher)
            return backlog

    def unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def bookmark(self, watcher: Watcher | None = None, *, initial_events_end: bool = False) -> None:
        """Send a BOOKMARK with the current resourceVersion, ordered after every event already sent."""
        with self.lock:
            for target in [watcher] if watcher else list(self._watchers):
                rtype = next((t for t in self._types.values() if t.storage == target.storage), None)
                if rtype is None:
                    continue
                meta: Obj = {"resourceVersion": str(self._rv)}
                if initial_events_end:
                    meta["annotations"] = {"k8s.io/initial-events-end": "true"}
                target.deliver(
                    Event(
                        self._rv,
                        target.storage,
                        "BOOKMARK",
                        {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta},
                    )
                )

    # --- reads -------------------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.lock:
            obj = self._objects.get(rtype.storage, {}).get((namespace or "", name))
            if obj is None:
                raise not_found(rtype.group, rtype.plural, name)
            return self._view(rtype, obj)

    def _view(self, rtype: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rtype.api_version  # conversion between CRD versions: none needed here
        return out

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector,
        fields: FieldSelector,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> tuple[list[Obj], str, str | None, int | None]:
        """``(items, resourceVersion, continue, remainingItemCount)``; pages come from one snapshot."""
        with self.lock:
            if continue_token:
                snap_id, start, rv = self._decode_continue(continue_token)
                snapshot = self._snapshots.get(snap_id)
                if snapshot is None or rv < self._compacted:
                    raise gone(
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter."
                    )
            else:
                rv = self._rv
                snap_id = uuid.uuid4().hex
                snapshot = [
                    self._view(rtype, obj)
                    for key, obj in sorted(self._objects.get(rtype.storage, {}).items())
                    if (not namespace or key[0] == namespace)
                    and labels.matches((obj.get("metadata") or {}).get("labels"))
                    and fields.matches(obj)
                ]
                start = 0
            if not limit or start + limit >= len(snapshot):
                self._snapshots.pop(snap_id, None)
                return snapshot[start:], str(rv), None, None
            if snap_id not in self._snapshots:
                self._snapshots[snap_id] = snapshot
                while len(self._snapshots) > self._snapshot_limit:
                    self._snapshots.popitem(last=False)
            end = start + limit
            token = base64.urlsafe_b64encode(
                json.dumps({"id": snap_id, "start": end, "rv": rv}).encode()
            ).decode()
            return snapshot[start:end], str(rv), token, len(snapshot) - end

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, int, int]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            return str(data["id"]), int(data["start"]), int(data["rv"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None

    # --- validation and defaulting ----------------------------------------------------------------

    def _validate(self, rtype: ResourceType, obj: Obj, *, old: Obj | None = None) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        causes: list[tuple[str, str, str]] = []
        pattern = _DNS1123_LABEL if rtype.plural in ("namespaces", "services") else _DNS1123_SUBDOMAIN
        if not name:
            causes.append(
                ("FieldValueRequired", "metadata.name", "Required value: name or generateName is required")
            )
        elif len(name) > 253 or not pattern.match(name):
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                    "alphanumeric characters, '-' or '.', and must start and end with an "
                    "alphanumeric character",
                )
            )
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, label = str(key).rpartition("/")
            if (
                not _LABEL_NAME.match(label)
                or len(label) > 63
                or (prefix and not _DNS1123_SUBDOMAIN.match(prefix))
            ):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "metadata.labels",
                        f'Invalid value: "{key}": name part must consist of alphanumeric characters',
                    )
                )
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "metadata.labels",
                        f"Invalid value: a valid label must be an empty string or consist of "
                        f"alphanumeric characters (label {key})",
                    )
                )
        if rtype.plural in ("secrets", "configmaps"):
            for section in ("data", "binaryData"):
                for key in obj.get(section) or {}:
                    if not _CONFIG_KEY.match(str(key)) or len(str(key)) > 253:
                        causes.append(
                            (
                                "FieldValueInvalid",
                                f"{section}[{key}]",
                                "Invalid value: a valid config key must consist of alphanumeric "
                                "characters, '-', '_' or '.'",
                            )
                        )
            if old is not None and old.get("immutable") is True:
                for section in ("data", "binaryData", "stringData", "immutable", "type"):
                    if section != "stringData" and obj.get(section) != old.get(section):
                        causes.append(
                            (
                                "FieldValueForbidden",
                                section,
                                "Forbidden: field is immutable when `immutable` is set",
                            )
                        )
                        break
        if (
            rtype.plural == "secrets"
            and old is not None
            and obj.get("type") != old.get("type")
            and not causes
        ):
            causes.append(("FieldValueInvalid", "type", "Invalid value: field is immutable"))
        if causes:
            raise invalid(rtype.group, rtype.kind, name, causes)

    def _fold_secret(self, obj: Obj) -> None:
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {}) if (string_data or obj.get("data") is not None) else None
        for key, value in (obj.get("data") or {}).items():
            try:
                base64.b64decode(str(value), validate=True)
            except (ValueError, binascii.Error):
                raise bad_request(
                    f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data (key {key})'
                ) from None
        if data is not None:
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if not obj.get("type"):
            obj["type"] = "Opaque"

    def _default(self, rtype: ResourceType, obj: Obj) -> None:
        if rtype.plural == "secrets":
            self._fold_secret(obj)
        elif rtype.plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif rtype.plural == "pods":
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
            obj.setdefault("spec", {}).setdefault("serviceAccountName", "default")
        elif rtype.plural == "services":
            spec = obj.setdefault("spec", {})
            if spec.get("type", "ClusterIP") != "ExternalName" and "clusterIP" not in spec:
                n = next(self._cluster_ips)
                spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
                spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("type", "ClusterIP")
            obj.setdefault("status", {"loadBalancer": {}})
        elif rtype.plural == "customresourcedefinitions":
            names = (obj.get("spec") or {}).get("names") or {}
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [
                    v["name"] for v in (obj.get("spec") or {}).get("versions") or () if v.get("storage")
                ],
                "conditions": [
                    {
                        "type": t,
                        "status": "True",
                        "reason": r,
                        "message": m,
                        "lastTransitionTime": _now(self._clock),
                    }
                    for t, r, m in (
                        ("NamesAccepted", "NoConflicts", "no conflicts found"),
                        ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                    )
                ],
            }
        elif rtype.plural == "serviceaccounts":
            pass

    def _check_crd(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        name = obj["metadata"]["name"]
        causes = []
        if not spec.get("group"):
            causes.append(("FieldValueRequired", "spec.group", "Required value"))
        if not names.get("plural") or not names.get("kind"):
            causes.append(("FieldValueRequired", "spec.names", "Required value: plural and kind"))
        elif name != f"{names['plural']}.{spec.get('group')}":
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
                )
            )
        if not spec.get("versions"):
            causes.append(
                (
                    "FieldValueRequired",
                    "spec.versions",
                    "Required value: must have exactly one version marked as storage version",
                )
            )
        if causes:
            raise invalid("apiextensions.k8s.io", "CustomResourceDefinition", name, causes)

    # --- writes ------------------------------------------------------------------------------------

    def _bucket(self, rtype: ResourceType) -> dict[Key, Obj]:
        return self._objects.setdefault(rtype.storage, {})

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> Key:
        return (namespace or "", name) if rtype.namespaced else ("", name)

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, body_ns: str | None) -> str:
        if not rtype.namespaced:
            return ""
        if body_ns and namespace and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        ns = namespace or body_ns or ""
        if not ns:
            raise bad_request("the namespace of the object is required")
        namespaces = self._objects.get(("", "namespaces"), {})
        if ("", ns) not in namespaces:
            raise not_found("", "namespaces", ns)
        if (namespaces[("", ns)].get("metadata") or {}).get("deletionTimestamp"):
            raise ApiStatus(
                403,
                "Forbidden",
                f"unable to create new content in namespace {ns} because it is being terminated",
            )
        return ns

    def _check_kind(self, rtype: ResourceType, body: Obj) -> None:
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind and kind != rtype.kind:
            raise bad_request(f"the kind of the object ({kind}) does not match the resource ({rtype.kind})")
        if api_version and api_version != rtype.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rtype.api_version})"
            )

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Obj,
        *,
        dry_run: bool = False,
        manager: str = "",
        applied: tuple[str, dict[str, Any]] | None = None,
    ) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the body of the request must be an object with an object metadata")
        with self.lock:
            self._check_kind(rtype, body)
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            meta = obj.setdefault("metadata", {})
            ns = self._check_namespace(rtype, namespace, meta.get("namespace"))
            if not meta.get("name") and meta.get("generateName"):
                alphabet = "bcdfghjklmnpqrstvwxz2456789"
                meta["name"] = str(meta["generateName"]) + "".join(
                    pysecrets.choice(alphabet) for _ in range(5)
                )
            if rtype.status:
                obj.pop("status", None)
            for system in (
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "selfLink",
            ):
                meta.pop(system, None)
            if rtype.namespaced:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            self._default(rtype, obj)
            if rtype.plural == "customresourcedefinitions":
                self._check_crd(obj)
            self._validate(rtype, obj)
            key = self._key(rtype, ns, meta["name"])
            if key in self._bucket(rtype):
                raise already_exists(rtype.group, rtype.plural, meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now(self._clock)
            if rtype.generation:
                meta["generation"] = 1
            if manager:
                meta["managedFields"] = [
                    self._managed_entry(manager, "Apply" if applied else "Update", rtype, obj)
                ]
            if dry_run:
                return self._view(rtype, obj)
            meta["resourceVersion"] = str(self._next_rv())
            self._bucket(rtype)[key] = obj
            if applied is not None:
                self._applied[(*rtype.storage, *key)] = {applied[0]: applied[1]}
            if rtype.plural == "customresourcedefinitions":
                self._register_crd(obj)
            self._emit(rtype, "ADDED", obj)
            return self._view(rtype, obj)

    def _managed_entry(self, manager: str, operation: str, rtype: ResourceType, config: Obj) -> Obj:
        fields = _merge.managed_fields_v1(
            {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}
        )
        fields.get("f:metadata", {}).pop("f:name", None)
        fields.get("f:metadata", {}).pop("f:namespace", None)
        return {
            "manager": manager,
            "operation": operation,
            "apiVersion": rtype.api_version,
            "time": _now(self._clock),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        manager: str = "",
        _operation: str = "Update",
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be an object")
        with self.lock:
            self._check_kind(rtype, body)
            key = self._key(rtype, namespace, name)
            old = self._bucket(rtype).get(key)
            if old is None:
                raise not_found(rtype.group, rtype.plural, name)
            body_meta = body.get("metadata") or {}
            if body_meta.get("name") and body_meta["name"] != name:
                raise bad_request(
                    f"the name of the object ({body_meta['name']}) does not match the name on the "
                    f"URL ({name})"
                )
            wanted_rv = body_meta.get("resourceVersion")
            if wanted_rv and str(wanted_rv) != old["metadata"]["resourceVersion"]:
                raise conflict(rtype.group, rtype.plural, name, STALE)
            if body_meta.get("uid") and body_meta["uid"] != old["metadata"]["uid"]:
                raise conflict(
                    rtype.group,
                    rtype.plural,
                    name,
                    f"Precondition failed: UID in precondition: {body_meta['uid']}, UID in object "
                    f"meta: {old['metadata']['uid']}",
                )
            if subresource == "status":
                if not rtype.status:
                    raise ApiStatus(404, "NotFound", "the server could not find the requested resource", {})
                new = copy.deepcopy(old)
                new["status"] = copy.deepcopy(body.get("status"))
                if new["status"] is None:
                    new.pop("status")
            else:
                new = copy.deepcopy(body)
                new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
                meta = new.setdefault("metadata", {})
                for system in (
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ):
                    if system in old["metadata"]:
                        meta[system] = old["metadata"][system]
                    else:
                        meta.pop(system, None)
                meta["name"] = name
                if "managedFields" not in body_meta and "managedFields" in old["metadata"]:
                    meta["managedFields"] = old["metadata"]["managedFields"]
                if rtype.status:
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                    else:
                        new.pop("status", None)
                if rtype.plural == "secrets":
                    self._fold_secret(new)
                if rtype.plural == "namespaces":
                    new["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
                if rtype.plural == "customresourcedefinitions":
                    self._check_crd(new)
                    new["status"] = old.get("status")
                self._validate(rtype, new, old=old)
                if rtype.generation and _spec_part(new, rtype) != _spec_part(old, rtype):
                    meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            if manager:
                entries = [
                    e
                    for e in new["metadata"].get("managedFields") or ()
                    if not (
                        e.get("manager") == manager
                        and e.get("operation") == _operation
                        and e.get("subresource", "") == (subresource or "")
                    )
                ]
                entry = self._managed_entry(
                    manager,
                    _operation,
                    rtype,
                    body
                    if _operation == "Apply"
                    else _strip_status_fields(body)
                    if subresource != "status"
                    else {"status": body.get("status")},
                )
                if subresource:
                    entry["subresource"] = subresource
                new["metadata"]["managedFields"] = [*entries, entry]
            if _canonical(new) == _canonical(old):
                return self._view(rtype, old)  # a no-op write changes nothing, not even the resourceVersion
            if dry_run:
                return self._view(rtype, new)
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._bucket(rtype)[key] = new
                self._emit(rtype, "MODIFIED", new)
                return self._remove(rtype, key, propagation="Background")
            self._bucket(rtype)[key] = new
            if rtype.plural == "customresourcedefinitions":
                self._register_crd(new)
            self._emit(rtype, "MODIFIED", new)
            return self._view(rtype, new)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        manager: str = "",
        force: bool = False,
    ) -> Obj:
        with self.lock:
            key = self._key(rtype, namespace, name)
            old = self._bucket(rtype).get(key)
            if patch_type == "apply":
                return self._apply(
                    rtype,
                    namespace,
                    name,
                    patch,
                    old=old,
                    subresource=subresource,
                    dry_run=dry_run,
                    manager=manager,
                    force=force,
                )
            if old is None:
                raise not_found(rtype.group, rtype.plural, name)
            current = self._view(rtype, old)
            if patch_type == "json":
                import jsonpatch

                try:
                    new = jsonpatch.apply_patch(current, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiStatus(
                        422,
                        "Invalid",
                        f"the server rejected our request due to an error in our request: {exc}",
                    ) from None
                except (TypeError, ValueError):
                    raise bad_request("the JSON patch is malformed") from None
            elif patch_type == "merge":
                if not isinstance(patch, dict):
                    raise bad_request("a merge patch must be a JSON object")
                new = _merge.json_merge_patch(current, patch)
            elif patch_type == "strategic":
                if rtype.crd:
                    raise ApiStatus(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types "
                        "include: application/json-patch+json, application/merge-patch+json, "
                        "application/apply-patch+yaml",
                    )
                if not isinstance(patch, dict):
                    raise bad_request("a strategic merge patch must be a JSON object")
                new = _merge.strategic_merge_patch(current, patch)
            else:
                raise ApiStatus(415, "UnsupportedMediaType", f"unsupported patch type {patch_type}")
            if not isinstance(new, dict):
                raise bad_request("the patched object is not a JSON object")
            # a resourceVersion in the patch makes it conditional; none means "on the current version"
            new.setdefault("metadata", {})
            if (new["metadata"].get("resourceVersion") or "") != old["metadata"]["resourceVersion"]:
                if new["metadata"].get("resourceVersion"):
                    raise conflict(rtype.group, rtype.plural, name, STALE)
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.update(
                rtype, namespace, name, new, subresource=subresource, dry_run=dry_run, manager=manager
            )

    def _apply(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        config: Any,
        *,
        old: Obj | None,
        subresource: str | None,
        dry_run: bool,
        manager: str,
        force: bool,
    ) -> Obj:
        if not manager:
            raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
        if not isinstance(config, dict):
            raise bad_request("the applied configuration must be an object")
        cmeta = config.get("metadata") or {}
        if cmeta.get("name") and cmeta["name"] != name:
            raise bad_request(
                f"the name of the object ({cmeta['name']}) does not match the name on the URL ({name})"
            )
        self._check_kind(rtype, config)
        if not config.get("apiVersion") or not config.get("kind"):
            raise bad_request("apiVersion and kind must be set in an applied configuration")
        if old is None:
            body = copy.deepcopy(config)
            body.setdefault("metadata", {})["name"] = name
            return self.create(
                rtype,
                namespace,
                body,
                dry_run=dry_run,
                manager=manager,
                applied=(manager, copy.deepcopy(config)),
            )
        store_key = (*rtype.storage, *self._key(rtype, namespace, name))
        applied = copy.deepcopy(self._applied.get(store_key, {}))
        current = self._view(rtype, old)
        merged, conflicts = _merge.apply_config(
            current, config, manager=manager, applied=applied, force=force
        )
        if conflicts:
            causes = [
                {
                    "reason": "FieldManagerConflict",
                    "message": f'conflict with "{other}"',
                    "field": _render_path(path),
                }
                for path, other in conflicts
            ]
            listing = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
            raise ApiStatus(
                409,
                "Conflict",
                f"Apply failed with {len(causes)} conflict{'s' if len(causes) > 1 else ''}: {listing}",
                {"name": name, "group": rtype.group, "kind": rtype.plural, "causes": causes}
                if rtype.group
                else {"name": name, "kind": rtype.plural, "causes": causes},
            )
        merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        result = self.update(
            rtype,
            namespace,
            name,
            merged,
            subresource=subresource,
            dry_run=dry_run,
            manager=manager,
            _operation="Apply",
        )
        if not dry_run:
            self._applied[store_key] = applied
        return result

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> tuple[int, Obj]:
        """Returns (HTTP code, body): 200 with the object once gone, 202 while finalizers hold it."""
        with self.lock:
            key = self._key(rtype, namespace, name)
            obj = self._bucket(rtype).get(key)
            if obj is None:
                raise not_found(rtype.group, rtype.plural, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
                raise conflict(
                    rtype.group,
                    rtype.plural,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                    f"{obj['metadata']['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                raise conflict(
                    rtype.group,
                    rtype.plural,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{obj['metadata']['resourceVersion']}",
                )
            if dry_run:
                return 200, self._view(rtype, obj)
            finalizers = list(obj["metadata"].get("finalizers") or ())
            if rtype.plural == "namespaces":
                self._empty_namespace(name)
            elif finalizers:
                if not obj["metadata"].get("deletionTimestamp"):
                    new = copy.deepcopy(obj)
                    new["metadata"]["deletionTimestamp"] = _now(self._clock)
                    new["metadata"]["deletionGracePeriodSeconds"] = 0
                    new["metadata"]["resourceVersion"] = str(self._next_rv())
                    self._bucket(rtype)[key] = new
                    self._emit(rtype, "MODIFIED", new)
                    obj = new
                return 202, self._view(rtype, obj)
            return 200, self._remove(rtype, key, propagation=propagation or "Background")

    def _empty_namespace(self, namespace: str) -> None:
        for storage, bucket in list(self._objects.items()):
            rtype = next((t for t in self._types.values() if t.storage == storage and t.namespaced), None)
            if rtype is None:
                continue
            for key in [k for k in bucket if k[0] == namespace]:
                if key in bucket:
                    self._remove(rtype, key, propagation="Background")

    def _remove(self, rtype: ResourceType, key: Key, *, propagation: str) -> Obj:
        """Take the object out, then its dependents (owner references) as ``propagation`` says."""
        bucket = self._bucket(rtype)
        obj = bucket.get(key)
        if obj is None:
            return {}
        uid = obj["metadata"]["uid"]
        dependents = list(self._dependents(uid))
        if propagation == "Foreground":
            for dep_type, dep_key in dependents:
                self._remove(dep_type, dep_key, propagation="Foreground")
        obj = bucket.pop(key, None) or obj
        self._applied.pop((*rtype.storage, *key), None)
        gone_obj = copy.deepcopy(obj)
        gone_obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(rtype, "DELETED", gone_obj)
        if rtype.plural == "customresourcedefinitions":
            self._unregister_crd(obj)
        if propagation in ("Background", "Orphan"):
            for dep_type, dep_key in dependents:
                self._drop_owner(dep_type, dep_key, uid, delete_if_orphaned=propagation == "Background")
        return self._view(rtype, gone_obj)

    def _dependents(self, uid: str) -> Iterable[tuple[ResourceType, Key]]:
        for storage, bucket in self._objects.items():
            rtype = next((t for t in self._types.values() if t.storage == storage), None)
            if rtype is None:
                continue
            for key, obj in bucket.items():
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or ()):
                    yield rtype, key

    def _drop_owner(self, rtype: ResourceType, key: Key, uid: str, *, delete_if_orphaned: bool) -> None:
        obj = self._bucket(rtype).get(key)
        if obj is None:
            return
        remaining = [r for r in obj["metadata"].get("ownerReferences") or () if r.get("uid") != uid]
        if not remaining and delete_if_orphaned:
            if obj["metadata"].get("finalizers"):
                self.delete(rtype, key[0], key[1])
            else:
                self._remove(rtype, key, propagation="Background")
            return
        new = copy.deepcopy(obj)
        if remaining:
            new["metadata"]["ownerReferences"] = remaining
        else:
            new["metadata"].pop("ownerReferences", None)
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        self._bucket(rtype)[key] = new
        self._emit(rtype, "MODIFIED", new)

    def delete_collection(
        self, rtype: ResourceType, namespace: str | None, *, labels: LabelSelector, fields: FieldSelector
    ) -> int:
        with self.lock:
            items, _, _, _ = self.list(rtype, namespace, labels=labels, fields=fields)
            for item in items:
                meta = item["metadata"]
                self.delete(rtype, meta.get("namespace"), meta["name"])
            return len(items)

    # --- direct access for tests ------------------------------------------------------------------

    def put(self, obj: Obj) -> Obj:
        """Create (or replace, unconditionally) an object given as a whole manifest."""
        rtype = self.type_for_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rtype is None:
            raise KeyError(f"no resource type serves {obj.get('apiVersion')}/{obj.get('kind')}")
        meta = obj.get("metadata") or {}
        with self.lock:
            try:
                self.get(rtype, meta.get("namespace"), meta["name"])
            except ApiStatus:
                return self.create(rtype, meta.get("namespace"), obj)
            body = copy.deepcopy(obj)
            body["metadata"].pop("resourceVersion", None)
            return self.update(rtype, meta.get("namespace"), meta["name"], body)

    def objects(self, group: str, plural: str) -> builtins.list[Obj]:
        with self.lock:
            rtype = next((t for t in self._types.values() if t.storage == (group, plural)), None)
            bucket = self._objects.get((group, plural), {})
            return [self._view(rtype, o) if rtype else copy.deepcopy(o) for _, o in sorted(bucket.items())]


def _canonical(obj: Obj) -> str:
    clean = copy.deepcopy(obj)
    clean.get("metadata", {}).pop("managedFields", None)
    clean.get("metadata", {}).pop("resourceVersion", None)
    return json.dumps(clean, sort_keys=True)


def _render_path(path: tuple[Any, ...]) -> str:
    out = ""
    for step in path:
        if isinstance(step, tuple):
            out += f"[{step[1]}={step[2]}]"
        else:
            out += f".{step}"
    return out
