"""A Secrets Store CSI driver stand-in following the driver's code path to a provider (formats.md §4.2-4.5).

For one NodePublishVolume it does what ``pkg/secrets-store/nodeserver.go`` and ``provider_client.go`` do:

* read the SecretProviderClass named by the volume from the API (in the pod's namespace), take
  ``spec.provider`` (checked against ``^[a-zA-Z0-9_-]{0,30}$``) and find ``<dir>/<provider>.sock`` in the
  provider directories, dialled over ``unix:`` without TLS;
* build ``attributes`` = ``spec.parameters`` + ``secretProviderClass`` + the kubelet's pod attributes, and
  ``csi.storage.k8s.io/serviceAccount.tokens`` from TokenRequests for the CSIDriver's ``tokenRequests``
  audiences (pod-bound), in the attributes or in ``secrets`` (``serviceAccountTokenInSecrets``);
* ``Version("v1alpha1")``, then ``Mount`` with ``permission`` "420" and the mounted object versions
  (rotation), with the driver's default 4 MiB receive limit;
* refuse an ``error.code``, a missing ``object_version`` list; validate each path as ``fileutil.Validate``
  does and write the files with the Kubernetes AtomicWriter algorithm (``..data`` symlink swap into a
  fresh timestamped directory, user-visible symlinks, old paths removed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from kubeshield.kube import KubeClient, resources
from kubeshield.node.csi.api.v1alpha1 import service_pb2 as pb
from kubeshield.node.csi.api.v1alpha1 import service_pb2_grpc as pb_grpc

__all__ = ["Driver", "DriverError", "atomic_write", "details"]

_PROVIDER = re.compile(r"^[a-zA-Z0-9_-]{0,30}$")
MAX_RECV = 4 << 20
_DATA, _DATA_TMP = "..data", "..data_tmp"


def details(exc: grpc.RpcError) -> str:
    """The status message of a failed call (what the kubelet would show)."""
    return str(exc.details() or "")  # type: ignore[attr-defined]


class DriverError(Exception):
    """What the driver would report for the mount (the kubelet shows it in the pod's events)."""


def validate_path(path: str) -> None:
    if not path:
        raise DriverError("invalid path: must not be empty")
    if path.startswith("/"):
        raise DriverError(f"invalid path: must be relative path: {path}")
    if len(path) > 4096:
        raise DriverError("invalid path: must be less than or equal to 4096 characters")
    items = path.split("/")
    for item in items:
        if item == "..":
            raise DriverError(f"invalid path: must not contain '..': {path}")
        if len(item) > 255:
            raise DriverError("invalid path: filenames must be less than or equal to 255 characters")
    if items[0].startswith("..") and len(items[0]) > 2:
        raise DriverError(f"invalid path: must not start with '..': {path}")
    if posixpath.normpath(path) != path:
        raise DriverError(f"invalid filepath: {path!r}")


def atomic_write(target: Path, payload: Mapping[str, tuple[bytes, int]]) -> None:
    """Kubernetes' AtomicWriter.Write: the payload (path -> (data, mode)) becomes the whole volume."""
    for path in payload:
        validate_path(path)
    data_link = target / _DATA
    old_ts = os.readlink(data_link) if data_link.is_symlink() else ""
    old_ts_path = target / old_ts if old_ts else None
    remove: set[str] = set()
    if old_ts_path is not None:
        existing = set()
        for root, dirs, files in os.walk(old_ts_path):
            for name in dirs + files:
                existing.add(os.path.relpath(os.path.join(root, name), old_ts_path))
        wanted = set()
        for path in payload:
            sub = path
            while sub:
                wanted.add(sub)
                sub = posixpath.dirname(sub)
        remove = existing - wanted
        if not remove and all(
            (old_ts_path / p).is_file() and (old_ts_path / p).read_bytes() == data
            for p, (data, _m) in payload.items()
        ):
            return  # no update required
    ts_dir = Path(
        tempfile.mkdtemp(prefix=dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S."), dir=target)
    )
    os.chmod(ts_dir, 0o755)
    for path, (data, mode) in payload.items():
        full = ts_dir / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)
        os.chmod(full, mode)
    for path in payload:
        top = path.split("/")[0]
        if not (target / top).is_symlink():
            os.symlink(posixpath.join(_DATA, top), target / top)
    tmp_link = target / _DATA_TMP
    os.symlink(ts_dir.name, tmp_link)
    os.rename(tmp_link, data_link)
    for path in remove:
        if "/" not in path and (target / path).is_symlink():
            os.unlink(target / path)
    if old_ts_path is not None:
        shutil.rmtree(old_ts_path)


class Driver:
    def __init__(
        self,
        kube: KubeClient,
        provider_dirs: Sequence[Path],
        *,
        token_audiences: Sequence[str] = ("kubeshield",),
        tokens_in_secrets: bool = False,
        max_recv: int = MAX_RECV,
    ) -> None:
        self._kube = kube
        self._dirs = list(provider_dirs)
        self._audiences = list(token_audiences)
        self._tokens_in_secrets = tokens_in_secrets
        self._max_recv = max_recv
        self.mounted: dict[
            str, dict[str, str]
        ] = {}  # target -> object versions (SecretProviderClassPodStatus)

    def _channel(self, provider: str) -> grpc.Channel:
        if not _PROVIDER.match(provider):
            raise DriverError(f"invalid provider: provider {provider!r}")
        for d in self._dirs:
            sock = d / f"{provider}.sock"
            if sock.exists():
                return grpc.insecure_channel(
                    f"unix:{sock}", options=[("grpc.max_receive_message_length", self._max_recv)]
                )
        raise DriverError(f"provider not found: provider {provider!r}")

    def version(self, provider: str) -> str:
        with self._channel(provider) as channel:
            reply = pb_grpc.CSIDriverProviderStub(channel).Version(
                pb.VersionRequest(version="v1alpha1"), timeout=10
            )
        return str(reply.runtime_version)

    def mount(
        self, pod: Mapping[str, Any], spc_name: str, target: Path, *, permission: int = 0o644
    ) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        sa = spec.get("serviceAccountName") or "default"
        spc = self._kube.get(resources.SECRET_PROVIDER_CLASSES, spc_name, namespace=namespace)
        provider = str(spc["spec"]["provider"])
        attributes: dict[str, str] = dict(spc["spec"].get("parameters") or {})
        attributes.update(
            {
                "secretProviderClass": spc_name,
                "csi.storage.k8s.io/pod.name": name,
                "csi.storage.k8s.io/pod.namespace": namespace,
                "csi.storage.k8s.io/pod.uid": uid,
                "csi.storage.k8s.io/serviceAccount.name": sa,
                "csi.storage.k8s.io/ephemeral": "false",
            }
        )
        secrets: dict[str, str] = {}
        if self._audiences:
            tokens = {}
            for audience in self._audiences:  # the kubelet's TokenRequest per CSIDriver tokenRequests entry
                token, expires = self._kube.create_token(
                    sa,
                    namespace=namespace,
                    audiences=[audience],
                    expiration_seconds=600,
                    bound_pod=(name, uid),
                )
                tokens[audience] = {"token": token, "expirationTimestamp": expires}
            (secrets if self._tokens_in_secrets else attributes)[
                "csi.storage.k8s.io/serviceAccount.tokens"
            ] = json.dumps(tokens)
        current = self.mounted.get(str(target), {})
        request = pb.MountRequest(
            attributes=json.dumps(attributes),
            secrets=json.dumps(secrets),
            target_path=str(target),
            permission=json.dumps(permission),
            current_object_version=[pb.ObjectVersion(id=k, version=v) for k, v in current.items()],
        )
        with self._channel(provider) as channel:
            stub = pb_grpc.CSIDriverProviderStub(channel)
            stub.Version(pb.VersionRequest(version="v1alpha1"), timeout=10)
            response = stub.Mount(request, timeout=30)
        if response.HasField("error") and response.error.code:
            raise DriverError(f"mount request failed with provider error code {response.error.code}")
        if not response.object_version:
            raise DriverError("missing object versions")
        versions = {v.id: v.version for v in response.object_version}
        if response.files:
            atomic_write(target, {f.path: (f.contents, f.mode) for f in response.files})
        self.mounted[str(target)] = versions
        return versions
