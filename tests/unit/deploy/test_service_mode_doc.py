"""docs/service-mode.md as written: its values example renders with the real helm, and every `kubeshield`
command it shows names only flags that command has (so the guide and the CLI cannot drift apart).

The commands themselves run against real processes in tests/integration/service/test_chart_service.py
(publish with `keys sync --from local`, `keys rotate --etcd-endpoints`, `keys sync --from etcd`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from click.testing import CliRunner

from kubeshield.cli import cli
from tests.unit.deploy.test_manifests import _docs_text, _render

DOC = Path(__file__).resolve().parents[3] / "docs" / "service-mode.md"
_BLOCK = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.S | re.M)


def _blocks(kind: str) -> list[str]:
    """The fenced blocks of ``kind``, dedented when nested in a list item."""
    out = []
    for indent, lang, body in _BLOCK.findall(DOC.read_text()):
        if lang == kind:
            out.append("".join(line[len(indent) :] for line in body.splitlines(keepends=True)))
    return out


def _commands() -> list[list[str]]:
    out = []
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("kubeshield "):
                out.append(shlex.split(line.split("#", 1)[0]))
    return out


def test_every_kubeshield_command_in_the_guide_names_real_flags() -> None:
    commands = _commands()
    assert {tuple(c[1:3]) for c in commands} >= {("keys", "init"), ("keys", "sync"), ("keys", "rotate")}
    for argv in commands:
        help_text = CliRunner().invoke(cli, [*argv[1:3], "--help"]).output
        assert "Usage:" in help_text, argv
        for word in argv[3:]:
            if word.startswith("--"):
                assert f"{word.split('=')[0]} " in help_text, f"{word} is not a flag of {' '.join(argv[:3])}"


def test_the_values_example_renders_and_gives_the_relay_every_replica(tmp_path: Path) -> None:
    (example,) = _blocks("yaml")
    values = yaml.safe_load(example)
    path = tmp_path / "my-values.yaml"
    path.write_text(example)
    docs = _docs_text(_render("-f", str(path)).stdout)
    assert sum(d["kind"] == "Deployment" for d in docs) == len(values["replicas"])
    (pod,) = _docs_text(
        _render(
            "-f", str(path), "--set", "relay.staticPod=true", "--show-only", "templates/relay-static-pod.yaml"
        ).stdout
    )
    args = pod["spec"]["containers"][0]["args"]
    expected = ",".join(f"https://{r['address']}:9443" for r in values["replicas"])
    assert f"--upstream={expected}" in args
