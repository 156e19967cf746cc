"""What a custody policy can pin for a running process: the library half of ``custody measure --pid``.

:func:`measure_process` measures a process the way the custody server measures a caller (same code:
:func:`kubeshield.custody.measure.measure_pid`), with uid and gid taken from ``/proc/<pid>/status``
(the effective ids, which is what ``SO_PEERCRED`` reports). :func:`suggest_rule` turns the measurement
into a policy rule, and :func:`render_yaml` into YAML ready to paste under ``rules:``; every value
is one the server compares, and the notes say which of them are weak for this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

from kubeshield.custody.measure import PeerIdentity, measure_pid, process_uid_gid
from kubeshield.custody.policy import DEFAULT_OPS

__all__ = ["Measured", "measure_process", "render_yaml", "suggest_rule"]

_INTERPRETERS = ("python", "node", "perl", "ruby", "java", "sh", "bash", "dash", "php", "lua")


@dataclass(frozen=True, slots=True)
class Measured:
    identity: PeerIdentity
    real_uid: int
    real_gid: int


def measure_process(pid: int) -> Measured:
    """Measure ``pid`` as the custody server would. Raises ``ProcessLookupError`` if it is gone."""
    try:
        real_uid, uid, real_gid, gid = process_uid_gid(pid)
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    return Measured(identity=measure_pid(pid, uid, gid), real_uid=real_uid, real_gid=real_gid)


def _cgroup_paths(cgroup: str) -> list[tuple[str, str]]:
    out = []
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[2]))
    return out


def suggested_cgroup_prefix(cgroup: str) -> tuple[str | None, str | None]:
    """(prefix to pin, note). The unified (v2) path when it is not the root, else the longest v1 path.

    Under Kubernetes the container's own cgroup changes at every container restart; the pod's
    (the path up to its ``pod...`` component) does not, so that is what is suggested.
    """
    paths = _cgroup_paths(cgroup)
    unified = [p for h, p in paths if h == "0" and p not in ("/", "")]
    candidates = unified or sorted((p for _, p in paths if p not in ("/", "")), key=len, reverse=True)
    if not candidates:
        return None, "the process is in the root cgroup: a cgroupPrefix would match every process"
    path = candidates[0]
    parts = path.strip("/").split("/")
    for i, part in enumerate(parts):
        if part.startswith("pod") or "-pod" in part:
            if i + 1 < len(parts):
                pod = "/" + "/".join(parts[: i + 1])
                return pod, f"the pod's cgroup; the container's own ({path}) changes at each restart"
            break
    return path, None


def suggest_rule(measured: Measured, *, name: str) -> tuple[dict[str, Any], list[str]]:
    """A policy rule (the policy file's field names) for this process, and notes about its strength."""
    identity = measured.identity
    rule: dict[str, Any] = {"name": name, "uid": identity.uid, "gid": identity.gid}
    notes: list[str] = []
    prefix, note = suggested_cgroup_prefix(identity.cgroup)
    if prefix is not None:
        rule["cgroupPrefix"] = prefix
    if note is not None:
        notes.append(f"cgroupPrefix: {note}")
    if identity.exe_sha256 is not None:
        rule["exeSha256"] = identity.exe_sha256
        base = os.path.basename(identity.exe or "")
        if base.startswith(_INTERPRETERS):
            notes.append(
                f"exeSha256 is that of the interpreter {identity.exe}: it admits any script that "
                "interpreter runs; uid, gid and cgroupPrefix are the gate"
            )
    else:
        notes.append(
            "exeSha256: not measurable from here (no access to /proc/<pid>/exe: another uid "
            "without CAP_SYS_PTRACE, or another user namespace)"
        )
    notes.append(
        "exeSha256 is checked only if the custody process can read /proc/<pid>/exe and maps of the "
        "caller: run it without --user (root) or as the caller's uid"
    )
    if (measured.real_uid, measured.real_gid) != (identity.uid, identity.gid):
        notes.append(
            "real and effective ids differ (a setuid/setgid program): the custody process refuses "
            "such a caller, whose messages carry the real ids"
        )
    rule["ops"] = sorted(DEFAULT_OPS)
    return rule, notes


def render_yaml(measured: Measured, *, name: str) -> str:
    """The rule as YAML to paste under ``rules:``, preceded by the notes as comments."""
    rule, notes = suggest_rule(measured, name=name)
    head = [f"# pid {measured.identity.pid}, exe {measured.identity.exe}: paste under 'rules:'"]
    head += [f"# note: {n}" for n in notes]
    body = yaml.safe_dump([rule], sort_keys=False, default_flow_style=None, width=200)
    return "\n".join(head) + "\n" + body
