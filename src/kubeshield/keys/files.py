"""Private-file helpers for key custody: atomic writes that keep ownership, a safe lock, access checks.

``write_private_atomic`` never leaves a half-written file behind: it writes a temp file in the same
directory (created 0600 by ``mkstemp``), fsyncs it, renames it over the target, then fsyncs the
directory so the rename itself is durable. If anything fails before the rename, the old file is
untouched and the temp file is removed. ``fsync`` is injectable so tests can make the write fail.

**Ownership and mode are kept.** When the target already exists, the new file gets the target's owner,
group and permission bits before the rename (a keyring chowned to the backup CronJob's uid 65532 stays
65532's after ``keys rotate`` as root). A new file is 0600 and owned by the writer. If the owner cannot
be kept (a non-root writer, a file owned by someone else) the write is refused and nothing changes:
silently handing the file to another owner is how a backup job stops being able to read it.
:func:`replace_private` does the same for a temp file that was prepared elsewhere (restore, sync).

``exclusive_lock`` takes ``fcntl.flock(LOCK_EX)`` on ``<path>.lock`` (created 0600, never deleted:
deleting a lock file races with the next locker). It is opened with ``O_NOFOLLOW`` and must be a
regular file, so a symlink or FIFO planted at the lock's name is refused instead of followed or
blocked on. When root takes the lock, the lock file gets the guarded file's owner and group, so the
file's owner (a chowned keyring's uid) can still take the lock. ``flock`` locks belong to the open
file description, so two threads of one process that each call ``exclusive_lock`` also exclude each
other.

Access checks (``kms serve`` refuses what they report, unless told otherwise):

* :func:`directory_problem`: an existing directory that is group- or world-writable (sticky bit or
  not) lets someone else replace or plant a keyring in it. A directory on a read-only mount (a
  Kubernetes Secret volume) cannot be written by anyone and passes.
* :func:`file_exposure`: a key or passphrase file that others can access at all, or whose group can
  write it. A *group-readable* file passes only when its group is a non-root group this process is a
  member of: that is how kubelet's ``fsGroup`` exposes a Secret to a non-root pod (mode 0440, group =
  the pod's fsGroup); any other group-readable file is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

__all__ = [
    "directory_problem",
    "exclusive_lock",
    "file_exposure",
    "fsync_directory",
    "mode_text",
    "replace_private",
    "write_private_atomic",
]

_NEW_FILE_MODE = 0o600


def mode_text(mode: int) -> str:
    """``0o100640`` -> ``"0640"``."""
    return f"{stat.S_IMODE(mode):04o}"


def _existing(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _take_over(fd: int, previous: os.stat_result | None, path: Path) -> None:
    """Give the open temp file ``previous``'s owner, group and mode (0600 and ours when new)."""
    if previous is None:
        os.fchmod(fd, _NEW_FILE_MODE)
        return
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (previous.st_uid, previous.st_gid):
        try:
            os.fchown(fd, previous.st_uid, previous.st_gid)
        except PermissionError:
            raise PermissionError(
                errno.EPERM,
                f"cannot keep its owner {previous.st_uid}:{previous.st_gid} (run as root or as its owner)",
                str(path),
            ) from None
    os.fchmod(fd, stat.S_IMODE(previous.st_mode) & 0o777)


def write_private_atomic(path: Path, data: bytes, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Replace ``path`` with ``data`` atomically, keeping an existing file's owner, group and mode.

    A new file is 0600.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _NEW_FILE_MODE)
            _take_over(fh.fileno(), _existing(path), path)
            fh.write(data)
            fh.flush()
            fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(directory, fsync=fsync)


def replace_private(tmp: Path, path: Path, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Rename the finished file ``tmp`` over ``path`` (same directory), keeping ``path``'s owner and mode.

    ``tmp`` must be a regular file (it is opened with ``O_NOFOLLOW``). On failure ``tmp`` is left for
    the caller to remove and ``path`` is unchanged.
    """
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(tmp))
        _take_over(fd, _existing(path), path)
        fsync(fd)  # the owner and mode are durable before the rename makes them visible
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent, fsync=fsync)


def fsync_directory(directory: Path, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a rename (or create) inside ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _follow_owner(fd: int, beside: Path) -> None:
    """As root, give the lock file the owner and group of the file it guards (best effort)."""
    target = _existing(beside)
    if target is None or os.geteuid() != 0:
        return
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) != (target.st_uid, target.st_gid):
        with contextlib.suppress(OSError):
            os.fchown(fd, target.st_uid, target.st_gid)


def _open_lock(lock_path: Path, beside: Path) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(8):
        try:
            fd = os.open(lock_path, flags)
        except FileNotFoundError:
            try:
                fd = os.open(lock_path, flags | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
            except FileExistsError:
                continue  # another locker created it first: open theirs
        _follow_owner(fd, beside)
        return fd
    raise OSError(errno.EAGAIN, "the lock file keeps appearing and disappearing", str(lock_path))


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` for the duration of the block.

    Raises ``OSError`` when the lock file is a symlink (``ELOOP``) or not a regular file.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = _open_lock(lock_path, path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "the lock file is a symbolic link; refusing to follow it") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "the lock file is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_only_mount(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def directory_problem(directory: Path) -> str | None:
    """Why key files must not live in ``directory`` (group- or world-writable), or None.

    A missing directory is no problem here (creating it is the caller's business, 0700).
    """
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"directory {directory}: cannot stat it: {exc.strerror}"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not writable or _read_only_mount(directory):
        return None
    who = (
        "group- and world-writable"
        if writable == stat.S_IWGRP | stat.S_IWOTH
        else ("group-writable" if writable == stat.S_IWGRP else "world-writable")
    )
    return (
        f"directory {directory} is mode {mode_text(st.st_mode)} ({who}): anyone who can write it can "
        f"replace the keyring. Run `chmod go-w {directory}`, or keep the keyring in a subdirectory "
        "kubeshield creates (0700)"
    )


def file_exposure(path: Path, *, groups: Collection[int] | None = None) -> str | None:
    """Why a key or passphrase file is exposed (see the module docstring), or None when it is private.

    ``groups`` are this process's groups (default: ``os.getgroups()`` and the effective gid). The
    file's mode is read through symlinks (a Kubernetes Secret file is a symlink into ``..data/``).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: cannot stat it: {exc.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return None
    mine = set(groups) if groups is not None else {*os.getgroups(), os.getegid()}
    fs_group = mode & 0o077 == stat.S_IRGRP and st.st_gid != 0 and st.st_gid in mine
    if fs_group:
        return None
    if mode & 0o007:
        who = "others"
    elif mode & stat.S_IWGRP:
        who = f"group {st.st_gid}, which can write it"
    elif st.st_gid in mine:
        who = f"group {st.st_gid}"
    else:
        who = f"group {st.st_gid}, which this process is not a member of"
    return f"{path} is mode {mode_text(st.st_mode)}: accessible by {who}. Run `chmod 600 {path}`"
