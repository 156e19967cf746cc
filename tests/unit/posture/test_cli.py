"""``kubeshield posture pss check`` and the posture group's usage rules, through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubeshield.cli import main

GOOD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "ok"},
    "spec": {
        "template": {
            "spec": {
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {
                        "name": "a",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            }
        }
    },
}
BAD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bad"},
    "spec": {"hostPID": True, "containers": [{"name": "a"}]},
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pss_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "all.yaml"
    f.write_text(
        yaml.safe_dump_all([GOOD, BAD, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}])
    )
    code, out, _ = run(
        capsys, "posture", "pss", "check", str(f), "--level", "baseline", "--version", "v1.20", "-o", "json"
    )
    assert code == 1
    docs = json.loads(out)
    assert docs[0] == {
        "file": str(f),
        "name": "ok",
        "kind": "Deployment",
        "level": "baseline",
        "version": "v1.20",
        "allowed": True,
        "violations": [],
    }
    assert docs[1]["allowed"] is False
    assert docs[1]["violations"] == [{"check": "hostNamespaces", "message": "host namespaces (hostPID)"}]
    assert docs[2]["allowed"] is True and docs[2]["skipped"] == "ConfigMap c carries no pod template"
    f.write_text(yaml.safe_dump(GOOD))
    code, out, _ = run(capsys, "posture", "pss", "check", str(f), "--level", "restricted")
    assert code == 0 and out.startswith("allowed ") and "(restricted:latest)" in out


def test_pss_check_text_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(BAD))
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\nspec: [\n")
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text(yaml.safe_dump({**BAD, "spec": {"hostPID": "yes"}}))
    monkeypatch.setenv("KUBESHIELD_LEVEL", "baseline")
    code, out, err = run(
        capsys,
        "posture",
        "pss",
        "check",
        str(bad),
        str(broken),
        str(malformed),
        str(tmp_path / "missing.yaml"),
    )
    assert code == 1
    assert (
        "DENIED  " in out
        and 'violates PodSecurity "baseline:latest"' in out
        and "hostNamespaces: host namespaces (hostPID)" in out
    )
    assert "spec.hostPID must be a boolean" in out
    assert f"{broken}:" in err and "malformed YAML" in err
    assert "missing.yaml: cannot read" in err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(GOOD))
    assert run(capsys, "posture", "pss", "check", str(f), "--level", "baseline", "--version", "1.25")[0] == 2
    assert run(capsys, "posture", "pss", "check", str(f), "--level", "privileged")[0] == 2
    assert run(capsys, "posture", "--from-dir", str(tmp_path), "--kubeconfig", str(f))[0] == 2
    code, _, err = run(capsys, "posture", "pss", "webhook", "--tls-cert", str(f), "--tls-key", str(f))
    assert code == 2 and "exactly one of --namespaces FILE|DIR, --kubeconfig FILE, --in-cluster" in err


def test_a_missing_kubeconfig_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "posture", "--kubeconfig", str(tmp_path / "kubeconfig"))
    assert code == 1 and f"kubeconfig {tmp_path / 'kubeconfig'} does not exist" in err
