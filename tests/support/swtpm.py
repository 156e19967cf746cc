"""A real software TPM 2.0 (swtpm) for tests: one instance per fixture, its own state dir and ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL = "apt-get install -y swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config && pip install tpm2-pytss"


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@dataclass
class SwTpm:
    state_dir: Path
    port: int
    pid: int

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        """Shut the TPM down cleanly (TPM2_Shutdown first, so no dictionary-attack strike is counted)."""
        try:
            from tpm2_pytss import ESAPI, TCTILdr
            from tpm2_pytss.constants import TPM2_SU

            with ESAPI(TCTILdr.parse(self.tcti)) as ectx:
                ectx.shutdown(TPM2_SU.CLEAR)
        except Exception:
            pass
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):  # it may exit between the last check and now
            os.kill(self.pid, signal.SIGKILL)


def start_swtpm(state_dir: Path) -> SwTpm:
    """Start ``swtpm socket`` on free loopback ports; fails loudly with the install line if missing."""
    if shutil.which("swtpm") is None:
        raise RuntimeError(f"swtpm is not installed; install it with: {INSTALL}")
    state_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port_pair()
    pidfile = state_dir / "swtpm.pid"
    subprocess.run(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state_dir}",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear", "--pid", f"file={pidfile}", "--daemon"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
            if pidfile.exists() and pidfile.read_text().strip():
                return SwTpm(state_dir=state_dir, port=port, pid=int(pidfile.read_text().strip()))
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("swtpm did not start")
