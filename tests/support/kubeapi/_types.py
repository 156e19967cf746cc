"""The resource types the stand-in serves: the built-ins, and CRDs registered at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUILTIN_TYPES", "ResourceType", "types_from_crd"]

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    status: bool = False  # has a status subresource
    generation: bool = False  # metadata.generation tracks spec changes
    crd: bool = False
    # for CRDs: the whole schema doc and printer columns, as the CRD declares them
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    singular_name: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.singular_name or self.kind.lower()

    @property
    def storage(self) -> tuple[str, str]:
        """Objects are stored once per group and plural, whatever version is asked."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def persisted(self) -> bool:
        return "get" in self.verbs


def _t(group: str, version: str, kind: str, plural: str, **kw: Any) -> ResourceType:
    return ResourceType(group, version, kind, plural, **kw)


_WORKLOAD = {"status": True, "generation": True, "categories": ("all",)}

BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _t("", "v1", "Namespace", "namespaces", namespaced=False, short_names=("ns",), status=True),
    _t("", "v1", "Node", "nodes", namespaced=False, short_names=("no",), status=True),
    _t("", "v1", "Secret", "secrets"),
    _t("", "v1", "ConfigMap", "configmaps", short_names=("cm",)),
    _t("", "v1", "Pod", "pods", short_names=("po",), categories=("all",), status=True, generation=True),
    _t("", "v1", "ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _t("", "v1", "Service", "services", short_names=("svc",), categories=("all",), status=True),
    _t("", "v1", "Event", "events", short_names=("ev",)),
    _t("apps", "v1", "Deployment", "deployments", short_names=("deploy",), **_WORKLOAD),
    _t("apps", "v1", "DaemonSet", "daemonsets", short_names=("ds",), **_WORKLOAD),
    _t("apps", "v1", "StatefulSet", "statefulsets", short_names=("sts",), **_WORKLOAD),
    _t("apps", "v1", "ReplicaSet", "replicasets", short_names=("rs",), **_WORKLOAD),
    _t("batch", "v1", "Job", "jobs", **_WORKLOAD),
    _t("batch", "v1", "CronJob", "cronjobs", short_names=("cj",), **_WORKLOAD),
    _t("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    _t("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    _t("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False),
    _t("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False),
    _t("coordination.k8s.io", "v1", "Lease", "leases"),
    _t(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        status=True,
        generation=True,
    ),
    _t("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", namespaced=False, verbs=CREATE_ONLY),
    _t(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        namespaced=False,
        verbs=CREATE_ONLY,
    ),
    _t(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        namespaced=False,
        verbs=CREATE_ONLY,
    ),
    _t(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        namespaced=False,
        verbs=CREATE_ONLY,
    ),
    _t(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        verbs=CREATE_ONLY,
    ),
)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition, as resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group", ""), names.get("plural", ""), names.get("kind", "")
    if not (group and plural and kind):
        return []
    out = []
    for version in spec.get("versions") or ():
        if not version.get("served", True):
            continue
        out.append(
            ResourceType(
                group,
                str(version["name"]),
                kind,
                plural,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status="status" in (version.get("subresources") or {}),
                generation=True,
                crd=True,
                schema=version,
                singular_name=str(names.get("singular") or kind.lower()),
            )
        )
    return out
