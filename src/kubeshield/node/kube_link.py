"""The node components' link to the Kubernetes API: a ``kubeshield.kube.KubeClient`` and a pod lookup.

``KubeClient`` already has the shapes :mod:`.review` and :mod:`.release` need (``token_review``,
``subject_access_review``); :func:`pod_lookup` turns its ``get`` into the ``(namespace, name) -> pod or
None`` the verifier calls. Connection failures stay ``KubeUnavailable`` (the release service answers 503).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubeshield.errors import KubeNotFound
from kubeshield.kube import KubeClient, resources
from kubeshield.node.review import PodLookup

__all__ = ["config_map_reader", "connect", "pod_lookup"]


def connect(kubeconfig: Path | None = None, *, timeout: float = 10.0) -> KubeClient:
    """A client from ``kubeconfig``, or the in-cluster ServiceAccount when none is given."""
    if kubeconfig is not None:
        return KubeClient.from_kubeconfig(kubeconfig, timeout=timeout)
    return KubeClient.in_cluster(timeout=timeout)


def config_map_reader(kube: KubeClient) -> Callable[[str, str], Mapping[str, str] | None]:
    def get(namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            obj = kube.get(resources.CONFIG_MAPS, name, namespace=namespace)
        except KubeNotFound:
            return None
        return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

    return get


def pod_lookup(kube: KubeClient) -> PodLookup:
    def get(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return kube.get(resources.PODS, name, namespace=namespace)
        except KubeNotFound:
            return None

    return get
