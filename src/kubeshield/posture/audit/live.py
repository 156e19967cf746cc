"""Live mode: the same inventory read through the Kubernetes API (``kubeshield.kube``).

Every kind the checks read is listed in all namespaces; a kind the credentials may not list (403) or the
server does not serve (404) is named under ``skipped`` and the audit goes on. Node files cannot be read
through the API: the apiserver's flags come from its mirror pod in ``kube-system``, and the files they
name (EncryptionConfiguration, audit policy) and kubelet configurations are listed as skipped — audit them
with ``--from-dir``.
"""

from __future__ import annotations

from kubeshield.errors import KubeForbidden, KubeNotFound
from kubeshield.kube import KubeClient, Resource, resources
from kubeshield.posture._docs import Document
from kubeshield.posture.audit.inventory import Inventory

__all__ = ["LIVE_RESOURCES", "load_live_inventory"]

LIVE_RESOURCES: tuple[Resource, ...] = (
    resources.NAMESPACES,
    resources.PODS,
    resources.SERVICE_ACCOUNTS,
    resources.ROLES,
    resources.ROLE_BINDINGS,
    resources.CLUSTER_ROLES,
    resources.CLUSTER_ROLE_BINDINGS,
    resources.DEPLOYMENTS,
    resources.STATEFUL_SETS,
    resources.DAEMON_SETS,
    resources.REPLICA_SETS,
    resources.JOBS,
    resources.CRON_JOBS,
    Resource("", "v1", "ReplicationController", "replicationcontrollers"),
    Resource("", "v1", "PodTemplate", "podtemplates"),
)


def load_live_inventory(client: KubeClient, *, page_size: int = 500) -> Inventory:
    inv = Inventory(source=f"the API at {client.server}")
    for resource in LIVE_RESOURCES:
        try:
            listed = client.list(resource, all_namespaces=resource.namespaced, page_size=page_size)
        except KubeForbidden:
            inv.skipped.append(f"{resource.plural}: these credentials may not list them (403)")
            continue
        except KubeNotFound:
            inv.skipped.append(f"{resource.plural}: the server does not serve them (404)")
            continue
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        for obj in listed.items:
            item = dict(obj)
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", resource.kind)
            inv.add(Document("<api>", 0, item))
    inv.skipped.append("kubelet configurations: not readable through the API; audit them with --from-dir")
    return inv
