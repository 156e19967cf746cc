"""The Secrets Store CSI provider's Mount, transport-free: parameters in, files and object versions out.

For each object of the SecretProviderClass (:mod:`.params`):

* ``sealed``: the pod's token for ``audience`` goes to a :class:`SealedSource`: the release server
  (``node.csi.mode: release``, the default: this node holds no key) or a local one (``mode: local``: the
  sealing key and the TokenReview are here). Either way the value is released only if the token proves
  the identity the value was sealed for, and the identity (and pod uid) that the release proves must be
  the pod the kubelet says is mounting, or the mount fails.
* ``openbao`` / ``aws``: read from the named store as the pod (:mod:`kubeshield.node.stores`).

Object versions are ``base64url(HMAC-SHA256(key, canonical config JSON || content))`` (vault-csi-provider's
scheme) with a per-node key kept in a 0600 file: equal to the previous version exactly when nothing
changed, and revealing nothing about the content, even when two objects hold the same value. The driver
sends the mounted versions back on rotation (``requiresRepublish``); the files it gets are complete
each time, so rotation needs no other state here.

Failures are :class:`MountError` with a gRPC status name and a message that names the object and the
reason (never a value or a token); the gRPC adapter (:mod:`.server`) turns them into status errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kubeshield.errors import (
    ConfigError,
    InvalidRequest,
    KubeshieldError,
    PolicyDenied,
)
from kubeshield.keys.files import write_private_atomic
from kubeshield.node.client import ReleaseClient, ReleaseRefused
from kubeshield.node.csi.params import MountObject, MountParams, ParamError, parse_mount
from kubeshield.node.metrics import NodeMetrics
from kubeshield.node.release import HttpError, release_values
from kubeshield.node.review import PodRejected, PodVerifier, TokenRejected
from kubeshield.node.sealing_keys import SealingKeys
from kubeshield.node.stores import Store

__all__ = [
    "ConfigMapReader",
    "CsiProvider",
    "LocalSealedSource",
    "MountError",
    "MountResult",
    "RemoteSealedSource",
    "SealedSource",
    "load_hmac_key",
]

log = logging.getLogger("kubeshield.node.csi")

_HTTP_TO_GRPC = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    429: "UNAVAILABLE",
}


class MountError(Exception):
    """A refused or failed Mount. ``code`` is a gRPC status name (``PERMISSION_DENIED``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Grant:
    """What a sealed source released: the proven identity and pod, and the values by object name."""

    identity: str
    pod_uid: str
    values: Mapping[str, bytes] = field(repr=False)


class SealedSource(Protocol):
    def release(self, token: str, objects: Sequence[tuple[str, str]]) -> Grant: ...

    def close(self) -> None: ...


#: ``(namespace, name) -> the ConfigMap's data, or None when it does not exist``
ConfigMapReader = Callable[[str, str], Mapping[str, str] | None]


class RemoteSealedSource:
    """Ask the release server (the default: no key on the node)."""

    def __init__(self, client: ReleaseClient) -> None:
        self._client = client

    def release(self, token: str, objects: Sequence[tuple[str, str]]) -> Grant:
        try:
            released = self._client.release(token, objects)
        except ReleaseRefused as exc:
            raise MountError(_HTTP_TO_GRPC.get(exc.status, "PERMISSION_DENIED"), str(exc)) from None
        return Grant(released.identity, released.pod_uid, released.values)

    def close(self) -> None:
        self._client.close()


class LocalSealedSource:
    """Hold the sealing key here and verify the token here (``node.csi.mode: local``)."""

    def __init__(self, keys: SealingKeys, verifier: PodVerifier, *, owns_keys: bool = True) -> None:
        self._keys, self._verifier, self._owns_keys = keys, verifier, owns_keys

    def release(self, token: str, objects: Sequence[tuple[str, str]]) -> Grant:
        try:
            pod = self._verifier.verify(token)
            values = release_values(self._keys, pod, objects, checks_pods=self._verifier.checks_pods)
        except TokenRejected as exc:
            raise MountError("UNAUTHENTICATED", f"token: {exc}") from None
        except PodRejected as exc:
            raise MountError("PERMISSION_DENIED", f"pod: {exc}") from None
        except HttpError as exc:
            raise MountError(_HTTP_TO_GRPC.get(exc.status, "INTERNAL"), str(exc)) from None
        return Grant(str(pod.identity), pod.pod_uid, {n: v for n, v, _ in values})

    def close(self) -> None:
        if self._owns_keys:
            self._keys.close()


def load_hmac_key(path: Path, *, rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """The object-version HMAC key in ``path`` (32 bytes, 0600), made on first use."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise ConfigError(f"node.csi.hmacKeyFile: directory {path.parent} does not exist") from None
        key = rng(32)
        write_private_atomic(path, key)
        return key
    except OSError as exc:
        raise ConfigError(f"node.csi.hmacKeyFile: cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_mode & 0o077:
            raise ConfigError(f"node.csi.hmacKeyFile: {path} must be mode 0600")
        key = fh.read(65)
    if len(key) != 32:
        raise ConfigError(f"node.csi.hmacKeyFile: {path} must hold exactly 32 bytes")
    return key


@dataclass(frozen=True, slots=True)
class MountResult:
    files: list[tuple[str, int, bytes]] = field(repr=False)
    versions: list[tuple[str, str]]


class CsiProvider:
    def __init__(
        self,
        *,
        sealed: SealedSource | None,
        stores: Mapping[str, Store],
        hmac_key: bytes,
        metrics: NodeMetrics | None = None,
        config_maps: ConfigMapReader | None = None,
    ) -> None:
        if len(hmac_key) != 32:
            raise ValueError("the object-version HMAC key is 32 bytes")
        self._sealed = sealed
        self._config_maps = config_maps
        self._stores = dict(stores)
        self._hmac_key = hmac_key
        self.metrics = metrics or NodeMetrics()

    def close(self) -> None:
        """Drop pooled connections (remote mode) or the sealing key (local mode)."""
        if self._sealed is not None:
            self._sealed.close()

    def version_of(self, obj: MountObject, content: bytes) -> str:
        mac = hmac.new(self._hmac_key, obj.config_bytes() + content, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii")

    def mount(
        self, *, attributes: str, secrets: str, permission: str, current: Mapping[str, str] | None = None
    ) -> MountResult:
        start = time.perf_counter()
        pod = "?"
        try:
            try:
                params = parse_mount(attributes, secrets, permission)
            except ParamError as exc:
                raise MountError("INVALID_ARGUMENT", str(exc)) from None
            pod = f"{params.pod_namespace}/{params.pod_name}"
            contents = self._fetch(params)
            files = [
                (o.file_name, o.mode if o.mode is not None else params.default_mode, contents[o.name])
                for o in params.objects
            ]
            versions = [(o.name, self.version_of(o, contents[o.name])) for o in params.objects]
            changed = [i for i, v in versions if current is not None and current.get(i) not in (None, v)]
            self.metrics.mounts.labels(outcome="mounted").inc()
            log.info(
                "mount: pod=%s objects=%d changed=%s took=%.1fms",
                pod, len(files), ",".join(changed) or "-", (time.perf_counter() - start) * 1e3,
            )  # fmt: skip
            return MountResult(files, versions)
        except MountError as exc:
            self.metrics.mounts.labels(outcome=exc.code.lower()).inc()
            log.warning("mount refused: pod=%s code=%s %s", pod, exc.code, exc)
            raise

    def _fetch(self, params: MountParams) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            sealed = [o for o in params.objects if o.kind == "sealed"]
            if sealed:
                out.update(self._release(params, sealed))
            for obj in params.objects:
                if obj.kind != "sealed":
                    out[obj.name] = self._read_store(params, obj)
        except ParamError as exc:
            raise MountError("INVALID_ARGUMENT", str(exc)) from None
        return out

    def _release(self, params: MountParams, objects: list[MountObject]) -> dict[str, bytes]:
        if self._sealed is None:
            raise MountError("FAILED_PRECONDITION", "this provider is not configured for sealed values")
        token = params.token_for(params.audience)
        texts = [(o.name, o.sealed or self._from_config_map(params, o)) for o in objects]
        try:
            grant = self._sealed.release(token, texts)
        except KubeshieldError as exc:  # the release server, the API server or the key backend is down
            raise MountError("UNAVAILABLE", f"release: {type(exc).__name__}: {exc}") from None
        expected = f"{params.pod_namespace}:{params.service_account}"
        if params.pod_namespace and params.service_account and grant.identity != expected:
            raise MountError(
                "PERMISSION_DENIED",
                f"the token proves {grant.identity}, but the mounting pod runs as {expected}",
            )
        if params.pod_uid and grant.pod_uid and grant.pod_uid != params.pod_uid:
            raise MountError("PERMISSION_DENIED", "the token is bound to another pod than the one mounting")
        return dict(grant.values)

    def _from_config_map(self, params: MountParams, obj: MountObject) -> str:
        """The sealed text ``sealedFrom`` names, from a ConfigMap of the *pod's* namespace only."""
        name, key = str(obj.ref["configMap"]), str(obj.ref["key"])
        where = f"{obj.name} (sealedFrom configmap {params.pod_namespace}/{name})"
        if self._config_maps is None:
            raise MountError("FAILED_PRECONDITION", f"{where}: this provider does not read ConfigMaps "
                             "(set node.csi.readConfigMaps and give it get on configmaps)")  # fmt: skip
        if not params.pod_namespace:
            raise MountError("INVALID_ARGUMENT", f"{where}: the driver sent no pod namespace")
        try:
            data = self._config_maps(params.pod_namespace, name)
        except KubeshieldError as exc:
            raise MountError("UNAVAILABLE", f"{where}: {type(exc).__name__}") from None
        if data is None:
            raise MountError("NOT_FOUND", f"{where}: no such ConfigMap")
        text = data.get(key)
        if not text:
            raise MountError("NOT_FOUND", f"{where}: no key {key!r}")
        return text.strip()

    def _read_store(self, params: MountParams, obj: MountObject) -> bytes:
        where = f"{obj.name} ({obj.kind})"
        store_name = str(obj.ref["store"])
        store = self._stores.get(store_name)
        if store is None:
            known = ", ".join(sorted(self._stores)) or "none configured"
            raise MountError("INVALID_ARGUMENT", f"{where}: no store named {store_name!r} (stores: {known})")
        token = params.token_for(store.audience)
        try:
            content, _version = store.read(token=token, ref=obj.ref, pod={"uid": params.pod_uid})
        except PolicyDenied as exc:
            self.metrics.store_reads.labels(store=store_name, outcome="denied").inc()
            raise MountError("PERMISSION_DENIED", f"{where}: {exc}") from None
        except InvalidRequest as exc:
            self.metrics.store_reads.labels(store=store_name, outcome="invalid").inc()
            raise MountError("INVALID_ARGUMENT", f"{where}: {exc}") from None
        except KubeshieldError as exc:
            self.metrics.store_reads.labels(store=store_name, outcome="unavailable").inc()
            raise MountError("UNAVAILABLE", f"{where}: {exc}") from None
        self.metrics.store_reads.labels(store=store_name, outcome="read").inc()
        return content
