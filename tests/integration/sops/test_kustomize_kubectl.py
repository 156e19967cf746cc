"""``kubeshield sops kustomize`` run by the real ``kubectl kustomize`` (v1.35), as a GitOps build would.

kubectl's embedded kustomize has ``--enable-alpha-plugins`` but no ``--enable-exec``, so it does not
run KRM exec functions (``config.kubernetes.io/function: exec``; the standalone ``kustomize build
--enable-alpha-plugins --enable-exec`` does). What it runs is the legacy exec plugin found under
``$XDG_CONFIG_HOME/kustomize/plugin/<group>/<version>/<kind>/<Kind>``, called with the generator's
config file as its argument: the mode tested here.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.kubeapi.fixtures import kubectl_binary

SECRET = (
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: prod\n"
    "data:\n  password: aHVudGVyMg==\nstringData:\n  user: admin\n"
)


def _overlay(tmp_path: Path, ks, age_key) -> tuple[Path, Path]:
    """An overlay whose generator is kubeshield, and an XDG_CONFIG_HOME holding the exec plugin."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    secret = overlay / "secret.enc.yaml"
    secret.write_text(SECRET)
    assert ks(["sops", "encrypt", "--age", age_key.recipient, "-i", str(secret)]) == 0
    assert "aHVudGVyMg==" not in secret.read_text()
    (overlay / "generator.yaml").write_text(
        "apiVersion: kubeshield.io/v1alpha1\nkind: SopsGenerator\nmetadata:\n  name: secrets\n"
        f"files:\n  - {secret.name}\n"
    )
    (overlay / "kustomization.yaml").write_text("generators:\n  - generator.yaml\n")
    # where kustomize looks: $XDG_CONFIG_HOME/kustomize/plugin/<group>/<version>/<lowercase kind>/<Kind>
    config_home = tmp_path / "config"
    plugin = (
        config_home
        / "kustomize"
        / "plugin"
        / "kubeshield.io"
        / "v1alpha1"
        / "sopsgenerator"
        / "SopsGenerator"
    )
    plugin.parent.mkdir(parents=True)
    plugin.write_text(f'#!/bin/sh\nexec "{Path(sys.executable).parent / "kubeshield"}" sops kustomize "$@"\n')
    plugin.chmod(0o755)
    return overlay, config_home


def _kustomize(overlay: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl_binary()), "kustomize", "--enable-alpha-plugins", str(overlay)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kubectl_kustomize_runs_the_exec_plugin_and_gets_the_decrypted_secret(
    tmp_path: Path, ks, age_key, home: Path
) -> None:
    overlay, config_home = _overlay(tmp_path, ks, age_key)
    done = _kustomize(
        overlay,
        {"HOME": str(home), "XDG_CONFIG_HOME": str(config_home), "SOPS_AGE_KEY_FILE": str(age_key.key_file)},
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    secrets = [d for d in docs if d.get("kind") == "Secret"]
    assert len(secrets) == 1, docs
    out = secrets[0]
    assert out["metadata"]["name"] == "db" and out["metadata"]["namespace"] == "prod"
    assert base64.b64decode(out["data"]["password"]) == b"hunter2"
    values = dict(out.get("stringData") or {})
    values.update({k: base64.b64decode(v).decode() for k, v in out["data"].items() if k != "password"})
    assert values == {"user": "admin"}
    assert "sops" not in out


def test_kubectl_kustomize_fails_closed_without_the_key(tmp_path: Path, ks, age_key, home: Path) -> None:
    overlay, config_home = _overlay(tmp_path, ks, age_key)
    done = _kustomize(
        overlay, {"HOME": str(home), "XDG_CONFIG_HOME": str(config_home)}
    )  # no age key anywhere
    assert done.returncode != 0
    assert "hunter2" not in done.stdout + done.stderr and "aHVudGVyMg==" not in done.stdout + done.stderr
