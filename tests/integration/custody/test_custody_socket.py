"""``custody serve`` and its socket path: the same rule as ``kms serve`` (issue 16 item 13).

A live custody socket is refused (the running server keeps its socket and its clients), a stale one
is replaced, a regular file or a missing directory is a one-line error, never a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from kubeshield.keys.enclave import EnclaveKeyBackend

from ._support import CUSTODY_CLI, REPO, allow_policy, env, start_custody, write_keyring


def _serve_once(workdir: Path, socket: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUSTODY_CLI, "serve", "--keyring", str(workdir / "keyring"), "--socket", str(socket),
         "--policy", str(workdir / "p.yaml")],
        capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=60,
    )  # fmt: skip


def _one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "ready" not in result.stdout


def test_a_live_custody_socket_is_not_taken_over(tmp_path: Path) -> None:
    write_keyring(tmp_path / "keyring")
    allow_policy(tmp_path / "p.yaml")
    sock = tmp_path / "custody.sock"
    first = start_custody(keyring=tmp_path / "keyring", socket=sock, policy=tmp_path / "p.yaml")
    try:
        inode = os.lstat(sock).st_ino
        second = _serve_once(tmp_path, sock)
        _one_line_error(second, "another process is already listening")
        assert os.lstat(sock).st_ino == inode  # still the first server's socket
        client = EnclaveKeyBackend(socket=str(sock))
        assert client.key_id()  # and the first server still answers on it
        client.close()
    finally:
        first.stop()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    write_keyring(tmp_path / "keyring")
    allow_policy(tmp_path / "p.yaml")
    sock = tmp_path / "custody.sock"
    dead = start_custody(keyring=tmp_path / "keyring", socket=sock, policy=tmp_path / "p.yaml")
    os.kill(dead.proc.pid, signal.SIGKILL)  # leaves its socket file behind
    dead.stop()
    assert sock.exists()
    again = start_custody(keyring=tmp_path / "keyring", socket=sock, policy=tmp_path / "p.yaml")
    try:
        client = EnclaveKeyBackend(socket=str(sock))
        assert client.key_id()
        client.close()
    finally:
        again.stop()
    assert not sock.exists()  # a clean stop removes the socket it bound


def test_a_regular_file_at_the_socket_path_is_one_line_and_untouched(tmp_path: Path) -> None:
    write_keyring(tmp_path / "keyring")
    allow_policy(tmp_path / "p.yaml")
    target = tmp_path / "custody.sock"
    target.write_text("not a socket\n")
    _one_line_error(_serve_once(tmp_path, target), "exists and is not a socket")
    assert target.read_text() == "not a socket\n"


def test_a_missing_socket_directory_is_one_line(tmp_path: Path) -> None:
    write_keyring(tmp_path / "keyring")
    allow_policy(tmp_path / "p.yaml")
    _one_line_error(_serve_once(tmp_path, tmp_path / "absent" / "custody.sock"), "does not exist")
