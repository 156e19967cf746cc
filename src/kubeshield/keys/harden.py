"""Process hardening for a process that holds keys or credentials in memory (Linux).

Shared by the custody process (``kubeshield.custody``) and the access agent (``kubeshield.access``):
it lives in layer 1 so that both feature packages apply the same rules without importing each other.

Applied once at start, before any key is loaded:

1. ``RLIMIT_CORE = 0`` and ``prctl(PR_SET_DUMPABLE, 0)``: no core file, and the kernel makes
   ``/proc/<pid>/mem``, ``/proc/<pid>/maps`` etc. owned by root and refuses ptrace attach from a
   same-uid process (only CAP_SYS_PTRACE, i.e. root, can still read it).
2. ``mlockall(MCL_CURRENT | MCL_FUTURE)``: every page, present and future, stays in RAM, so key
   material never reaches swap. ``RLIMIT_MEMLOCK`` is first raised as far as allowed (a process with
   CAP_IPC_LOCK, e.g. root, is not bound by it); a failure is reported: a loud warning, or a refusal
   to start with ``require_mlock``.
3. Every file descriptor above 2 is closed except the ones the caller keeps.
4. When running as root and a user is given: supplementary groups, gid and uid are dropped to it.
   If memory is locked, exactly one capability, CAP_IPC_LOCK, is kept across the drop
   (``PR_SET_KEEPCAPS`` + ``capset``): with ``MCL_FUTURE`` every later allocation is locked too, and
   without that capability an unprivileged process would hit ``RLIMIT_MEMLOCK`` and fail to allocate.

``PR_SET_DUMPABLE`` is reset by the kernel on setuid, so it is set again after the drop.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import resource
from collections.abc import Iterable
from dataclasses import dataclass

from kubeshield.errors import ConfigError

__all__ = ["HardeningReport", "drop_privileges", "harden_process", "hardening_report"]

_MCL_CURRENT = 1
_MCL_FUTURE = 2
_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_PR_SET_KEEPCAPS = 8
_CAP_IPC_LOCK = 14
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

log = logging.getLogger("kubeshield.harden")
_state: dict[str, str | None] = {}


@dataclass(frozen=True, slots=True)
class HardeningReport:
    mlocked: bool
    mlock_error: str | None
    dumpable: int
    core_limit: int
    uid: int
    gid: int


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _set_not_dumpable(libc: ctypes.CDLL) -> int:
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    return int(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _capset_only(libc: ctypes.CDLL, cap: int) -> None:
    """Set the effective and permitted capability sets to exactly ``{cap}`` (cap < 32)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << cap
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise ConfigError(f"capset(CAP_IPC_LOCK) failed: {os.strerror(ctypes.get_errno())}")


def _raise_memlock_limit() -> None:
    """Raise RLIMIT_MEMLOCK as far as we may: unlimited with CAP_SYS_RESOURCE, else soft = hard."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def _resolve_user(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ConfigError(f"--user: no such user {user!r}") from None
    return entry.pw_uid, entry.pw_gid


def harden_process(
    *, require_mlock: bool = False, keep_fds: Iterable[int] = (), close_fds: bool = True
) -> None:
    """Steps 1-3 of the module docstring. Call before any key is loaded. Fails closed."""
    libc = _libc()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _set_not_dumpable(libc)
    if close_fds:
        keep = sorted({fd for fd in keep_fds if fd > 2})
        low = 3
        for fd in [*keep, 1 << 16]:
            if fd > low:
                os.closerange(low, fd)
            low = fd + 1
    _raise_memlock_limit()
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        errno = ctypes.get_errno()
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        _state["mlock_error"] = f"mlockall failed: {os.strerror(errno)} (RLIMIT_MEMLOCK={soft})"
        if require_mlock:
            raise ConfigError(f"{_state['mlock_error']}; refusing to start because --require-mlock is set")
        log.warning(
            "SECURITY WARNING: %s; key material may be written to swap. Raise the limit "
            "(ulimit -l unlimited, LimitMEMLOCK=infinity) or start as root.",
            _state["mlock_error"],
        )
    else:
        _state["mlock_error"] = None


def drop_privileges(user: str | None) -> None:
    """Step 4: switch to ``user`` (name or uid) when running as root; then re-arm PR_SET_DUMPABLE."""
    if user is None:
        return
    uid, gid = _resolve_user(user)
    if os.geteuid() != 0:
        if uid != os.geteuid():
            raise ConfigError("--user needs the process to be started as root")
        return
    if uid != 0:
        name = pwd.getpwuid(uid).pw_name
        libc = _libc()
        keep_ipc_lock = _state.get("mlock_error", "") is None
        if keep_ipc_lock and libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            raise ConfigError("prctl(PR_SET_KEEPCAPS) failed")
        os.setgroups([g.gr_gid for g in grp.getgrall() if name in g.gr_mem])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise ConfigError("dropping privileges failed")
        if keep_ipc_lock:
            # memory stays locked (MCL_FUTURE) after the drop only if new pages may be locked too:
            # keep exactly one capability, CAP_IPC_LOCK, and nothing else
            _capset_only(libc, _CAP_IPC_LOCK)
            libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    _set_not_dumpable(_libc())


def hardening_report() -> HardeningReport:
    """What is in force now in this process."""
    libc = _libc()
    return HardeningReport(
        mlocked=_state.get("mlock_error", "not attempted") is None,
        mlock_error=_state.get("mlock_error", "not attempted"),
        dumpable=int(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)),
        core_limit=resource.getrlimit(resource.RLIMIT_CORE)[0],
        uid=os.getuid(),
        gid=os.getgid(),
    )
