"""Where kube-apiserver stores each resource in etcd, and which resource an etcd key belongs to.

The rules are the apiserver's own, read from the Kubernetes source (kubernetes/kubernetes, master of
2025 unless a line says otherwise):

* **Built-in resources** (every group that kube-apiserver's own storage factory serves) are stored under
  ``<--etcd-prefix>/<resource>``, without their group: ``DefaultStorageFactory.ResourcePrefix`` returns
  the lower-cased resource name unless ``SpecialDefaultResourcePrefixes`` names another
  (``staging/src/k8s.io/apiserver/pkg/server/storage/storage_factory.go``). So ``deployments.apps`` lives
  under ``/registry/deployments``, not ``/registry/apps/deployments``.
* **The special prefixes** (``pkg/kubeapiserver/default_storage_factory_builder.go``,
  ``SpecialDefaultResourcePrefixes``): replicationcontrollers -> ``controllers``, endpoints ->
  ``services/endpoints``, nodes -> ``minions``, services -> ``services/specs``, ingresses (networking.k8s.io
  and extensions) -> ``ingress``; until 1.25 also podsecuritypolicies (policy and extensions) ->
  ``podsecuritypolicy``.
* **Cohabiting resources** (same file, ``AddCohabitatingResources``) share one storage: events.k8s.io
  events are the core ``events``; extensions deployments/daemonsets/replicasets/networkpolicies/ingresses
  are the apps and networking.k8s.io ones. A key maps back to the primary group.
* **Custom resources, CRDs and APIServices** go through ``SimpleStorageFactory.ResourcePrefix``,
  ``group + "/" + resource`` (``staging/src/k8s.io/apiserver/pkg/server/options/etcd.go``; used by the
  apiextensions-apiserver's ``NewCRDRESTOptionsGetter`` and by kube-aggregator): ``/registry/<group>/
  <plural>``, e.g. ``/registry/apiextensions.k8s.io/customresourcedefinitions`` and
  ``/registry/apiregistration.k8s.io/apiservices``. A CRD's group always contains a dot, so a first path
  segment with a dot is a group.
* **Keys written outside the registries**: the service IP and node-port allocators store one
  RangeAllocation each at ``/ranges/serviceips``, ``/ranges/secondaryserviceips`` and
  ``/ranges/servicenodeports`` through the *services* storage config, so the *services* encryption rules
  apply (``pkg/registry/core/rest/storage_core.go``: ``serviceallocator.NewEtcd(mem, "/ranges/...",
  serviceStorageConfig.ForResource(...))`` with ``serviceStorageConfig =
  NewConfig(api.Resource("services"))``);
  the lease endpoint reconciler keeps ``/masterleases/<ip>`` with the config of resource
  ``apiServerIPInfo`` (``pkg/controlplane/instance.go``: ``NewConfig(api.Resource("apiServerIPInfo"))``,
  ``reconcilers.NewLeases(config, "/masterleases/", ttl)``), which only ``*.`` or ``*.*`` can match.

Every path in :data:`BUILTIN` is the ``ExpectedEtcdPath`` of ``test/integration/etcd/data.go`` (the
apiserver's own storage-path test) unless its ``source`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubeshield.config.encryption import GroupResource
from kubeshield.errors import ConfigError

__all__ = [
    "BUILTIN",
    "FACTORY_GROUPS",
    "StoragePath",
    "group_paths",
    "known_resources",
    "resolve_path",
    "storage_paths",
]

_DATA_GO = "test/integration/etcd/data.go ExpectedEtcdPath"
_SPECIAL = "pkg/kubeapiserver/default_storage_factory_builder.go SpecialDefaultResourcePrefixes"
_SPECIAL_OLD = (
    "SpecialDefaultResourcePrefixes until 1.24 (policy/extensions podsecuritypolicies); data.go of 1.14-1.24"
)
_COHABIT = "default_storage_factory_builder.go AddCohabitatingResources (shares the primary's storage)"
_SIMPLE = "server/options/etcd.go SimpleStorageFactory.ResourcePrefix: group + '/' + resource"
_RANGES = (
    "pkg/registry/core/rest/storage_core.go serviceallocator.NewEtcd(mem, '/ranges/...', services config)"
)
_LEASES = "pkg/controlplane/instance.go reconcilers.NewLeases(config, '/masterleases/', ttl)"


@dataclass(frozen=True, slots=True)
class StoragePath:
    """One place in etcd that holds a resource.

    ``path`` is below the etcd prefix (``services/specs``). A ``singleton`` path is itself the object's
    key (a range allocation), not a directory of objects. ``rules_as`` is the resource whose
    EncryptionConfiguration rules the apiserver applies there, when not ``group_resource`` itself.
    An ``alias`` shares its primary's storage (cohabitation) and is never what a key maps back to.
    """

    group_resource: GroupResource
    path: str
    source: str
    singleton: bool = False
    rules_as: GroupResource | None = None
    alias: bool = False

    @property
    def encryption_resource(self) -> GroupResource:
        """The resource whose encryption rules apply to values under this path."""
        return self.rules_as or self.group_resource


def _gr(group: str, resource: str) -> GroupResource:
    return GroupResource(group=group, resource=resource)


def _plain(group: str, *resources: str, source: str = _DATA_GO) -> list[StoragePath]:
    return [StoragePath(_gr(group, r), r, source) for r in resources]


#: Every built-in resource kube-apiserver persists, with where (see the module docstring for sources).
BUILTIN: tuple[StoragePath, ...] = (
    # core ("" group)
    *_plain(
        "",
        "configmaps",
        "podtemplates",
        "pods",
        "resourcequotas",
        "limitranges",
        "namespaces",
        "persistentvolumes",
        "events",
        "persistentvolumeclaims",
        "serviceaccounts",
        "secrets",
    ),
    StoragePath(_gr("", "services"), "services/specs", _SPECIAL),
    StoragePath(_gr("", "endpoints"), "services/endpoints", _SPECIAL),
    StoragePath(_gr("", "nodes"), "minions", _SPECIAL),
    StoragePath(_gr("", "replicationcontrollers"), "controllers", _SPECIAL),
    StoragePath(_gr("", "serviceipallocations"), "ranges/serviceips", _RANGES, True, _gr("", "services")),
    StoragePath(
        _gr("", "serviceipallocations"), "ranges/secondaryserviceips", _RANGES, True, _gr("", "services")
    ),
    StoragePath(
        _gr("", "servicenodeportallocations"), "ranges/servicenodeports", _RANGES, True, _gr("", "services")
    ),
    StoragePath(_gr("", "apiserveripinfo"), "masterleases", _LEASES, rules_as=_gr("", "apiServerIPInfo")),
    *_plain("apps", "daemonsets", "deployments", "statefulsets", "replicasets", "controllerrevisions"),
    *_plain("autoscaling", "horizontalpodautoscalers"),
    *_plain("batch", "jobs", "cronjobs"),
    *_plain(
        "certificates.k8s.io", "certificatesigningrequests", "clustertrustbundles", "podcertificaterequests"
    ),
    *_plain("coordination.k8s.io", "leases", "leasecandidates"),
    *_plain("discovery.k8s.io", "endpointslices"),
    StoragePath(_gr("events.k8s.io", "events"), "events", _COHABIT, alias=True),
    StoragePath(_gr("networking.k8s.io", "ingresses"), "ingress", _SPECIAL),
    *_plain("networking.k8s.io", "ingressclasses", "networkpolicies", "ipaddresses", "servicecidrs"),
    *_plain("policy", "poddisruptionbudgets"),
    StoragePath(_gr("policy", "podsecuritypolicies"), "podsecuritypolicy", _SPECIAL_OLD),
    *_plain("storagemigration.k8s.io", "storageversionmigrations"),
    *_plain("flowcontrol.apiserver.k8s.io", "flowschemas", "prioritylevelconfigurations"),
    *_plain(
        "storage.k8s.io",
        "volumeattachments",
        "volumeattributesclasses",
        "storageclasses",
        "csistoragecapacities",
        "csinodes",
        "csidrivers",
    ),
    *_plain("rbac.authorization.k8s.io", "roles", "clusterroles", "rolebindings", "clusterrolebindings"),
    *_plain(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicybindings",
    ),
    *_plain("scheduling.k8s.io", "priorityclasses", "workloads", "podgroups"),
    *_plain("node.k8s.io", "runtimeclasses"),
    *_plain(
        "resource.k8s.io",
        "deviceclasses",
        "resourceclaims",
        "resourceclaimtemplates",
        "resourceslices",
        "devicetaintrules",
        "resourcepoolstatusrequests",
        "podschedulingcontexts",  # v1alpha2/v1alpha3 only (1.26-1.31); data.go of 1.31
    ),
    *_plain("internal.apiserver.k8s.io", "storageversions"),
    StoragePath(
        _gr("apiextensions.k8s.io", "customresourcedefinitions"),
        "apiextensions.k8s.io/customresourcedefinitions",
        _DATA_GO + "; " + _SIMPLE,
    ),
    StoragePath(
        _gr("apiregistration.k8s.io", "apiservices"),
        "apiregistration.k8s.io/apiservices",
        _DATA_GO + "; " + _SIMPLE,
    ),
    # extensions: removed API group whose resources cohabit with their successors
    *(
        StoragePath(_gr("extensions", r), r, _COHABIT, alias=True)
        for r in ("deployments", "daemonsets", "replicasets", "networkpolicies")
    ),
    StoragePath(_gr("extensions", "ingresses"), "ingress", _SPECIAL + "; " + _COHABIT, alias=True),
    StoragePath(
        _gr("extensions", "podsecuritypolicies"),
        "podsecuritypolicy",
        _SPECIAL_OLD + "; " + _COHABIT,
        alias=True,
    ),
)

#: Groups served by kube-apiserver's own storage factory: a resource of these groups that is not in
#: :data:`BUILTIN` (one newer than this table) is stored under its bare name, the factory's default.
FACTORY_GROUPS: frozenset[str] = frozenset(
    {sp.group_resource.group for sp in BUILTIN} - {"apiextensions.k8s.io", "apiregistration.k8s.io"}
) | {"authentication.k8s.io", "authorization.k8s.io"}

_BY_RESOURCE: dict[GroupResource, tuple[StoragePath, ...]] = {}
for _sp in BUILTIN:
    _BY_RESOURCE[_sp.group_resource] = (*_BY_RESOURCE.get(_sp.group_resource, ()), _sp)
_BY_PATH: dict[tuple[str, ...], StoragePath] = {
    tuple(sp.path.split("/")): sp for sp in BUILTIN if not sp.alias
}
_BARE_NAMES: dict[str, list[GroupResource]] = {}
for _sp in BUILTIN:
    if not _sp.alias:
        _BARE_NAMES.setdefault(_sp.group_resource.resource, []).append(_sp.group_resource)


def storage_paths(resource: GroupResource) -> tuple[StoragePath, ...]:
    """Where the apiserver stores ``resource`` (several places for ``serviceipallocations``).

    A core name that is a built-in of another group (``deployments``) is a ``ConfigError`` that names the
    group, because the apiserver would apply no rule to it and we would walk another resource's keys.
    """
    if "*" in (resource.group, resource.resource):
        raise ConfigError(f"{resource}: a wildcard names no single storage path")
    found = _BY_RESOURCE.get(resource)
    if found is not None:
        return found
    if resource.group == "" and resource.resource in _BARE_NAMES:
        owners = ", ".join(str(gr) for gr in _BARE_NAMES[resource.resource])
        raise ConfigError(f"{resource.resource!r} is not a core resource: name it with its group ({owners})")
    if resource.group == "" or resource.group in FACTORY_GROUPS:
        return (
            StoragePath(
                resource, resource.resource.lower(), "DefaultStorageFactory default: the resource name"
            ),
        )
    return (StoragePath(resource, f"{resource.group}/{resource.resource}", _SIMPLE),)


def group_paths(group: str) -> tuple[StoragePath, ...] | str:
    """Every known storage path of ``group`` (``*.<group>``), or for a custom group the ``<group>``
    directory itself (returned as the path text)."""
    if group == "" or group in FACTORY_GROUPS:
        return tuple(sp for sp in BUILTIN if sp.group_resource.group == group and not sp.alias)
    return group


def resolve_path(parts: list[bytes]) -> tuple[StoragePath | None, str, list[bytes]]:
    """Which resource a key (split on ``/`` below the etcd prefix) belongs to.

    Returns ``(storage path or None when unknown, resource display name, the remaining parts)``. The
    longest built-in path wins (``services/specs`` before a resource called ``services``); a first part
    with a dot is ``<group>/<plural>``; anything else is an unknown bare name (a built-in newer than
    :data:`BUILTIN`): its group, and so its encryption rules, cannot be told.
    """
    text = [p.decode("utf-8", "backslashreplace") for p in parts[:2]]
    if len(parts) >= 2:
        found = _BY_PATH.get((text[0], text[1]))
        if found is not None:
            return found, str(found.group_resource), parts[2:]
    if parts:
        found = _BY_PATH.get((text[0],))
        if found is not None:
            return found, str(found.group_resource), parts[1:]
    if len(parts) >= 3 and "." in text[0]:
        gr = GroupResource(group=text[0], resource=text[1])
        return StoragePath(gr, f"{text[0]}/{text[1]}", _SIMPLE), str(gr), parts[2:]
    return None, text[0] if parts else "", parts[1:]


def known_resources() -> Iterable[GroupResource]:
    """Every built-in resource in the table (aliases excluded), in table order."""
    return dict.fromkeys(sp.group_resource for sp in BUILTIN if not sp.alias)
