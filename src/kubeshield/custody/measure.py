"""Measure a local process from what the kernel tells us about it.

A caller of the custody socket is identified by ``SO_PEERCRED`` (pid, uid, gid, filled in by the kernel
at ``connect()``), then measured through ``/proc/<pid>``:

* ``exe_sha256``: sha256 of the file ``/proc/<pid>/exe`` points to (opened through that magic link, so
  a replaced path on disk does not fool it);
* ``cgroup``: the content of ``/proc/<pid>/cgroup`` (its container identity under Kubernetes);
* ``package_digest``: for Python callers, a digest of the ``kubeshield`` package directory that the
  caller's interpreter imports (see :func:`package_digest` for how it is found and what it covers);
* ``start_time``: field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), which with the pid
  names one process for its lifetime and is what the pid-reuse check compares.

What this is not: a measurement of the code the caller has *loaded*. A Python process can import
other files or change itself after start; the digest describes the installation the interpreter
would load, which is what an allow-list can meaningfully pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PeerIdentity",
    "find_package_dir",
    "measure_pid",
    "package_digest",
    "peer_credentials",
    "process_start_time",
]

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Everything we measured about one peer. Safe to log: it holds no secret."""

    pid: int
    uid: int
    gid: int
    exe: str | None
    exe_sha256: str | None
    cgroup: str
    package_digest: str | None
    start_time: int

    def describe(self) -> str:
        return (
            f"pid={self.pid} uid={self.uid} gid={self.gid} exe={self.exe} exe_sha256={self.exe_sha256} "
            f"cgroup={self.cgroup!r} package_digest={self.package_digest}"
        )


def peer_credentials(sock: object) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer of a connected unix socket, from the kernel (SO_PEERCRED)."""
    import socket as _socket

    if not isinstance(sock, _socket.socket):
        raise TypeError("sock must be a socket")
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def process_start_time(pid: int) -> int:
    """Field 22 (starttime) of ``/proc/<pid>/stat``. The comm field may hold spaces and parentheses."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 is rest[19]
    return int(rest[19])


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [a.decode("utf-8", "surrogateescape") for a in fh.read().split(b"\x00") if a]


def find_package_dir(pid: int, *, package: str = "kubeshield") -> Path | None:
    """The ``kubeshield`` directory the Python interpreter of ``pid`` would import, or None.

    How it is found: argv[0] of the caller (the interpreter path as it was invoked, before symlinks are
    resolved; for a console script the kernel puts the shebang's interpreter there), resolved inside
    the caller's root (``/proc/<pid>/root``) and working directory. If the interpreter belongs to a
    virtual environment (``pyvenv.cfg`` one level above ``bin/``) its ``site-packages`` is searched,
    else the system's ``dist-packages``/``site-packages``. An editable install is followed through the
    PEP 610 ``direct_url.json`` of the distribution to its source tree.
    """
    try:
        argv = _cmdline(pid)
    except OSError:
        return None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    if not argv or "python" not in os.path.basename(exe):
        return None
    root = Path(f"/proc/{pid}/root")
    arg0 = argv[0]
    if not arg0.startswith("/"):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        arg0 = os.path.normpath(os.path.join(cwd, arg0))
    bindir = Path(os.path.dirname(arg0))
    candidates: list[Path] = []
    venv = bindir.parent
    if (root / venv.relative_to("/") / "pyvenv.cfg").is_file():
        candidates.extend(sorted((root / venv.relative_to("/")).glob("lib/python3*/site-packages")))
    else:
        for pattern in ("usr/local/lib/python3*/dist-packages", "usr/lib/python3/dist-packages"):
            candidates.extend(sorted(root.glob(pattern)))
    for site in candidates:
        direct = site / package
        if (direct / "__init__.py").is_file():
            return direct
        for dist in sorted(site.glob(f"{package}-*.dist-info")):
            url_file = dist / "direct_url.json"
            if not url_file.is_file():
                continue
            try:
                info = json.loads(url_file.read_text())
            except (OSError, ValueError):
                continue
            url = str(info.get("url", ""))
            if url.startswith("file://") and info.get("dir_info", {}).get("editable"):
                src = Path(url[len("file://") :])
                for sub in (src / "src" / package, src / package):
                    target = root / sub.relative_to("/")
                    if (target / "__init__.py").is_file():
                        return target
    return None


def package_digest(directory: Path) -> str:
    """sha256 over every ``*.py`` file of a package directory, in sorted order of relative path.

    Layout hashed: for each file, ``relpath || 0x00 || sha256(content) || 0x0a``. Byte-compiled caches
    are not covered (an interpreter ignores a stale one). The result is ``"sha256:" + hex``.
    """
    h = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        rel = path.relative_to(directory).as_posix().encode()
        h.update(rel + b"\x00" + bytes.fromhex(_sha256_file(str(path))) + b"\n")
    return "sha256:" + h.hexdigest()


def measure_pid(pid: int, uid: int, gid: int) -> PeerIdentity:
    """Measure ``pid``. Raises ``OSError`` if the process is gone.

    The executable (and so the package digest) of a process of another uid can only be read with
    CAP_SYS_PTRACE, which the custody process gives up when it drops to its own user: then
    ``exe``/``exe_sha256``/``package_digest`` are ``None`` ("unmeasured"), and a policy rule that
    pins them does not match. Rules on uid, gid and cgroup still work.
    """
    start = process_start_time(pid)
    exe: str | None
    exe_sha: str | None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        exe_sha = _sha256_file(f"/proc/{pid}/exe")
    except PermissionError:  # another uid and we lack CAP_SYS_PTRACE: unmeasurable, not an error
        exe = exe_sha = None
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
        cgroup = fh.read().strip()
    try:
        pkg_dir = find_package_dir(pid) if exe is not None else None
        digest = package_digest(pkg_dir) if pkg_dir is not None else None
    except PermissionError:
        digest = None
    if process_start_time(pid) != start:
        raise ProcessLookupError("the process changed while it was measured")
    return PeerIdentity(
        pid=pid,
        uid=uid,
        gid=gid,
        exe=exe,
        exe_sha256=exe_sha,
        cgroup=cgroup,
        package_digest=digest,
        start_time=start,
    )
