"""Who is on the other end of a unix socket, as the kernel reports it: shared by custody and access.

It lives in layer 1 so that the feature packages that check their callers (``kubeshield.custody``,
``kubeshield.access``), which may not import each other, read the kernel's answer the same way:

* :func:`peer_credentials`: ``SO_PEERCRED``, the (pid, euid, egid) of the peer as they were at
  ``connect()``; the kernel fills it in, the peer cannot choose it.
* :func:`peer_pidfd`: a pidfd on that process (``SO_PEERPIDFD`` on Linux 6.5+, else ``pidfd_open`` on
  the ``SO_PEERCRED`` pid). While :func:`pidfd_alive` says so, the pid number names that same process
  (it cannot have been reused), so what ``/proc/<pid>`` says is about the caller.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct

__all__ = ["peer_credentials", "peer_pidfd", "pidfd_alive"]

_UCRED = struct.Struct("3i")
_SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; Python 3.11 lacks the constant


def peer_credentials(sock: object) -> tuple[int, int, int]:
    """(pid, euid, egid) of the peer of a connected unix socket at connect time (``SO_PEERCRED``)."""
    if not isinstance(sock, socket.socket):
        raise TypeError("sock must be a socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def peer_pidfd(conn: socket.socket, pid: int) -> int:
    """A pidfd on the connected peer (the caller closes it). Raises ``OSError`` when it is gone."""
    try:
        return conn.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            raise
    # older kernel: the pid from SO_PEERCRED. A reuse of that pid between connect() and this call
    # needs the caller to exit and the pid space to wrap meanwhile.
    return os.pidfd_open(pid)


def pidfd_alive(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` is still running (a pidfd turns readable when it exits)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)
