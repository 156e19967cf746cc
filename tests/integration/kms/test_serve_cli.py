"""``kubeshield kms serve`` as a subprocess: startup, rotation while serving, shutdown, startup errors."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.encryption_config import validate_encryption_config
from tests.integration.kms.conftest import KUBESHIELD, run_cli, wait_for_key_change
from tests.support.apiserver import EmulatedAPIServer

_V2 = "/v2.KeyManagementService/"


def _start(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    return subprocess.Popen(
        [*KUBESHIELD, "kms", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_socket(proc: subprocess.Popen[str], path: Path, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("socket never appeared")


def test_serve_rotate_and_graceful_stop(tmp_path: Path) -> None:
    keyring, sock = tmp_path / "keyring", tmp_path / "kms.sock"
    proc = _start(
        "--keyring", str(keyring), "--create-keyring", "--socket", str(sock),
        "--health-addr", "127.0.0.1:0", "--print-encryption-config",
    )  # fmt: skip
    try:
        _wait_for_socket(proc, sock)
        assert os.stat(sock).st_mode & 0o777 == 0o600
        with KMSv2Client(str(sock), timeout=5) as client:
            api = EmulatedAPIServer(client)
            first = api.probe()
            api.store("/registry/secrets/default/db", b"password=hunter2")
            rotated = run_cli("keys", "rotate", "--keyring", str(keyring))
            assert rotated.returncode == 0, rotated.stderr
            new = wait_for_key_change(client, first.key_id)  # refresher: within ~5 s
            assert new not in api.key_ids_seen
            api.probe()
            api.restart()
            api.probe()
            assert api.read("/registry/secrets/default/db") == (b"password=hunter2", True)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    validate_encryption_config(yaml.safe_load(out))
    assert f"unix://{sock}" in out
    assert not sock.exists()  # our socket is removed on shutdown
    assert "hunter2" not in err


def test_status_command(tmp_path: Path) -> None:
    keyring, sock = tmp_path / "keyring", tmp_path / "kms.sock"
    proc = _start("--keyring", str(keyring), "--create-keyring", "--socket", str(sock), "--health-addr", "")
    try:
        _wait_for_socket(proc, sock)
        result = run_cli("kms", "status", "--socket", str(sock))
        assert result.returncode == 0, result.stderr
        assert "healthz:  ok" in result.stdout and "key_id:   local:v1:" in result.stdout
        second = _start("--keyring", str(keyring), "--socket", str(sock), "--health-addr", "")
        _, second_err = second.communicate(timeout=30)
        assert second.returncode == 1  # another plugin already listens: refused
        assert "already listening" in second_err
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert run_cli("kms", "status", "--socket", str(sock), "--timeout", "0.5").returncode == 1


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-keyring", "keyring"),
        ("wrong-passphrase", "passphrase"),
        ("missing-socket-dir", "does not exist"),
        ("socket-is-a-file", "not a socket"),
    ],
)
def test_startup_errors(tmp_path: Path, setup: str, message: str) -> None:
    keyring, sock = tmp_path / "keyring", tmp_path / "kms.sock"
    args = ["--keyring", str(keyring), "--socket", str(sock), "--health-addr", ""]
    if setup != "missing-keyring":
        (tmp_path / "pass").write_text("right-passphrase\n")
        (tmp_path / "pass").chmod(0o600)  # a readable passphrase file is refused on its own
        created = run_cli(
            "keys", "init", "--keyring", str(keyring), "--passphrase-file", str(tmp_path / "pass")
        )
        assert created.returncode == 0, created.stderr
        args += ["--passphrase-file", str(tmp_path / "pass")]
    if setup == "wrong-passphrase":
        (tmp_path / "pass").write_text("wrong-passphrase\n")
    if setup == "missing-socket-dir":
        args[3] = str(tmp_path / "nope" / "kms.sock")
    if setup == "socket-is-a-file":
        sock.write_text("keep me")
    proc = _start(*args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert message in err.lower()
    assert "right-passphrase" not in err and "wrong-passphrase" not in err
    if setup == "socket-is-a-file":
        assert sock.read_text() == "keep me"


def _serve_then_signal(tmp_path: Path, *signals: signal.Signals, hold: bool = False) -> str:
    """Start ``kms serve``, send ``signals`` back to back once it serves; its stderr after a clean exit.

    ``hold``: an RPC is in flight on the server (matched, its request message never sent) when the
    signals are sent, so the graceful stage cannot end before the second signal is handled. Without
    it a stop with nothing in flight ends at once, and on a loaded machine a second signal taken by
    another thread could be handled after the handlers were restored, or never.
    """
    keyring, sock = tmp_path / "keyring", tmp_path / "kms.sock"
    proc = _start("--keyring", str(keyring), "--create-keyring", "--socket", str(sock), "--health-addr", "")
    channel: grpc.Channel | None = None
    release = threading.Event()
    held: grpc.Future | None = None
    try:
        _wait_for_socket(proc, sock)
        if hold:
            channel = grpc.insecure_channel(f"unix://{sock}")
            status = channel.unary_unary(_V2 + "Status", request_serializer=None, response_deserializer=None)
            status(b"", timeout=60, wait_for_ready=True)  # connected

            def never_sent() -> Iterator[bytes]:
                release.wait(120)
                yield from ()

            encrypt = channel.stream_unary(
                _V2 + "Encrypt", request_serializer=None, response_deserializer=None
            )
            held = encrypt.future(never_sent(), timeout=120)
            # one connection, one call matched at a time in arrival order: once this later call is
            # answered, the server has taken the held call and waits for its request message
            status(b"", timeout=60)
        for sig in signals:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if held is not None:
            with pytest.raises(grpc.RpcError):  # cancelled by the forced stop, never answered
                held.result(timeout=60)
    finally:
        release.set()
        if channel is not None:
            channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert '"msg": "stopped"' in err
    return err


def test_a_repeated_stop_signal_is_one_request(tmp_path: Path) -> None:
    """``timeout`` and process-group kills deliver SIGTERM twice: that must still be a graceful stop."""
    err = _serve_then_signal(tmp_path, signal.SIGTERM, signal.SIGTERM)
    assert "forcing shutdown" not in err


def test_a_different_second_signal_forces_the_stop(tmp_path: Path) -> None:
    err = _serve_then_signal(tmp_path, signal.SIGTERM, signal.SIGINT, hold=True)
    assert "forcing shutdown" in err
