"""Helpers for the custody integration tests: a file-backed test key store, process start, memory scan."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import InvalidCiphertext, KeyNotFound
from kubeshield.keys.base import Health, Wrapped

REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
FACTORY = "tests.integration.custody._support:file_backend"
# ``kubeshield custody ...`` without depending on the group being registered in kubeshield.cli yet
CUSTODY_CLI = [
    PYTHON,
    "-c",
    "import sys; from kubeshield.cli.custody import group; "
    "sys.exit(group.main(prog_name='kubeshield custody'))",
]


class FileKeyBackend:
    """Stand-in for the local keyring backend: the KEK is 32 raw bytes in a file the test wrote.

    ``KUBESHIELD_TEST_SLOW_UNWRAP`` (seconds) makes unwrap sleep first, to kill the process mid-request.
    """

    name = "file"

    def __init__(self, *, keyring: str) -> None:
        material = Path(keyring).read_bytes()
        if len(material) != 32:
            raise ValueError("test keyring must hold 32 bytes")
        self._keys = {"file:v1:" + hashlib.sha256(material).hexdigest()[:16]: AESGCM(material)}
        self._order = list(self._keys)
        self._slow = float(os.environ.get("KUBESHIELD_TEST_SLOW_UNWRAP", "0"))

    def key_id(self) -> str:
        return self._order[-1]

    def rotate(self) -> str:
        material = os.urandom(32)
        kid = f"file:v{len(self._order) + 1}:" + hashlib.sha256(material).hexdigest()[:16]
        self._keys[kid] = AESGCM(material)
        self._order.append(kid)
        return kid

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        kid = self.key_id()
        nonce = os.urandom(12)
        return Wrapped(nonce + self._keys[kid].encrypt(nonce, plaintext, kid.encode() + b"\0" + aad), kid)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        if self._slow:
            time.sleep(self._slow)
        key = self._keys.get(wrapped.key_id)
        if key is None:
            raise KeyNotFound("unknown key_id")
        blob = wrapped.ciphertext
        try:
            return key.decrypt(blob[:12], blob[12:], wrapped.key_id.encode() + b"\0" + aad)
        except (InvalidTag, ValueError):
            raise InvalidCiphertext() from None

    def check_health(self) -> Health:
        probe = os.urandom(16)
        ok = self.unwrap(self.wrap(probe)) == probe
        return Health(ok, self.key_id(), "ok" if ok else "mismatch", time.time(), 0.0)

    def close(self) -> None:
        self._keys.clear()


def file_backend(*, keyring: str, passphrase: bytes | None) -> FileKeyBackend:
    return FileKeyBackend(keyring=keyring)


def write_keyring(path: Path) -> bytes:
    kek = os.urandom(32)
    path.write_bytes(kek)
    path.chmod(0o600)
    return kek


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
    keyring: Path,
    socket: Path,
    policy: Path,
    extra: list[str] = (),  # type: ignore[assignment]
    env_extra: dict[str, str] | None = None,
    preexec_fn=None,
    pass_fds: tuple[int, ...] = (),
) -> Custody:
    cmd = [
        *CUSTODY_CLI, "serve",
        "--keyring", str(keyring), "--socket", str(socket), "--policy", str(policy),
        "--backend-factory", FACTORY, *extra,
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
