"""Prometheus metrics of the node components, each in its own registry (labels hold outcomes only).

Label values are fixed words (``released``, ``token-rejected``, ...), store names from the config and
``cached`` yes/no: never an identity, a pod, an object name, a value or a token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["NodeMetrics"]


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.releases = Counter(
            "kubeshield_node_releases", "Release requests by outcome.", ["outcome"], registry=r
        )
        self.released_objects = Counter(
            "kubeshield_node_released_objects", "Values handed out by the release service.", registry=r
        )
        self.token_reviews = Counter(
            "kubeshield_node_token_reviews",
            "Token verifications by outcome and cache use.",
            ["outcome", "cached"],
            registry=r,
        )
        self.release_seconds = Histogram(
            "kubeshield_node_release_duration_seconds",
            "Time to answer a release request.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.seals = Counter("kubeshield_node_seals", "Seal requests by outcome.", ["outcome"], registry=r)
        self.mounts = Counter(
            "kubeshield_node_csi_mounts", "CSI Mount calls by outcome.", ["outcome"], registry=r
        )
        self.injections = Counter(
            "kubeshield_node_injections", "Admission reviews by outcome.", ["outcome"], registry=r
        )
        self.store_reads = Counter(
            "kubeshield_node_store_reads", "Reads from external stores.", ["store", "outcome"], registry=r
        )

    def review_hook(self, outcome: str, cached: bool) -> None:
        self.token_reviews.labels(outcome=outcome, cached="yes" if cached else "no").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
