"""`kubeshield keys init|rotate|list` through the real CLI entry point."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kubeshield.cli import cli
from kubeshield.keys.keyring import KeyringFile

ENV_CLEAN = {
    "KUBESHIELD_KEYRING_PASSPHRASE": None,
    "KUBESHIELD_KEYRING": None,
    "KUBESHIELD_CONFIG": None,
    "KUBESHIELD_PASSPHRASE_FILE": None,
}


def run(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ENV_CLEAN, **(env or {})}, catch_exceptions=False)


def test_init_without_passphrase_warns_and_creates_0600(tmp_path: Path) -> None:
    result = run("keys", "init", "--keyring", str(tmp_path / "kr"))
    assert result.exit_code == 0, result.output
    assert "WARNING: no passphrase given" in result.stderr
    assert "protection:     none" in result.stdout
    info = KeyringFile(tmp_path / "kr").read_info()
    assert info.primary.key_id in result.stdout
    assert not info.protected
    assert stat.S_IMODE(os.stat(tmp_path / "kr").st_mode) == 0o600


def test_init_with_passphrase_file_is_protected_and_prints_no_material(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("s3cret\n")
    result = run(
        "keys", "init", "--keyring", str(tmp_path / "kr"), "--passphrase-file", str(tmp_path / "pass")
    )
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stderr
    assert "argon2id" in result.stdout
    keyring = KeyringFile(tmp_path / "kr").load(b"s3cret")
    key = keyring.keys[1]
    for secret in (key.hex(), base64.b64encode(key).decode(), "s3cret"):
        assert secret not in result.output


def test_init_refuses_to_overwrite_then_force(tmp_path: Path) -> None:
    assert run("keys", "init", "--keyring", str(tmp_path / "kr")).exit_code == 0
    first = KeyringFile(tmp_path / "kr").read_info().keyring_id
    again = run("keys", "init", "--keyring", str(tmp_path / "kr"))
    assert again.exit_code == 1
    assert "already exists" in again.stderr
    assert KeyringFile(tmp_path / "kr").read_info().keyring_id == first
    forced = run("keys", "init", "--keyring", str(tmp_path / "kr"), "--force")
    assert forced.exit_code == 0
    assert KeyringFile(tmp_path / "kr").read_info().keyring_id != first


def test_rotate_and_list_with_passphrase_from_environment(tmp_path: Path) -> None:
    env = {"KUBESHIELD_KEYRING_PASSPHRASE": "from-env", "KUBESHIELD_KEYRING": str(tmp_path / "kr")}
    assert run("keys", "init", env=env).exit_code == 0
    rotated = run("keys", "rotate", env=env)
    assert rotated.exit_code == 0, rotated.output
    info = KeyringFile(tmp_path / "kr").read_info()
    assert f"new primary key_id {info.primary.key_id}" in rotated.stdout
    listed = run("keys", "list", "-o", "json", "--keyring", str(tmp_path / "kr"))  # no passphrase needed
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.stdout)
    assert doc["backend"] == "local" and doc["protection"] == "argon2id"
    assert doc["keyringId"] == info.keyring_id
    assert [(v["version"], v["keyId"], v["state"]) for v in doc["versions"]] == [
        (v.version, v.key_id, v.state) for v in info.versions
    ]


def test_rotate_with_wrong_or_missing_passphrase_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("right")
    (tmp_path / "wrong").write_text("wrong")
    assert (
        run(
            "keys", "init", "--keyring", str(tmp_path / "kr"), "--passphrase-file", str(tmp_path / "pass")
        ).exit_code
        == 0
    )
    wrong = run(
        "keys", "rotate", "--keyring", str(tmp_path / "kr"), "--passphrase-file", str(tmp_path / "wrong")
    )
    assert wrong.exit_code == 1
    assert "WrongPassphrase" in wrong.stderr
    missing = run("keys", "rotate", "--keyring", str(tmp_path / "kr"))
    assert missing.exit_code == 1
    assert "passphrase-protected" in missing.stderr
    assert len(KeyringFile(tmp_path / "kr").read_info().versions) == 1


def test_table_output(tmp_path: Path) -> None:
    run("keys", "init", "--keyring", str(tmp_path / "kr"))
    run("keys", "rotate", "--keyring", str(tmp_path / "kr"))
    result = run("keys", "list", "--keyring", str(tmp_path / "kr"))
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["VERSION", "KEY", "ID", "CREATED", "STATE"]
    assert lines[2].split()[0::3] == ["1", "decrypt-only"]
    assert lines[3].split()[0::3] == ["2", "primary"]


def test_config_file_selects_the_keyring_and_passphrase(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("cfg-pass")
    (tmp_path / "kubeshield.yaml").write_text(
        f"keys:\n  local: {{keyring: {tmp_path / 'kr'}, passphraseFile: {tmp_path / 'pass'}}}\n"
    )
    cfg = str(tmp_path / "kubeshield.yaml")
    assert run("keys", "init", "--config", cfg).exit_code == 0
    assert run("keys", "rotate", "--config", cfg).exit_code == 0
    assert len(KeyringFile(tmp_path / "kr").load(b"cfg-pass").keys) == 2
    # --keyring overrides the config's keyring
    assert run("keys", "init", "--config", cfg, "--keyring", str(tmp_path / "other")).exit_code == 0
    assert KeyringFile(tmp_path / "other").read_info().protected


def test_bad_config_is_reported_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "kubeshield.yaml").write_text("keys:\n  local: {passphraseFlie: /x}\n")
    result = run("keys", "list", "--config", str(tmp_path / "kubeshield.yaml"))
    assert result.exit_code == 1
    assert "keys.local.passphraseFlie: unknown field" in result.stderr


def test_init_never_replaces_keys_of_a_key_service(tmp_path: Path) -> None:
    # keys init creates or checks the key of every backend (tests/integration/keys/test_keys_init.py);
    # --force, which replaces a local keyring, is refused before anything is contacted
    (tmp_path / "kubeshield.yaml").write_text("keys:\n  backend: awskms\n  awskms: {keyId: alias/ks}\n")
    result = run("keys", "init", "--config", str(tmp_path / "kubeshield.yaml"), "--force")
    assert result.exit_code == 2
    assert "never replaces or deletes keys in the awskms backend" in result.stderr


@pytest.mark.parametrize("command", ["init", "rotate", "list"])
def test_usage_error_without_a_target(command: str) -> None:
    result = run("keys", command)
    assert result.exit_code == 2
    assert "give --keyring PATH or --config FILE" in result.stderr


def test_list_of_a_missing_keyring(tmp_path: Path) -> None:
    result = run("keys", "list", "--keyring", str(tmp_path / "absent"))
    assert result.exit_code == 1
    assert "keyring file not found" in result.stderr


def test_help_mentions_the_passphrase_sources() -> None:
    result = run("keys", "init", "--help")
    assert result.exit_code == 0
    assert "--passphrase-file" in result.stdout and "KUBESHIELD_KEYRING_PASSPHRASE" in result.stdout
    assert "--passphrase " not in result.stdout  # never a flag carrying the passphrase itself
