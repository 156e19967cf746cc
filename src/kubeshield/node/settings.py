"""The ``node:`` section of a kubeshield config file, and loading a file that holds it.

A node config is ``kubeshield.yaml`` (its ``keys:`` section says which key backend wraps the sealing
key) plus a ``node:`` section; every ``node`` command takes it with ``--config``. camelCase keys;
unknown fields are errors naming the field; secrets are never in the file (only paths of files)::

    keys: {backend: local, local: {keyring: /var/lib/kubeshield/keyring, passphraseFile: /etc/ks/pass}}
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

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from kubeshield.config import Settings, parse_duration, settings_from_mapping
from kubeshield.errors import ConfigError

__all__ = [
    "ClientSettings",
    "CsiSettings",
    "InjectorSettings",
    "NodeConfig",
    "NodeSettings",
    "ReleaseSettings",
    "ServerTLS",
    "StoreSettings",
    "load_node_config",
    "node_config_from_mapping",
]

T = TypeVar("T")
_MAX_FILE = 1 << 20
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


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A whole node config file: the ``keys:`` (and other kubeshield) settings plus ``node:``."""

    settings: Settings
    node: NodeSettings


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; ``ConfigError`` names the file and the field."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if len(raw) > _MAX_FILE:
        raise ConfigError(f"{path}: config file is larger than {_MAX_FILE} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"
        raise ConfigError(f"{path}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: invalid YAML") from None
    try:
        return node_config_from_mapping(data if data is not None else {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def node_config_from_mapping(data: object) -> NodeConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("<top level>: expected a mapping")
    rest = {k: v for k, v in data.items() if k != "node"}
    settings = settings_from_mapping(rest)
    node = _decode_dataclass(NodeSettings, data.get("node") or {}, "node")
    _validate(node)
    return NodeConfig(settings=settings, node=node)


# --- decoding (the same rules as kubeshield.config: camelCase, unknown fields named) ----------------


def _yaml_name(f: dataclasses.Field[Any]) -> str:
    override = f.metadata.get("yaml")
    if isinstance(override, str):
        return override
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _decode_dataclass(cls: type[T], data: object, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {_yaml_name(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(str(key))
        if f is None:
            hint = (
                " (secrets are never read from the config file: give a *File path)"
                if any(w in str(key).lower() for w in ("token", "password", "secret", "passphrase"))
                else ""
            )
            raise ConfigError(f"{path}.{key}: unknown field{hint}")
        kwargs[f.name] = _decode_value(hints[f.name], value, f"{path}.{key}", f)
    for key, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in kwargs and required:
            raise ConfigError(f"{path}.{key}: required")
    return cls(**kwargs)


def _decode_value(tp: Any, value: object, path: str, f: dataclasses.Field[Any] | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _decode_value(inner, value, path, f)
    if value is None:
        raise ConfigError(f"{path}: must not be null")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(tp, value, path)
    if origin in (Mapping, dict):
        (_k, item) = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping")
        return {str(k): _decode_value(item, v, f"{path}.{k}", None) for k, v in value.items()}
    if f is not None and f.metadata.get("duration"):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a duration such as 10s or 5m")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer")
        return value
    if tp in (str, Path):
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigError(f"{path}: expected a non-empty string")
        return Path(value) if tp is Path else value
    raise TypeError(f"unsupported settings type {tp!r} at {path}")  # pragma: no cover


def _check_listen(value: str, path: str) -> None:
    m = _HOST_PORT.match(value)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{path}: expected HOST:PORT with a port in 1..65535, got {value!r}")


def _validate(node: NodeSettings) -> None:
    r = node.release
    _check_listen(r.listen, "node.release.listen")
    _check_listen(node.injector.listen, "node.injector.listen")
    if r.token_review_cache_ttl < 0 or r.token_review_cache_ttl > 300:
        raise ConfigError("node.release.tokenReviewCacheTtl: 0s..5m (a cached review outlives a revoked pod)")
    for name in ("rate_per_client", "rate_per_identity", "burst"):
        if not 1 <= getattr(r, name) <= 1_000_000:
            raise ConfigError(
                f"node.release.{_yaml_name(ReleaseSettings.__dataclass_fields__[name])}: 1..1000000"
            )
    if node.client is not None and not node.client.url.startswith(("https://", "http://")):
        raise ConfigError(f"node.client.url: expected an https:// URL, got {node.client.url!r}")
    if node.client is not None and (node.client.cert is None) != (node.client.key is None):
        raise ConfigError("node.client: cert and key go together")
    for name, store in node.stores.items():
        where = f"node.stores.{name}"
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", name):
            raise ConfigError(f"{where}: store names are DNS labels")
        if store.type == "openbao":
            if not store.address or not store.address.startswith(("https://", "http://")):
                raise ConfigError(f"{where}.address: required for openbao (an http(s):// URL)")
            if store.region or store.endpoint_url:
                raise ConfigError(f"{where}: region/endpointUrl apply to aws stores only")
        else:
            if store.address or store.ca_file:
                raise ConfigError(f"{where}: address/caFile apply to openbao stores only")
    inj = node.injector
    if not 600 <= inj.token_expiration_seconds <= 86400:
        raise ConfigError("node.injector.tokenExpirationSeconds: 600..86400 (the kubelet minimum is 600)")
