"""kubeshield.kube: the Kubernetes API client every feature uses (layer 1; imports errors only).

``KubeClient`` (synchronous, for CLIs) and ``AsyncKubeClient`` (asyncio, for controllers and servers)
have the same methods::

    from kubeshield.kube import KubeClient, resources

    with KubeClient.from_kubeconfig(context="prod") as kube:
        secret = kube.get(resources.SECRETS, "db", namespace="app")
        for event in kube.watch(resources.SEALED_SECRETS, all_namespaces=True):
            ...

Objects are plain JSON dicts; resource types are ``Resource`` values (built-ins in ``resources``,
custom ones with ``Resource.custom`` or ``client.discover``). Errors are the ``KubeError`` family of
``kubeshield.errors`` and never carry a response body. Behind it: lightkube (kubeconfig and in-cluster
settings) over its HTTP stack httpx2; nothing outside this package imports either (import-linter).
"""

from __future__ import annotations

import importlib.util as _importlib_util

if _importlib_util.find_spec("lightkube") is None or _importlib_util.find_spec("httpx2") is None:
    raise ImportError("kubeshield.kube needs the 'kube' extra: pip install 'kubeshield[kube]'")

from kubeshield.kube import resources
from kubeshield.kube._common import ObjectList
from kubeshield.kube._connect import Connection, from_kubeconfig, in_cluster
from kubeshield.kube._retry import aretry_on_conflict, retry_on_conflict
from kubeshield.kube._reviews import AccessReview, TokenReview
from kubeshield.kube._watch import WatchEvent
from kubeshield.kube._wire import JsonObject, PatchType, field_selector, label_selector
from kubeshield.kube.aio import AsyncKubeClient, AsyncWatch
from kubeshield.kube.client import KubeClient, Watch
from kubeshield.kube.resources import Resource

__all__ = [
    "AccessReview",
    "AsyncKubeClient",
    "AsyncWatch",
    "Connection",
    "JsonObject",
    "KubeClient",
    "ObjectList",
    "PatchType",
    "Resource",
    "TokenReview",
    "Watch",
    "WatchEvent",
    "aretry_on_conflict",
    "field_selector",
    "from_kubeconfig",
    "in_cluster",
    "label_selector",
    "resources",
    "retry_on_conflict",
]
