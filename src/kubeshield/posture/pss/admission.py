"""Pod Security admission over AdmissionReview v1: what upstream's ``admission.Admission`` decides.

* **pods** (CREATE, UPDATE, the ``ephemeralcontainers`` subresource): exempt namespaces and users are
  allowed (audit annotation ``exempt``); a namespace whose enforce, audit and warn are all privileged is
  allowed; an UPDATE that changes nothing Pod Security reads (images, seccomp annotations, containers added)
  is allowed; a pod whose ``runtimeClassName`` is exempt is allowed. Otherwise ``enforce`` denies with
  ``pods "x" is forbidden: violates PodSecurity "baseline:latest": ...`` (403), ``audit`` adds the
  audit annotation ``audit-violations`` and ``warn`` adds a warning (only to allowed requests).
* **objects that embed a pod** (Deployment, ...): never denied; ``audit`` and ``warn`` only, as upstream.
* **namespaces**: invalid ``pod-security.kubernetes.io/*`` labels are refused (422, naming the label).

Every response is ``allowed`` plus the upstream audit annotations: ``enforce-policy``,
``audit-violations``, ``exempt``, ``error`` (unparsable namespace labels). A request we cannot use
(another kind, another version, no uid) raises :class:`AdmissionRequestError`; the server answers 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from kubeshield.errors import ConfigError, KubeshieldError
from kubeshield.posture.errors import AdmissionRequestError, InvalidObject
from kubeshield.posture.pss._text import go_quote
from kubeshield.posture.pss.api import LevelVersion, Policy, parse_level, parse_version, policy_from_labels
from kubeshield.posture.pss.evaluator import Evaluator, aggregate_detail, evaluator
from kubeshield.posture.pss.extract import extract_pod

__all__ = [
    "API_VERSION",
    "Admission",
    "AdmissionConfig",
    "NamespaceLookup",
    "StaticNamespaces",
    "load_admission_config",
]

API_VERSION = "admission.k8s.io/v1"
CONFIG_API_VERSIONS = (
    "pod-security.admission.config.k8s.io/v1",
    "pod-security.admission.config.k8s.io/v1beta1",
)
_CONTROLLER_RESOURCES = {
    ("", "replicationcontrollers"): "ReplicationController",
    ("", "podtemplates"): "PodTemplate",
    ("apps", "replicasets"): "ReplicaSet",
    ("apps", "deployments"): "Deployment",
    ("apps", "statefulsets"): "StatefulSet",
    ("apps", "daemonsets"): "DaemonSet",
    ("batch", "jobs"): "Job",
    ("batch", "cronjobs"): "CronJob",
}
# pod subresources that cannot change what Pod Security reads
_IGNORED_POD_SUBRESOURCES = frozenset(
    {"attach", "binding", "eviction", "exec", "log", "portforward", "proxy", "resize", "status"}
)
_SECCOMP_POD = "seccomp.security.alpha.kubernetes.io/pod"
_SECCOMP_CONTAINER = "container.seccomp.security.alpha.kubernetes.io/"


class NamespaceLookup(Protocol):
    def labels(self, name: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None when it does not exist."""


@dataclass
class StaticNamespaces:
    """Namespaces known from exported objects (``kubectl get ns -o yaml``)."""

    by_name: dict[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: Sequence[Mapping[str, Any]]) -> StaticNamespaces:
        out: dict[str, Mapping[str, str]] = {}
        for obj in objects:
            if obj.get("kind") == "Namespace" and isinstance(obj.get("metadata"), Mapping):
                meta = obj["metadata"]
                labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
                out[str(meta.get("name", ""))] = {str(k): str(v) for k, v in (labels or {}).items()}
        return cls(out)

    def labels(self, name: str) -> Mapping[str, str] | None:
        return self.by_name.get(name)


@dataclass(frozen=True)
class AdmissionConfig:
    """PodSecurityConfiguration: defaults for unlabelled namespaces, and exemptions."""

    defaults: Policy = field(default_factory=Policy)
    exempt_usernames: frozenset[str] = frozenset()
    exempt_namespaces: frozenset[str] = frozenset()
    exempt_runtime_classes: frozenset[str] = frozenset()


def load_admission_config(path: str | Path) -> AdmissionConfig:
    """Read a PodSecurityConfiguration (the file kube-apiserver's AdmissionConfiguration embeds)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the PodSecurityConfiguration: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a PodSecurityConfiguration object")
    if data.get("kind") != "PodSecurityConfiguration" or data.get("apiVersion") not in CONFIG_API_VERSIONS:
        raise ConfigError(
            f"{path}: expected kind PodSecurityConfiguration, apiVersion {CONFIG_API_VERSIONS[0]}"
        )
    unknown = set(data) - {"apiVersion", "kind", "defaults", "exemptions"}
    if unknown:
        raise ConfigError(f"{path}: unknown field {sorted(unknown)[0]!r}")
    defaults = data.get("defaults") or {}
    exemptions = data.get("exemptions") or {}
    if not isinstance(defaults, Mapping) or not isinstance(exemptions, Mapping):
        raise ConfigError(f"{path}: defaults and exemptions must be objects")
    values: dict[str, LevelVersion] = {}
    for mode in ("enforce", "audit", "warn"):
        level, err = parse_level(str(defaults.get(mode, "privileged")))
        if err:
            raise ConfigError(f"{path}: defaults.{mode}: {err}")
        version, verr = parse_version(str(defaults.get(f"{mode}-version", "latest")))
        if verr:
            raise ConfigError(f"{path}: defaults.{mode}-version: {verr}")
        values[mode] = LevelVersion(level, version)
    bad = set(defaults) - {m + s for m in ("enforce", "audit", "warn") for s in ("", "-version")}
    if bad:
        raise ConfigError(f"{path}: unknown field defaults.{sorted(bad)[0]}")

    def names(key: str) -> frozenset[str]:
        raw = exemptions.get(key) or []
        if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
            raise ConfigError(f"{path}: exemptions.{key} must be a list of names")
        return frozenset(raw)

    bad = set(exemptions) - {"usernames", "namespaces", "runtimeClasses"}
    if bad:
        raise ConfigError(f"{path}: unknown field exemptions.{sorted(bad)[0]}")
    return AdmissionConfig(
        defaults=Policy(values["enforce"], values["audit"], values["warn"]),
        exempt_usernames=names("usernames"),
        exempt_namespaces=names("namespaces"),
        exempt_runtime_classes=names("runtimeClasses"),
    )


def _allowed(uid: str, **extra: Any) -> dict[str, Any]:
    return {"uid": uid, "allowed": True, **extra}


def _status(uid: str, code: int, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "allowed": False,
        "status": {"status": "Failure", "code": code, "reason": reason, "message": message},
        **extra,
    }


class Admission:
    """Decide AdmissionReview requests. ``namespaces`` tells the labels of each namespace."""

    def __init__(
        self,
        *,
        namespaces: NamespaceLookup,
        config: AdmissionConfig | None = None,
        pss: Evaluator | None = None,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self._namespaces = namespaces
        self._config = config or AdmissionConfig()
        self._pss = pss or evaluator()
        self._log = log

    # -- entry point ----------------------------------------------------------------------------------------

    def review(self, body: Any) -> dict[str, Any]:
        """An AdmissionReview v1 response for ``body`` (an AdmissionReview v1 request)."""
        request = _request(body)
        response = self.decide(request)
        return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}

    def decide(self, request: Mapping[str, Any]) -> dict[str, Any]:
        uid = str(request["uid"])
        resource = request.get("resource") if isinstance(request.get("resource"), Mapping) else {}
        assert isinstance(resource, Mapping)
        group, name = str(resource.get("group", "")), str(resource.get("resource", ""))
        if (group, name) == ("", "namespaces"):
            return self._namespace(uid, request)
        if (group, name) == ("", "pods"):
            return self._pod(uid, request)
        if (group, name) in _CONTROLLER_RESOURCES:
            return self._controller(uid, request, _CONTROLLER_RESOURCES[(group, name)])
        self._log(f"admission: {group or 'core'}/{name} carries no pod; allowed without checks")
        return _allowed(uid)

    # -- namespaces -----------------------------------------------------------------------------------------

    def _namespace(self, uid: str, request: Mapping[str, Any]) -> dict[str, Any]:
        if request.get("subResource") or request.get("operation") not in ("CREATE", "UPDATE"):
            return _allowed(uid)
        obj = request.get("object")
        if not isinstance(obj, Mapping):
            return _status(uid, 400, "BadRequest", "failed to decode namespace")
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        assert isinstance(meta, Mapping)
        labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
        assert isinstance(labels, Mapping)
        policy = policy_from_labels({str(k): str(v) for k, v in labels.items()}, self._config.defaults)
        if policy.errors:
            name = str(meta.get("name") or request.get("name") or "")
            errors = policy.errors
            joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
            return _status(uid, 422, "Invalid", f"Namespace {go_quote(name)} is invalid: {joined}")
        return _allowed(uid)

    # -- pods -----------------------------------------------------------------------------------------------

    def _exempt(self, uid: str, request: Mapping[str, Any]) -> dict[str, Any] | None:
        namespace = str(request.get("namespace") or "")
        if namespace in self._config.exempt_namespaces:
            return _allowed(uid, auditAnnotations={"exempt": "namespace"})
        user = request.get("userInfo") if isinstance(request.get("userInfo"), Mapping) else {}
        assert isinstance(user, Mapping)
        if str(user.get("username", "")) in self._config.exempt_usernames:
            return _allowed(uid, auditAnnotations={"exempt": "user"})
        return None

    def _policy(self, uid: str, namespace: str) -> Policy | dict[str, Any]:
        try:
            labels = self._namespaces.labels(namespace)
        except KubeshieldError as exc:
            self._log(f"admission: namespace lookup failed: {type(exc).__name__}")
            labels = None
        if labels is None:
            return _status(
                uid,
                500,
                "InternalError",
                f"Internal error occurred: failed to lookup namespace {go_quote(namespace)}",
            )
        return policy_from_labels(labels, self._config.defaults)

    def _pod(self, uid: str, request: Mapping[str, Any]) -> dict[str, Any]:
        sub = str(request.get("subResource") or "")
        if sub in _IGNORED_POD_SUBRESOURCES or request.get("operation") not in ("CREATE", "UPDATE"):
            return _allowed(uid)
        exempt = self._exempt(uid, request)
        if exempt is not None:
            return exempt
        policy = self._policy(uid, str(request.get("namespace") or ""))
        if isinstance(policy, dict):
            return policy
        if not policy.errors and policy.fully_privileged():
            return _allowed(uid)
        pod = request.get("object")
        if not isinstance(pod, Mapping):
            return _status(uid, 400, "BadRequest", "failed to decode pod")
        pod = _with_kind(pod, "Pod")
        if request.get("operation") == "UPDATE":
            old = request.get("oldObject")
            if not isinstance(old, Mapping):
                return _status(uid, 400, "BadRequest", "failed to decode old pod")
            if not _significant_pod_update(pod, old):
                return _allowed(uid)
        try:
            ref = extract_pod(pod)
        except InvalidObject as exc:
            return _status(uid, 400, "BadRequest", f"failed to decode pod: {exc}")
        assert ref is not None
        return self._evaluate(uid, request, policy, ref.metadata, ref.spec, enforce=True)

    def _controller(self, uid: str, request: Mapping[str, Any], kind: str) -> dict[str, Any]:
        if request.get("subResource") or request.get("operation") not in ("CREATE", "UPDATE"):
            return _allowed(uid)
        exempt = self._exempt(uid, request)
        if exempt is not None:
            return exempt
        policy = self._policy(uid, str(request.get("namespace") or ""))
        if isinstance(policy, dict):
            return policy
        if not policy.errors and policy.warn.level == "privileged" and policy.audit.level == "privileged":
            return _allowed(uid)
        obj = request.get("object")
        if not isinstance(obj, Mapping):
            return _status(uid, 400, "BadRequest", f"failed to decode {kind}")
        try:
            ref = extract_pod(_with_kind(obj, kind))
        except InvalidObject as exc:
            return _status(uid, 400, "BadRequest", f"failed to decode {kind}: {exc}")
        if ref is None:
            return _allowed(uid)  # an optional pod template that is absent
        return self._evaluate(uid, request, policy, ref.metadata, ref.spec, enforce=False)

    def _evaluate(
        self,
        uid: str,
        request: Mapping[str, Any],
        policy: Policy,
        metadata: Mapping[str, Any],
        spec: Mapping[str, Any],
        *,
        enforce: bool,
    ) -> dict[str, Any]:
        runtime_class = spec.get("runtimeClassName")
        if isinstance(runtime_class, str) and runtime_class in self._config.exempt_runtime_classes:
            return _allowed(uid, auditAnnotations={"exempt": "runtimeClass"})
        annotations: dict[str, str] = {}
        if policy.errors:
            annotations["error"] = "Failed to parse policy: " + (
                policy.errors[0] if len(policy.errors) == 1 else "[" + ", ".join(policy.errors) + "]"
            )
        cache: dict[LevelVersion, list[Any]] = {}

        def results(lv: LevelVersion) -> list[Any]:
            if lv not in cache:
                cache[lv] = self._pss.evaluate(lv, metadata, spec)
            return cache[lv]

        response = _allowed(uid)
        if enforce:
            annotations["enforce-policy"] = str(policy.enforce)
            violations = results(policy.enforce)
            if violations:
                name = str(request.get("name") or "")
                subject = f"pods {go_quote(name)}" if name else "pods"
                response = _status(
                    uid,
                    403,
                    "Forbidden",
                    f"{subject} is forbidden: violates PodSecurity {go_quote(str(policy.enforce))}: "
                    f"{aggregate_detail(violations)}",
                )
                response["status"]["details"] = {"name": name, "kind": "pods"}
        audit = results(policy.audit)
        if audit:
            annotations["audit-violations"] = (
                f"would violate PodSecurity {go_quote(str(policy.audit))}: {aggregate_detail(audit)}"
            )
        if response["allowed"]:
            warn = results(policy.warn)
            if warn:
                response["warnings"] = [
                    f"would violate PodSecurity {go_quote(str(policy.warn))}: {aggregate_detail(warn)}"
                ]
        response["auditAnnotations"] = annotations
        return response


def _request(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise AdmissionRequestError("the body is not a JSON object")
    if body.get("kind") != "AdmissionReview":
        raise AdmissionRequestError(f"expected kind AdmissionReview, got {str(body.get('kind'))[:64]!r}")
    if body.get("apiVersion") != API_VERSION:
        raise AdmissionRequestError(
            f"expected apiVersion {API_VERSION}, got {str(body.get('apiVersion'))[:64]!r}"
            " (set admissionReviewVersions: [v1] in the webhook configuration)"
        )
    request = body.get("request")
    if not isinstance(request, Mapping):
        raise AdmissionRequestError("the AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise AdmissionRequestError("the AdmissionReview request has no uid")
    return request


def _with_kind(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    if obj.get("kind") and obj.get("apiVersion"):
        return obj
    out = dict(obj)
    out.setdefault("kind", kind)
    group = next((g for (g, _), k in _CONTROLLER_RESOURCES.items() if k == kind), "")
    out.setdefault("apiVersion", f"{group}/v1" if group else "v1")
    return out


def _significant_pod_update(pod: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Upstream's isSignificantPodUpdate: images, seccomp annotations, containers added."""

    def annotations(p: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = p.get("metadata") if isinstance(p.get("metadata"), Mapping) else {}
        assert isinstance(meta, Mapping)
        value = meta.get("annotations")
        return value if isinstance(value, Mapping) else {}

    def spec(p: Mapping[str, Any]) -> Mapping[str, Any]:
        value = p.get("spec")
        return value if isinstance(value, Mapping) else {}

    def containers(p: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
        value = spec(p).get(key)
        return [c for c in value if isinstance(c, Mapping)] if isinstance(value, list) else []

    new_ann, old_ann = annotations(pod), annotations(old)
    if new_ann.get(_SECCOMP_POD) != old_ann.get(_SECCOMP_POD):
        return True

    def changed(c: Mapping[str, Any], o: Mapping[str, Any]) -> bool:
        if c.get("image") != o.get("image"):
            return True
        key = _SECCOMP_CONTAINER + str(c.get("name", ""))
        return new_ann.get(key) != old_ann.get(key)

    for key in ("containers", "initContainers"):
        new, prev = containers(pod, key), containers(old, key)
        if len(new) != len(prev):
            return True
        if any(changed(c, o) for c, o in zip(new, prev, strict=True)):
            return True
    previous = {str(c.get("name", "")): c for c in containers(old, "ephemeralContainers")}
    for c in containers(pod, "ephemeralContainers"):
        o = previous.get(str(c.get("name", "")))
        if o is None or changed(c, o):
            return True
    return False
