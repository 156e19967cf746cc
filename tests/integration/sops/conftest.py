"""Fixtures: the real sops binary with an isolated HOME, an age identity, and the kubeshield CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.sops import Sops, age_identity, kubeshield_cli, sops_binary


@dataclass
class AgeKey:
    key_file: Path
    recipient: str


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def age_key(tmp_path: Path) -> AgeKey:
    key_file = tmp_path / "keys.txt"
    return AgeKey(key_file, age_identity(key_file))


@pytest.fixture
def sops(home: Path, age_key: AgeKey) -> Sops:
    return Sops(binary=sops_binary(), home=home, env={"SOPS_AGE_KEY_FILE": str(age_key.key_file)})


@pytest.fixture
def ks(home: Path, age_key: AgeKey, monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``ks(argv, env=...)`` runs kubeshield in-process with the same key environment as ``sops``."""

    def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        full = {"HOME": str(home), "SOPS_AGE_KEY_FILE": str(age_key.key_file), **(env or {})}
        return kubeshield_cli(argv, env=full, monkeypatch=monkeypatch, cwd=cwd)

    return run
