"""`kubeshield keys backup|restore` through the real CLI entry point (init/rotate/list keep working)."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pyrage
from click.testing import CliRunner, Result

from kubeshield.cli import cli
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend

ENV_CLEAN = {
    "KUBESHIELD_KEYRING_PASSPHRASE": None,
    "KUBESHIELD_KEYRING": None,
    "KUBESHIELD_CONFIG": None,
    "KUBESHIELD_PASSPHRASE_FILE": None,
    "KUBESHIELD_OUT": None,
    "KUBESHIELD_IN": None,
    "KUBESHIELD_RECIPIENT": None,
    "KUBESHIELD_RECIPIENTS_FILE": None,
    "KUBESHIELD_IDENTITY_FILE": None,
    "KUBESHIELD_BACKUP_PASSPHRASE_FILE": None,
    "KUBESHIELD_FORCE": None,
}
AAD = b"kubeshield/kms/v2"


def run(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ENV_CLEAN, **(env or {})}, catch_exceptions=False)


def _age_files(tmp_path: Path) -> tuple[Path, Path, str]:
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    (tmp_path / "id.txt").write_text(f"# public key: {public}\n{identity}\n")
    (tmp_path / "id.txt").chmod(0o600)
    (tmp_path / "recipients.txt").write_text(f"# ops\n{public}\n")
    return tmp_path / "id.txt", tmp_path / "recipients.txt", public


def test_init_rotate_backup_restore_list(tmp_path: Path) -> None:
    kr, restored = tmp_path / "kr", tmp_path / "restored"
    (tmp_path / "pass").write_text("keyring pass\n")
    (tmp_path / "newpass").write_text("new keyring pass\n")
    pass_args = ["--passphrase-file", str(tmp_path / "pass")]
    assert run("keys", "init", "--keyring", str(kr), *pass_args).exit_code == 0
    wrapped_v1 = LocalKeyBackend(path=kr, passphrase=b"keyring pass").wrap(b"s" * 32, aad=AAD)
    assert run("keys", "rotate", "--keyring", str(kr), *pass_args).exit_code == 0
    identity, recipients, public = _age_files(tmp_path)

    out = tmp_path / "kr.age"
    result = run(
        "keys", "backup", "--keyring", str(kr), *pass_args, "--out", str(out), "--recipient", public,
        "--recipients-file", str(recipients),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    keys = KeyringFile(kr).load(b"keyring pass").keys
    for key in keys.values():
        for text in (key.hex(), base64.b64encode(key).decode()):
            assert text not in result.output and text.encode() not in out.read_bytes()

    result = run(
        "keys", "restore", "--in", str(out), "--keyring", str(restored), "--identity-file", str(identity),
        "--passphrase-file", str(tmp_path / "newpass"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout and "WARNING" not in result.stderr
    backend = LocalKeyBackend(path=restored, passphrase=b"new keyring pass")
    assert backend.unwrap(wrapped_v1, aad=AAD) == b"s" * 32

    listed = [
        json.loads(run("keys", "list", "--keyring", str(p), "-o", "json").stdout) for p in (kr, restored)
    ]
    assert listed[0]["versions"] == listed[1]["versions"]
    assert listed[0]["keyringId"] == listed[1]["keyringId"]


def test_restore_refuses_existing_keyring_then_force(tmp_path: Path) -> None:
    identity, _, public = _age_files(tmp_path)
    assert run("keys", "init", "--keyring", str(tmp_path / "a")).exit_code == 0
    assert run("keys", "init", "--keyring", str(tmp_path / "b")).exit_code == 0
    out = tmp_path / "a.age"
    assert (
        run(
            "keys", "backup", "--keyring", str(tmp_path / "a"), "--out", str(out), "--recipient", public
        ).exit_code
        == 0
    )
    before = (tmp_path / "b").read_bytes()
    args = [
        "keys",
        "restore",
        "--in",
        str(out),
        "--keyring",
        str(tmp_path / "b"),
        "--identity-file",
        str(identity),
    ]
    refused = run(*args)
    assert refused.exit_code == 1
    assert "already exists; refusing to overwrite" in refused.stderr
    assert (tmp_path / "b").read_bytes() == before
    # the backup is of another keyring: --force alone would drop b's only version, so it is refused
    forced = run(*args, "--force")
    assert forced.exit_code == 1
    assert "would drop version(s) 1 (local:v1:" in forced.stderr and "--allow-drop 1" in forced.stderr
    assert (tmp_path / "b").read_bytes() == before
    forced = run(*args, "--force", "--allow-drop", "1")
    assert forced.exit_code == 0, forced.output
    assert "WARNING: no passphrase given" in forced.stderr
    assert (
        KeyringFile(tmp_path / "b").read_info().keyring_id
        == KeyringFile(tmp_path / "a").read_info().keyring_id
    )


def test_backup_refuses_to_overwrite_its_output(tmp_path: Path) -> None:
    _, _, public = _age_files(tmp_path)
    assert run("keys", "init", "--keyring", str(tmp_path / "a")).exit_code == 0
    (tmp_path / "out").write_bytes(b"keep me")
    result = run(
        "keys",
        "backup",
        "--keyring",
        str(tmp_path / "a"),
        "--out",
        str(tmp_path / "out"),
        "--recipient",
        public,
    )
    assert result.exit_code == 1
    assert "refusing to overwrite" in result.stderr
    assert (tmp_path / "out").read_bytes() == b"keep me"


def test_wrong_identity_writes_nothing(tmp_path: Path) -> None:
    _, _, public = _age_files(tmp_path)
    assert run("keys", "init", "--keyring", str(tmp_path / "a")).exit_code == 0
    out = tmp_path / "a.age"
    assert (
        run(
            "keys", "backup", "--keyring", str(tmp_path / "a"), "--out", str(out), "--recipient", public
        ).exit_code
        == 0
    )
    other = tmp_path / "other"
    other.mkdir()
    wrong_identity, _, _ = _age_files(other)
    result = run(
        "keys",
        "restore",
        "--in",
        str(out),
        "--keyring",
        str(tmp_path / "r"),
        "--identity-file",
        str(wrong_identity),
    )
    assert result.exit_code == 1
    assert "wrong identity or passphrase" in result.stderr
    assert not (tmp_path / "r").exists()


def test_backup_needs_exactly_one_kind_of_protection(tmp_path: Path) -> None:
    _, _, public = _age_files(tmp_path)
    (tmp_path / "bp").write_text("backup pass\n")
    assert run("keys", "init", "--keyring", str(tmp_path / "a")).exit_code == 0
    base = ["keys", "backup", "--keyring", str(tmp_path / "a"), "--out", str(tmp_path / "o")]
    assert run(*base).exit_code == 2
    both = run(*base, "--recipient", public, "--backup-passphrase-file", str(tmp_path / "bp"))
    assert both.exit_code == 2
    assert not (tmp_path / "o").exists()
    bad = run(*base, "--recipient", "ssh-ed25519 AAAA")
    assert bad.exit_code == 1 and "recipient #1 is not an age X25519 recipient" in bad.stderr


def test_backup_of_a_remote_backend_says_it_is_not_exportable(tmp_path: Path) -> None:
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        "keys:\n  backend: transit\n"
        "  transit: {address: 'http://127.0.0.1:1', auth: {tokenFile: /nonexistent}}\n"
    )
    _, _, public = _age_files(tmp_path)
    result = run(
        "keys", "backup", "--config", str(config), "--out", str(tmp_path / "o"), "--recipient", public
    )
    assert result.exit_code == 1
    assert "not exportable" in result.stderr and "raft snapshot" in result.stderr
    assert not (tmp_path / "o").exists()


def test_passphrase_backup_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "bp").write_text("backup pass\n")
    assert run("keys", "init", "--keyring", str(tmp_path / "a")).exit_code == 0
    out = tmp_path / "a.age"
    bp = ["--backup-passphrase-file", str(tmp_path / "bp")]
    made = run("keys", "backup", "--keyring", str(tmp_path / "a"), "--out", str(out), *bp)
    assert made.exit_code == 0, made.output
    restored = run("keys", "restore", "--in", str(out), "--keyring", str(tmp_path / "r"), *bp)
    assert restored.exit_code == 0, restored.output
    assert KeyringFile(tmp_path / "r").load(None).keys == KeyringFile(tmp_path / "a").load(None).keys
