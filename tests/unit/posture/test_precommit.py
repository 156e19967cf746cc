"""The pre-commit hook entry runs the scan on the staged files exactly as pre-commit calls it, and the
scan says how to install what it misses."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def test_the_hook_entry_scans_the_files_it_is_given(tmp_path: Path) -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "kubeshield-scan"]
    assert hook["pass_filenames"] is True and hook["language"] == "python"
    argv = shlex.split(hook["entry"])
    argv[0] = str(BIN / argv[0])
    clean = tmp_path / "README.md"
    clean.write_text("nothing here\n")
    leaked = tmp_path / "secret.yaml"
    leaked.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {password: hunter2hunter2}\n"
    )
    ok = subprocess.run([*argv, str(clean)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = subprocess.run([*argv, str(clean), str(leaked)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "KS-SCAN-SECRET" in refused.stdout
    assert "hunter2hunter2" not in refused.stdout


def test_a_missing_re2_names_the_install_line() -> None:
    code = (
        "import sys; sys.modules['re2'] = None\n"
        "from kubeshield.cli import main\n"
        "sys.exit(main(['posture', 'scan', '.']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install 'kubeshield[posture]'" in result.stderr
