"""The kubeshield master key (an age plugin recipient wrapping with a kubeshield KeyBackend) and the
real sops binary: sops decrypts, rotates and updatekeys such files through ``age-plugin-kubeshield``;
without the plugin it refuses to rotate (exit 1) and leaves the file byte-for-byte intact, and every other key
of the file stays usable."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeshield.sops.masterkeys import kubeshield as ks_key
from tests.support.keys import PASSPHRASE, make_keyring

SECRET = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  password: hunter2\n"


@pytest.fixture
def backend_config(tmp_path: Path) -> Path:
    keyring = tmp_path / "keyring"
    make_keyring(keyring)
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(PASSPHRASE)
    passphrase.chmod(0o600)
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        f"keys:\n  backend: local\n  local: {{keyring: {keyring}, passphraseFile: {passphrase}}}\n"
    )
    return config


@pytest.fixture
def plugin_identity(tmp_path: Path, backend_config: Path) -> Path:
    path = tmp_path / "plugin-identity.txt"
    path.write_text(ks_key.identity_for(backend_config) + "\n")
    return path


def test_recipient_and_identity_encode_the_config_path(backend_config: Path) -> None:
    recipient = ks_key.recipient_for(backend_config)
    assert recipient.startswith("age1kubeshield1")
    assert ks_key.config_of_recipient(recipient) == str(backend_config.resolve())
    identity = ks_key.identity_for(backend_config)
    assert identity.startswith("AGE-PLUGIN-KUBESHIELD-1")
    assert ks_key.config_of_identity(identity) == str(backend_config.resolve())


def test_sops_decrypts_rotates_and_updatekeys_a_kubeshield_key(
    tmp_path, sops, ks, age_key, backend_config, plugin_identity
) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    recipient = ks_key.recipient_for(backend_config)
    (work / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\n    age: {recipient},{age_key.recipient}\n"
    )
    (work / "s.yaml").write_text(SECRET)
    assert ks(["sops", "encrypt", "-i", "s.yaml"], cwd=work) == 0
    plugin_only = {"SOPS_AGE_KEY_FILE": str(plugin_identity)}
    # sops unwraps through age-plugin-kubeshield (no X25519 identity available)
    assert b"password: hunter2" in sops.ok("decrypt", "s.yaml", cwd=work, env=plugin_only)
    # the other key of the file stays usable without the plugin
    assert b"password: hunter2" in sops.ok("decrypt", "s.yaml", cwd=work, plugin=False)
    # sops -r re-wraps the new data key through the plugin; kubeshield still opens it with its backend only
    sops.ok("rotate", "-i", "s.yaml", cwd=work, env=plugin_only)
    out = work / "out.yaml"
    assert ks(["sops", "decrypt", "--output", str(out), "s.yaml"], cwd=work, env={"SOPS_AGE_KEY": ""}) == 0
    assert b"password: hunter2" in out.read_bytes()
    # updatekeys (a new recipient) through the plugin, still readable by the kubeshield key alone
    extra = tmp_path / "extra.txt"
    from tests.support.sops import age_identity

    r3 = age_identity(extra)
    (work / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\n    age: {recipient},{age_key.recipient},{r3}\n"
    )
    sops.ok("updatekeys", "-y", "s.yaml", cwd=work)
    assert "recipient: " + recipient in (work / "s.yaml").read_text()
    assert b"password: hunter2" in sops.ok(
        "decrypt", "s.yaml", cwd=work, env={"SOPS_AGE_KEY_FILE": str(extra)}
    )
    out.unlink()
    assert ks(["sops", "decrypt", "--output", str(out), "s.yaml"], cwd=work, env={"SOPS_AGE_KEY": ""}) == 0
    assert b"password: hunter2" in out.read_bytes()


def test_sops_without_the_plugin_refuses_and_leaves_the_file_intact(
    tmp_path, sops, ks, age_key, backend_config
) -> None:
    plain = tmp_path / "s.yaml"
    plain.write_text(SECRET)
    enc = tmp_path / "s.enc.yaml"
    assert (
        ks(
            [
                "sops",
                "encrypt",
                "--kubeshield",
                str(backend_config),
                "--age",
                age_key.recipient,
                "--output",
                str(enc),
                str(plain),
            ]
        )
        == 0
    )
    before = enc.read_bytes()
    result = sops.run("rotate", "-i", str(enc), plugin=False)
    assert result.returncode == 1, result.stderr.decode()  # sops: "Could not generate data key"
    assert b"age-plugin-kubeshield" in result.stderr
    assert enc.read_bytes() == before
    assert b"password: hunter2" in sops.ok("decrypt", str(enc), plugin=False)
    out = tmp_path / "out.yaml"
    assert ks(["sops", "decrypt", "--output", str(out), str(enc)], env={"SOPS_AGE_KEY": ""}) == 0


def test_sops_encrypts_to_the_kubeshield_key_and_kubeshield_rotates_it(
    tmp_path, sops, ks, backend_config, plugin_identity
) -> None:
    recipient = ks_key.recipient_for(backend_config)
    plain = tmp_path / "s.yaml"
    plain.write_text(SECRET)
    enc = tmp_path / "s.enc.yaml"
    enc.write_bytes(sops.ok("encrypt", "--age", recipient, "--encrypted-regex", "^stringData$", str(plain)))
    assert "-> kubeshield v1" not in enc.read_text()  # armoured: the stanza is inside the age file
    out = tmp_path / "out.yaml"
    assert ks(["sops", "decrypt", "--output", str(out), str(enc)], env={"SOPS_AGE_KEY": ""}) == 0
    assert b"password: hunter2" in out.read_bytes()
    assert ks(["sops", "rotate", "-i", str(enc)], env={"SOPS_AGE_KEY": ""}) == 0
    assert b"password: hunter2" in sops.ok(
        "decrypt", str(enc), env={"SOPS_AGE_KEY_FILE": str(plugin_identity)}
    )


def test_a_wrong_backend_cannot_unwrap(tmp_path, ks, backend_config) -> None:
    plain = tmp_path / "s.yaml"
    plain.write_text(SECRET)
    enc = tmp_path / "s.enc.yaml"
    assert ks(["sops", "encrypt", "--kubeshield", str(backend_config), "--output", str(enc), str(plain)]) == 0
    # replace the keyring with another one: same path, other KEK
    keyring = tmp_path / "keyring"
    keyring.unlink()
    make_keyring(keyring)
    assert ks(["sops", "decrypt", str(enc)], env={"SOPS_AGE_KEY": ""}) == 128
