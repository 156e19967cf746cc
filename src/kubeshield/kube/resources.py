"""Resource types: what a request is about (group, version, kind, plural, scope), built-ins included.

A ``Resource`` is all the client needs to build a URL, so a CustomResourceDefinition's kind is as easy to
use as a built-in one::

    SEALED_SECRETS = Resource.custom("bitnami.com/v1alpha1", "SealedSecret")     # plural: sealedsecrets
    client.list(SEALED_SECRETS, namespace="team-a")

``Resource.custom`` guesses the plural the way kubectl's RESTMapper does when discovery has not run
(``UnsafeGuessKindToResource``: lower-case, then ``s`` -> ``ses``, ``y`` -> ``ies``, else ``+s``); pass
``plural=`` when the CRD says otherwise, or ask the server with ``KubeClient.discover``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "BUILTIN",
    "CLUSTER_ROLES",
    "CLUSTER_ROLE_BINDINGS",
    "CONFIG_MAPS",
    "CRDS",
    "CRON_JOBS",
    "DAEMON_SETS",
    "DEPLOYMENTS",
    "EVENTS",
    "JOBS",
    "LEASES",
    "NAMESPACES",
    "NODES",
    "PODS",
    "REPLICA_SETS",
    "ROLES",
    "ROLE_BINDINGS",
    "SEALED_SECRETS",
    "SECRETS",
    "SECRET_PROVIDER_CLASSES",
    "SERVICES",
    "SERVICE_ACCOUNTS",
    "STATEFUL_SETS",
    "Resource",
    "guess_plural",
    "split_api_version",
]


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` -> ``("apps", "v1")``; ``"v1"`` -> ``("", "v1")``."""
    if not api_version or api_version.count("/") > 1:
        raise ValueError(f"invalid apiVersion {api_version!r}")
    group, _, version = api_version.rpartition("/")
    if not version:
        raise ValueError(f"invalid apiVersion {api_version!r}")
    return group, version


def guess_plural(kind: str) -> str:
    """kubectl's ``UnsafeGuessKindToResource``: the resource name a kind most likely has."""
    if not kind:
        raise ValueError("kind must not be empty")
    singular = kind.lower()
    if singular.endswith("endpoints"):
        return singular
    if singular.endswith("s"):
        return singular + "es"
    if singular.endswith("y"):
        return singular[:-1] + "ies"
    return singular + "s"


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource type of the API, e.g. ``Resource("apps", "v1", "Deployment", "deployments")``."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @classmethod
    def custom(
        cls, api_version: str, kind: str, *, plural: str | None = None, namespaced: bool = True
    ) -> Resource:
        group, version = split_api_version(api_version)
        return cls(group, version, kind, plural or guess_plural(kind), namespaced)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str | None) -> str:
        """``/api/v1/namespaces/NS/secrets``; cluster-scoped and all-namespace paths have no namespace."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        return f"{base}/{self.plural}"

    def object_path(self, name: str, namespace: str | None, subresource: str | None = None) -> str:
        if not name:
            raise ValueError(f"a {self.kind} name must not be empty")
        if self.namespaced and not namespace:
            raise ValueError(f"{self.kind} is namespaced: a namespace is required")
        path = f"{self.collection_path(namespace)}/{quote(name, safe='')}"
        return f"{path}/{subresource}" if subresource else path


def _core(kind: str, plural: str, namespaced: bool = True) -> Resource:
    return Resource("", "v1", kind, plural, namespaced)


NAMESPACES = _core("Namespace", "namespaces", namespaced=False)
NODES = _core("Node", "nodes", namespaced=False)
SECRETS = _core("Secret", "secrets")
CONFIG_MAPS = _core("ConfigMap", "configmaps")
PODS = _core("Pod", "pods")
SERVICES = _core("Service", "services")
SERVICE_ACCOUNTS = _core("ServiceAccount", "serviceaccounts")
EVENTS = _core("Event", "events")
DEPLOYMENTS = Resource("apps", "v1", "Deployment", "deployments")
DAEMON_SETS = Resource("apps", "v1", "DaemonSet", "daemonsets")
STATEFUL_SETS = Resource("apps", "v1", "StatefulSet", "statefulsets")
REPLICA_SETS = Resource("apps", "v1", "ReplicaSet", "replicasets")
JOBS = Resource("batch", "v1", "Job", "jobs")
CRON_JOBS = Resource("batch", "v1", "CronJob", "cronjobs")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "Role", "roles")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings")
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False)
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False
)
LEASES = Resource("coordination.k8s.io", "v1", "Lease", "leases")
CRDS = Resource(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
)
# the custom resources the second wave's features use
SEALED_SECRETS = Resource("bitnami.com", "v1alpha1", "SealedSecret", "sealedsecrets")
SECRET_PROVIDER_CLASSES = Resource(
    "secrets-store.csi.x-k8s.io", "v1", "SecretProviderClass", "secretproviderclasses"
)

#: built-in (and well-known custom) resources by ``(apiVersion, kind)``
BUILTIN: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r
    for r in (
        NAMESPACES,
        NODES,
        SECRETS,
        CONFIG_MAPS,
        PODS,
        SERVICES,
        SERVICE_ACCOUNTS,
        EVENTS,
        DEPLOYMENTS,
        DAEMON_SETS,
        STATEFUL_SETS,
        REPLICA_SETS,
        JOBS,
        CRON_JOBS,
        ROLES,
        ROLE_BINDINGS,
        CLUSTER_ROLES,
        CLUSTER_ROLE_BINDINGS,
        LEASES,
        CRDS,
        SEALED_SECRETS,
        SECRET_PROVIDER_CLASSES,
    )
}
