"""Prometheus metrics of the KMS plugin, in their own ``CollectorRegistry`` (never the global one).

Labels never hold plaintext, keys, ciphertext or even the raw key_id: the current key_id is exported as
``key_id_hash`` = the first 16 hex digits of ``sha256(key_id)``, as kube-apiserver does in its own KMS
metrics, so dashboards can see a rotation without learning key names.

``kubeshield_keyring_info{backend, keyring_id_hash, versions_digest} 1`` names the keys this plugin
serves (:mod:`kubeshield.keys.identity`): ``keyring_id_hash`` is the same hash of the keyring id
(``kubeshield keys list -o json`` shows it as ``keyringIdHash``), ``versions_digest`` the keyring's
versions digest (empty for backends without a keyring file). It is read from the backend at every
scrape, so a restored or retired keyring shows at once. Every node of a cluster must report one and the
same series; ``count(count by (keyring_id_hash, versions_digest) (kubeshield_keyring_info)) > 1``
says they do not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubeshield.keys.identity import KeyringIdentity, identity_hash

__all__ = ["KMSMetrics", "key_id_hash"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def key_id_hash(key_id: str) -> str:
    """``sha256(key_id)`` as hex, first 16 digits: safe to show, stable per key_id."""
    return hashlib.sha256(key_id.encode("utf-8")).hexdigest()[:16]


class KMSMetrics:
    """The plugin's metrics. One instance per server; ``render()`` gives the text exposition."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.operations = Counter(
            "kubeshield_kms_operations",
            "KMS gRPC operations by operation and gRPC status code.",
            ["operation", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubeshield_kms_operation_duration_seconds",
            "Time spent serving one KMS gRPC operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.current_key_id = Gauge(
            "kubeshield_kms_current_key_id_info",
            "The key_id Status reports now (hashed: first 16 hex digits of sha256(key_id)).",
            ["key_id_hash"],
            registry=self.registry,
        )
        self.backend_healthy = Gauge(
            "kubeshield_backend_healthy",
            "1 when the last deep health round trip of the key backend succeeded, else 0.",
            registry=self.registry,
        )
        self.backend_last_healthy = Gauge(
            "kubeshield_backend_last_healthy_timestamp_seconds",
            "Unix time of the last successful deep health round trip of the key backend.",
            registry=self.registry,
        )
        self.health_check_duration = Histogram(
            "kubeshield_backend_health_check_duration_seconds",
            "Duration of the deep health round trips of the key backend.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.break_glass = Counter(
            "kubeshield_break_glass_decrypts",
            "Decrypts served by the emergency keyring because the primary key backend was unreachable.",
            registry=self.registry,
        )
        self._key_id_hash: str | None = None

    def observe_operation(self, operation: str, code: str, seconds: float) -> None:
        """Count one finished operation (``code`` is a gRPC status name such as ``OK``)."""
        self.operations.labels(operation=operation, code=code).inc()
        self.duration.labels(operation=operation).observe(seconds)

    def set_current_key_id(self, key_id: str) -> None:
        """Point the info gauge at ``key_id`` (hashed); the previous series is removed."""
        digest = key_id_hash(key_id)
        if digest == self._key_id_hash:
            return
        if self._key_id_hash is not None:
            self.current_key_id.remove(self._key_id_hash)
        self.current_key_id.labels(key_id_hash=digest).set(1)
        self._key_id_hash = digest

    def observe_health(self, *, ok: bool, seconds: float, wall_time: float) -> None:
        """Record one deep health check."""
        self.backend_healthy.set(1 if ok else 0)
        self.health_check_duration.observe(seconds)
        if ok:
            self.backend_last_healthy.set(wall_time)

    def count_break_glass(self, key_id: str) -> None:
        """Count one Decrypt served by the emergency keyring (``key_id`` is not used as a label)."""
        del key_id
        self.break_glass.inc()

    def track_keyring(self, source: Callable[[], KeyringIdentity]) -> None:
        """Export ``kubeshield_keyring_info`` from ``source`` (cheap, no I/O) at every scrape."""
        self.registry.register(_KeyringCollector(source))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _KeyringCollector(Collector):
    """``kubeshield_keyring_info``, computed when scraped (module docstring)."""

    def __init__(self, source: Callable[[], KeyringIdentity]) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kubeshield_keyring_info",
            "The keys this plugin serves: hash of the keyring id, and the keyring's versions digest.",
            labels=["backend", "keyring_id_hash", "versions_digest"],
        )
        try:
            identity = self._source()
        except Exception:  # a closed backend: export nothing rather than fail the whole scrape
            yield family
            return
        family.add_metric(
            [identity.backend, identity_hash(identity.keyring_id), identity.versions_digest or ""], 1
        )
        yield family
