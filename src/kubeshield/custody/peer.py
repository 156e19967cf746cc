"""Who is on the other end of a custody connection, pinned at accept and re-checked per request.

What authorises a request is the process that *sends* it, as the kernel reports it, not the process
that once connected. The mechanism, and why each piece is there:

1. ``SO_PASSCRED`` is set on the listening socket, so the kernel attaches the sender's (tgid, uid,
   gid) to every message, also to bytes written before ``accept()`` (``SCM_CREDENTIALS``; an
   unprivileged sender cannot forge them: the kernel checks any it passes explicitly). Each chunk of
   each frame must carry exactly the (pid, uid, gid) that ``SO_PEERCRED`` gave at connect: a child
   that inherited or was passed the socket writes with its own pid and is refused.
2. A pidfd on the connecting process (``SO_PEERPIDFD``, Linux 6.5; else ``pidfd_open`` on the
   ``SO_PEERCRED`` pid): while it is not readable, that process is alive, so its pid number cannot
   have been reused, and a message stamped with that pid came from it.
3. An exec tracker: ``/proc/<pid>/maps`` opened at accept binds to the process's memory image (its
   ``mm``); after an ``execve`` (or exit) a read of it returns end of file. It is opened *before* the
   executable is measured, so the measurement is that of the image the tracker follows, and checked
   at every request: a process that execs anything after it was measured is refused, the same
   binary included. Opening it needs the same access as reading ``/proc/<pid>/exe`` (same uid, or
   ``CAP_SYS_PTRACE``); without it the executable counts as unmeasured, so no ``exeSha256`` rule can
   match a caller whose exec could not be followed.
4. The greeting: the server sends it only after steps 1-3 and the policy check, and refuses a
   connection on which bytes were already waiting (they may have been written before an exec, by
   code that was never measured). Every accepted byte was therefore written after the tracker was
   armed, by the tracked image.
5. Per request, before the operation: the pidfd and the tracker, and what the caller's rule pins
   beyond uid/gid (which every message carries): the executable's ``(st_dev, st_ino)`` for an
   ``exeSha256`` rule, the cgroup for a ``cgroupPrefix`` rule; after the operation and before the
   answer, the pidfd and the tracker again (the answer is dropped if the caller exec'd or exited).

Limits (docs/custody.md says them in full): root can forge ``SCM_CREDENTIALS`` and ptrace anything; a
process that can ptrace the caller (same uid without Yama, or ``CAP_SYS_PTRACE``) can make it send
anything; a child created with ``CLONE_VM`` keeps the old image alive, so an exec of the *same*
binary by a process that shares its memory with such a child is not seen (an exec of another binary
still is, by the ``st_ino`` check); a process may move itself into another cgroup only where it can
write that cgroup's ``cgroup.procs``.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.custody.measure import (
    MeasurementError,
    PeerIdentity,
    peer_credentials,
    process_start_time,
    read_cgroup,
)
from kubeshield.keys._custody_protocol import HEADER_SIZE, ProtocolError, decode_body_length
from kubeshield.keys._peer import peer_pidfd, pidfd_alive

__all__ = [
    "ForeignSender",
    "Peer",
    "PeerRefused",
    "enable_sender_credentials",
    "pending_input",
    "read_frame",
]

_UCRED = struct.Struct("3i")
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size)


_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class PeerRefused(Exception):
    """The caller cannot be admitted; the message says why (safe to log).

    ``transient`` is true when the reason is a shortage on our side (no file descriptors, no memory),
    not something about the caller: the caller is told UNAVAILABLE, not PERMISSION_DENIED.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ForeignSender(Exception):
    """Bytes on the connection were written by another process than the admitted one."""

    def __init__(self, creds: tuple[int, int, int] | None) -> None:
        super().__init__("sent by another process" if creds else "sent without kernel credentials")
        self.creds = creds


def enable_sender_credentials(listener: socket.socket) -> None:
    """``SO_PASSCRED`` on the listener: every message then carries its sender's credentials."""
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


_peer_pidfd = peer_pidfd  # moved to kubeshield.keys._peer (shared with kubeshield.access)
_alive = pidfd_alive


@dataclass
class Peer:
    """An admitted (or about to be judged) caller. Owns two descriptors: call :meth:`close`."""

    identity: PeerIdentity
    creds: tuple[int, int, int]
    pidfd: int
    tracker: int | None

    @classmethod
    def open(cls, conn: socket.socket, *, measure: Callable[[int, int, int], PeerIdentity]) -> Peer:
        """Steps 1-3 of the module docstring. Raises :class:`PeerRefused` naming the reason."""
        pid, uid, gid = peer_credentials(conn)
        if pid <= 0:
            raise PeerRefused(f"the kernel gave no pid for the caller (uid={uid}); another pid namespace?")
        try:
            pidfd = _peer_pidfd(conn, pid)
        except OSError as exc:
            what = (
                "exited before it was measured" if _is_gone(exc) else f"could not be pinned ({_brief(exc)})"
            )
            raise PeerRefused(f"the caller {what} (pid={pid} uid={uid})", transient=_is_short(exc)) from None
        tracker: int | None = None
        try:
            try:
                tracker = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except PermissionError:
                tracker = None  # another uid without CAP_SYS_PTRACE: exe unmeasured, exec not followed
            identity = measure(pid, uid, gid)
            if tracker is None:
                identity = identity.unmeasured_exe()
            peer = cls(identity=identity, creds=(pid, uid, gid), pidfd=pidfd, tracker=tracker)
            reason = peer.changed()
            if reason is None and process_start_time(pid) != identity.start_time:
                reason = "its pid now names another process"
            if reason is not None:
                raise PeerRefused(f"the caller changed while it was measured ({reason}): pid={pid}")
            return peer
        except PeerRefused:
            cls._close_fds(pidfd, tracker)
            raise
        except OSError as exc:
            cls._close_fds(pidfd, tracker)
            what = "exited while it was measured" if _is_gone(exc) else "could not be measured"
            raise PeerRefused(
                f"the caller {what} (pid={pid} uid={uid}: {_brief(exc)})", transient=_is_short(exc)
            ) from None

    def changed(self, *, exe: bool = False, cgroup: bool = False) -> str | None:
        """Why the caller is no longer the admitted process, or ``None`` if it still is.

        Always: the pidfd (alive) and the exec tracker (same image). With ``exe``/``cgroup``: also
        the executable's identity and the cgroup (the server asks for what the caller's rule pins).
        """
        if not _alive(self.pidfd):
            return "it exited"
        if self.tracker is not None:
            try:
                image = os.pread(self.tracker, 1, 0)
            except OSError:
                return "it exited"
            if not image:
                return "it called execve after it was measured"
        pid = self.identity.pid
        try:
            if exe and self.identity.exe_id is not None:
                info = os.stat(f"/proc/{pid}/exe")
                if (info.st_dev, info.st_ino) != self.identity.exe_id:
                    return "its executable changed"
            if cgroup and read_cgroup(pid) != self.identity.cgroup:
                return "its cgroup changed"
        except OSError as exc:
            return "it exited" if _is_gone(exc) else f"it can no longer be measured ({_brief(exc)})"
        return None

    def close(self) -> None:
        self._close_fds(self.pidfd, self.tracker)

    @staticmethod
    def _close_fds(pidfd: int, tracker: int | None) -> None:
        os.close(pidfd)
        if tracker is not None:
            os.close(tracker)


def _is_gone(exc: OSError) -> bool:
    return isinstance(exc, ProcessLookupError | FileNotFoundError) or exc.errno == errno.ESRCH


def _is_short(exc: OSError) -> bool:
    return exc.errno in _TRANSIENT


def _brief(exc: OSError) -> str:
    if isinstance(exc, MeasurementError):
        return f"{exc.filename} {exc.strerror}"
    return exc.strerror or type(exc).__name__


def _recv_exact(conn: socket.socket, n: int, sender: tuple[int, int, int], *, first: bool) -> bytes | None:
    """``n`` bytes, every chunk written by ``sender``. ``None`` on a clean end of stream at ``first``."""
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        data, ancillary, _flags, _addr = conn.recvmsg(remaining, _ANCILLARY)
        if not data:
            if first and not chunks:
                return None
            raise ConnectionError("connection closed in the middle of a frame")
        creds: tuple[int, int, int] | None = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                creds = _UCRED.unpack(payload[: _UCRED.size])
        if creds != sender:
            raise ForeignSender(creds)
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def read_frame(conn: socket.socket, *, sender: tuple[int, int, int]) -> bytes | None:
    """One frame's body, every byte of it written by ``sender`` (pid, uid, gid); ``None`` at a clean end.

    Raises :class:`ForeignSender` for bytes from any other process (the kernel never merges bytes of
    two writers into one ``recvmsg``), ``ProtocolError`` for a bad header (before reading an oversized
    body) and ``ConnectionError`` when the peer closes in the middle of a frame.
    """
    header = _recv_exact(conn, HEADER_SIZE, sender, first=True)
    if header is None:
        return None
    length = decode_body_length(header)
    body = _recv_exact(conn, length, sender, first=False)
    if body is None:  # pragma: no cover - first=False never returns None
        raise ProtocolError("truncated frame")
    return body


def pending_input(conn: socket.socket) -> str | None:
    """What is already waiting on ``conn``, without consuming it: ``"data"``, ``"closed"`` or ``None``."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if not poller.poll(0):
        return None
    try:
        return "data" if conn.recv(1, socket.MSG_PEEK) else "closed"  # readable: returns at once
    except OSError:
        return "closed"
