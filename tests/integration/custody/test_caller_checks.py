"""The custody caller checks against the attacks of issue 15 item 1, with real processes and real uids.

The custody process is a real ``kubeshield custody serve`` subprocess (as root, so it can measure
callers of any uid). Callers run ``_caller_script.py`` with the system interpreter from a
world-readable directory, as root or as uid 65534 for real. Where an attack needs the custody process
to look at the caller only after the caller has exec'd, the custody process is stopped (SIGSTOP)
while the caller connects, hands on its socket and execs, and resumed once ``/proc/<pid>/exe`` shows
the new program: the kernel completes a unix ``connect()`` into the backlog without the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._support import start_custody, write_keyring

NOBODY = pwd.getpwnam("nobody")
SYSTEM_PYTHON = "/usr/bin/python3"
SLEEP = shutil.which("sleep") or "/bin/sleep"
SCRIPT = Path(__file__).with_name("_caller_script.py")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs callers as other uids (run as root)")


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(os.path.realpath(path)).read_bytes()).hexdigest()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """World-traversable, so uid 65534 can reach the socket and the caller script."""
    path = Path(tempfile.mkdtemp(prefix="ks-caller-", dir="/tmp"))
    path.chmod(0o755)
    shutil.copy(SCRIPT, path / "caller.py")
    (path / "caller.py").chmod(0o644)
    (path / "out").mkdir()
    (path / "out").chmod(0o1777)  # the caller (any uid) writes its result here
    write_keyring(path / "keyring")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve(workdir: Path, rule: str):
    policy = workdir / "policy.yaml"
    policy.write_text(
        f"version: 1\nrules:\n  - name: plugin\n{rule}    ops: [wrap, unwrap, key_id, health]\n"
    )
    return start_custody(
        keyring=workdir / "keyring",
        socket=workdir / "custody.sock",
        policy=policy,
        extra=["--socket-mode", "0666"],
    )


def _as(uid: int, gid: int):
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def _run_caller(
    workdir: Path, mode: str, *exe: str, uid: int = 0, gid: int = 0, greeting: bool = True, version: int = 2
) -> subprocess.Popen[bytes]:
    result = workdir / "out" / "result"
    result.unlink(missing_ok=True)
    return subprocess.Popen(
        [SYSTEM_PYTHON, str(workdir / "caller.py"), mode, str(workdir / "custody.sock"), str(result),
         str(version), "1" if greeting else "0", *exe],
        cwd=str(workdir), preexec_fn=_as(uid, gid) if uid else None,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _result(workdir: Path, bound: float = 60.0) -> str:
    path = workdir / "out" / "result"
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError("the caller recorded no result")


def _wait_exe(pid: int, target: str, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(target):
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never ran {target}")


def _attack_while_stopped(custody, workdir: Path, mode: str, *, uid: int = 0, gid: int = 0) -> str:
    """Run ``mode`` with the custody process stopped until the caller has exec'd ``sleep``."""
    os.kill(custody.proc.pid, signal.SIGSTOP)
    caller = _run_caller(workdir, mode, SLEEP, "30", uid=uid, gid=gid)
    try:
        _wait_exe(caller.pid, SLEEP)  # connected, socket handed on, exec'd: only now may custody look
    finally:
        os.kill(custody.proc.pid, signal.SIGCONT)
    with _reaped(caller):
        return _result(workdir)


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_positive_control_a_uid_65534_caller_its_rule_allows_is_served(workdir: Path) -> None:
    custody = _serve(workdir, f"    uid: {NOBODY.pw_uid}\n")
    try:
        with _reaped(_run_caller(workdir, "plain", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)):
            assert _result(workdir) == "greeting=OK answer=OK"
    finally:
        custody.stop()


def test_a_uid_65534_caller_is_refused_at_connect_by_a_rule_for_root(workdir: Path) -> None:
    custody = _serve(workdir, "    uid: 0\n")
    try:
        with _reaped(_run_caller(workdir, "plain", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)):
            assert _result(workdir) == "greeting=PERMISSION_DENIED answer=closed"
        log = custody.wait_log("PERMISSION DENIED")
        assert f"uid={NOBODY.pw_uid}" in log and "no policy rule matches" in log
    finally:
        custody.stop()


@pytest.mark.parametrize("caller_uid", [0, NOBODY.pw_uid], ids=["root", "uid65534"])
def test_socket_handed_to_a_child_before_the_parent_execs_an_allowed_binary(
    workdir: Path, caller_uid: int
) -> None:
    """Issue 15 item 1, as seen: the parent is measured as the allowed binary, the child asks."""
    gid = 0 if caller_uid == 0 else NOBODY.pw_gid
    custody = _serve(workdir, f"    uid: {caller_uid}\n    exeSha256: {_sha256(SLEEP)}\n")
    try:
        outcome = _attack_while_stopped(custody, workdir, "fd-to-child", uid=caller_uid, gid=gid)
        # the parent (now `sleep`) was admitted and greeted; the child's request is refused
        assert outcome == "greeting=OK answer=PERMISSION_DENIED"
        assert "written by another process" in custody.wait_log("written by another process")
    finally:
        custody.stop()


def test_a_request_written_before_the_exec_is_refused(workdir: Path) -> None:
    """Connect, write a request, hand the socket to a reader child, exec the allowed binary."""
    custody = _serve(workdir, f"    uid: 0\n    exeSha256: {_sha256(SLEEP)}\n")
    try:
        outcome = _attack_while_stopped(custody, workdir, "early-request")
        assert outcome == "greeting=none answer=PROTOCOL_ERROR"  # the refusal, never an answer
        assert "wrote before the greeting" in custody.wait_log("wrote before the greeting")
    finally:
        custody.stop()


def test_an_exec_after_admission_is_refused_even_of_the_same_binary(workdir: Path) -> None:
    """Admitted as /usr/bin/python3, the caller re-execs the same interpreter and asks again."""
    custody = _serve(workdir, f"    uid: 0\n    exeSha256: {_sha256(SYSTEM_PYTHON)}\n")
    try:
        with _reaped(_run_caller(workdir, "exec-after-admit")):
            assert _result(workdir) == "first=OK second=PERMISSION_DENIED"
        assert "called execve after it was measured" in custody.wait_log("called execve")
    finally:
        custody.stop()


def _writable_cgroup2() -> Path:
    """The cgroup v2 hierarchy (pure v2 or the hybrid 'unified' mount); fails loudly if absent."""
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists() and (root / "cgroup.subtree_control").exists():
            return root
    raise AssertionError("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")


def test_a_caller_that_moves_to_another_cgroup_after_admission_is_refused(workdir: Path) -> None:
    root = _writable_cgroup2()
    ours = root / f"ks-test-{os.getpid()}-a"
    other = root / f"ks-test-{os.getpid()}-b"
    ours.mkdir()
    other.mkdir()
    custody = _serve(workdir, f"    uid: 0\n    cgroupPrefix: /{ours.name}\n")
    try:

        def join_ours() -> None:
            (ours / "cgroup.procs").write_text(str(os.getpid()))

        caller = subprocess.Popen(
            [SYSTEM_PYTHON, str(workdir / "caller.py"), "move-cgroup", str(workdir / "custody.sock"),
             str(workdir / "out" / "result"), "2", "1", str(other / "cgroup.procs")],
            preexec_fn=join_ours,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with _reaped(caller):
            assert _result(workdir) == "first=OK second=PERMISSION_DENIED"
        assert "its cgroup changed" in custody.wait_log("its cgroup changed")
    finally:
        custody.stop()
        for group in (ours, other):
            group.rmdir()
