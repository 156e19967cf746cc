"""docs/service-mode.md as written: its values example renders with the real helm and gives the relay every
replica. (That every `kubeshield` command it shows parses with the real CLI is checked for every guide
by tests/integration/docs/test_doc_commands.py; the commands themselves run against real processes in
tests/integration/service/test_chart_service.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

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
