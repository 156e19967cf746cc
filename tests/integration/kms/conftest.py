"""Fixtures: the real plugin on unix sockets under tmp_path, in-process, over a real local keyring."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import KMSService

KUBESHIELD = [str(Path(sys.executable).parent / "kubeshield")]


@dataclass
class Plugin:
    socket: str
    v1_socket: str
    keyring: Path
    backend: LocalKeyBackend
    service: KMSService
    server: KMSServer
    metrics: KMSMetrics


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    keyring = tmp_path / "keyring"
    backend = LocalKeyBackend.create(path=keyring)
    metrics = KMSMetrics()
    service = KMSService(backend, metrics=metrics, refresh_interval=0.1, health_interval=0.5)
    server = KMSServer(
        service, socket=str(tmp_path / "kms.sock"), v1_socket=str(tmp_path / "kms-v1.sock"), metrics=metrics
    )
    service.start()
    server.start()
    assert server.socket_path is not None
    try:
        yield Plugin(
            server.socket_path, str(tmp_path / "kms-v1.sock"), keyring, backend, service, server, metrics
        )
    finally:
        server.stop(None).wait(10)
        service.close()


@pytest.fixture
def client(plugin: Plugin) -> Iterator[KMSv2Client]:
    with KMSv2Client(plugin.socket, timeout=5.0) as c:
        yield c


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real ``kubeshield`` console script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    return subprocess.run([*KUBESHIELD, *args], capture_output=True, text=True, timeout=timeout, env=env)


def wait_for_key_change(client: KMSv2Client, old: str, *, bound: float = 30.0) -> str:
    """Poll Status (bounded) until its key_id differs from ``old``; return the new key_id."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        key_id = client.status().key_id
        if key_id != old:
            return key_id
        time.sleep(0.05)
    raise AssertionError(f"Status key_id did not change within {bound}s")
