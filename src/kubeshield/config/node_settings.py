"""The ``node:`` section of ``kubeshield.yaml``: the settings of ``kubeshield node`` (the release server,
the CSI provider, the injector, external stores), decoded by :mod:`kubeshield.config.loader` like every
other section and checked by :func:`validate_node_settings`. Shape and defaults::

    node:
      sealingKeys: /var/lib/kubeshield/node/sealing-keys.json
      audience: kubeshield                 # the token audience pods present (projected token, CSIDriver)
      release:                             # kubeshield node release-server
        listen: 0.0.0.0:8443
        tls: {cert: /tls/tls.crt, key: /tls/tls.key, clientCA: null}   # clientCA: require client certs
        requirePodBound: true              # tokens must name a pod (projected tokens do; legacy do not)
        checkPod: true                     # the pod must exist, with that uid and ServiceAccount
        tokenReviewCacheTtl: 10s           # 0s turns the cache off; never beyond the token's expiry
        ratePerClient: 50                  # requests/s per client address (before the TokenReview)
        ratePerIdentity: 20                # releases/s per namespace:serviceaccount
        burst: 40
        allowPlainReplies: false           # replies are JWE to the caller's key unless this is true
        sealVerb: create                   # POST /v1/seal: the caller needs <sealVerb> <sealResource>
        sealResource: secrets              #   in the target namespace (SubjectAccessReview)
      client:                              # how csi-provider and fetch reach the release server
        url: https://kubeshield-release.kubeshield.svc:8443
        caFile: /etc/kubeshield/release-ca.crt
        timeout: 10s
      csi:
        mode: release                      # release (ask the release server) | local (hold the key here)
        hmacKeyFile: /var/lib/kubeshield/csi/object-version.key
        readConfigMaps: false              # objects' sealedFrom: {configMap, key} (needs get configmaps)
      stores:                              # external stores a SecretProviderClass may read, by name
        bao: {type: openbao, address: https://bao:8200, caFile: /etc/bao-ca.crt, authMount: kubernetes,
              audience: vault}
        aws: {type: aws, region: eu-west-1, audience: sts.amazonaws.com}
      injector:
        listen: 0.0.0.0:8443
        tls: {cert: /tls/tls.crt, key: /tls/tls.key}
        image: ghcr.io/kubeshield/kubeshield:0.1.0
        namespace: kubeshield              # its own namespace (never mutated)
        releaseUrl: https://kubeshield-release.kubeshield.svc:8443
        releaseCaFile: /etc/kubeshield/release-ca.crt
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubeshield.config.addresses import check_credential_url
from kubeshield.errors import ConfigError

__all__ = [
    "ClientSettings",
    "CsiSettings",
    "InjectorSettings",
    "NodeSettings",
    "ReleaseSettings",
    "ServerTLS",
    "StoreSettings",
    "validate_node_settings",
]

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]*):(\d{1,5})$")


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert: Path
    key: Path
    client_ca: Path | None = field(default=None, metadata={"yaml": "clientCA"})


@dataclass(frozen=True, slots=True)
class ReleaseSettings:
    listen: str = "0.0.0.0:8443"
    tls: ServerTLS | None = None
    require_pod_bound: bool = True
    check_pod: bool = True
    token_review_cache_ttl: float = field(default=10.0, metadata={"duration": True})
    rate_per_client: int = 50
    rate_per_identity: int = 20
    burst: int = 40
    allow_plain_replies: bool = False
    seal_verb: str = "create"
    seal_resource: str = "secrets"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    url: str
    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = field(default=10.0, metadata={"duration": True})


@dataclass(frozen=True, slots=True)
class CsiSettings:
    mode: Literal["release", "local"] = "release"
    hmac_key_file: Path = Path("/var/lib/kubeshield/csi/object-version.key")
    read_config_maps: bool = False


@dataclass(frozen=True, slots=True)
class StoreSettings:
    type: Literal["openbao", "aws"]
    address: str | None = None
    ca_file: Path | None = None
    auth_mount: str = "kubernetes"
    audience: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    timeout: float = field(default=10.0, metadata={"duration": True})


@dataclass(frozen=True, slots=True)
class InjectorSettings:
    listen: str = "0.0.0.0:8443"
    tls: ServerTLS | None = None
    image: str = "ghcr.io/kubeshield/kubeshield:0.1.0"
    namespace: str = "kubeshield"
    release_url: str | None = None
    release_ca_file: Path | None = None
    token_expiration_seconds: int = 600
    memory_limit: str = "16Mi"


@dataclass(frozen=True, slots=True)
class NodeSettings:
    sealing_keys: Path = Path("/var/lib/kubeshield/node/sealing-keys.json")
    audience: str = "kubeshield"
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    client: ClientSettings | None = None
    csi: CsiSettings = field(default_factory=CsiSettings)
    stores: Mapping[str, StoreSettings] = field(default_factory=dict)
    injector: InjectorSettings = field(default_factory=InjectorSettings)


def _yaml_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _check_listen(value: str, path: str) -> None:
    m = _HOST_PORT.match(value)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{path}: expected HOST:PORT with a port in 1..65535, got {value!r}")


def validate_node_settings(node: NodeSettings) -> None:
    """Cross-field checks of the ``node:`` section (``ConfigError`` naming the field)."""
    r = node.release
    _check_listen(r.listen, "node.release.listen")
    _check_listen(node.injector.listen, "node.injector.listen")
    if r.token_review_cache_ttl < 0 or r.token_review_cache_ttl > 300:
        raise ConfigError("node.release.tokenReviewCacheTtl: 0s..5m (a cached review outlives a revoked pod)")
    for name in ("rate_per_client", "rate_per_identity", "burst"):
        if not 1 <= getattr(r, name) <= 1_000_000:
            raise ConfigError(f"node.release.{_yaml_name(name)}: 1..1000000")
    if node.client is not None:
        check_credential_url(
            node.client.url, field="node.client.url", carries="pod tokens and released values"
        )
    if node.client is not None and (node.client.cert is None) != (node.client.key is None):
        raise ConfigError("node.client: cert and key go together")
    for name, store in node.stores.items():
        where = f"node.stores.{name}"
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", name):
            raise ConfigError(f"{where}: store names are DNS labels")
        if store.type == "openbao":
            if not store.address:
                raise ConfigError(f"{where}.address: required for openbao (an https:// URL)")
            check_credential_url(
                store.address, field=f"{where}.address", carries="pod tokens and secret values"
            )
            if store.region or store.endpoint_url:
                raise ConfigError(f"{where}: region/endpointUrl apply to aws stores only")
        else:
            if store.address or store.ca_file:
                raise ConfigError(f"{where}: address/caFile apply to openbao stores only")
    inj = node.injector
    if inj.release_url is not None:
        check_credential_url(inj.release_url, field="node.injector.releaseUrl", carries="pod tokens")
    if not 600 <= inj.token_expiration_seconds <= 86400:
        raise ConfigError("node.injector.tokenExpirationSeconds: 600..86400 (the kubelet minimum is 600)")
