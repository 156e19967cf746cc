"""Building the node components from a node config (the library half of ``kubeshield node ...``).

The CLI parses flags and calls these; tests call them with their own Kubernetes client (the stand-in's).
The Kubernetes client is passed in (``kubeshield.kube.KubeClient`` fits the protocols of :mod:`.review`
and :mod:`.release`), so nothing here opens a connection by itself except the key backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubeshield.errors import ConfigError
from kubeshield.keys.base import KeyBackend
from kubeshield.keys.registry import open_primary
from kubeshield.node.audit import AuditLog
from kubeshield.node.client import ReleaseClient
from kubeshield.node.csi.provider import (
    ConfigMapReader,
    CsiProvider,
    LocalSealedSource,
    RemoteSealedSource,
    load_hmac_key,
)
from kubeshield.node.injector.mutate import InjectorConfig
from kubeshield.node.metrics import NodeMetrics
from kubeshield.node.release import AccessReviewer, ReleaseService
from kubeshield.node.review import PodLookup, PodVerifier, TokenReviewer
from kubeshield.node.sealing_keys import SealingKeyFile, SealingKeys
from kubeshield.node.settings import NodeConfig
from kubeshield.node.stores import Store, open_store

__all__ = [
    "build_csi_provider",
    "build_release_service",
    "injector_config",
    "open_key_backend",
    "open_sealing_keys",
    "release_client",
]


def open_key_backend(config: NodeConfig) -> KeyBackend:
    """The ``keys:`` backend (bare primary: the sealing roots are wrapped once, at start-up)."""
    return open_primary(config.settings.keys)


def open_sealing_keys(config: NodeConfig, backend: KeyBackend | None = None) -> SealingKeys:
    return SealingKeyFile(config.node.sealing_keys).open(backend or open_key_backend(config))


def release_client(config: NodeConfig) -> ReleaseClient:
    client = config.node.client
    if client is None:
        raise ConfigError("node.client: required (the release server's url and caFile)")
    return ReleaseClient(
        client.url, ca_file=client.ca_file, cert=client.cert, key=client.key, timeout=client.timeout
    )


def _verifier(
    config: NodeConfig, reviewer: TokenReviewer, pods: PodLookup | None, metrics: NodeMetrics
) -> PodVerifier:
    r = config.node.release
    return PodVerifier(
        reviewer=reviewer,
        pods=pods if r.check_pod else None,
        audience=config.node.audience,
        require_pod_bound=r.require_pod_bound,
        cache_ttl=r.token_review_cache_ttl,
        on_review=metrics.review_hook,
    )


def build_release_service(
    config: NodeConfig,
    *,
    reviewer: TokenReviewer,
    pods: PodLookup | None,
    access: AccessReviewer | None,
    keys: SealingKeys | None = None,
    metrics: NodeMetrics | None = None,
    audit: AuditLog | None = None,
) -> ReleaseService:
    metrics = metrics or NodeMetrics()
    return ReleaseService(
        keys=keys or open_sealing_keys(config),
        verifier=_verifier(config, reviewer, pods, metrics),
        settings=config.node.release,
        metrics=metrics,
        audit=audit,
        user_reviewer=reviewer if access is not None else None,
        access_reviewer=access,
    )


def build_csi_provider(
    config: NodeConfig,
    *,
    reviewer: TokenReviewer | None = None,
    pods: PodLookup | None = None,
    keys: SealingKeys | None = None,
    metrics: NodeMetrics | None = None,
    stores: Mapping[str, Store] | None = None,
    config_maps: ConfigMapReader | None = None,
) -> CsiProvider:
    metrics = metrics or NodeMetrics()
    csi = config.node.csi
    if csi.mode == "local":
        if reviewer is None:
            raise ConfigError(
                "node.csi.mode local: the provider needs the Kubernetes API (--kubeconfig or in-cluster)"
            )
        sealed: Any = LocalSealedSource(
            keys or open_sealing_keys(config),
            _verifier(config, reviewer, pods, metrics),
            owns_keys=keys is None,
        )
    else:
        sealed = RemoteSealedSource(release_client(config)) if config.node.client is not None else None
    built = (
        dict(stores) if stores is not None else {n: open_store(n, s) for n, s in config.node.stores.items()}
    )
    return CsiProvider(
        sealed=sealed,
        stores=built,
        hmac_key=load_hmac_key(csi.hmac_key_file),
        metrics=metrics,
        config_maps=config_maps,
    )


def injector_config(config: NodeConfig) -> InjectorConfig:
    inj = config.node.injector
    url = inj.release_url or (config.node.client.url if config.node.client else None)
    if not url:
        raise ConfigError(
            "node.injector.releaseUrl: required (where the injected init containers fetch from)"
        )
    ca_file: Path | None = inj.release_ca_file or (config.node.client.ca_file if config.node.client else None)
    ca_pem = None
    if ca_file is not None:
        try:
            ca_pem = ca_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"node.injector.releaseCaFile: cannot read {ca_file}: {type(exc).__name__}"
            ) from None
        if "BEGIN CERTIFICATE" not in ca_pem or len(ca_pem) > 64 << 10:
            raise ConfigError(f"node.injector.releaseCaFile: {ca_file} is not a PEM certificate bundle")
    return InjectorConfig(
        image=inj.image,
        release_url=url,
        own_namespace=inj.namespace,
        audience=config.node.audience,
        release_ca_pem=ca_pem,
        token_expiration_seconds=inj.token_expiration_seconds,
        memory_limit=inj.memory_limit,
    )
