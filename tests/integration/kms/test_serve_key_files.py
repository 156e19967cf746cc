"""`kms serve` refuses exposed key files and an unprotected emergency keyring unless told otherwise
(issue 16 item 11), and a keyring in a writable directory (issue 15 item 9)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeshield.keys.keyring import KeyringFile
from tests.integration.kms.conftest import run_cli
from tests.integration.kms.test_serve_cli import _start, _wait_for_socket
from tests.support.keys import CHEAP_ARGON2

PASS = "serve passphrase"


def _keyring(path: Path, passphrase: str | None = PASS) -> Path:
    KeyringFile(path, argon2=CHEAP_ARGON2).create(passphrase=passphrase.encode() if passphrase else None)
    return path


def _passfile(path: Path, mode: int = 0o600) -> Path:
    path.write_text(PASS + "\n")
    path.chmod(mode)
    return path


def _refused(*args: str) -> str:
    proc = _start(*args, "--health-addr", "")
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("kms serve did not refuse: it was still running after 60 s") from None
    assert proc.returncode == 1, err
    assert "serving KMS" not in err
    return err


def _serves(sock: Path, *args: str) -> str:
    proc = _start(*args, "--socket", str(sock), "--health-addr", "")
    try:
        _wait_for_socket(proc, sock)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return err


@pytest.mark.parametrize(
    ("which", "mode"),
    [("keyring", 0o644), ("keyring", 0o660), ("passphrase file", 0o640), ("passphrase file", 0o604)],
)
def test_an_exposed_keyring_or_passphrase_file_is_refused_naming_it(
    tmp_path: Path, which: str, mode: int
) -> None:
    keyring, passfile = _keyring(tmp_path / "keyring"), _passfile(tmp_path / "pass")
    exposed = keyring if which == "keyring" else passfile
    exposed.chmod(mode)
    args = ("--keyring", str(keyring), "--passphrase-file", str(passfile))
    err = _refused(*args, "--socket", str(tmp_path / "kms.sock"))
    assert f"refusing to serve: the {which} {exposed} is mode {mode:04o}" in err
    assert "--allow-insecure-permissions" in err and PASS not in err
    assert not (tmp_path / "kms.sock").exists()
    err = _serves(tmp_path / "kms.sock", *args, "--allow-insecure-permissions")
    assert f"WARNING: the {which} {exposed} is mode {mode:04o}" in err


def test_a_keyring_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    keyring = _keyring(d / "keyring", passphrase=None)
    d.chmod(0o777)
    err = _refused("--keyring", str(keyring), "--socket", str(tmp_path / "kms.sock"))
    assert f"directory {d} is mode 0777 (group- and world-writable)" in err


def _emergency_config(tmp_path: Path, *, protected: bool) -> Path:
    _keyring(tmp_path / "keyring")
    emergency = _keyring(tmp_path / "emergency", passphrase=PASS if protected else None)
    section: dict[str, str] = {"keyring": str(emergency)}
    if protected:
        section["passphraseFile"] = str(_passfile(tmp_path / "emergency-pass"))
    config = {
        "kms": {"socket": str(tmp_path / "kms.sock")},
        "keys": {
            "backend": "local",
            "local": {
                "keyring": str(tmp_path / "keyring"),
                "passphraseFile": str(_passfile(tmp_path / "pass")),
            },
            "emergency": section,
        },
    }
    (tmp_path / "kubeshield.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "kubeshield.yaml"


def test_an_unprotected_emergency_keyring_is_refused_unless_allowed(tmp_path: Path) -> None:
    config = _emergency_config(tmp_path, protected=False)
    err = _refused("--config", str(config))
    assert f"the emergency keyring {tmp_path / 'emergency'} has no passphrase" in err
    assert "--allow-unprotected-emergency-keyring" in err
    err = _serves(tmp_path / "kms.sock", "--config", str(config), "--allow-unprotected-emergency-keyring")
    assert "WARNING: the emergency keyring" in err


def test_a_protected_emergency_keyring_with_private_files_serves(tmp_path: Path) -> None:
    config = _emergency_config(tmp_path, protected=True)
    err = _serves(tmp_path / "kms.sock", "--config", str(config))
    assert "WARNING" not in err
    os.chmod(tmp_path / "emergency-pass", 0o644)
    err = _refused("--config", str(config))
    assert f"the emergency passphrase file {tmp_path / 'emergency-pass'} is mode 0644" in err


def test_the_embedded_demo_default_still_serves_with_a_warning(tmp_path: Path) -> None:
    """`make run`: --create-keyring with no passphrase, in a 0700 directory it made."""
    demo = tmp_path / ".kubeshield"
    demo.mkdir(mode=0o700)
    sock = demo / "kms.sock"
    err = _serves(sock, "--keyring", str(demo / "keyring"), "--create-keyring")
    assert "WARNING: the keyring has no passphrase" in err
    err = _serves(sock, "--keyring", str(demo / "keyring"))  # second start: the keyring exists
    assert f"WARNING: the keyring {demo / 'keyring'} has no passphrase" in err
    assert run_cli("keys", "list", "--keyring", str(demo / "keyring")).returncode == 0
