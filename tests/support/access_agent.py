"""Helpers for the access agent's tests: an agent on a thread's event loop, an agent process, and
credentials made at test time (never committed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubeshield.access.agent import Agent, AgentSettings
from kubeshield.access.agent_client import AgentClient
from kubeshield.access.credential import ClusterCredential

__all__ = [
    "AgentProcess",
    "agent_on_thread",
    "cert_and_key",
    "cert_credential",
    "start_agent_process",
    "token_credential",
]

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


def cert_and_key(
    cn: str = "alice",
    *,
    valid_for: dt.timedelta = dt.timedelta(hours=1),
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed (or ``issuer_key``-signed) client certificate and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + valid_for)
        .sign(issuer_key or key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def cert_credential(context: str = "prod", **extra: Any) -> ClusterCredential:
    cert, key = cert_and_key()
    return ClusterCredential(
        context=context, server="https://127.0.0.1:6443", client_cert_pem=cert, client_key_pem=key, **extra
    )


def token_credential(context: str = "dev", token: str | None = None, **extra: Any) -> ClusterCredential:
    import secrets

    return ClusterCredential(
        context=context, server="https://127.0.0.1:6443", token=token or secrets.token_urlsafe(24), **extra
    )


@contextmanager
def agent_on_thread(settings: AgentSettings) -> Iterator[tuple[Agent, AgentClient]]:
    """An :class:`Agent` serving on its own thread's loop (no signal handlers); stopped on exit."""
    holder: dict[str, object] = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            agent = Agent(settings)
            holder["agent"] = agent
            holder["loop"] = asyncio.get_running_loop()
            sock = agent.bind()
            await agent.serve(sock, ready=ready.set, handle_signals=False)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="access-agent", daemon=True)
    thread.start()
    if not ready.wait(60) or "error" in holder:
        thread.join(10)
        raise RuntimeError(f"the agent did not start: {holder.get('error')!r}")
    agent = holder["agent"]
    loop = holder["loop"]
    assert isinstance(agent, Agent) and isinstance(loop, asyncio.AbstractEventLoop)
    try:
        yield agent, AgentClient(settings.socket_path, timeout=30)
    finally:
        loop.call_soon_threadsafe(agent.shutdown)
        thread.join(60)
        assert not thread.is_alive(), "the agent thread did not stop"


class AgentProcess:
    """A running ``kubeshield access agent`` subprocess (stopped by PID)."""

    def __init__(self, proc: subprocess.Popen[str], socket: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, bound: float = 30.0) -> str:
        deadline = time.monotonic() + bound
        while text not in self.log and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.log

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout=30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def start_agent_process(socket: Path, *args: str, env: dict[str, str] | None = None) -> AgentProcess:
    """``kubeshield access agent --socket SOCKET ARGS``, once it printed ``ready``."""
    proc = subprocess.Popen(
        [KUBESHIELD, "access", "agent", "--socket", str(socket), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    agent = AgentProcess(proc, socket)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        agent.stop()
        raise RuntimeError(f"the agent did not start: {line!r}\n{agent.log}")
    return agent
