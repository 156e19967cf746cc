"""The agent as a real process on a real socket: hardening, caller checks, lock, signals, bad set-ups."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.access.agent_client import AgentUnavailable
from tests.support.access_agent import KUBESHIELD, cert_credential, start_agent_process, token_credential

SYSTEM_PYTHON = "/usr/bin/python3"
CALLER = Path(__file__).resolve().parents[2] / "support" / "access_caller.py"
SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """World-traversable (so uid 65534 can reach the caller script); the socket directory inside is 0700."""
    path = Path(tempfile.mkdtemp(prefix="ks-agent-", dir="/tmp"))
    path.chmod(0o755)
    (path / "run").mkdir(mode=0o700)
    shutil.copy(CALLER, path / "caller.py")
    (path / "caller.py").chmod(0o644)
    (path / "out").mkdir()
    (path / "out").chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBESHIELD, "access", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        input=input,
    )


def test_the_agent_runs_hardened(workdir: Path) -> None:
    agent = start_agent_process(workdir / "run" / "agent.sock", "--store", str(workdir / "store"))
    try:
        status = agent.client().status()
        assert status["pid"] == agent.proc.pid
        assert status["hardening"]["dumpable"] == 0 and status["hardening"]["coreLimit"] == 0
        assert status["hardening"]["mlocked"] is True  # root: CAP_IPC_LOCK
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines()
        )
        assert int(fields["VmLck"].split()[0]) > 0
    finally:
        assert agent.stop() == 0


def _as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def _caller(workdir: Path, *, as_nobody: bool) -> str:
    result = workdir / "out" / "result"
    result.unlink(missing_ok=True)
    subprocess.run(
        [SYSTEM_PYTHON, str(workdir / "caller.py"), str(workdir / "run" / "agent.sock"), str(result)],
        preexec_fn=_as_nobody if as_nobody else None,
        timeout=60,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.read_text().strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a caller as uid 65534 (run as root)")
def test_a_caller_with_another_uid_is_refused_by_the_kernel_check(workdir: Path) -> None:
    agent = start_agent_process(workdir / "run" / "agent.sock")
    try:
        agent.client().add(token_credential("dev"))
        # open the file permissions wide (after start: the agent refuses such a directory at start), so
        # that only SO_PEERCRED stands between uid 65534 and the agent
        (workdir / "run").chmod(0o711)
        (workdir / "run" / "agent.sock").chmod(0o666)
        control = json.loads(_caller(workdir, as_nobody=False))
        assert control["ok"] is True and control["result"]["contexts"] == 1
        refused = json.loads(_caller(workdir, as_nobody=True))
        assert refused["ok"] is False and refused["error"]["type"] == "refused"
        uid = pwd.getpwnam("nobody").pw_uid
        assert f"uid {uid} is not the agent's uid 0" in refused["error"]["message"]
        assert "connection refused: uid" in agent.wait_log("connection refused")
        assert "contexts" not in json.dumps(refused)
    finally:
        agent.stop()


def test_a_caller_whose_executable_is_not_allowed_is_refused(workdir: Path) -> None:
    agent = start_agent_process(workdir / "run" / "agent.sock", "--allow-exe", SLEEP)
    try:
        with pytest.raises(AgentUnavailable, match="not on the allow-list"):
            agent.client().status()
        assert "not on the allow-list" in agent.wait_log("allow-list")
    finally:
        agent.stop()


def test_a_caller_whose_executable_is_allowed_is_served(workdir: Path) -> None:
    agent = start_agent_process(
        workdir / "run" / "agent.sock", "--allow-exe", os.path.realpath(sys.executable)
    )
    try:
        assert agent.client().status()["allowExe"] == [os.path.realpath(sys.executable)]
    finally:
        agent.stop()


def test_credentials_are_gone_after_lock(workdir: Path) -> None:
    sock = workdir / "run" / "agent.sock"
    agent = start_agent_process(sock, "--store", str(workdir / "store"))
    try:
        token = token_credential("dev", token="lock-test-token-0123456789")
        agent.client().add(token)
        assert _cli("exec-credential", "--context", "dev", "--socket", str(sock)).returncode == 0
        locked = _cli("lock", "--socket", str(sock))
        assert locked.returncode == 0, locked.stderr
        assert agent.client().contexts() == []
        done = _cli(
            "exec-credential", "--context", "dev", "--socket", str(sock), "--store", str(workdir / "store")
        )
        assert done.returncode == 1 and done.stdout == ""
        line = done.stderr.strip()
        assert "\n" not in line and "locked" in line and "kubeshield access import" in line
        assert token.token is not None and token.token not in done.stderr
    finally:
        agent.stop()


def test_credentials_are_gone_after_sigterm_and_the_socket_is_removed(workdir: Path) -> None:
    sock = workdir / "run" / "agent.sock"
    agent = start_agent_process(sock)
    agent.client().add(cert_credential("prod"))
    os.kill(agent.proc.pid, signal.SIGTERM)
    assert agent.proc.wait(60) == 0
    assert not sock.exists()
    assert "SIGTERM: dropping every credential" in agent.wait_log("SIGTERM")
    agent.stop()
    again = start_agent_process(sock)
    try:
        assert again.client().contexts() == []
    finally:
        again.stop()


@pytest.mark.parametrize("mode", [0o755, 0o750])
def test_the_agent_refuses_a_socket_directory_that_is_not_0700(workdir: Path, mode: int) -> None:
    (workdir / "run").chmod(mode)
    done = subprocess.run(
        [KUBESHIELD, "access", "agent", "--socket", str(workdir / "run" / "agent.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert f"is mode {mode:04o}; it must be 0700" in done.stderr
    assert not (workdir / "run" / "agent.sock").exists()


def test_a_live_agent_is_not_taken_over(workdir: Path) -> None:
    sock = workdir / "run" / "agent.sock"
    agent = start_agent_process(sock)
    try:
        done = subprocess.run(
            [KUBESHIELD, "access", "agent", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 1 and "already listening" in done.stderr
        assert agent.client().status()["pid"] == agent.proc.pid
    finally:
        agent.stop()


def test_status_lists_contexts_without_secrets(workdir: Path) -> None:
    sock = workdir / "run" / "agent.sock"
    agent = start_agent_process(sock)
    try:
        cred = cert_credential("prod", subject="alice")
        tok = token_credential("dev", token="status-test-token-abcdef")
        agent.client().add(cred)
        agent.client().add(tok)
        for output in ("table", "json"):
            shown = _cli("status", "--socket", str(sock), "-o", output)
            assert shown.returncode == 0, shown.stderr
            assert "prod" in shown.stdout and "dev" in shown.stdout and "alice" in shown.stdout
            assert tok.token is not None and tok.token not in shown.stdout
            assert "PRIVATE KEY" not in shown.stdout
            assert "BEGIN CERTIFICATE" not in shown.stdout
    finally:
        agent.stop()


def test_an_audit_log_others_can_read_is_refused_at_start(workdir: Path) -> None:
    log = workdir / "audit.jsonl"
    log.touch(mode=0o644)
    log.chmod(0o644)
    done = subprocess.run(
        [
            KUBESHIELD,
            "access",
            "agent",
            "--socket",
            str(workdir / "run" / "agent.sock"),
            "--audit-log",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and "mode 0600" in done.stderr
    assert not (workdir / "run" / "agent.sock").exists()
