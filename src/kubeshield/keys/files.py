"""Private-file helpers for key custody: atomic 0600 writes and an advisory lock beside a file.

``write_private_atomic`` never leaves a half-written file behind: it writes a temp file in the same
directory (created 0600 by ``mkstemp``), fsyncs it, renames it over the target, then fsyncs the
directory so the rename itself is durable. If anything fails before the rename, the old file is
untouched and the temp file is removed. ``fsync`` is injectable so tests can make the write fail.

``exclusive_lock`` takes ``fcntl.flock(LOCK_EX)`` on ``<path>.lock`` (created 0600, never deleted:
deleting a lock file races with the next locker). ``flock`` locks belong to the open file
description, so two threads of one process that each call ``exclusive_lock`` also exclude each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["exclusive_lock", "fsync_directory", "write_private_atomic"]


def write_private_atomic(path: Path, data: bytes, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Replace ``path`` with ``data`` atomically; the result has mode 0600."""
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(directory, fsync=fsync)


def fsync_directory(directory: Path, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a rename (or create) inside ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` for the duration of the block."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
