"""The custody process as a real subprocess: hardening, attestation of callers, faults, memory scan."""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kubeshield.errors import BackendTimeout, BackendUnavailable, InvalidCiphertext, PolicyDenied
from kubeshield.keys.enclave import EnclaveKeyBackend

from ._support import (
    CUSTODY_CLI,
    PYTHON,
    REPO,
    allow_policy,
    env,
    memory_contains,
    start_custody,
    wait_until_stopped,
    write_keyring,
)

NOBODY = pwd.getpwnam("nobody")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="these tests start processes as other users (run as root)"
)


@pytest.fixture
def workdir():
    """A directory other users can traverse (pytest's own tmp root is 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ks-custody-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def custody(workdir: Path):
    kek = write_keyring(workdir / "keyring")
    proc = start_custody(
        keyring=workdir / "keyring",
        socket=workdir / "custody.sock",
        policy=allow_policy(workdir / "policy.yaml", uid=0),
        extra=["--user", "nobody", "--socket-mode", "0666"],
    )
    proc.kek = kek  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _open_mem_as(uid: int, gid: int, pid: int) -> str:
    """In a child that dropped to uid/gid, try to read /proc/<pid>/mem; returns 'ok' or the error name."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            start = int(maps[0].split("-")[0], 16)
            with open(f"/proc/{pid}/mem", "rb", 0) as mem:
                mem.seek(start)
                mem.read(16)
            msg = b"ok"
        except OSError as exc:
            msg = type(exc).__name__.encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    data = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(child, 0)
    return data


def test_round_trip_through_the_custody_process(custody) -> None:
    backend = EnclaveKeyBackend(socket=str(custody.socket))
    wrapped = backend.wrap(b"d" * 32, aad=b"ctx")
    assert wrapped.ciphertext != b"d" * 32
    assert backend.unwrap(wrapped, aad=b"ctx") == b"d" * 32
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(wrapped, aad=b"other")
    assert backend.check_health().ok
    backend.close()


def test_custody_runs_hardened(custody) -> None:
    pid = custody.proc.pid
    status = _status(pid)
    assert status["Uid"].split()[0] == str(NOBODY.pw_uid)  # dropped to the given user
    assert int(status["VmLck"].split()[0]) > 0  # mlockall in force
    limits = Path(f"/proc/{pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
    # not dumpable: the kernel hands /proc/<pid>/mem to root, and a same-uid process cannot read it
    assert os.stat(f"/proc/{pid}/mem").st_uid == 0
    assert _open_mem_as(NOBODY.pw_uid, NOBODY.pw_gid, pid) == "PermissionError"


def test_same_uid_can_read_an_unhardened_process(workdir: Path) -> None:
    """Control for the test above: without hardening, the same uid CAN read /proc/<pid>/mem."""

    # Popen returns once the child has exec'd, so it already runs as nobody: nothing to wait for
    plain = subprocess.Popen(["sleep", "30"], user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[])
    try:
        assert os.stat(f"/proc/{plain.pid}/mem").st_uid == NOBODY.pw_uid
        assert _open_mem_as(NOBODY.pw_uid, NOBODY.pw_gid, plain.pid) == "ok"
    finally:
        plain.kill()
        plain.wait()


def test_inherited_file_descriptors_are_closed(workdir: Path) -> None:
    write_keyring(workdir / "keyring")
    leak_r, leak_w = os.pipe()
    leaked = os.readlink(f"/proc/self/fd/{leak_r}")
    try:
        proc = start_custody(
            keyring=workdir / "keyring",
            socket=workdir / "c.sock",
            policy=allow_policy(workdir / "p.yaml"),
            pass_fds=(leak_r,),
        )
        try:
            targets = [
                os.readlink(f"/proc/{proc.proc.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{proc.proc.pid}/fd")
            ]
        finally:
            proc.stop()
    finally:
        os.close(leak_r)
        os.close(leak_w)
    assert leaked not in targets
    assert sum(t.startswith("socket:") for t in targets) == 1  # only the listener
    assert len(targets) <= 4  # stdin, stdout, stderr and the listener


# A process that may not lock memory: no CAP_IPC_LOCK, no CAP_SYS_RESOURCE (out of the bounding and
# inheritable sets, so the exec'd program cannot hold them), RLIMIT_MEMLOCK 0. The interpreter lives
# under /root, so we stay uid 0 and drop the capabilities instead. util-linux programs exec the command
# in the same process: no Python runs between fork and exec (a preexec_fn that imported ctypes and
# called dlopen in the child of this multi-threaded process could deadlock there, on a lock another
# thread held at fork time).
WITHOUT_MEMLOCK = [
    "setpriv", "--inh-caps", "-ipc_lock,-sys_resource", "--bounding-set", "-ipc_lock,-sys_resource",
    "prlimit", "--memlock=0:0", "--",
]  # fmt: skip


def test_mlock_failure_warns_or_refuses(workdir: Path) -> None:
    write_keyring(workdir / "keyring")
    policy = allow_policy(workdir / "p.yaml")
    refused = subprocess.run(
        [*WITHOUT_MEMLOCK, *CUSTODY_CLI, "serve", "--keyring", str(workdir / "keyring"),
         "--socket", str(workdir / "r.sock"), "--policy", str(policy), "--require-mlock"],
        capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=120,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "mlockall failed" in refused.stderr and "--require-mlock" in refused.stderr
    assert "ready" not in refused.stdout

    warned = start_custody(
        keyring=workdir / "keyring", socket=workdir / "w.sock", policy=policy, prefix=WITHOUT_MEMLOCK
    )
    try:
        assert "SECURITY WARNING: mlockall failed" in warned.wait_log("SECURITY WARNING")
    finally:
        warned.stop()


def test_policy_with_an_error_refuses_to_start_and_names_the_line(workdir: Path) -> None:
    write_keyring(workdir / "keyring")
    bad = workdir / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    uid: 0\n    exe: abc\n")
    result = subprocess.run(
        [*CUSTODY_CLI, "serve", "--keyring", str(workdir / "keyring"),
         "--socket", str(workdir / "s.sock"), "--policy", str(bad)],
        capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "line 5" in result.stderr and "'exe'" in result.stderr
    assert not (workdir / "s.sock").exists()


def test_caller_with_another_uid_is_refused_and_logged(custody) -> None:
    script = textwrap.dedent(f"""
        import os
        from kubeshield.errors import PolicyDenied
        from kubeshield.keys.enclave import EnclaveKeyBackend
        os.setgid({NOBODY.pw_gid}); os.setuid({NOBODY.pw_uid})  # after the imports: /root is 0700
        try:
            EnclaveKeyBackend(socket={str(custody.socket)!r}).wrap(b"x" * 32)
        except PolicyDenied:
            print("denied")
        else:
            print("allowed")
    """)
    out = subprocess.run(
        [PYTHON, "-c", script], capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=60
    )
    assert out.stdout.strip() == "denied", out.stderr
    deadline = time.monotonic() + 5
    while "PERMISSION DENIED" not in custody.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"uid={NOBODY.pw_uid}" in custody.log and "exe_sha256=" in custody.log


def test_caller_with_another_exe_measurement_is_refused(workdir: Path) -> None:
    write_keyring(workdir / "keyring")
    policy = workdir / "p.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: other-binary\n    uid: 0\n    exeSha256: " + "ab" * 32 + "\n"
    )
    proc = start_custody(keyring=workdir / "keyring", socket=workdir / "c.sock", policy=policy)
    try:
        with pytest.raises(PolicyDenied):
            EnclaveKeyBackend(socket=str(workdir / "c.sock")).key_id()
    finally:
        proc.stop()


def test_killed_mid_request_reports_unavailable_then_reconnects(workdir: Path) -> None:
    """The request is on the custody socket, unanswered (the process is stopped), when it is killed."""
    write_keyring(workdir / "keyring")
    policy = allow_policy(workdir / "p.yaml")
    sock = workdir / "c.sock"
    custody = start_custody(keyring=workdir / "keyring", socket=sock, policy=policy)
    backend = EnclaveKeyBackend(socket=str(sock), timeout=30)
    outcome: list[object] = []
    t: threading.Thread | None = None
    try:
        wrapped = backend.wrap(b"k" * 32)

        def call() -> None:
            try:
                outcome.append(backend.unwrap(wrapped))
            except Exception as exc:
                outcome.append(exc)

        os.kill(custody.proc.pid, signal.SIGSTOP)
        try:
            wait_until_stopped(custody.proc.pid)  # else a thread still running may answer the request
            t = threading.Thread(target=call)
            t.start()
            _wait_for_pending_request(backend)
            assert not outcome  # the call is waiting for its answer
        finally:
            os.kill(custody.proc.pid, signal.SIGKILL)
        t.join(30)
        assert not t.is_alive()
        custody.stop()
        assert len(outcome) == 1 and isinstance(outcome[0], BackendUnavailable), outcome
        assert backend._sock is None  # the broken connection was closed, not kept
        with pytest.raises(BackendUnavailable):
            backend.unwrap(wrapped)  # nobody is listening
        again = start_custody(keyring=workdir / "keyring", socket=sock, policy=policy)
        try:
            assert backend.unwrap(wrapped) == b"k" * 32  # reconnected, right plaintext
        finally:
            again.stop()
    finally:
        if t is not None:  # the call ends once the killed process's socket is gone
            t.join(30)
        backend.close()
        custody.stop()


def _wait_for_pending_request(backend: EnclaveKeyBackend, bound: float = 30.0) -> None:
    """Until the backend's request sits unread on the custody socket.

    For a unix stream socket, ``TIOCOUTQ`` (SIOCOUTQ) counts the bytes sent that the peer has not
    read yet, so a positive value means our request was sent and the stopped custody process holds it.
    """
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        sock = backend._sock
        if sock is not None:
            pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            if pending > 0:
                return
        time.sleep(0.02)
    raise AssertionError("the request never reached the custody process's socket")


def test_timeout_reports_backend_timeout(workdir: Path) -> None:
    write_keyring(workdir / "keyring")
    sock = workdir / "c.sock"
    proc = start_custody(keyring=workdir / "keyring", socket=sock, policy=allow_policy(workdir / "p.yaml"))
    try:
        patient = EnclaveKeyBackend(socket=str(sock), timeout=30)  # measuring a caller takes a moment
        wrapped = patient.wrap(b"t" * 32)
        impatient = EnclaveKeyBackend(socket=str(sock), timeout=0.5)
        os.kill(proc.proc.pid, signal.SIGSTOP)  # the custody process cannot answer
        try:
            wait_until_stopped(proc.proc.pid)  # else a thread still running may answer at once
            with pytest.raises(BackendTimeout):
                impatient.unwrap(wrapped)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        impatient.close()
        assert patient.unwrap(wrapped) == b"t" * 32  # the custody process serves again
        patient.close()
    finally:
        proc.stop()


_PLUGIN = """
import sys
from kubeshield.keys.base import Wrapped
mode, arg = sys.argv[1], sys.argv[2]
if mode == "enclave":
    from kubeshield.keys.enclave import EnclaveKeyBackend
    backend = EnclaveKeyBackend(socket=arg)
else:
    from kubeshield.keys.local import LocalKeyBackend
    backend = LocalKeyBackend(path=arg)
for i in range(200):
    w = backend.wrap(bytes([i]) * 32, aad=b"ns/name")
    assert backend.unwrap(w, aad=b"ns/name") == bytes([i]) * 32
print("ready", flush=True)
sys.stdin.readline()
"""


def _scan_plugin(mode: str, arg: str, kek: bytes) -> bool:
    proc = subprocess.Popen(
        [PYTHON, "-c", _PLUGIN, mode, arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=str(REPO), env=env(),
    )  # fmt: skip
    with proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            return memory_contains(proc.pid, kek)
        finally:
            proc.kill()


def test_plugin_using_the_enclave_backend_holds_no_kek(custody, workdir: Path) -> None:
    kek = custody.kek
    assert _scan_plugin("local", str(workdir / "keyring"), kek) is True  # the scan can find a KEK
    assert _scan_plugin("enclave", str(custody.socket), kek) is False  # and finds none here
    assert memory_contains(custody.proc.pid, kek) is True  # it lives in the custody process instead
