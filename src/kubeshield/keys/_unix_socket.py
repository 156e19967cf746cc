"""Safe preparation of a unix socket path, shared by every server that binds one (kms, custody).

It lives in layer 1 so that the feature packages (``kubeshield.kms``, ``kubeshield.custody``), which may
not import each other, apply the same rule: a stale socket is replaced, a live one or any other file
is refused with a one-line :class:`~kubeshield.errors.ConfigError`.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from kubeshield.errors import ConfigError

__all__ = ["prepare_socket_path"]


def prepare_socket_path(path: str) -> None:
    """Make ``path`` bindable without clobbering anything that matters.

    * the directory must exist (we do not create it: a missing hostPath mount must be seen);
    * a stale socket (a socket file nobody answers on) is removed;
    * a live socket (another server listening) or any non-socket file is refused.

    An abstract name (``@name``) has no file and is left alone.
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
