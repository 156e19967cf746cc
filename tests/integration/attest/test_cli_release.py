"""`kubeshield attest release-server` and `kubeshield attest request` as real processes on loopback,
and `attest verify --policy` through the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubeshield.attest_release.keysource import ReleasedKeyBackend
from kubeshield.cli import main
from kubeshield.keys.local import LocalKeyBackend
from tests.unit.attest._vectors import SGX_AT, vector

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


def start_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    LocalKeyBackend.create(path=tmp_path / "keyring").close()
    (tmp_path / "release.yaml").write_text(
        json.dumps(
            {
                "listen": "127.0.0.1:0",
                "resources": {
                    "kek": {"keyring": str(tmp_path / "keyring"), "policy": {"version": 1, "tee": ["sample"]}}
                },
            }
        )
    )
    proc = subprocess.Popen(
        [KUBESHIELD, "attest", "release-server", "--config", str(tmp_path / "release.yaml"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ready url="):
            return proc, line.split("=", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"release server did not start: {proc.communicate(timeout=10)[1]}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_request_gets_the_keyring_and_writes_it_0600(tmp_path):
    proc, url = start_server(tmp_path, "--allow-sample")
    try:
        out = tmp_path / "released.json"
        done = subprocess.run(
            [
                KUBESHIELD,
                "attest",
                "request",
                "--url",
                url,
                "--resource",
                "kek",
                "--tee",
                "sample",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "released kek" in done.stdout
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        secrets_b64 = [v["key"] for v in json.loads(out.read_bytes())["versions"]]
        assert all(k not in done.stdout + done.stderr for k in secrets_b64)  # the key is never printed
        assert (
            ReleasedKeyBackend(out.read_bytes()).key_id()
            == LocalKeyBackend(path=tmp_path / "keyring").key_id()
        )
    finally:
        err = stop(proc)
    assert "released resource=kek tee=sample" in err and "no protection" in err
    assert all(k not in err for k in secrets_b64)


def test_server_without_allow_sample_refuses_the_sample_tee(tmp_path):
    proc, url = start_server(tmp_path)
    try:
        done = subprocess.run(
            [
                KUBESHIELD,
                "attest",
                "request",
                "--url",
                url,
                "--resource",
                "kek",
                "--tee",
                "sample",
                "--out",
                str(tmp_path / "x"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop(proc)
    assert done.returncode == 1 and "sample TEE gives no protection" in done.stderr
    assert not (tmp_path / "x").exists()


def test_request_needs_a_tcti_for_tpm(tmp_path):
    done = subprocess.run(
        [
            KUBESHIELD,
            "attest",
            "request",
            "--url",
            "http://127.0.0.1:1",
            "--resource",
            "k",
            "--tee",
            "tpm",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--tcti" in done.stderr


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ("version: 1\ntcbStatus: [ConfigurationAndSWHardeningNeeded]\nclaims: {debug: {equals: false}}\n", 0),
        ("version: 1\ntcbStatus: [UpToDate]\n", 1),
    ],
)
def test_verify_with_a_policy(tmp_path, capsys, policy, code):
    (tmp_path / "q").write_bytes(vector("sgx_quote"))
    (tmp_path / "c").write_bytes(vector("sgx_quote_collateral.json"))
    (tmp_path / "p.yaml").write_text(policy)
    capsys.readouterr()
    rc = main(
        [
            "attest",
            "verify",
            "--evidence",
            str(tmp_path / "q"),
            "--collateral",
            str(tmp_path / "c"),
            "--policy",
            str(tmp_path / "p.yaml"),
            "--at",
            SGX_AT,
            "-o",
            "json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == code and doc["policy"]["allowed"] is (code == 0)
    if code:
        assert doc["ok"] is False and "tcbStatus" in doc["reason"]


def test_verify_flags_come_from_the_environment(tmp_path, capsys, monkeypatch):
    (tmp_path / "e").write_bytes(vector("tpm_evidence.json"))
    monkeypatch.setenv("KUBESHIELD_EVIDENCE", str(tmp_path / "e"))
    capsys.readouterr()
    assert main(["attest", "verify", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["tee"] == "tpm"


def test_verify_usage_errors(tmp_path):
    assert main(["attest", "verify", "--evidence", str(tmp_path / "missing")]) == 2
    (tmp_path / "e").write_bytes(b"x")
    assert main(["attest", "verify", "--evidence", str(tmp_path / "e"), "--at", "yesterday"]) == 2
    assert main(["attest", "verify", "--evidence", str(tmp_path / "e")]) == 1  # unknown TEE type
