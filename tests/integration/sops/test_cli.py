"""``kubeshield sops`` behaviour that users see: Kubernetes defaults, exit codes as sops uses them, bad
input refused without touching the file or printing a plaintext, edit, set/unset, exec-env/exec-file,
kustomize, the diff helper and the pre-commit check."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

SECRET = (
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: prod\n"
    "data:\n  password: aHVudGVyMg==\nstringData:\n  user: admin\n"
)


@pytest.fixture
def enc_secret(tmp_path: Path, ks, age_key) -> Path:
    plain = tmp_path / "secret.yaml"
    plain.write_text(SECRET)
    assert ks(["sops", "encrypt", "--age", age_key.recipient, "-i", str(plain)]) == 0
    return plain


def test_a_secret_gets_the_kubernetes_default_rule(enc_secret: Path, sops) -> None:
    text = enc_secret.read_text()
    assert "name: db" in text and "namespace: prod" in text
    assert "password: ENC[AES256_GCM" in text and "user: ENC[AES256_GCM" in text
    assert "encrypted_regex: ^(data|stringData)$" in text
    assert sops.ok("decrypt", str(enc_secret)).decode() == (
        "apiVersion: v1\nkind: Secret\nmetadata:\n    name: db\n    namespace: prod\n"
        "data:\n    password: aHVudGVyMg==\nstringData:\n    user: admin\n"
    )


def test_a_rule_leaving_secret_values_clear_warns(tmp_path: Path, ks, age_key, capsys) -> None:
    plain = tmp_path / "secret.yaml"
    plain.write_text(SECRET)
    out = tmp_path / "out.yaml"
    assert (
        ks(
            [
                "sops",
                "encrypt",
                "--age",
                age_key.recipient,
                "--unencrypted-regex",
                "^user$",
                "--output",
                str(out),
                str(plain),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "Secret db: stringData.user stays in plaintext" in err
    assert "admin" not in err


def test_already_encrypted_is_exit_203(enc_secret: Path, ks, age_key) -> None:
    before = enc_secret.read_bytes()
    assert ks(["sops", "encrypt", "--age", age_key.recipient, "-i", str(enc_secret)]) == 203
    assert enc_secret.read_bytes() == before


def test_dotenv_sops_prefixed_key_is_refused_like_sops(tmp_path: Path, ks, sops, age_key) -> None:
    env = tmp_path / "a.env"
    env.write_text("sops_token=abc\n")
    assert ks(["sops", "encrypt", "--age", age_key.recipient, str(env)]) == 203
    assert sops.run("encrypt", "--age", age_key.recipient, str(env)).returncode == 203


def test_no_master_key_is_exit_111(tmp_path: Path, ks) -> None:
    plain = tmp_path / "x.yaml"
    plain.write_text("a: 1\n")
    assert ks(["sops", "encrypt", str(plain)], cwd=tmp_path) == 111


def test_no_usable_key_is_exit_128_for_both(enc_secret: Path, ks, sops, tmp_path: Path) -> None:
    other = tmp_path / "other.txt"
    from tests.support.sops import age_identity

    age_identity(other)
    env = {"SOPS_AGE_KEY_FILE": str(other)}
    assert ks(["sops", "decrypt", str(enc_secret)], env=env) == 128
    assert sops.run("decrypt", str(enc_secret), env=env).returncode == 128


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda t: re.sub(r"(password: ENC\[AES256_GCM,data:)[^,]*", r"\1!!!", t), 25),
        (lambda t: re.sub(r"(user: )ENC\[[^\n]*", r"\1plainsecret-value", t), 25),
        (lambda t: t.replace("type:str]", "type:weird]", 1), 25),
        (lambda t: re.sub(r"(password: ENC\[AES256_GCM,data:[^,]*,iv:[^,]*,tag:)[^,]*", r"\1AAAA", t), 25),
        (lambda t: re.sub(r"\n    mac: [^\n]*", "", t), 51),
    ],
    ids=["bad-base64", "clear-where-encrypted", "unknown-type", "short-tag", "missing-mac"],
)
def test_malformed_files_fail_like_sops_and_name_the_path(
    enc_secret: Path, ks, sops, capsys, edit, code
) -> None:
    enc_secret.write_text(edit(enc_secret.read_text()))
    before = enc_secret.read_bytes()
    assert sops.run("decrypt", str(enc_secret)).returncode == code
    assert ks(["sops", "decrypt", str(enc_secret)]) == code
    err = capsys.readouterr().err
    assert "plainsecret-value" not in err and "aHVudGVy" not in err and "hunter2" not in err
    if code == 25:
        assert "data:" in err or "stringData:" in err  # the path, not the value
    assert ks(["sops", "decrypt", "-i", str(enc_secret)]) == code
    assert enc_secret.read_bytes() == before


def test_conflicting_sops_yaml_rules_are_refused(tmp_path: Path, ks, age_key, sops) -> None:
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: .*\n"
        f"    age: {age_key.recipient}\n    encrypted_regex: a\n    unencrypted_suffix: b\n"
    )
    plain = tmp_path / "x.yaml"
    plain.write_text("a: 1\n")
    assert ks(["sops", "encrypt", "x.yaml"], cwd=tmp_path) == 1
    assert sops.run("encrypt", "x.yaml", cwd=tmp_path).returncode == 1
    assert plain.read_text() == "a: 1\n"


def test_sops_yaml_is_found_from_the_working_directory_up(tmp_path: Path, ks, age_key, sops) -> None:
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: secrets/.*\\.yaml$\n"
        f"    age: {age_key.recipient}\n    encrypted_regex: ^password$\n"
    )
    deep = tmp_path / "secrets" / "team"
    deep.mkdir(parents=True)
    (deep / "x.yaml").write_text("user: u\npassword: p\n")
    assert ks(["sops", "encrypt", "-i", "secrets/team/x.yaml"], cwd=tmp_path) == 0
    text = (deep / "x.yaml").read_text()
    assert "user: u" in text and "password: ENC[" in text


def test_edit_reencrypts_only_what_changed_and_removes_the_temp_file(
    enc_secret: Path, ks, tmp_path: Path, sops
) -> None:
    seen = tmp_path / "seen.txt"
    script = tmp_path / "editor.py"
    script.write_text(
        "import os, stat, sys\n"
        "p = sys.argv[1]\n"
        f"open({str(seen)!r}, 'w').write(p + '\\n' + oct(stat.S_IMODE(os.stat(p).st_mode)))\n"
        "t = open(p).read().replace('user: admin', 'user: root')\n"
        "open(p, 'w').write(t)\n"
    )
    before = enc_secret.read_text()
    password_line = next(line for line in before.splitlines() if "password:" in line)
    assert ks(["sops", "edit", str(enc_secret)], env={"SOPS_EDITOR": f"{sys.executable} {script}"}) == 0
    path, mode = seen.read_text().splitlines()
    assert mode == "0o600"
    if os.path.isdir("/dev/shm"):
        assert path.startswith("/dev/shm/")
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    after = enc_secret.read_text()
    assert password_line in after.splitlines()  # unchanged value: same IV, same ciphertext
    assert b"user: root" in sops.ok("decrypt", str(enc_secret))


def test_edit_without_changes_is_exit_200_and_writes_nothing(enc_secret: Path, ks, tmp_path: Path) -> None:
    before = enc_secret.read_bytes()
    assert ks(["sops", "edit", str(enc_secret)], env={"SOPS_EDITOR": "true"}) == 200
    assert enc_secret.read_bytes() == before


def test_a_failing_editor_leaves_the_file_and_no_temp_file(enc_secret: Path, ks, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script = tmp_path / "fail.sh"
    script.write_text(f'#!/bin/sh\necho "$1" > {seen}\nexit 3\n')
    script.chmod(0o755)
    before = enc_secret.read_bytes()
    assert ks(["sops", "edit", str(enc_secret)], env={"SOPS_EDITOR": str(script)}) == 1
    assert enc_secret.read_bytes() == before
    assert not os.path.exists(seen.read_text().strip())


def test_set_and_unset(enc_secret: Path, ks, sops, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('"n3w"'))
    assert ks(["sops", "set", "--value-stdin", str(enc_secret), '["stringData"]["token"]']) == 0
    out = sops.ok("decrypt", str(enc_secret)).decode()
    assert "token: n3w" in out and "user: admin" in out
    assert ks(["sops", "unset", str(enc_secret), '["stringData"]["user"]']) == 0
    assert "user:" not in sops.ok("decrypt", str(enc_secret)).decode()


def test_set_refuses_a_value_on_the_command_line(enc_secret: Path, ks) -> None:
    before = enc_secret.read_bytes()
    assert ks(["sops", "set", str(enc_secret), '["stringData"]["x"]', '"secret"']) == 7
    assert enc_secret.read_bytes() == before


def test_bad_tree_path_is_exit_91(enc_secret: Path, ks) -> None:
    assert ks(["sops", "decrypt", "--extract", "data.password", str(enc_secret)]) == 91


def test_exec_env_and_exec_file(tmp_path: Path, ks, age_key) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("DB_PASSWORD=hunter2\n")
    assert ks(["sops", "encrypt", "--age", age_key.recipient, "-i", str(env_file)]) == 0
    with pytest.raises(SystemExit) as exited:
        ks(["sops", "exec-env", str(env_file), 'test "$DB_PASSWORD" = hunter2'])
    assert exited.value.code == 0
    with pytest.raises(SystemExit) as exited:
        ks(["sops", "exec-env", str(env_file), 'test "$DB_PASSWORD" = wrong'])
    assert exited.value.code == 1
    seen = tmp_path / "seen"
    with pytest.raises(SystemExit) as exited:
        ks(["sops", "exec-file", str(env_file), f"grep -q DB_PASSWORD=hunter2 {{}} && echo {{}} > {seen}"])
    assert exited.value.code == 0
    assert not os.path.exists(seen.read_text().strip())


def test_kustomize_krm_function_decrypts_the_listed_files(enc_secret: Path, ks, monkeypatch, capsys) -> None:
    resource_list = {
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}],
        "functionConfig": {
            "apiVersion": "kubeshield.io/v1alpha1",
            "kind": "SopsGenerator",
            "files": [enc_secret.name],
        },
    }
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(resource_list)))
    assert ks(["sops", "kustomize"], cwd=enc_secret.parent) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert [i["kind"] for i in out["items"]] == ["ConfigMap", "Secret"]
    secret = out["items"][1]
    assert secret["data"] == {"password": "aHVudGVyMg=="} and secret["stringData"] == {"user": "admin"}
    assert "sops" not in secret


def test_kustomize_legacy_generator(enc_secret: Path, ks, tmp_path: Path, capsys) -> None:
    config = tmp_path / "generator.yaml"
    config.write_text(
        f"apiVersion: kubeshield.io/v1alpha1\nkind: SopsGenerator\nfiles: [{enc_secret.name}]\n"
    )
    assert ks(["sops", "kustomize", str(config)], cwd=enc_secret.parent) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs[0]["metadata"]["name"] == "db" and docs[0]["stringData"]["user"] == "admin"


def test_diff_helper_shows_plaintext_or_the_file(enc_secret: Path, ks, capsysbinary, tmp_path: Path) -> None:
    assert ks(["sops", "diff-helper", str(enc_secret)]) == 0
    out = capsysbinary.readouterr()
    assert b"user: admin" in out.out
    from tests.support.sops import age_identity

    other = tmp_path / "other.txt"
    age_identity(other)
    assert ks(["sops", "diff-helper", str(enc_secret)], env={"SOPS_AGE_KEY_FILE": str(other)}) == 0
    out = capsysbinary.readouterr()
    assert out.out == enc_secret.read_bytes()
    assert b"shown encrypted" in out.err


def test_check_refuses_plaintext_secrets(tmp_path: Path, enc_secret: Path, ks, capsys) -> None:
    plain = tmp_path / "plain-secret.yaml"
    plain.write_text(SECRET)
    config = tmp_path / "cm.yaml"
    config.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    assert ks(["sops", "check", str(enc_secret), str(config)]) == 0
    assert ks(["sops", "check", str(plain), str(enc_secret)]) == 1
    err = capsys.readouterr().err
    assert "plain-secret.yaml: Secret db is not encrypted" in err and "admin" not in err


def test_pre_commit_hook_manifest() -> None:
    root = Path(__file__).resolve().parents[3]
    hooks = yaml.safe_load((root / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "kubeshield-sops-check")
    assert hook["entry"] == "kubeshield sops check" and hook["language"] == "python"
    assert re.search(hook["files"], "deploy/secret.enc.yaml") and not re.search(hook["files"], "main.py")


def test_version_and_output_json_do_not_leak(enc_secret: Path, ks, capsys, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    assert ks(["sops", "decrypt", "--output-type", "json", "--output", str(out), str(enc_secret)]) == 0
    assert json.loads(out.read_text())["stringData"]["user"] == "admin"
