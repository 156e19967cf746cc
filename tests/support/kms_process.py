"""``kubeshield kms serve`` (and other CLI commands) as real processes, for tests and benchmarks.

``ServeProcess`` starts the console script with a clean environment (no ``KUBESHIELD_*`` leaking in),
its output in files, and stops it by PID. The helpers wait for conditions with generous deadlines and
return how long they took (benchmarks print it; tests never assert on it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from kubeshield.errors import KubeshieldError
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.service import StatusReply

__all__ = [
    "BIN",
    "KUBESHIELD",
    "ServeProcess",
    "clean_env",
    "http_status",
    "run_cli",
    "status_or_error",
    "wait_until_healthy",
]

BIN = Path(sys.executable).parent
KUBESHIELD = str(BIN / "kubeshield")


def clean_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without ``KUBESHIELD_*``, with ``extra`` set (None removes a name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(*args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KUBESHIELD, *args], capture_output=True, text=True, timeout=timeout, env=dict(env))


class ServeProcess:
    """One ``kubeshield kms serve`` process (or any argv that ends up serving ``socket``)."""

    def __init__(self, argv: list[str], *, socket: Path, env: Mapping[str, str], log_dir: Path) -> None:
        self.socket = socket
        self.out = log_dir / f"serve-{os.getpid()}-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        self.started = time.monotonic()
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=dict(env))

    @classmethod
    def kms_serve(cls, *args: str, socket: Path, env: Mapping[str, str], log_dir: Path) -> ServeProcess:
        return cls([KUBESHIELD, "kms", "serve", *args], socket=socket, env=env, log_dir=log_dir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for_socket(self, bound: float = 60.0) -> float:
        """Seconds from the start until the socket exists. Fails if the process exits first."""
        deadline = self.started + bound
        while time.monotonic() < deadline:
            if self.socket.exists():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kms serve exited with {self.proc.returncode}:\n{self.stderr()[-3000:]}"
                )
            time.sleep(0.01)
        raise AssertionError(f"the socket did not appear within {bound}s:\n{self.stderr()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM by PID and wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode


def status_or_error(socket: Path, *, timeout: float = 3.0) -> StatusReply | KubeshieldError:
    """One Status call as the apiserver makes it: its reply, or the error it raised."""
    with KMSv2Client(str(socket), timeout=timeout) as client:
        try:
            return client.status()
        except KubeshieldError as exc:
            return exc


def wait_until_healthy(socket: Path, *, bound: float = 90.0, poll: float = 0.05) -> float:
    """Poll Status until it is ok; return the seconds it took."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < bound:
        last = status_or_error(socket)
        if isinstance(last, StatusReply):
            return time.monotonic() - start
        time.sleep(poll)
    raise AssertionError(f"Status was not ok within {bound}s; last: {last!r}")


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
