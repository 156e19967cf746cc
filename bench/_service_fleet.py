"""The real processes ``service_bench.py`` measures: a local plugin, three mTLS replicas and a relay.

Everything is a ``kubeshield`` subprocess started exactly as an operator would (no in-process servers):

* ``local``:   ``kubeshield kms serve --keyring K0 --socket DIR/local.sock``
* ``replica-i`` (i = 0, 1, 2): ``kubeshield kms serve --keyring Ki --listen tcp://127.0.0.1:0
  --tls-cert --tls-key --client-ca --allow dns:relay.kubeshield.bench``; the port the replica bound is read
  from its startup line.
* ``relay``:   ``kubeshield kms relay --socket DIR/relay.sock --upstream https://127.0.0.1:P0,...
  --tls-cert --tls-key --ca``.

K0..K3 are byte-identical copies (mode 0600) of one keyring created at start without a passphrase, so
every process serves the same KEK and a ciphertext made by one decrypts on all. The CA, the replicas'
server certificate (SAN ``localhost``/``127.0.0.1``) and the relay's client certificate are ECDSA P-256,
generated at start with ``cryptography`` (``tests/support/tls.py``). All of it lives in one temp dir
(mode 0700) that :func:`fleet` removes on exit; every process is stopped by its PID (SIGTERM, then
SIGKILL) in ``finally``. Health HTTP servers are disabled (``--health-addr ''``) so nothing else listens.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.support.tls import CA  # noqa: E402

__all__ = ["RELAY_ID", "Fleet", "Proc", "cpu_seconds", "fleet", "machine_busy", "stop"]

RELAY_ID = "relay.kubeshield.bench"
_KUBESHIELD = Path(sys.executable).parent / "kubeshield"
_LISTEN_LINE = re.compile(rb"serving KMS v2/v1 with mTLS on tcp://127\.0\.0\.1:(\d+)")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """One ``kubeshield`` subprocess: its role, popen handle and log file (stdout + stderr)."""

    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Fleet:
    """The running processes and what the load generators need to reach them."""

    local: Proc
    replicas: tuple[Proc, ...]
    relay: Proc
    local_socket: str
    relay_socket: str
    replica_targets: tuple[str, ...]  # 127.0.0.1:PORT
    ca: Path
    relay_cert: Path
    relay_key: Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/<pid>/stat; nan when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat (busy = total - idle - iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = float(sum(values[:8]))  # guest time is already inside user/nice
    return total - values[3] - values[4], total


def _env() -> dict[str, str]:
    """The bench's environment without any KUBESHIELD_* setting (flags only, as written here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    env["GRPC_VERBOSITY"] = "ERROR"
    return env


def _command() -> list[str]:
    if _KUBESHIELD.exists():
        return [str(_KUBESHIELD)]
    return [sys.executable, "-c", "import sys; from kubeshield.cli import main; sys.exit(main())"]


def _spawn(
    role: str, args: list[str], logs: Path, procs: list[Proc], *, argv0: list[str] | None = None
) -> Proc:
    log = logs / f"{role}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*(argv0 or _command()), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # a ^C reaches the bench, which stops them by PID
        )
    proc = Proc(role, popen, log)
    procs.append(proc)
    return proc


def _wait(proc: Proc, ready: Callable[[], object], what: str, deadline: float) -> None:
    """Poll until ``ready()`` is truthy; a clear error (with the log tail) if the process died or hung."""
    while not ready():
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.role} exited ({proc.popen.returncode}) before {what}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.role}: no {what} within the start-up bound:\n{proc.tail()}")
        time.sleep(0.05)


def _listen_port(proc: Proc) -> int | None:
    match = _LISTEN_LINE.search(proc.log.read_bytes()) if proc.log.exists() else None
    return int(match.group(1)) if match else None


def stop(procs: list[Proc]) -> None:
    """SIGTERM each process by PID, wait, SIGKILL the ones still running."""
    for proc in procs:
        if proc.popen.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.popen.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(10)


@contextmanager
def fleet(*, replicas: int = 3, start_bound: float = 60.0) -> Iterator[Fleet]:
    """Generate the TLS material and keyrings, start every process, yield; stop them and clean up."""
    from kubeshield.keys.local import LocalKeyBackend

    tmp = Path(tempfile.mkdtemp(prefix="ks-svc-bench-"))
    procs: list[Proc] = []
    try:
        tmp.chmod(0o700)
        keys, pki, logs = tmp / "keys", tmp / "pki", tmp / "logs"
        for d in (keys, logs):
            d.mkdir(mode=0o700)
        ca = CA(pki, "kubeshield-bench-ca")
        server = ca.issue("replica", dns=("localhost",), ips=("127.0.0.1",), server=True)
        client = ca.issue("relay", dns=(RELAY_ID,))
        master = keys / "local.keyring"
        LocalKeyBackend.create(path=master).close()
        rings = [master]
        for i in range(replicas):
            copy = keys / f"replica-{i}.keyring"
            shutil.copyfile(master, copy)
            copy.chmod(0o600)
            rings.append(copy)

        deadline = time.monotonic() + start_bound
        local_socket = str(tmp / "local.sock")
        local = _spawn(
            "local",
            ["kms", "serve", "--keyring", str(master), "--socket", local_socket, "--health-addr", ""],
            logs,
            procs,
        )
        reps = [
            _spawn(
                f"replica-{i}",
                [
                    "kms",
                    "serve",
                    "--keyring",
                    str(rings[i + 1]),
                    "--listen",
                    "tcp://127.0.0.1:0",
                    "--tls-cert",
                    str(server.cert),
                    "--tls-key",
                    str(server.key),
                    "--client-ca",
                    str(ca.path),
                    "--allow",
                    f"dns:{RELAY_ID}",
                    "--health-addr",
                    "",
                ],
                logs,
                procs,
            )
            for i in range(replicas)
        ]
        ports = []
        for rep in reps:
            _wait(rep, functools.partial(_listen_port, rep), "mTLS listener", deadline)
            port = _listen_port(rep)
            assert port is not None
            ports.append(port)
        targets = tuple(f"127.0.0.1:{p}" for p in ports)
        relay_socket = str(tmp / "relay.sock")
        relay = _spawn(
            "relay",
            [
                "kms",
                "relay",
                "--socket",
                relay_socket,
                "--upstream",
                ",".join(f"https://{t}" for t in targets),
                "--tls-cert",
                str(client.cert),
                "--tls-key",
                str(client.key),
                "--ca",
                str(ca.path),
                "--health-addr",
                "",
            ],
            logs,
            procs,
        )
        _wait(local, lambda: os.path.exists(local_socket), "socket", deadline)
        _wait(relay, lambda: os.path.exists(relay_socket), "socket", deadline)
        yield Fleet(
            local=local,
            replicas=tuple(reps),
            relay=relay,
            local_socket=local_socket,
            relay_socket=relay_socket,
            replica_targets=targets,
            ca=ca.path,
            relay_cert=client.cert,
            relay_key=client.key,
        )
    finally:
        try:
            stop(procs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
