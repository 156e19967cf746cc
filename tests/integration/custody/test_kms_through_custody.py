"""KMS conformance through the custody process, with real processes end to end.

``kubeshield custody serve`` holds a real local keyring (``LocalKeyBackend``); ``kubeshield kms serve
--config`` with ``keys.backend: custody`` talks to it through the enclave backend; the apiserver
emulator (tests/support/apiserver.py) drives the plugin: prime, store, read back, a rotation made with
``kubeshield keys rotate`` on the custody keyring (the custody process reloads it, the plugin's key_id
refresh sees it, Status's key_id changes), old data still decrypts after an apiserver restart. The
plugin process's memory is then scanned for every KEK version and holds none.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.errors import InvalidCiphertext
from kubeshield.kms.client import KMSv2Client
from tests.support.apiserver import EmulatedAPIServer, RotationRefusedError

from ._support import KUBESHIELD, REPO, allow_policy, env, keyring_keks, memory_contains, start_custody

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the memory scan reads /proc/<pid>/mem (run as root)"
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ks-kms-custody-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start_kms(config: Path, socket: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*KUBESHIELD, "kms", "serve", "--config", str(config), "--health-addr", ""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
        env={k: v for k, v in env().items() if not k.startswith("KUBESHIELD_")},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"kms serve did not start: {err}")
        time.sleep(0.05)
    return proc


def _wait_for_status_key_change(client: KMSv2Client, old: str, bound: float = 60.0) -> str:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        key_id = client.status().key_id
        if key_id != old:
            return key_id
        time.sleep(0.1)
    raise AssertionError(f"Status key_id did not change within {bound}s")


def test_kms_plugin_conformance_through_the_custody_process(workdir: Path) -> None:
    keyring, custody_sock, kms_sock = workdir / "keyring", workdir / "custody.sock", workdir / "kms.sock"
    assert subprocess.run(
        [*KUBESHIELD, "keys", "init", "--keyring", str(keyring)], capture_output=True, env=env(), timeout=60
    ).returncode == 0  # fmt: skip
    custody = start_custody(keyring=keyring, socket=custody_sock, policy=allow_policy(workdir / "p.yaml"))
    config = workdir / "kubeshield.yaml"
    config.write_text(
        f"kms:\n  socket: {kms_sock}\nkeys:\n  backend: custody\n  custody: {{socket: {custody_sock}}}\n"
    )
    kms = _start_kms(config, kms_sock)
    try:
        with KMSv2Client(str(kms_sock), timeout=5) as client:
            api = EmulatedAPIServer(client)
            first = api.probe()
            assert first.key_id == keyring_info_primary(keyring)
            secrets = {f"/registry/secrets/ns/s{i}": os.urandom(48) for i in range(6)}
            for key, value in secrets.items():
                stored = api.store(key, value)
                assert stored.startswith(b"k8s:enc:kms:v2:kubeshield:") and value not in stored
            api.restart()  # a new apiserver: every read goes through Decrypt -> plugin -> custody
            api.probe()
            for key, value in secrets.items():
                assert api.read(key) == (value, False)
            assert api.decrypt_calls >= 1

            rotated = subprocess.run(
                [*KUBESHIELD, "keys", "rotate", "--keyring", str(keyring)],
                capture_output=True, text=True, env=env(), timeout=60,
            )  # fmt: skip
            assert rotated.returncode == 0, rotated.stderr
            new = _wait_for_status_key_change(client, first.key_id)
            assert new == keyring_info_primary(keyring) and new not in api.key_ids_seen
            for _ in range(50):  # the apiserver retries a refused rotation on its next probe
                try:
                    api.probe()
                    break
                except RotationRefusedError:
                    time.sleep(0.1)
            assert api.state is not None and api.state.key_id == new
            api.store("/registry/secrets/ns/after", b"after-rotation")

            api.restart()
            api.probe()
            for key, value in secrets.items():
                assert api.read(key) == (value, True)  # old data, old key_id: stale but readable
            assert api.read("/registry/secrets/ns/after") == (b"after-rotation", False)
            api.etcd["/registry/secrets/ns/moved"] = api.etcd["/registry/secrets/ns/s0"]
            with pytest.raises(InvalidCiphertext):
                api.read("/registry/secrets/ns/moved")

            keks = keyring_keks(keyring)
            assert len(keks) == 2
            for kek in keks:
                assert memory_contains(kms.pid, kek) is False  # the plugin never held a KEK
                assert memory_contains(custody.proc.pid, kek) is True  # the custody process does
        kms.send_signal(signal.SIGTERM)
        _, err = kms.communicate(timeout=30)
        assert kms.returncode == 0, err
    finally:
        if kms.poll() is None:
            kms.kill()
            kms.communicate()
        custody.stop()


def keyring_info_primary(keyring: Path) -> str:
    from kubeshield.keys.keyring import KeyringFile

    return KeyringFile(keyring).read_info().primary.key_id
