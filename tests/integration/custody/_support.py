"""Helpers for the custody integration tests: real keyrings, process start, memory scan."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from kubeshield.keys.keyring import KeyringFile

REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
KUBESHIELD = [str(Path(PYTHON).parent / "kubeshield")]
# ``kubeshield custody ...`` without depending on the group being registered in kubeshield.cli yet
CUSTODY_CLI = [
    PYTHON,
    "-c",
    "import sys; from kubeshield.cli.custody import group; "
    "sys.exit(group.main(prog_name='kubeshield custody'))",
]


def write_keyring(path: Path) -> bytes:
    """Create a real, unprotected local keyring at ``path``; returns its one KEK (read back from the file)."""
    KeyringFile(path).create(passphrase=None)
    return keyring_keks(path)[0]


def keyring_keks(path: Path) -> list[bytes]:
    """Every KEK version of the unprotected keyring at ``path``, read from the file itself."""
    opened = KeyringFile(path).load(None)
    return [opened.keys[v.version] for v in opened.info.versions]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


class Custody:
    """A running ``kubeshield custody serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[str], socket: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.stderr_lines: list[str] = []
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.stderr_lines)

    def wait_log(self, text: str, bound: float = 30.0) -> str:
        """The log once it holds ``text`` (the stderr reader thread may lag behind the process)."""
        import time

        deadline = time.monotonic() + bound
        while text not in self.log and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def start_custody(
    *,
    keyring: Path | None,
    socket: Path,
    policy: Path,
    extra: list[str] = (),  # type: ignore[assignment]
    env_extra: dict[str, str] | None = None,
    preexec_fn=None,
    pass_fds: tuple[int, ...] = (),
    prefix: list[str] = (),  # type: ignore[assignment]
) -> Custody:
    """Start ``custody serve`` with the real key store (``--keyring`` unless None; ``extra`` flags).

    ``prefix``: a command that execs the rest in the same process (``setpriv ...``, ``prlimit ...``).
    """
    keyring_args = ["--keyring", str(keyring)] if keyring is not None else []
    cmd = [
        *prefix, *CUSTODY_CLI, "serve", *keyring_args,
        "--socket", str(socket), "--policy", str(policy), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
        env=env(**(env_extra or {})),
        preexec_fn=preexec_fn,
        pass_fds=pass_fds,
    )
    custody = Custody(proc, socket)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        custody.stop()
        raise RuntimeError(f"custody did not start: {line!r}\n{custody.log}")
    return custody


def wait_until_stopped(pid: int, bound: float = 30.0) -> None:
    """Until every thread of ``pid`` is stopped (state ``T``), after a ``SIGSTOP`` sent to it.

    ``kill(SIGSTOP)`` returns before the process has stopped: the kernel wakes one thread to take the
    signal, and that thread stops the others only when it next runs. Until then (long, on a loaded
    machine) the other threads serve on: one blocked in ``recv`` reads a request that arrives and
    answers it. A test that needs the process not to answer waits here first.
    """
    import time

    deadline = time.monotonic() + bound
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
            states.append(stat.rpartition(")")[2].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {bound:g}s: thread states {states}")
        time.sleep(0.01)


def allow_policy(path: Path, *, uid: int = 0, extra: str = "") -> Path:
    path.write_text(
        f"version: 1\nrules:\n  - name: test\n    uid: {uid}\n"
        f"    ops: [wrap, unwrap, key_id, health, rotate]\n{extra}"
    )
    return path


def memory_contains(pid: int, needle: bytes) -> bool:
    """Scan every readable mapping of ``pid`` for ``needle`` (needs root or CAP_SYS_PTRACE)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            if "r" not in parts[1] or (len(parts) > 5 and parts[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            if needle in chunk:
                found = True
                break
    return found
