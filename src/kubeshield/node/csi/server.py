"""``kubeshield node csi-provider``: ``v1alpha1.CSIDriverProvider`` over the unix socket the driver dials.

The driver looks for ``<dir>/<provider>.sock`` (``spec.provider: kubeshield`` -> ``kubeshield.sock``) under
``/var/run/secrets-store-csi-providers`` or ``/etc/kubernetes/secrets-store-csi-providers`` and calls:

* ``Version`` -> ``{version: "v1alpha1", runtime_name: "kubeshield", runtime_version: <semver>}``;
* ``Mount`` -> the files and object versions of :class:`~kubeshield.node.csi.provider.CsiProvider`.

This servicer only translates: a :class:`MountError` becomes a gRPC status with its code and message (the
kubelet shows it in the pod's events), any other exception ``INTERNAL`` with a fixed message (logged
here by type). A reply larger than the driver's default receive limit (4 MiB) is refused with
``RESOURCE_EXHAUSTED`` before it is sent. The socket is created 0600 (the driver runs as root) and
only ever removed by the process that made it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from concurrent import futures
from pathlib import Path

import grpc

from kubeshield import __version__
from kubeshield.errors import ConfigError
from kubeshield.node.csi.api.v1alpha1 import service_pb2 as pb
from kubeshield.node.csi.api.v1alpha1 import service_pb2_grpc as pb_grpc
from kubeshield.node.csi.provider import CsiProvider, MountError

__all__ = ["DRIVER_MAX_MESSAGE", "CsiProviderServer", "CsiServicer"]

log = logging.getLogger("kubeshield.node.csi")

DRIVER_MAX_MESSAGE = 4 << 20  # the driver's --max-call-recv-msg-size default


def _semver(version: str) -> str:
    core = version.split("+")[0]
    parts = core.split(".")
    return core if len(parts) == 3 and all(p.isdigit() for p in parts) else "0.0.0"


class CsiServicer(pb_grpc.CSIDriverProviderServicer):  # type: ignore[misc]
    def __init__(self, provider: CsiProvider, *, max_message: int = DRIVER_MAX_MESSAGE) -> None:
        self._provider = provider
        self._max = max_message

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:  # noqa: N802
        return pb.VersionResponse(
            version="v1alpha1", runtime_name="kubeshield", runtime_version=_semver(__version__)
        )

    def Mount(self, request: pb.MountRequest, context: grpc.ServicerContext) -> pb.MountResponse:  # noqa: N802
        current = {v.id: v.version for v in request.current_object_version}
        try:
            result = self._provider.mount(
                attributes=request.attributes,
                secrets=request.secrets,
                permission=request.permission,
                current=current if current else None,
            )
        except MountError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), str(exc))
        except Exception as exc:  # never leak internals
            log.error("mount: internal error (%s)", type(exc).__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error in the kubeshield provider")
        response = pb.MountResponse(
            object_version=[pb.ObjectVersion(id=i, version=v) for i, v in result.versions],
            files=[pb.File(path=p, mode=m, contents=c) for p, m, c in result.files],
        )
        size = response.ByteSize()
        if size > self._max:
            self._provider.metrics.mounts.labels(outcome="too_large").inc()
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the mount's files total {size} bytes, over the driver's {self._max}-byte message limit "
                "(--max-call-recv-msg-size); split the objects over several volumes",
            )
        return response


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by an earlier run; refuse a non-socket or a socket someone answers on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"--socket: {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: nobody listens (the driver re-dials the new one)
        return
    finally:
        probe.close()
    raise ConfigError(f"--socket: another process is listening on {path}; refusing to take it over")


class CsiProviderServer:
    """The gRPC server on ``socket`` (a path; its directory must exist)."""

    def __init__(self, provider: CsiProvider, socket: str | Path, *, workers: int = 8) -> None:
        self.socket = str(socket)
        directory = os.path.dirname(self.socket) or "."
        if not os.path.isdir(directory):
            raise ConfigError(f"--socket: directory {directory} does not exist (mount the provider hostPath)")
        _remove_stale_socket(self.socket)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubeshield-csi"),
            options=[
                ("grpc.max_send_message_length", DRIVER_MAX_MESSAGE + (1 << 20)),
                # sealed texts inline in a SecretProviderClass make large requests (about 1.4 x the values)
                ("grpc.max_receive_message_length", 32 << 20),
            ],
        )
        self._provider = provider
        pb_grpc.add_CSIDriverProviderServicer_to_server(CsiServicer(provider), self._server)
        old = os.umask(0o177)
        try:
            self._server.add_insecure_port(f"unix:{self.socket}")
            self._server.start()
        finally:
            os.umask(old)
        os.chmod(self.socket, 0o600)
        self._inode = os.lstat(self.socket).st_ino

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving (in-flight Mounts get ``grace`` seconds), remove our socket, close the provider."""
        self._server.stop(grace).wait(grace + 1)
        self._provider.close()
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.socket).st_ino == self._inode:
                os.unlink(self.socket)
