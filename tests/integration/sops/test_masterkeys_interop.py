# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)
"""Master keys against real servers, both directions with the real sops binary:
hc_vault (OpenBao Transit), kms (moto, with an encryption context), pgp (gpg), Shamir key groups,
and ``sops updatekeys`` / ``sops -r`` on kubeshield-written files (and the reverse)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.moto import MotoServer, create_kms_key, dummy_aws_env
from tests.support.openbao import BaoServer, openbao, transit_key  # noqa: F401
from tests.support.sops import age_identity

SECRET = (
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  password: hunter2\n  token: t0k3n\n"
)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    server = MotoServer(log_dir=Path(tmp_path_factory.mktemp("moto-sops")))
    server.start()
    yield server
    server.stop()


def _roundtrip(tmp_path, sops, ks, *, ks_flags, sops_flags, env) -> None:
    plain = tmp_path / "secret.yaml"
    plain.write_text(SECRET)
    ours = tmp_path / "ours.yaml"
    assert ks(["sops", "encrypt", *ks_flags, "--output", str(ours), str(plain)], env=env) == 0
    assert b"hunter2" not in ours.read_bytes()
    out = sops.ok("decrypt", str(ours), env=env)
    assert b"password: hunter2" in out
    theirs = tmp_path / "theirs.yaml"
    theirs.write_bytes(
        sops.ok("encrypt", *sops_flags, "--encrypted-regex", "^(data|stringData)$", str(plain), env=env)
    )
    got = tmp_path / "got.yaml"
    assert ks(["sops", "decrypt", "--output", str(got), str(theirs)], env=env) == 0
    assert got.read_bytes() == out == sops.ok("decrypt", str(theirs), env=env)


def test_hc_vault_transit_both_ways(tmp_path, sops, ks, openbao: BaoServer, transit_key: str) -> None:
    uri = f"{openbao.address}/v1/transit/keys/{transit_key}"
    env = {"VAULT_TOKEN": openbao.root_token}
    _roundtrip(
        tmp_path,
        sops,
        ks,
        ks_flags=["--hc-vault-transit", uri],
        sops_flags=["--hc-vault-transit", uri],
        env=env,
    )
    text = (tmp_path / "ours.yaml").read_text()
    assert "hc_vault:" in text and "enc: vault:v1:" in text and f"key_name: {transit_key}" in text


def test_hc_vault_token_from_vault_token_file(
    tmp_path, home, sops, ks, openbao: BaoServer, transit_key: str
) -> None:
    (home / ".vault-token").write_text(openbao.root_token + "\n")
    uri = f"{openbao.address}/v1/transit/keys/{transit_key}"
    _roundtrip(
        tmp_path,
        sops,
        ks,
        ks_flags=["--hc-vault-transit", uri],
        sops_flags=["--hc-vault-transit", uri],
        env={},
    )


def test_hc_vault_wrong_token_is_exit_128(tmp_path, ks, openbao: BaoServer, transit_key: str) -> None:
    uri = f"{openbao.address}/v1/transit/keys/{transit_key}"
    plain = tmp_path / "s.yaml"
    plain.write_text(SECRET)
    assert (
        ks(["sops", "encrypt", "--hc-vault-transit", uri, str(plain)], env={"VAULT_TOKEN": "not-a-token"})
        == 128
    )


def test_kms_with_encryption_context_both_ways(tmp_path, sops, ks, moto: MotoServer, monkeypatch) -> None:
    aws = {k: v for k, v in dummy_aws_env().items() if v is not None}
    aws["AWS_ENDPOINT_URL"] = moto.endpoint
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    arn = create_kms_key(moto.endpoint)
    flags = ["--kms", arn, "--encryption-context", "team:db,env:prod"]
    _roundtrip(tmp_path, sops, ks, ks_flags=flags, sops_flags=flags, env=aws)
    text = (tmp_path / "ours.yaml").read_text()
    assert f"arn: {arn}" in text and "context:" in text and "team: db" in text
    # the context is bound: dropping it from the file makes KMS refuse the data key, for both tools
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("team: db", "team: other"))
    assert sops.run("decrypt", str(broken), env=aws).returncode == 128
    assert ks(["sops", "decrypt", str(broken)], env=aws) == 128


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["gpg", "--batch", "--homedir", str(home), *args],
        input=input,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_pgp_both_ways(tmp_path, sops, ks) -> None:
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    _gpg(
        gnupg,
        "--passphrase",
        "",
        "--quick-gen-key",
        "kubeshield test <test@example.invalid>",
        "default",
        "default",
        "never",
    )
    listing = _gpg(gnupg, "--with-colons", "--list-keys").decode()
    fp = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    env = {"GNUPGHOME": str(gnupg)}
    try:
        _roundtrip(tmp_path, sops, ks, ks_flags=["--pgp", fp], sops_flags=["--pgp", fp], env=env)
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False, capture_output=True
        )
    assert "BEGIN PGP MESSAGE" in (tmp_path / "ours.yaml").read_text()


def _two_group_config(path: Path, r1: str, r2: str) -> None:
    path.write_text(
        "creation_rules:\n"
        "  - path_regex: .*\\.yaml$\n"
        "    shamir_threshold: 2\n"
        "    key_groups:\n"
        f"      - age: [{r1}]\n"
        f"      - age: [{r2}]\n"
    )


def test_two_key_groups_threshold_two_both_ways(tmp_path, sops, ks, age_key) -> None:
    second = tmp_path / "second.txt"
    r2 = age_identity(second)
    both = tmp_path / "both.txt"
    both.write_text(age_key.key_file.read_text() + second.read_text())
    work = tmp_path / "repo"
    work.mkdir()
    _two_group_config(work / ".sops.yaml", age_key.recipient, r2)
    (work / "s.yaml").write_text(SECRET)
    env = {"SOPS_AGE_KEY_FILE": str(both)}
    assert ks(["sops", "encrypt", "--output", str(work / "ours.yaml"), "s.yaml"], env=env, cwd=work) == 0
    text = (work / "ours.yaml").read_text()
    assert "shamir_threshold: 2" in text and text.count("recipient:") == 2
    assert b"password: hunter2" in sops.ok("decrypt", "ours.yaml", cwd=work, env=env)
    # one group alone is not enough, for either tool
    assert sops.run("decrypt", "ours.yaml", cwd=work).returncode == 128
    assert ks(["sops", "decrypt", "ours.yaml"], cwd=work) == 128
    (work / "theirs.yaml").write_bytes(sops.ok("encrypt", "s.yaml", cwd=work, env=env))
    out = work / "out.yaml"
    assert ks(["sops", "decrypt", "--output", str(out), "theirs.yaml"], env=env, cwd=work) == 0
    assert out.read_bytes() == sops.ok("decrypt", "theirs.yaml", cwd=work, env=env)
    assert ks(["sops", "decrypt", "theirs.yaml"], cwd=work) == 128


def _one_group_config(path: Path, *recipients: str) -> None:
    path.write_text("creation_rules:\n  - path_regex: .*\n    age: " + ",".join(recipients) + "\n")


def test_sops_updatekeys_and_rotate_keep_kubeshield_files_readable(tmp_path, sops, ks, age_key) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    second = tmp_path / "second.txt"
    r2 = age_identity(second)
    _one_group_config(work / ".sops.yaml", age_key.recipient)
    (work / "s.yaml").write_text(SECRET)
    assert ks(["sops", "encrypt", "-i", "s.yaml"], cwd=work) == 0
    _one_group_config(work / ".sops.yaml", age_key.recipient, r2)
    sops.ok("updatekeys", "-y", "s.yaml", cwd=work)
    only_second = {"SOPS_AGE_KEY_FILE": str(second)}
    out = work / "out.yaml"
    assert ks(["sops", "decrypt", "--output", str(out), "s.yaml"], env=only_second, cwd=work) == 0
    assert b"password: hunter2" in out.read_bytes()
    before = (work / "s.yaml").read_bytes()
    sops.ok("rotate", "-i", "s.yaml", cwd=work)
    assert (work / "s.yaml").read_bytes() != before
    assert ks(["sops", "decrypt", "--output", str(out), "s.yaml"], env=only_second, cwd=work) == 0
    assert b"password: hunter2" in out.read_bytes()


def test_kubeshield_updatekeys_and_rotate_keep_sops_files_readable(tmp_path, sops, ks, age_key) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    second = tmp_path / "second.txt"
    r2 = age_identity(second)
    _one_group_config(work / ".sops.yaml", age_key.recipient)
    (work / "s.yaml").write_text(SECRET)
    sops.ok("encrypt", "-i", "s.yaml", cwd=work)
    _one_group_config(work / ".sops.yaml", age_key.recipient, r2)
    assert ks(["sops", "updatekeys", "-y", "s.yaml"], cwd=work) == 0
    only_second = {"SOPS_AGE_KEY_FILE": str(second)}
    assert b"password: hunter2" in sops.ok("decrypt", "s.yaml", cwd=work, env=only_second)
    before = (work / "s.yaml").read_bytes()
    assert ks(["sops", "rotate", "-i", "s.yaml"], cwd=work) == 0
    after = (work / "s.yaml").read_bytes()
    assert after != before
    assert b"password: hunter2" in sops.ok("decrypt", "s.yaml", cwd=work, env=only_second)
    assert b"password: hunter2" in sops.ok("decrypt", "s.yaml", cwd=work)
