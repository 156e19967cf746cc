"""Unix-socket endpoints as kube-apiserver reads them, and safe preparation of the socket path.

Endpoint forms (kms-contract §2.1, kubernetes/kms ``util.ParseEndpoint``):

* ``unix:///abs/path`` and ``unix:/abs/path``  -> ``/abs/path``
* ``unix:///@name``                           -> ``@name`` (a Linux abstract socket)
* a plain path (``/abs/path`` or ``rel/path``)  -> that path made absolute (our CLI convenience)
* ``unix://rel/path`` is refused: Go reads ``rel`` as the URL host and would dial ``/path``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from urllib.parse import urlsplit

from kubeshield.errors import ConfigError

__all__ = ["grpc_address", "parse_endpoint", "prepare_socket_path", "socket_endpoint_url"]


def parse_endpoint(endpoint: str) -> str:
    """The socket path (or ``@abstract`` name) an endpoint names. Raises ConfigError naming the problem."""
    if not endpoint:
        raise ConfigError("socket endpoint is empty")
    if "://" not in endpoint and not endpoint.startswith("unix:"):
        if ":" in endpoint.split("/", 1)[0]:
            scheme = endpoint.split(":", 1)[0]
            raise ConfigError(f"unsupported scheme {scheme!r} in socket endpoint; only unix is supported")
        return os.path.abspath(endpoint)
    parts = urlsplit(endpoint)
    if parts.scheme != "unix":
        raise ConfigError(f"unsupported scheme {parts.scheme!r} in socket endpoint; only unix is supported")
    if parts.netloc:
        raise ConfigError(
            f"socket endpoint {endpoint!r} has a host part {parts.netloc!r}; "
            "write unix:///absolute/path (three slashes)"
        )
    path = parts.path
    if path.startswith("/@"):
        if len(path) == 2:
            raise ConfigError("abstract socket endpoint has no name")
        return path[1:]
    if not path.startswith("/"):
        raise ConfigError(f"socket endpoint {endpoint!r} must name an absolute path")
    return path


def socket_endpoint_url(path: str) -> str:
    """The endpoint URL to give kube-apiserver for a socket path: ``unix:///abs/path``."""
    if path.startswith("@"):
        return "unix:///" + path
    return "unix://" + os.path.abspath(path)


def grpc_address(path: str) -> str:
    """The address grpc's ``add_insecure_port``/``insecure_channel`` take for a socket path."""
    if path.startswith("@"):
        return "unix-abstract:" + path[1:]
    return "unix:" + path


def prepare_socket_path(path: str) -> None:
    """Make ``path`` bindable without clobbering anything that matters.

    * the directory must exist (we do not create it: a missing hostPath mount must be seen);
    * a stale socket (a socket file nobody answers on) is removed;
    * a live socket (another plugin listening) or any non-socket file is refused.
    """
    if path.startswith("@"):
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"socket directory {directory!r} does not exist; create it (or mount it) first")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"socket path {path!r} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: left behind by a process that is gone
        return
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            if exc.errno == errno.ECONNREFUSED:
                os.unlink(path)
            return
        raise ConfigError(f"cannot check existing socket {path!r}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ConfigError(f"another process is already listening on {path!r}; refusing to take it over")
