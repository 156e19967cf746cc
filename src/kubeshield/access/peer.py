"""Who may talk to the access agent: the same uid, and optionally only some executables.

Checked at every connection, from what the kernel says (never from anything the caller sends):

1. ``SO_PEERCRED``: the caller's effective uid at ``connect()`` must equal the agent's. Root is NOT
   implicitly allowed: a root process that wants a user's credentials must become that user (and
   then it could read them anyway; what this refuses is an accident, and every other uid).
2. With an allow-list (``--allow-exe PATH``, repeatable): the executable ``/proc/<pid>/exe`` refers to
   must be one of those files, compared by ``(st_dev, st_ino)`` (a copy or a same-named file elsewhere
   does not match; a replaced file is a new inode). The process is pinned first with a pidfd, and an
   exec tracker (``/proc/<pid>/maps`` opened before the executable is looked at: after an ``execve``
   a read of it returns end of file) is re-checked before every request, with the executable, so a
   caller that exec's something else after it was admitted is refused from then on.

Limits (docs/access.md): a process of the same uid can ptrace an allowed caller (unless Yama's
ptrace_scope forbids it) and make it ask for anything; a socket inherited by a child that shares the
allowed image is not told apart; a connection the admitted caller hands to another process (even of
another uid, over ``SCM_RIGHTS``) keeps the caller's credentials: that is the user delegating, as with
an ssh-agent socket. The allow-list narrows which programs of the user ask the agent, it is not a
boundary against the user's own code with ptrace rights. The uid check is the boundary.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kubeshield.errors import ConfigError
from kubeshield.keys._peer import peer_credentials, peer_pidfd, pidfd_alive

__all__ = ["AdmittedPeer", "ExeAllowList", "PeerRefused", "admit"]


class PeerRefused(Exception):
    """The caller may not use the agent; the message says why (safe to log and to send back)."""


@dataclass(frozen=True, slots=True)
class ExeAllowList:
    """The executables allowed to call the agent, by (st_dev, st_ino) of each file at agent start."""

    paths: tuple[str, ...]
    ids: frozenset[tuple[int, int]]

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> ExeAllowList:
        names: list[str] = []
        ids: set[tuple[int, int]] = set()
        for path in paths:
            try:
                info = os.stat(path)
            except OSError as exc:
                raise ConfigError(f"--allow-exe {path}: {exc.strerror}") from None
            if not os.path.isfile(path) or not info.st_mode & 0o111:
                raise ConfigError(f"--allow-exe {path}: not an executable file")
            names.append(os.path.realpath(path))
            ids.add((info.st_dev, info.st_ino))
        return cls(paths=tuple(names), ids=frozenset(ids))


@dataclass
class AdmittedPeer:
    """An admitted caller. With an allow-list it owns two descriptors: call :meth:`close`."""

    pid: int
    uid: int
    gid: int
    pidfd: int | None = None
    tracker: int | None = None
    allow: ExeAllowList | None = None

    def describe(self) -> str:
        return f"pid={self.pid} uid={self.uid}"

    def still_same(self) -> str | None:
        """Why the caller is no longer the admitted process (or its executable is no longer allowed)."""
        if self.allow is None:
            return None
        assert self.pidfd is not None and self.tracker is not None
        if not pidfd_alive(self.pidfd):
            return "it exited"
        try:
            if not os.pread(self.tracker, 1, 0):
                return "it called execve after it was admitted"
            info = os.stat(f"/proc/{self.pid}/exe")
        except OSError:
            return "it exited"
        if (info.st_dev, info.st_ino) not in self.allow.ids:
            return "its executable is not on the allow-list"
        if not pidfd_alive(self.pidfd):
            return "it exited"
        return None

    def close(self) -> None:
        for fd in (self.pidfd, self.tracker):
            if fd is not None:
                os.close(fd)
        self.pidfd = self.tracker = None


def _exe_name(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


def admit(conn: socket.socket, *, uid: int, allow: ExeAllowList | None) -> AdmittedPeer:
    """Check a freshly accepted connection (module docstring); raises :class:`PeerRefused`."""
    pid, peer_uid, gid = peer_credentials(conn)
    if peer_uid != uid:
        raise PeerRefused(f"uid {peer_uid} is not the agent's uid {uid} (pid={pid})")
    peer = AdmittedPeer(pid=pid, uid=peer_uid, gid=gid, allow=allow)
    if allow is None:
        return peer
    if pid <= 0:
        raise PeerRefused("the kernel gave no pid for the caller (another pid namespace?)")
    try:
        peer.pidfd = peer_pidfd(conn, pid)
        peer.tracker = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        peer.close()
        gone = isinstance(exc, ProcessLookupError | FileNotFoundError) or exc.errno == errno.ESRCH
        raise PeerRefused(
            f"the caller (pid={pid}) {'exited' if gone else 'could not be pinned: ' + (exc.strerror or '?')}"
        ) from None
    reason = peer.still_same()
    if reason is not None:
        exe = _exe_name(pid)
        peer.close()
        raise PeerRefused(f"the caller (pid={pid} exe={exe!r}) is refused: {reason}")
    return peer
