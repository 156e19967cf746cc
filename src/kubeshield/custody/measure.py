"""Measure a local process from what the kernel tells us about it.

A caller of the custody socket is identified by the kernel: ``SO_PEERCRED`` gives (pid, euid, egid) as
they were at ``connect()``, and every message carries ``SCM_CREDENTIALS`` (see
:mod:`kubeshield.custody.peer`). What this module adds is read from ``/proc/<pid>``:

* ``exe_sha256``: sha256 of the file ``/proc/<pid>/exe`` refers to, read through that magic link (the
  kernel's reference to the mapped executable, so a path replaced on disk does not fool it), and
  ``exe_id``, that file's ``(st_dev, st_ino)``, which the server compares again at every request;
* ``cgroup``: the content of ``/proc/<pid>/cgroup`` (its container identity under Kubernetes);
* ``start_time``: field 22 of ``/proc/<pid>/stat`` (clock ticks since boot).

Every read is of a regular file only (``fstat`` after ``open``), opened with ``O_NOFOLLOW`` (the
``/proc/<pid>/exe`` magic link excepted: following it is its purpose) and ``O_NONBLOCK`` (so a FIFO or
device cannot block the open), under a size and a time budget: a file that is not regular, too large,
or too slow to read is a :class:`MeasurementError`, and the caller is refused.

There is no "package digest" any more. Earlier versions hashed the ``kubeshield`` package that the
caller's interpreter would import, found from the caller's own ``argv[0]`` and working directory, which
the caller chooses: any Python process could present the plugin's digest. Nothing the kernel records
links a Python process to the source files it executes (the interpreter reads them with ordinary
``open``/``read``, from a ``sys.path`` the caller controls through its arguments, environment and
code), so no digest computed here could say what the caller runs. The executable is what the kernel
does vouch for, and for a Python caller that is the interpreter; uid, gid and cgroup are the gates.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.keys._peer import peer_credentials

__all__ = [
    "ExeDigests",
    "MeasurementError",
    "PeerIdentity",
    "measure_pid",
    "peer_credentials",
    "process_start_time",
    "process_uid_gid",
    "read_cgroup",
    "read_regular",
]

EXE_MAX_BYTES = 512 * 1024 * 1024
EXE_TIME_BUDGET = 10.0
PROC_MAX_BYTES = 64 * 1024
PROC_TIME_BUDGET = 1.0
_CHUNK = 1 << 20


class MeasurementError(OSError):
    """A file could not be measured within the rules (not regular, too large, too slow)."""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Everything we measured about one peer. Safe to log: it holds no secret.

    ``exe``/``exe_sha256``/``exe_id`` are ``None`` when the executable could not be measured (another
    uid and no ``CAP_SYS_PTRACE``); a rule that pins ``exeSha256`` then does not match.
    """

    pid: int
    uid: int
    gid: int
    exe: str | None
    exe_sha256: str | None
    cgroup: str
    start_time: int
    exe_id: tuple[int, int] | None = None

    def describe(self) -> str:
        return (
            f"pid={self.pid} uid={self.uid} gid={self.gid} exe={self.exe!r} "
            f"exe_sha256={self.exe_sha256} cgroup={self.cgroup!r}"
        )

    def unmeasured_exe(self) -> PeerIdentity:
        """The same identity with the executable unmeasured."""
        return PeerIdentity(
            pid=self.pid,
            uid=self.uid,
            gid=self.gid,
            exe=None,
            exe_sha256=None,
            cgroup=self.cgroup,
            start_time=self.start_time,
        )


def _open_regular(path: str, *, follow: bool) -> tuple[int, os.stat_result]:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise MeasurementError(exc.errno, "is a symbolic link; not measured", path) from None
        raise
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise MeasurementError(errno.EINVAL, "is not a regular file; not measured", path)
    return fd, info


def read_regular(
    path: str,
    *,
    max_bytes: int = PROC_MAX_BYTES,
    budget: float = PROC_TIME_BUDGET,
    follow: bool = False,
    sink: Callable[[bytes], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[bytes, os.stat_result]:
    """Read a regular file under a size and time budget; returns (content, fstat of the open file).

    With ``sink`` the content is passed on chunk by chunk and ``b""`` is returned (for hashing large
    files). ``/proc`` files report size 0, so the limit is enforced on the bytes actually read.
    """
    deadline = clock() + budget
    fd, info = _open_regular(path, follow=follow)
    try:
        if info.st_size > max_bytes:
            raise MeasurementError(errno.EFBIG, f"is larger than {max_bytes} bytes; not measured", path)
        parts: list[bytes] = []
        total = 0
        while True:
            if clock() > deadline:
                raise MeasurementError(
                    errno.ETIME, f"took longer than {budget:g}s to read; not measured", path
                )
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                raise MeasurementError(errno.EAGAIN, "would block; not measured", path) from None
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise MeasurementError(errno.EFBIG, f"is larger than {max_bytes} bytes; not measured", path)
            if sink is not None:
                sink(chunk)
            else:
                parts.append(chunk)
        return b"".join(parts), info
    finally:
        os.close(fd)


def process_start_time(pid: int) -> int:
    """Field 22 (starttime) of ``/proc/<pid>/stat``. The comm field may hold spaces and parentheses."""
    data, _ = read_regular(f"/proc/{pid}/stat", max_bytes=4096)
    try:
        rest = data[data.rindex(b")") + 2 :].split()
        # rest[0] is field 3 (state); field 22 is rest[19]
        return int(rest[19])
    except (ValueError, IndexError):
        raise MeasurementError(errno.EIO, "malformed stat", f"/proc/{pid}/stat") from None


def process_uid_gid(pid: int) -> tuple[int, int, int, int]:
    """(real uid, effective uid, real gid, effective gid) of ``pid`` from ``/proc/<pid>/status``."""
    data, _ = read_regular(f"/proc/{pid}/status")
    fields: dict[bytes, list[bytes]] = {}
    for line in data.splitlines():
        key, _, value = line.partition(b":")
        fields[key] = value.split()
    try:
        uids, gids = fields[b"Uid"], fields[b"Gid"]
        return int(uids[0]), int(uids[1]), int(gids[0]), int(gids[1])
    except (KeyError, IndexError, ValueError):
        raise MeasurementError(errno.EIO, "malformed status", f"/proc/{pid}/status") from None


def read_cgroup(pid: int) -> str:
    """The content of ``/proc/<pid>/cgroup``, stripped."""
    data, _ = read_regular(f"/proc/{pid}/cgroup")
    return data.decode("utf-8", "replace").strip()


class ExeDigests:
    """sha256 of executables, cached by file identity so a busy caller is hashed once.

    The key is ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of the opened file: a file
    changed in place gets a new ctime (which no caller can set), so a stale digest is never served.
    """

    def __init__(self, *, max_entries: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, ...], str] = OrderedDict()

    def of(self, path: str) -> tuple[str, tuple[int, int]]:
        """(sha256 hex, (st_dev, st_ino)) of the regular file at ``path`` (a magic link is followed)."""
        fd, info = _open_regular(path, follow=True)
        try:
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            with self._lock:
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    return cached, (info.st_dev, info.st_ino)
            digest = self._hash(fd, info, path)
        finally:
            os.close(fd)
        with self._lock:
            self._cache[key] = digest
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return digest, (info.st_dev, info.st_ino)

    def _hash(self, fd: int, info: os.stat_result, path: str) -> str:
        if info.st_size > EXE_MAX_BYTES:
            raise MeasurementError(errno.EFBIG, f"is larger than {EXE_MAX_BYTES} bytes; not measured", path)
        deadline = self._clock() + EXE_TIME_BUDGET
        h = hashlib.sha256()
        offset = 0
        while True:
            if self._clock() > deadline:
                raise MeasurementError(errno.ETIME, f"took longer than {EXE_TIME_BUDGET:g}s to hash", path)
            chunk = os.pread(fd, _CHUNK, offset)
            if not chunk:
                break
            offset += len(chunk)
            if offset > EXE_MAX_BYTES:
                raise MeasurementError(
                    errno.EFBIG, f"is larger than {EXE_MAX_BYTES} bytes; not measured", path
                )
            h.update(chunk)
        return h.hexdigest()


_DEFAULT_DIGESTS = ExeDigests()


def measure_pid(pid: int, uid: int, gid: int, *, digests: ExeDigests | None = None) -> PeerIdentity:
    """Measure ``pid`` (uid and gid come from the kernel, e.g. ``SO_PEERCRED``). Raises ``OSError``.

    The executable of a process of another uid can only be read with ``CAP_SYS_PTRACE``, which the
    custody process gives up when it drops to its own user: then ``exe``/``exe_sha256`` are ``None``
    ("unmeasured") and a rule that pins them does not match. Rules on uid, gid and cgroup still work.
    A process that exits or is replaced (pid reuse) while measured raises ``ProcessLookupError``.
    """
    start = process_start_time(pid)
    exe: str | None
    exe_sha: str | None
    exe_id: tuple[int, int] | None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        exe_sha, exe_id = (digests or _DEFAULT_DIGESTS).of(f"/proc/{pid}/exe")
    except PermissionError:  # another uid and we lack CAP_SYS_PTRACE: unmeasurable, not an error
        exe = exe_sha = exe_id = None
    cgroup = read_cgroup(pid)
    if process_start_time(pid) != start:
        raise ProcessLookupError("the process changed while it was measured")
    return PeerIdentity(
        pid=pid,
        uid=uid,
        gid=gid,
        exe=exe,
        exe_sha256=exe_sha,
        cgroup=cgroup,
        start_time=start,
        exe_id=exe_id,
    )
