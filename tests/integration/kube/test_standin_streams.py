"""Real kubectl v1.35 straight to the stand-in's streaming endpoints: exec, cp, attach, port-forward.

Each runs over both transports kubectl has: WebSocket (its default: ``v5.channel.k8s.io`` for exec,
attach and cp; SPDY tunnelled in a WebSocket for port-forward) and plain SPDY/3.1 (its fallback,
forced with ``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`` / ``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``).
The request log tells which one was used (WebSocket upgrades are GETs, SPDY upgrades POSTs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.access_kubectl import (
    DEADLINE,
    EchoServer,
    Lines,
    echo_through,
    forwarded_port,
    on_a_terminal,
    stop,
)
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi.fixtures import Kubectl

TRANSPORTS = {
    "websocket": ({}, "GET"),
    "spdy": (
        {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"},
        "POST",
    ),
}


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> tuple[dict[str, str], str]:
    return TRANSPORTS[request.param]


@pytest.fixture
def kc(kube_api: KubeAPI, kube_ns: str, tmp_path: Path) -> Path:
    return kube_api.kubeconfig(tmp_path / "kc", user="dev-" + uuid.uuid4().hex[:6], namespace=kube_ns)


@pytest.fixture
def pods(kube_api: KubeAPI, kube_ns: str) -> Iterator[list[str]]:
    """Names of pods a test made; each is stopped (process killed) and deleted after the test."""
    made: list[str] = []
    yield made
    for name in made:
        kube_api.pods.delete(kube_ns, name)


def _upgrades(api: KubeAPI, namespace: str, name: str, sub: str) -> set[str]:
    """The methods of the logged ``sub`` requests for a pod (logged when the server's handler ends,
    which can be just after kubectl exits: polled)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}/{sub}"
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        found = {r.method for r in list(api.requests) if r.path == path}
        if found:
            return found
        time.sleep(0.05)
    return set()


def test_exec_stdout_stderr_and_exit_code(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, method = transport
    pod = kube_api.pods.run(kube_ns, "shell")
    pods.append("shell")
    (pod.directory / "motd").write_text("hello from the pod\n")
    done = kubectl.run("exec", "shell", "--", "cat", "motd", kubeconfig=kc, env=env)
    assert done.stdout == "hello from the pod\n"
    failed = kubectl.run(
        "exec",
        "shell",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 7",
        kubeconfig=kc,
        env=env,
        check=False,
    )
    assert failed.returncode == 7
    assert failed.stdout == "to-out\n"
    assert failed.stderr.startswith("to-err\n") and "command terminated with exit code 7" in failed.stderr
    assert (_upgrades(kube_api, kube_ns, "shell", "exec")) == {method}


def test_exec_stdin_round_trips_a_megabyte(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, _ = transport
    kube_api.pods.run(kube_ns, "pipe")
    pods.append("pipe")
    upper = kubectl.run(
        "exec", "-i", "pipe", "--", "tr", "a-z", "A-Z", kubeconfig=kc, env=env, input="shout\n"
    )
    assert upper.stdout == "SHOUT\n"
    payload = os.urandom(512 * 1024).hex()  # 1 MiB of text: many frames each way
    digest = kubectl.run("exec", "-i", "pipe", "--", "sha256sum", kubeconfig=kc, env=env, input=payload)
    assert digest.stdout.split()[0] == hashlib.sha256(payload.encode()).hexdigest()
    echoed = kubectl.run("exec", "-i", "pipe", "--", "cat", kubeconfig=kc, env=env, input=payload)
    assert echoed.stdout == payload


def test_exec_of_a_missing_command_fails_clearly(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, _ = transport
    kube_api.pods.run(kube_ns, "bare")
    pods.append("bare")
    done = kubectl.run("exec", "bare", "--", "no-such-command-here", kubeconfig=kc, env=env, check=False)
    assert done.returncode == 1
    assert '"no-such-command-here": executable file not found' in done.stderr


def test_exec_refusals(
    kubectl: Kubectl, kube_api: KubeAPI, kube_ns: str, tmp_path: Path, pods: list[str]
) -> None:
    kube_api.pods.run(kube_ns, "guarded")
    pods.append("guarded")
    user = "mallory-" + uuid.uuid4().hex[:6]
    kube_api.deny(user=user, resource="pods/exec")
    denied = kube_api.kubeconfig(tmp_path / "denied", user=user, namespace=kube_ns)
    refused = kubectl.run("exec", "guarded", "--", "true", kubeconfig=denied, check=False)
    assert refused.returncode == 1
    assert f'pods "guarded" is forbidden: User "{user}" cannot create' in refused.stderr
    allowed = kube_api.kubeconfig(tmp_path / "ok", user="dev-" + uuid.uuid4().hex[:6], namespace=kube_ns)
    missing = kubectl.run("exec", "no-such-pod", "--", "true", kubeconfig=allowed, check=False)
    assert missing.returncode == 1 and 'pods "no-such-pod" not found' in missing.stderr
    wrong = kubectl.run("exec", "guarded", "-c", "nope", "--", "true", kubeconfig=allowed, check=False)
    assert wrong.returncode == 1 and "container nope is not valid for pod guarded" in wrong.stderr


def test_cp_both_ways(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    tmp_path: Path,
    transport: tuple[dict[str, str], str],
) -> None:
    env, method = transport
    pod = kube_api.pods.run(kube_ns, "files")
    pods.append("files")
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(300 * 1024))
    kubectl.run("cp", str(local), "files:uploaded.bin", kubeconfig=kc, env=env)
    assert (pod.directory / "uploaded.bin").read_bytes() == local.read_bytes()
    (pod.directory / "report.txt").write_text("made in the pod\n")
    kubectl.run("cp", "files:report.txt", str(tmp_path / "report.txt"), kubeconfig=kc, env=env)
    assert (tmp_path / "report.txt").read_text() == "made in the pod\n"
    assert (_upgrades(kube_api, kube_ns, "files", "exec")) == {method}  # cp is tar through exec


def test_port_forward_echoes_bytes(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, method = transport
    with EchoServer() as echo:
        kube_api.pods.run(kube_ns, "web", ports={8080: echo.port})
        pods.append("web")
        proc = kubectl.popen("port-forward", "pod/web", ":8080", kubeconfig=kc, env=env)
        lines = Lines(proc.stdout)
        try:
            port = forwarded_port(lines)
            small = echo_through(port, b"ping")
            big_payload = os.urandom(256 * 1024)
            big = echo_through(port, big_payload)  # a second connection: a second stream pair
        finally:
            stop(proc, lines)
        assert small == b"ping"
        assert big == big_payload
        assert echo.connections == 2
    assert (_upgrades(kube_api, kube_ns, "web", "portforward")) == {method}


def test_port_forward_to_an_unmapped_port_reports_the_error(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, _ = transport
    kube_api.pods.run(kube_ns, "closed")
    pods.append("closed")
    proc = kubectl.popen("port-forward", "pod/closed", ":9999", kubeconfig=kc, env=env)
    lines = Lines(proc.stdout)
    try:
        port = forwarded_port(lines)
        assert echo_through(port, b"anyone?") == b""
        proc.wait(DEADLINE)  # kubectl gives up on a forwarding error ("lost connection to pod")
    finally:
        err = stop(proc, lines)
    assert proc.returncode != 0
    assert "error forwarding port 9999 to pod closed" in err


UPPER = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"


def test_attach_with_stdin_once(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, method = transport
    kube_api.pods.run(kube_ns, "once", command=[sys.executable, "-u", "-c", UPPER], stdin_once=True)
    pods.append("once")
    done = kubectl.run("attach", "-i", "once", kubeconfig=kc, env=env, input="first\nsecond\n")
    assert done.stdout == "FIRST\nSECOND\n"  # stdin closed after this attach: the process ended
    assert (_upgrades(kube_api, kube_ns, "once", "attach")) == {method}
    again = kubectl.run("attach", "-i", "once", kubeconfig=kc, env=env, input="x\n", check=False)
    assert again.returncode == 1 and "is not running" in again.stderr


def test_attach_detach_and_attach_again(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, _ = transport
    kube_api.pods.run(kube_ns, "daemon", command=[sys.executable, "-u", "-c", UPPER])
    pods.append("daemon")
    for word in ("hello", "again"):  # the second attach finds the same process still running
        proc = kubectl.popen("attach", "-i", "daemon", kubeconfig=kc, env=env, stdin=subprocess.PIPE)
        lines = Lines(proc.stdout)
        try:
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
            assert lines.next().strip() == word.upper()
        finally:
            stop(proc, lines)


def test_exec_with_a_terminal(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, _ = transport
    kube_api.pods.run(kube_ns, "term")
    pods.append("term")
    # the pod's side waits for the size kubectl sends (its first resize message), then reports it
    script = 'while [ "$(stty size)" = "0 0" ]; do sleep 0.05; done; echo "size $(stty size)"; tty; exit 5'
    argv = [str(kubectl.binary), "exec", "-it", "term", "--", "sh", "-c", script]
    code, out = on_a_terminal(
        argv,
        {"PATH": os.environ.get("PATH", ""), "HOME": str(kubectl.home), "KUBECONFIG": str(kc), **env},
        rows=33,
        cols=101,
    )
    assert code == 5, out
    assert "size 33 101" in out
    assert "/dev/pts/" in out and "not a tty" not in out


def test_a_client_that_leaves_mid_exec_ends_the_command(
    kubectl: Kubectl,
    kube_api: KubeAPI,
    kube_ns: str,
    kc: Path,
    pods: list[str],
    transport: tuple[dict[str, str], str],
) -> None:
    env, _ = transport
    pod = kube_api.pods.run(kube_ns, "long")
    pods.append("long")
    proc = kubectl.popen(
        "exec",
        "long",
        "--",
        "sh",
        "-c",
        "echo $$ > pid; echo started; exec sleep 600",
        kubeconfig=kc,
        env=env,
    )
    lines = Lines(proc.stdout)
    try:
        assert lines.next().strip() == "started"
        pid = int((pod.directory / "pid").read_text())
        proc.kill()  # no goodbye: the connection just drops
    finally:
        stop(proc, lines)
    end = time.monotonic() + DEADLINE
    while (
        Path(f"/proc/{pid}").exists() and time.monotonic() < end
    ):  # the kubelet ends it; so does the stand-in
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    after = kubectl.run("exec", "long", "--", "echo", "still serving", kubeconfig=kc, env=env)
    assert after.stdout == "still serving\n"
