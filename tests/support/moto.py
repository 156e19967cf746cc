"""moto in server mode for tests: a real HTTP AWS endpoint on 127.0.0.1, started and stopped by PID.

``MotoServer`` runs ``moto_server -H 127.0.0.1 -p <free port>`` from this interpreter's environment,
waits until it answers, and can be killed (SIGKILL), frozen (SIGSTOP: the socket accepts but nobody
answers, like a hung key service), thawed (SIGCONT) and restarted on the same port. moto keeps its
state in memory, so a killed-and-restarted server has lost every key.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

__all__ = ["INSTALL_HINT", "MotoServer", "create_kms_key", "dummy_aws_env", "free_port"]

INSTALL_HINT = "pip install 'moto[server]' boto3   (part of the dev extra: pip install -e '.[dev]')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dummy_aws_env() -> dict[str, str | None]:
    """Environment for boto3 against moto: dummy keys, no profile, no shared files, no IMDS lookups."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class MotoServer:
    """One moto server process. ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, *, log_dir: Path, port: int | None = None) -> None:
        binary = Path(sys.executable).parent / "moto_server"
        if not binary.is_file():
            pytest.fail(f"moto_server is not installed: {INSTALL_HINT}", pytrace=False)
        self.binary = binary
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto_server did not answer within {timeout}s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL, as a crash would; the port is closed afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> MotoServer:
        """Kill and start again on the same port (moto forgets everything)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def create_kms_key(endpoint: str, *, region: str = "us-east-1") -> str:
    """Create a SYMMETRIC_DEFAULT key on ``endpoint`` and return its ARN (credentials from the env)."""
    import boto3

    client = boto3.client("kms", region_name=region, endpoint_url=endpoint)
    meta = client.create_key(Description="kubeshield test KEK", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    client.close()
    return str(meta["Arn"])
