"""kubeconfig_namespace: client-go's merge rules for the current context's namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kubeshield.cli._kubeconfig import kubeconfig_namespace
from kubeshield.errors import ConfigError


def _write(path: Path, *, current: str | None, contexts: dict[str, str | None]) -> Path:
    doc: dict[str, object] = {
        "contexts": [
            {"name": n, "context": {"cluster": "c"} | ({"namespace": ns} if ns else {})}
            for n, ns in contexts.items()
        ]
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


def test_first_current_context_and_first_context_definition_win(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", current=None, contexts={"work": "from-a"})
    b = _write(tmp_path / "b", current="work", contexts={"work": "from-b"})
    c = _write(tmp_path / "c", current="other", contexts={"other": "from-c"})
    env = {"KUBECONFIG": os.pathsep.join(map(str, (a, b, c)))}
    assert kubeconfig_namespace(env) == "from-a"  # current-context from b, its definition from a


def test_no_file_or_no_namespace_gives_none(tmp_path: Path) -> None:
    assert kubeconfig_namespace({"KUBECONFIG": str(tmp_path / "missing")}) is None
    nons = _write(tmp_path / "k", current="work", contexts={"work": None})
    assert kubeconfig_namespace({"KUBECONFIG": str(nons)}) is None
    unknown = _write(tmp_path / "u", current="gone", contexts={"work": "x"})
    assert kubeconfig_namespace({"KUBECONFIG": str(unknown)}) is None


def test_home_kubeconfig_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    _write(tmp_path / ".kube" / "config", current="work", contexts={"work": "home-ns"})
    assert kubeconfig_namespace({}) == "home-ns"


def test_invalid_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("contexts: [unclosed\n")
    with pytest.raises(ConfigError, match="bad cannot be read"):
        kubeconfig_namespace({"KUBECONFIG": str(bad)})
