"""Namespace labels for the webhook, read through the Kubernetes API (``kubeshield.kube``).

Each namespace is fetched on first use and kept for ``ttl`` seconds (labels change rarely; a stale entry
lives at most that long, as an informer's would until its next event). A namespace that does not exist is
None (the webhook refuses the pod); an API failure raises, and the webhook answers 500 so the apiserver
applies failurePolicy (fail closed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from kubeshield.errors import KubeNotFound
from kubeshield.kube import KubeClient, resources

__all__ = ["KubeNamespaces"]


class KubeNamespaces:
    def __init__(
        self, client: KubeClient, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Mapping[str, str] | None]] = {}
        self._lock = threading.Lock()

    def labels(self, name: str) -> Mapping[str, str] | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
        try:
            ns = self._client.get(resources.NAMESPACES, name)
        except KubeNotFound:
            labels: Mapping[str, str] | None = None
        else:
            meta = ns.get("metadata") if isinstance(ns.get("metadata"), Mapping) else {}
            raw = meta.get("labels") if isinstance(meta, Mapping) else None
            labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        with self._lock:
            self._cache[name] = (now, labels)
        return labels
