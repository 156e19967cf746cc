"""`kubeshield keys list|rotate|retire|restore|age-keygen` for the keyring lifecycle (issue 16 items 1-3)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from kubeshield.cli import cli
from kubeshield.config import load_config
from kubeshield.config.settings import DEFAULT_KEYRING
from kubeshield.keys.identity import configured_identity, identity_hash
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend

ENV_CLEAN = {
    name: None
    for name in (
        "KUBESHIELD_KEYRING_PASSPHRASE", "KUBESHIELD_KEYRING", "KUBESHIELD_CONFIG",
        "KUBESHIELD_PASSPHRASE_FILE",
        "KUBESHIELD_OUT", "KUBESHIELD_IN", "KUBESHIELD_IDENTITY_FILE", "KUBESHIELD_RECIPIENT",
        "KUBESHIELD_FORCE", "KUBESHIELD_ALLOW_DROP", "KUBESHIELD_VERSION", "KUBESHIELD_ENDPOINTS",
        "KUBESHIELD_NO_ETCD_CHECK",
    )
}  # fmt: skip
AAD = b"kubeshield/kms/v2"
_TOKEN = {"method": "token", "tokenFile": "/etc/kubeshield/bao-token"}


def run(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ENV_CLEAN, **(env or {})}, catch_exceptions=False)


def _passfile(path: Path, text: str = "node passphrase") -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _identity(tmp_path: Path, name: str = "node.agekey") -> tuple[Path, str]:
    result = run("keys", "age-keygen", "--out", str(tmp_path / name))
    assert result.exit_code == 0, result.output
    return tmp_path / name, result.stdout.strip()


def _backup(tmp_path: Path, keyring: Path, recipient: str, *extra: str, name: str = "kr.age") -> Path:
    out = tmp_path / name
    result = run(
        "keys", "backup", "--keyring", str(keyring), "--out", str(out), "--recipient", recipient, *extra
    )
    assert result.exit_code == 0, result.output
    return out


def _config(tmp_path: Path, keys: dict[str, object]) -> Path:
    path = tmp_path / "kubeshield.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


# --- age-keygen ------------------------------------------------------------------------------------------


def test_age_keygen_writes_a_private_identity_and_prints_only_the_recipient(tmp_path: Path) -> None:
    identity, recipient = _identity(tmp_path)
    assert recipient.startswith("age1") and "\n" not in recipient
    assert stat.S_IMODE(os.stat(identity).st_mode) == 0o600
    secret_line = next(line for line in identity.read_text().splitlines() if not line.startswith("#"))
    assert secret_line not in recipient
    again = run("keys", "age-keygen", "--out", str(identity))
    assert again.exit_code == 1 and "already exists" in again.stderr


# --- restore --config writes what the config says -----------------------------------------------------


def test_restore_with_a_local_config_writes_the_configured_path_sealed_with_its_passphrase(
    tmp_path: Path,
) -> None:
    assert run("keys", "init", "--keyring", str(tmp_path / "src")).exit_code == 0
    identity, recipient = _identity(tmp_path)
    backup = _backup(tmp_path, tmp_path / "src", recipient)
    target = tmp_path / "node" / "keyring"
    target.parent.mkdir(mode=0o700)
    passfile = _passfile(tmp_path / "pass")
    config = _config(
        tmp_path, {"backend": "local", "local": {"keyring": str(target), "passphraseFile": str(passfile)}}
    )
    default_existed = DEFAULT_KEYRING.exists()
    result = run(
        "keys", "restore", "--in", str(backup), "--identity-file", str(identity), "--config", str(config)
    )
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stderr and "argon2id passphrase" in result.stdout
    info = KeyringFile(target).read_info()
    assert info.kdf == "argon2id" and info.keyring_id == KeyringFile(tmp_path / "src").read_info().keyring_id
    assert KeyringFile(target).load(b"node passphrase").keys
    assert DEFAULT_KEYRING.exists() == default_existed  # nothing went to /var/lib/kubeshield/keyring


def test_restore_refuses_when_the_configured_passphrase_file_is_missing(tmp_path: Path) -> None:
    assert run("keys", "init", "--keyring", str(tmp_path / "src")).exit_code == 0
    identity, recipient = _identity(tmp_path)
    backup = _backup(tmp_path, tmp_path / "src", recipient)
    config = _config(
        tmp_path,
        {
            "backend": "local",
            "local": {"keyring": str(tmp_path / "kr"), "passphraseFile": str(tmp_path / "nope")},
        },
    )
    result = run(
        "keys", "restore", "--in", str(backup), "--identity-file", str(identity), "--config", str(config)
    )
    assert result.exit_code == 1
    assert "nope" in result.stderr and "cannot read passphrase file" in result.stderr
    assert not (tmp_path / "kr").exists()


def test_restore_refuses_a_backend_without_a_keyring_file(tmp_path: Path) -> None:
    assert run("keys", "init", "--keyring", str(tmp_path / "src")).exit_code == 0
    identity, recipient = _identity(tmp_path)
    backup = _backup(tmp_path, tmp_path / "src", recipient)
    config = _config(
        tmp_path, {"backend": "transit", "transit": {"address": "https://bao.example:8200", "auth": _TOKEN}}
    )
    default_existed = DEFAULT_KEYRING.exists()
    result = run(
        "keys", "restore", "--in", str(backup), "--identity-file", str(identity), "--config", str(config)
    )
    assert result.exit_code == 1
    assert "keys restore works on keyring files" in result.stderr and "'transit'" in result.stderr
    assert DEFAULT_KEYRING.exists() == default_existed


def test_restore_with_a_tpm_config_and_no_tpm_writes_nothing(tmp_path: Path) -> None:
    """keys.tpm names a TPM that is not there: refused, and no unprotected keyring anywhere."""
    assert run("keys", "init", "--keyring", str(tmp_path / "src")).exit_code == 0
    identity, recipient = _identity(tmp_path)
    backup = _backup(tmp_path, tmp_path / "src", recipient)
    target = tmp_path / "keyring.tpm"
    config = _config(
        tmp_path,
        {
            "backend": "tpm",
            "tpm": {"tcti": "swtpm:host=127.0.0.1,port=1", "keyring": str(target), "pcrs": []},
        },
    )
    result = run(
        "keys", "restore", "--in", str(backup), "--identity-file", str(identity), "--config", str(config)
    )
    assert result.exit_code == 1
    assert "TPM" in result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["src", "src.lock", "node.agekey", "kr.age", "kubeshield.yaml"]
    )
    passed = run(
        "keys", "restore", "--in", str(backup), "--identity-file", str(identity), "--config", str(config),
        "--passphrase-file", str(_passfile(tmp_path / "p")),
    )  # fmt: skip
    assert passed.exit_code == 1 and "has no passphrase" in passed.stderr


def test_restore_cli_names_the_versions_it_would_drop(tmp_path: Path) -> None:
    kr = tmp_path / "kr"
    assert run("keys", "init", "--keyring", str(kr)).exit_code == 0
    identity, recipient = _identity(tmp_path)
    old = _backup(tmp_path, kr, recipient)
    assert run("keys", "rotate", "--keyring", str(kr)).exit_code == 0
    v2 = KeyringFile(kr).read_info().primary.key_id
    before = kr.read_bytes()
    args = (
        "keys",
        "restore",
        "--in",
        str(old),
        "--identity-file",
        str(identity),
        "--keyring",
        str(kr),
        "--force",
    )
    refused = run(*args)
    assert refused.exit_code == 1
    assert f"would drop version(s) 2 ({v2}, primary)" in refused.stderr and "--allow-drop 2" in refused.stderr
    assert kr.read_bytes() == before
    usage = run("keys", "restore", "--in", str(old), "--identity-file", str(identity), "--keyring", str(kr),
                "--allow-drop", "2")  # fmt: skip
    assert usage.exit_code == 2 and "--allow-drop only applies with --force" in usage.stderr
    bad = run(*args, "--allow-drop", "two")
    assert bad.exit_code == 1 and "'two' is not a version number" in bad.stderr
    assert run(*args, "--allow-drop", "2").exit_code == 0
    assert [v.version for v in KeyringFile(kr).read_info().versions] == [1]


# --- rotate, retire, list ---------------------------------------------------------------------------------


def test_rotate_reminds_to_back_up(tmp_path: Path) -> None:
    assert run("keys", "init", "--keyring", str(tmp_path / "kr")).exit_code == 0
    result = run("keys", "rotate", "--keyring", str(tmp_path / "kr"))
    assert result.exit_code == 0
    new = KeyringFile(tmp_path / "kr").read_info().primary.key_id
    assert "Back up the keyring now" in result.stderr and new in result.stderr


def test_retire_without_etcd_needs_an_explicit_flag_and_refuses_the_primary(tmp_path: Path) -> None:
    kr = tmp_path / "kr"
    assert run("keys", "init", "--keyring", str(kr)).exit_code == 0
    wrapped = LocalKeyBackend(path=kr).wrap(b"s" * 32, aad=AAD)
    assert run("keys", "rotate", "--keyring", str(kr)).exit_code == 0
    base = ("keys", "retire", "--keyring", str(kr))
    missing = run(*base, "--version", "1")
    assert missing.exit_code == 2 and "--endpoints" in missing.stderr and "--no-etcd-check" in missing.stderr
    primary = run(*base, "--version", "2", "--no-etcd-check")
    assert primary.exit_code == 1 and "version 2 is the primary" in primary.stderr
    unknown = run(*base, "--version", "9", "--no-etcd-check")
    assert unknown.exit_code == 1 and "its versions: 1, 2" in unknown.stderr
    both = run(*base, "--version", "1", "--no-etcd-check", "--endpoints", "http://127.0.0.1:1")
    assert both.exit_code == 2
    keyring_id = KeyringFile(kr).read_info().keyring_id
    done = run(*base, "--version", "1", "--no-etcd-check")
    assert done.exit_code == 0, done.output
    assert wrapped.key_id in done.stdout
    info = KeyringFile(kr).read_info()
    assert [v.version for v in info.versions] == [2] and info.keyring_id == keyring_id
    assert info.versions_digest in done.stdout


def test_list_shows_the_keyring_id_its_hash_and_the_versions_digest(tmp_path: Path) -> None:
    assert run("keys", "init", "--keyring", str(tmp_path / "kr")).exit_code == 0
    info = KeyringFile(tmp_path / "kr").read_info()
    doc = json.loads(run("keys", "list", "--keyring", str(tmp_path / "kr"), "-o", "json").stdout)
    assert doc["keyringId"] == info.keyring_id
    assert doc["keyringIdHash"] == identity_hash(info.keyring_id)
    assert doc["versionsDigest"] == info.versions_digest
    table = run("keys", "list", "--keyring", str(tmp_path / "kr")).stdout.splitlines()[0]
    assert info.keyring_id in table and info.versions_digest in table


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"backend": "pkcs11", "pkcs11": {"module": "/m.so", "token": "kube shield", "keyLabel": "kek/1"}},
         "pkcs11:token=kube%20shield;object=kek%2F1"),
        ({"backend": "transit",
          "transit": {"address": "https://bao:8200/", "mount": "tr", "key": "k", "auth": _TOKEN}},
         "https://bao:8200/v1/tr/keys/k"),
        ({"backend": "awskms", "awskms": {"keyId": "arn:aws:kms:eu-west-1:1:key/abc"}},
         "arn:aws:kms:eu-west-1:1:key/abc"),
        ({"backend": "custody", "custody": {"socket": "/run/c.sock"}}, "custody:/run/c.sock"),
    ],
)  # fmt: skip
def test_the_identity_of_backends_without_a_keyring_file(
    tmp_path: Path, keys: dict[str, object], expected: str
) -> None:
    assert configured_identity(load_config(_config(tmp_path, keys)).keys) == expected
