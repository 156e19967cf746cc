"""``python -m kubeshield`` and ``python -m kubeshield.cli`` work, and so does the Gramine template's line."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "gramine" / "kubeshield-custody.manifest.template"


@pytest.mark.parametrize("module", ["kubeshield", "kubeshield.cli"])
def test_python_dash_m_shows_the_cli(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"Usage: python -m {module} [OPTIONS] COMMAND" in result.stdout
    for group in ("keys", "kms", "etcd", "custody"):
        assert re.search(rf"^  {group}\s", result.stdout, re.MULTILINE), group


def test_python_dash_m_keeps_the_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubeshield.cli", "no-such-group"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "No such command" in result.stderr


def _gramine_invocation() -> list[str]:
    """The arguments after the manifest name in the template's ``gramine-sgx`` example."""
    lines = TEMPLATE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "gramine-sgx kubeshield-custody" in line)
    text = ""
    for line in lines[start:]:
        part = line.lstrip("#").strip()
        text += " " + part.rstrip("\\")
        if not part.endswith("\\"):
            break
    words = shlex.split(text)
    return words[words.index("kubeshield-custody") + 1 :]


def test_the_gramine_template_invocation_names_a_real_module_command_and_flags() -> None:
    args = _gramine_invocation()
    assert args[:2] == ["-m", "kubeshield.cli"]
    # --help after every documented flag: click refuses an unknown flag (exit 2) before printing help
    result = subprocess.run([sys.executable, *args, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m kubeshield.cli custody serve" in result.stdout


def test_the_gramine_template_says_the_socket_cannot_reach_the_host() -> None:
    text = TEMPLATE.read_text()
    assert "UNTESTED" in text and "host process (the kms plugin) cannot connect" in text
