"""Label and field selectors, parsed and matched as k8s.io/apimachinery's labels and fields packages do."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.kubeapi._status import bad_request

__all__ = ["FieldSelector", "LabelSelector", "parse_field_selector", "parse_label_selector"]

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # = != in notin exists !exists gt lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return have and value == self.values[0]
        if self.op == "!=":
            return not have or value != self.values[0]
        if self.op == "in":
            return have and value in self.values
        if self.op == "notin":
            return not have or value not in self.values
        if self.op == "exists":
            return have
        if self.op == "!exists":
            return not have
        if not have:
            return False
        try:
            number, bound = int(value or ""), int(self.values[0])
        except ValueError:
            return False
        return number > bound if self.op == "gt" else number < bound


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[_Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _check_key(key: str, selector: str) -> str:
    if not _KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in selector {selector!r}")
    return key


def _check_value(value: str, selector: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(
            f"unable to parse requirement: invalid label value {value!r} in selector {selector!r}"
        )
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    reqs: list[_Requirement] = []
    for raw in _split_top(text):
        part = raw.strip()
        if not part:
            raise bad_request(f"found '', expected: identifier in selector {text!r}")
        set_match = re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", part)
        if set_match:
            key, op, inner = set_match.groups()
            values = tuple(_check_value(v.strip(), text) for v in inner.split(",")) if inner.strip() else ()
            if not values:
                raise bad_request(f"for 'in', 'notin' operators, values set can't be empty in {text!r}")
            reqs.append(_Requirement(_check_key(key, text), op, values))
            continue
        if part.startswith("!"):
            reqs.append(_Requirement(_check_key(part[1:].strip(), text), "!exists"))
            continue
        for token, op in (("!=", "!="), ("==", "="), ("=", "="), (">", "gt"), ("<", "lt")):
            if token in part:
                key, _, value = part.partition(token)
                reqs.append(
                    _Requirement(_check_key(key.strip(), text), op, (_check_value(value.strip(), text),))
                )
                break
        else:
            reqs.append(_Requirement(_check_key(part, text), "exists"))
    return LabelSelector(tuple(reqs))


# which field labels each kind supports, beyond metadata.name and metadata.namespace (as the apiserver)
_FIELDS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {}


def _path(*keys: str) -> Callable[[dict[str, Any]], str]:
    def get(obj: dict[str, Any]) -> str:
        cur: Any = obj
        for key in keys:
            cur = cur.get(key) if isinstance(cur, dict) else None
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return "" if cur is None else str(cur)

    return get


_FIELDS["secrets"] = {"type": _path("type")}
_FIELDS["pods"] = {
    "spec.nodeName": _path("spec", "nodeName"),
    "spec.restartPolicy": _path("spec", "restartPolicy"),
    "spec.schedulerName": _path("spec", "schedulerName"),
    "spec.serviceAccountName": _path("spec", "serviceAccountName"),
    "spec.hostNetwork": _path("spec", "hostNetwork"),
    "status.phase": _path("status", "phase"),
    "status.podIP": _path("status", "podIP"),
    "status.nominatedNodeName": _path("status", "nominatedNodeName"),
}
_FIELDS["events"] = {
    f"involvedObject.{k}": _path("involvedObject", k)
    for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
} | {
    "reason": _path("reason"),
    "reportingComponent": _path("reportingComponent"),
    "source": _path("source", "component"),
    "type": _path("type"),
}
_FIELDS["namespaces"] = {"status.phase": _path("status", "phase")}
_FIELDS["nodes"] = {"spec.unschedulable": _path("spec", "unschedulable")}
_FIELDS["replicasets"] = {"status.replicas": _path("status", "replicas")}
_FIELDS["jobs"] = {"status.successful": _path("status", "successful")}


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[Callable[[dict[str, Any]], str], bool, str], ...] = ()
    text: str = ""

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((get(obj) == value) == positive for get, positive, value in self.terms)

    def name(self) -> str | None:
        """The one object name the selector pins (``metadata.name=x``), if it does."""
        match = re.fullmatch(r"metadata\.name==?([^,!]+)", self.text.strip()) if self.text else None
        return match.group(1) if match else None


def parse_field_selector(text: str | None, plural: str) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    supported = {
        "metadata.name": _path("metadata", "name"),
        "metadata.namespace": _path("metadata", "namespace"),
    }
    supported |= _FIELDS.get(plural, {})
    terms = []
    for raw in text.split(","):
        part = raw.strip()
        token = next((t for t in ("!=", "==", "=") if t in part), None)
        if token is None:
            raise bad_request(f"invalid field selector: '{part}' has no operator")
        key, _, value = part.partition(token)
        key, positive = key.strip(), token != "!="
        if key not in supported:
            raise bad_request(f"field label not supported: {key}")
        terms.append((supported[key], positive, value.strip()))
    return FieldSelector(tuple(terms), text)
