"""The agent with a KeyBackend-sealed store, --require-mlock, the proxy command, the proxy's bearer check
and the interactive exec-credential prompt on a real terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.access.agent_client import AgentError
from kubeshield.access.credential import ClusterCredential
from kubeshield.keys.keyring import KeyringFile
from tests.support.access_agent import KUBESHIELD, AgentProcess, start_agent_process, token_credential
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi import fixtures as _kubeapi_fixtures
from tests.support.kubeapi.fixtures import Kubectl

kube_api = _kubeapi_fixtures.kube_api
kubectl = _kubeapi_fixtures.kubectl
PASSPHRASE = "the store passphrase"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir(mode=0o700)
    return tmp_path


@pytest.fixture
def agent(home: Path) -> Iterator[AgentProcess]:
    proc = start_agent_process(home / "run" / "agent.sock", "--store", str(home / "store"))
    try:
        yield proc
    finally:
        proc.stop()


def _ks(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBESHIELD, "access", *args, "--socket", str(home / "run" / "agent.sock")],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def _kubeconfig_with_token(api: KubeAPI, path: Path) -> Path:
    return api.kubeconfig(path, token=api.add_token("erin", ("system:masters",)))


def test_a_keybackend_store_is_loaded_at_agent_start_and_on_unlock(kube_api: KubeAPI, home: Path) -> None:
    KeyringFile(home / "keyring").create(passphrase=None)
    config = home / "kubeshield.yaml"
    config.write_text(f"keys:\n  backend: local\n  local:\n    keyring: {home / 'keyring'}\n")
    kc = _kubeconfig_with_token(kube_api, home / "plain" / "config")
    done = _ks(
        home, "import", "--kubeconfig", str(kc), "--store", str(home / "store"), "--config", str(config)
    )
    assert done.returncode == 0, done.stderr
    assert "no agent socket" in done.stderr  # no agent yet: sealed only, and told what to do
    stored = json.loads((home / "store" / "credentials.sealed").read_text())
    assert stored["protection"]["kind"] == "backend"
    agent = start_agent_process(
        home / "run" / "agent.sock", "--store", str(home / "store"), "--config", str(config)
    )
    try:
        assert [(c["context"], c["source"]) for c in agent.client().contexts()] == [("standin", "store")]
        agent.client().lock()
        unlocked = _ks(home, "unlock", "--store", str(home / "store"))
        assert unlocked.returncode == 0 and "standin" in unlocked.stdout, unlocked.stderr
        assert agent.client().exec_credential("standin", proxy=False)["token"]
    finally:
        agent.stop()


def _without_memlock() -> None:
    """No CAP_IPC_LOCK, no CAP_SYS_RESOURCE, RLIMIT_MEMLOCK 0 (the venv is under /root: stay uid 0)."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (14, 24):  # CAP_IPC_LOCK, CAP_SYS_RESOURCE
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(99)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="drops capabilities from root's bounding set")
def test_require_mlock_refuses_to_start_and_without_it_the_agent_warns(home: Path) -> None:
    sock = home / "run" / "agent.sock"
    refused = subprocess.run(
        [KUBESHIELD, "access", "agent", "--socket", str(sock), "--require-mlock"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_without_memlock,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 1
    assert "mlockall failed" in refused.stderr and "--require-mlock" in refused.stderr
    assert "ready" not in refused.stdout and not sock.exists()
    proc = subprocess.Popen(
        [KUBESHIELD, "access", "agent", "--socket", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_without_memlock,
        stdin=subprocess.DEVNULL,
    )
    agent = AgentProcess(proc, sock)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready ")
        assert "SECURITY WARNING: mlockall failed" in agent.wait_log("SECURITY WARNING")
        assert agent.client().status()["hardening"]["mlocked"] is False
    finally:
        agent.stop()


def test_the_proxy_command_serves_until_interrupted(agent: AgentProcess, home: Path) -> None:
    agent.client().add(token_credential("dev"))
    proc = subprocess.Popen(
        [KUBESHIELD, "access", "proxy", "--context", "dev", "--socket", str(agent.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", url), url
        assert agent.client().contexts()[0]["proxy"] == url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert agent.client().contexts()[0]["proxy"] is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    detached = _ks(home, "proxy", "--context", "dev", "--detach")
    assert detached.returncode == 0 and agent.client().contexts()[0]["proxy"] == detached.stdout.strip()
    agent.client().stop_proxy("dev")
    wide = _ks(home, "proxy", "--context", "dev", "--listen", "0.0.0.0:0", "--detach")
    assert wide.returncode == 1 and "loopback address only" in wide.stderr


def _get(url: str, ca_pem: bytes, token: str) -> int:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    request = urllib.request.Request(url + "/api", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_the_agents_proxy_takes_only_its_session_bearer(kube_api: KubeAPI, agent: AgentProcess) -> None:
    token = kube_api.add_token("frank", ("system:masters",))
    agent.client().add(
        ClusterCredential(context="c", server=kube_api.url, ca_pem=kube_api.ca_path.read_bytes(), token=token)
    )
    info = agent.client().start_proxy("c")
    bearer = agent.client().exec_credential("c", proxy=True)["token"]
    assert len(bearer) >= 43 and bearer != token
    assert _get(info.url, info.ca_pem, bearer) == 200
    assert _get(info.url, info.ca_pem, bearer[:-1] + ("A" if bearer[-1] != "A" else "B")) == 401
    assert _get(info.url, info.ca_pem, token) == 401  # the upstream token itself is not the proxy's secret
    agent.client().stop_proxy("c")
    again = agent.client().start_proxy("c")
    assert agent.client().exec_credential("c", proxy=True)["token"] != bearer  # a new session, a new secret
    assert _get(again.url, again.ca_pem, bearer) == 401
    agent.client().remove("c")
    with pytest.raises(AgentError):
        agent.client().stop_proxy("c")  # removing the context stopped its proxy


def _run_on_a_terminal(argv: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run ``argv`` with a pty as its controlling terminal; type ``answer`` at the passphrase prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execve(argv[0], argv, env)
    output = b""
    answered = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"Passphrase" in output:
                os.write(fd, answer.encode() + b"\n")
                answered = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_an_interactive_exec_credential_asks_once_for_the_passphrase(
    kube_api: KubeAPI, agent: AgentProcess, home: Path
) -> None:
    kc = _kubeconfig_with_token(kube_api, home / "plain" / "config")
    env = {"KUBESHIELD_ACCESS_PASSPHRASE": PASSPHRASE}
    assert (
        _ks(home, "import", "--kubeconfig", str(kc), "--store", str(home / "store"), env=env).returncode == 0
    )
    agent.client().lock()
    info = json.dumps(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "spec": {"interactive": True},
        }
    )
    clean = {k: v for k, v in os.environ.items() if k != "KUBESHIELD_ACCESS_PASSPHRASE"}
    argv = [KUBESHIELD, "access", "exec-credential", "--context", "standin", "--socket", str(agent.socket)]
    code, output = _run_on_a_terminal(argv, {**clean, "KUBERNETES_EXEC_INFO": info}, PASSPHRASE)
    assert code == 0, output
    assert output.count("Passphrase") == 1
    document = json.loads(output[output.index("{") :])
    assert document["kind"] == "ExecCredential" and document["status"]["token"]
    assert [c["context"] for c in agent.client().contexts()] == ["standin"]
    # not interactive: no prompt, one line naming the command
    agent.client().lock()
    plain = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**clean, "KUBERNETES_EXEC_INFO": info},
    )
    assert plain.returncode == 1 and "Passphrase" not in plain.stderr
    assert "kubeshield access unlock" in plain.stderr


def test_a_kubeconfig_of_an_earlier_agent_gets_a_clear_line_not_an_x509_error(
    kube_api: KubeAPI, kubectl: Kubectl, home: Path
) -> None:
    sock = home / "run" / "agent.sock"
    credential = ClusterCredential(
        context="c",
        server=kube_api.url,
        ca_pem=kube_api.ca_path.read_bytes(),
        token=kube_api.add_token("gina", ("system:masters",)),
    )
    first = start_agent_process(sock)
    try:
        first.client().add(credential)
        printed = _ks(home, "kubeconfig", "--context", "c")
        assert printed.returncode == 0, printed.stderr
        (home / "old.yaml").write_text(printed.stdout)
        assert (
            "default" in kubectl.run("get", "namespaces", "-o", "name", kubeconfig=home / "old.yaml").stdout
        )
    finally:
        first.stop()
    second = start_agent_process(sock)
    try:
        second.client().add(credential)
        stale = kubectl.run("get", "namespaces", kubeconfig=home / "old.yaml", check=False)
        assert stale.returncode != 0
        assert "earlier agent" in stale.stderr and "kubeshield access kubeconfig --context c" in stale.stderr
        assert "x509" not in stale.stderr
        fresh = _ks(home, "kubeconfig", "--context", "c")
        (home / "new.yaml").write_text(fresh.stdout)
        assert (
            "default" in kubectl.run("get", "namespaces", "-o", "name", kubeconfig=home / "new.yaml").stdout
        )
    finally:
        second.stop()
