"""The root command loads its groups lazily, yet lists, suggests and exposes every one of them."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from kubeshield.cli import _GROUPS, cli

_PROBE = """
import json, sys
from kubeshield.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.startswith("kubeshield."))}))
"""


def _modules_after(*argv: str) -> tuple[int, set[str]]:
    """Run ``kubeshield argv`` in a fresh interpreter: its exit code and the kubeshield modules loaded."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True, timeout=120
    )
    last = json.loads(result.stdout.strip().splitlines()[-1])
    return int(last["code"]), set(last["modules"])


def test_a_sops_command_imports_only_the_sops_group() -> None:
    code, modules = _modules_after("sops", "--help")
    assert code == 0
    assert "kubeshield.cli.sops" in modules
    others = {f"kubeshield.cli.{name}" for name in _GROUPS if name != "sops"}
    assert not others & modules, sorted(others & modules)
    # nor the feature packages behind them, nor the key registry (plain age keys do not need it)
    for package in ("kubeshield.kms", "kubeshield.attest", "kubeshield.posture", "kubeshield.keys"):
        assert package not in modules


def test_the_root_help_lists_every_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:", 1)[1].split()
    for name in _GROUPS:
        assert name in commands, name


def test_every_group_is_in_commands_and_resolves() -> None:
    assert sorted(cli.commands) == sorted(_GROUPS)
    ctx = cli.make_context("kubeshield", ["sops"], resilient_parsing=True)
    for name in _GROUPS:
        assert cli.get_command(ctx, name) is cli.commands[name]
    assert cli.get_command(ctx, "nope") is None


def test_a_mistyped_group_is_a_usage_error_with_a_suggestion() -> None:
    code, _modules = _modules_after("sop")
    assert code == 2
    result = CliRunner().invoke(cli, ["sop"])
    assert result.exit_code == 2
    assert "No such command 'sop'" in result.output and "sops" in result.output
