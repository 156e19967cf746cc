"""``kms.healthAddr: none`` in the config file, and ``KUBESHIELD_HEALTH_ADDR=none``, turn the health and
metrics endpoint off (an empty variable cannot: click ignores it), e.g. for a recovery plugin started
beside a live one on the same host."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeshield.keys.keyring import KeyringFile
from tests.integration.kms.conftest import KUBESHIELD
from tests.integration.kms.test_serve_cli import _wait_for_socket
from tests.support.keys import CHEAP_ARGON2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tcp_listeners_of(pid: int) -> set[int]:
    """Inodes of the TCP sockets in LISTEN state that process ``pid`` holds."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            held.add(int(target[8:-1]))
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening.add(int(fields[9]))
    return held & listening


@pytest.mark.parametrize("how", ["config", "env"])
def test_health_endpoint_is_off(tmp_path: Path, how: str) -> None:
    keyring = tmp_path / "keyring"
    KeyringFile(keyring, argon2=CHEAP_ARGON2).create(passphrase=None)
    port = _free_port()
    sock = tmp_path / "kms.sock"
    kms: dict[str, str] = {
        "socket": str(sock),
        "healthAddr": "none" if how == "config" else f"127.0.0.1:{port}",
    }
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        yaml.safe_dump({"kms": kms, "keys": {"backend": "local", "local": {"keyring": str(keyring)}}})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    if how == "env":
        env["KUBESHIELD_HEALTH_ADDR"] = "none"
    proc = subprocess.Popen(
        [*KUBESHIELD, "kms", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_socket(proc, sock)
        assert proc.poll() is None
        assert _tcp_listeners_of(proc.pid) == set()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
