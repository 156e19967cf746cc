"""Unix-socket endpoints as kube-apiserver reads them, and safe preparation of the socket path.

Endpoint forms (kms-contract §2.1, kubernetes/kms ``util.ParseEndpoint``):

* ``unix:///abs/path`` and ``unix:/abs/path``  -> ``/abs/path``
* ``unix:///@name``                           -> ``@name`` (a Linux abstract socket)
* a plain path (``/abs/path`` or ``rel/path``)  -> that path made absolute (our CLI convenience)
* ``unix://rel/path`` is refused: Go reads ``rel`` as the URL host and would dial ``/path``.

We never *serve* on an abstract socket (:func:`refuse_abstract`, applied by :func:`prepare_socket_path`):
an abstract name has no filesystem permissions, and the apiserver's static pod (and so our plugin) runs
with hostNetwork, so any local user could connect and call Decrypt. A path socket is 0600 (or 0660 with
``--socket-group``) in a directory we control.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from collections.abc import Iterator
from urllib.parse import urlsplit

from kubeshield.errors import ConfigError
from kubeshield.keys._unix_socket import prepare_socket_path as _prepare_path  # shared with custody

__all__ = [
    "ABSTRACT_REFUSED",
    "SocketListener",
    "grpc_address",
    "parse_endpoint",
    "prepare_socket_path",
    "private_umask",
    "refuse_abstract",
    "resolve_group",
    "socket_endpoint_url",
]


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


ABSTRACT_REFUSED = (
    "abstract sockets have no filesystem permissions, and kube-apiserver's static pod runs with "
    "hostNetwork, so any local user could connect and call Decrypt; serve on a path instead, e.g. "
    "unix:///var/run/kubeshield/kms.sock"
)


def refuse_abstract(path: str, *, what: str = "socket") -> None:
    """Raise ConfigError if ``path`` is an abstract socket (``@name``): we never serve on one."""
    if path.startswith("@"):
        raise ConfigError(f"{what} {path!r} refused: {ABSTRACT_REFUSED}")


def prepare_socket_path(path: str) -> None:
    """Make ``path`` bindable without clobbering anything that matters: an abstract socket (``@name``) is
    refused (:func:`refuse_abstract`); the rest is :func:`kubeshield.keys._unix_socket.prepare_socket_path`
    (the directory must exist, a stale socket is removed, a live socket or any other file is refused)."""
    refuse_abstract(path)
    _prepare_path(path)


@contextlib.contextmanager
def private_umask(mask: int) -> Iterator[None]:
    """Bind under this umask so a socket is never, even briefly, more open than we chmod it to."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def resolve_group(group: str) -> int:
    """A group name or number as a gid; ConfigError naming it when it does not exist."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"socket group {group!r} does not exist") from None


class SocketListener:
    """One socket we bound: remembers its inode so we only ever remove our own file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inode: int | None = None

    def secure(self, gid: int | None) -> None:
        if self.path.startswith("@"):
            return
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        self.inode = os.lstat(self.path).st_ino

    def remove(self) -> None:
        if self.inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(self.path)
            if stat.S_ISSOCK(info.st_mode) and info.st_ino == self.inode:
                os.unlink(self.path)
