"""Find the pod in every object that embeds one, and check the fields Pod Security reads have the types
the Kubernetes API gives them (a malformed field is an :class:`InvalidObject` naming it, as the
apiserver's decoder would refuse the object).

Kinds (upstream's DefaultPodSpecExtractor): Pod, PodTemplate (``template``), ReplicationController,
ReplicaSet, Deployment, StatefulSet, DaemonSet, Job (``spec.template``), CronJob
(``spec.jobTemplate.spec.template``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeshield.posture.errors import InvalidObject

__all__ = ["POD_KINDS", "PodRef", "extract_pod", "object_label", "validate_pod"]

Obj = Mapping[str, Any]

# kind -> (API groups it is served under, path to the pod template, or () for the Pod itself)
POD_KINDS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "Pod": (frozenset({""}), ()),
    "PodTemplate": (frozenset({""}), ("template",)),
    "ReplicationController": (frozenset({""}), ("spec", "template")),
    "ReplicaSet": (frozenset({"apps", "extensions"}), ("spec", "template")),
    "Deployment": (frozenset({"apps", "extensions"}), ("spec", "template")),
    "StatefulSet": (frozenset({"apps"}), ("spec", "template")),
    "DaemonSet": (frozenset({"apps", "extensions"}), ("spec", "template")),
    "Job": (frozenset({"batch"}), ("spec", "template")),
    "CronJob": (frozenset({"batch"}), ("spec", "jobTemplate", "spec", "template")),
}


@dataclass(frozen=True, slots=True)
class PodRef:
    """The pod an object carries: its metadata and spec, and where the spec sits in the object."""

    metadata: Obj
    spec: Obj
    path: str  # "spec" for a Pod, "spec.template.spec" for a Deployment, ...


def object_label(obj: Obj) -> str:
    """``Deployment web/api`` (kind, namespace/name) for messages."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    ns = meta.get("namespace")
    return f"{obj.get('kind', '<no kind>')} {ns + '/' if isinstance(ns, str) and ns else ''}{name}"


def _group(api_version: object) -> str:
    if not isinstance(api_version, str):
        return ""
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def extract_pod(obj: Obj) -> PodRef | None:
    """The pod ``obj`` carries, or None if its kind carries none (or an optional template is absent).

    Raises InvalidObject when the template path holds something that is not an object.
    """
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in POD_KINDS:
        return None
    groups, path = POD_KINDS[kind]
    if _group(obj.get("apiVersion")) not in groups:
        return None
    label = object_label(obj)
    node: Any = obj
    walked: list[str] = []
    for key in path:
        walked.append(key)
        node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            return None  # e.g. a ReplicationController without a template
        if not isinstance(node, Mapping):
            raise InvalidObject(f"{label}: {'.'.join(walked)} must be an object")
    metadata = node.get("metadata", {}) if path else obj.get("metadata", {})
    spec = node.get("spec") if path else obj.get("spec")
    where = ".".join([*path, "spec"]) if path else "spec"
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise InvalidObject(f"{label}: {'.'.join([*path, 'metadata']) or 'metadata'} must be an object")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise InvalidObject(f"{label}: {where} must be an object")
    validate_pod(metadata, spec, label=label, where=where)
    return PodRef(metadata, spec, where)


# -- field types ------------------------------------------------------------------------------------------

_BOOL, _INT, _STR, _STRLIST, _MAP = "a boolean", "an integer", "a string", "a list of strings", "an object"

_SECURITY_CONTEXT: dict[str, Any] = {
    "privileged": _BOOL,
    "allowPrivilegeEscalation": _BOOL,
    "runAsNonRoot": _BOOL,
    "runAsUser": _INT,
    "procMount": _STR,
    "capabilities": {"add": _STRLIST, "drop": _STRLIST},
    "seLinuxOptions": {"type": _STR, "user": _STR, "role": _STR, "level": _STR},
    "seccompProfile": {"type": _STR, "localhostProfile": _STR},
    "appArmorProfile": {"type": _STR, "localhostProfile": _STR},
    "windowsOptions": {"hostProcess": _BOOL},
}
_HANDLER = {"httpGet": {"host": _STR}, "tcpSocket": {"host": _STR}}
_CONTAINER: dict[str, Any] = {
    "name": _STR,
    "securityContext": _SECURITY_CONTEXT,
    "ports": [{"hostPort": _INT}],
    "livenessProbe": _HANDLER,
    "readinessProbe": _HANDLER,
    "startupProbe": _HANDLER,
    "lifecycle": {"postStart": _HANDLER, "preStop": _HANDLER},
}
_POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": _BOOL,
    "runAsUser": _INT,
    "seLinuxOptions": _SECURITY_CONTEXT["seLinuxOptions"],
    "seccompProfile": _SECURITY_CONTEXT["seccompProfile"],
    "appArmorProfile": _SECURITY_CONTEXT["appArmorProfile"],
    "windowsOptions": _SECURITY_CONTEXT["windowsOptions"],
    "sysctls": [{"name": _STR}],
}
_SPEC: dict[str, Any] = {
    "hostNetwork": _BOOL,
    "hostPID": _BOOL,
    "hostIPC": _BOOL,
    "hostUsers": _BOOL,
    "os": {"name": _STR},
    "securityContext": _POD_SECURITY_CONTEXT,
    "containers": [_CONTAINER],
    "initContainers": [_CONTAINER],
    "ephemeralContainers": [_CONTAINER],
    "volumes": [{"name": _STR}],
    "runtimeClassName": _STR,
}


def _check(value: Any, schema: Any, path: str, label: str) -> None:
    if value is None:
        return
    if isinstance(schema, dict):
        if type(value) is not dict and not isinstance(value, Mapping):
            raise InvalidObject(f"{label}: {path} must be {_MAP}")
        for key, sub in schema.items():
            if key in value:
                _check(value[key], sub, f"{path}.{key}", label)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise InvalidObject(f"{label}: {path} must be a list")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{path}[{i}]", label)
    elif schema == _BOOL:
        if not isinstance(value, bool):
            raise InvalidObject(f"{label}: {path} must be {_BOOL}")
    elif schema == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidObject(f"{label}: {path} must be {_INT}")
    elif schema == _STR:
        if not isinstance(value, str):
            raise InvalidObject(f"{label}: {path} must be {_STR}")
    elif schema == _STRLIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidObject(f"{label}: {path} must be {_STRLIST}")


def validate_pod(metadata: Obj, spec: Obj, *, label: str, where: str = "spec") -> None:
    """Raise InvalidObject if a field Pod Security reads has the wrong type."""
    annotations = metadata.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidObject(f"{label}: metadata.annotations must map strings to strings")
    _check(spec, _SPEC, where, label)
