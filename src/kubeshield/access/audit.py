"""The local audit log of every proxied request that touched a Secret: who, when, what, never the data.

One JSON object per line, appended with ``O_APPEND`` (each record is one ``write``, so concurrent
writers never interleave inside a line) to a file made 0600. A file that exists with wider
permissions or another owner is refused (fail closed: an audit log others can rewrite proves nothing).

    {"time": "2026-12-02T03:04:05.123456Z", "subject": "alice", "context": "prod", "verb": "get",
     "namespace": "app", "name": "db", "status": 200, "revealed": false}

``revealed`` is true when the request asked for the values (``X-Kubeshield-Reveal: 1``) while
redaction was on; with redaction off every Secret read is a reveal and is recorded as such.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubeshield.errors import ConfigError

__all__ = ["AuditLog"]


class AuditLog:
    """An append-only JSON-lines file; ``record`` writes one line (never a Secret value)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"audit log {self.path}: cannot open it for appending ({exc.strerror})"
            ) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ConfigError(f"audit log {self.path}: not a regular file")
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            os.close(fd)
            raise ConfigError(
                f"audit log {self.path}: must be owned by this user and mode 0600 "
                f"(it is {stat.S_IMODE(info.st_mode):04o}); fix it or choose another file"
            )
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def record(
        self,
        *,
        subject: str,
        context: str,
        verb: str,
        namespace: str,
        name: str,
        status: int,
        revealed: bool,
        when: datetime | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "time": (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "subject": subject,
            "context": context,
            "verb": verb,
            "namespace": namespace,
            "name": name,
            "status": status,
            "revealed": revealed,
        }
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._fd is None:
                raise ValueError("the audit log is closed")
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
