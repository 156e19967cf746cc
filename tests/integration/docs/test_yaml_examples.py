"""Every YAML example in README.md and docs/*.md, and every YAML file under deploy/, is loaded by what
consumes it (issue 16 item 10): kubeshield's own config loader, its EncryptionConfiguration, policy,
SOPS-rule and release-server loaders, kubernetes-validate, and the real helm for chart values.

The guides are found by glob, so a new guide's examples are checked without touching this file; the rule
for what each example is loaded as is in tests/integration/docs/_examples.py. Examples are fenced
``yaml`` blocks and the YAML files a shell block writes with a heredoc (``cat > x.yaml <<'EOF'``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.docs._examples import REPO, load_example
from tests.support.docs import fenced_blocks, shell_commands

GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_HEREDOC_YAML = re.compile(
    r"\A[^\n]*>\s*(?P<target>\S+\.ya?ml)\s+<<-?\s*'?(?P<word>\w+)'?[^\n]*\n(?P<body>.*)\n(?P=word)\Z", re.S
)


def _examples() -> list[tuple[str, str]]:
    found = []
    for guide in GUIDES:
        for block in fenced_blocks(guide):
            if block.lang in ("yaml", "yml"):
                found.append((block.where, block.body))
            elif block.lang in ("sh", "bash", "shell"):
                for command in shell_commands(block.body):
                    m = _HEREDOC_YAML.match(command)
                    if m:  # the body, without its closing delimiter line
                        found.append((f"{block.where} ({m['target']})", m["body"] + "\n"))
    return found


EXAMPLES = _examples()
DEPLOY = sorted(
    p
    for p in (REPO / "deploy").rglob("*")
    if p.suffix in (".yaml", ".yml") and "templates" not in p.relative_to(REPO / "deploy").parts
)


def test_the_examples_are_found() -> None:
    """The collection itself: the guides we know have examples of each kind, and none is lost."""
    where = {w.split(":")[0] for w, _ in EXAMPLES}
    assert {"README.md", "backup.md", "backends.md", "service-mode.md"} <= where
    assert any("(/etc/kubeshield/kubeshield.yaml)" in w for w, _ in EXAMPLES)  # heredocs in backends.md
    assert len(EXAMPLES) >= 15


@pytest.mark.parametrize(("where", "text"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_yaml_example_in_the_guides_loads(where: str, text: str) -> None:
    assert load_example(text, where=where)


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    from tests.unit.deploy.test_manifests import _helm as find_helm

    helm = find_helm()
    if helm is None:
        pytest.fail("helm is not installed: run `make tools`", pytrace=False)
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("path", DEPLOY, ids=[str(p.relative_to(REPO)) for p in DEPLOY])
def test_every_yaml_file_under_deploy_loads(path: Path) -> None:
    where = str(path.relative_to(REPO))
    if path.name == "Chart.yaml":  # the chart as helm itself checks it (metadata, values, templates)
        result = _helm("lint", "--strict", str(path.parent))
        assert result.returncode == 0 and "0 chart(s) failed" in result.stdout, result.stdout + result.stderr
        return
    if path.name == "values.yaml" and (path.parent / "Chart.yaml").exists():
        assert load_example("# values.yaml\n" + path.read_text(), where=where) == ["helm values"]
        return
    kinds = load_example(path.read_text(), where=where)
    assert "fragment" not in kinds, f"{where}: a file under deploy/ is used as it is, never a fragment"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kms:\n  socket: /x.sock\n  healthAdr: 127.0.0.1:8081\n", "kms.healthAdr: unknown field"),
        ("keys:\n  backend: transit\n", "keys.transit"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, imag: x}]}\n",
            "imag",
        ),
        (
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
            "  - resources: [secrets]\n    providers: [{kms: {apiVersion: v2, name: k, endpoint: unix://x.sock}}]\n",
            "has no socket path",
        ),
        ("version: 1\nrules: [{name: r, exeSha256: abc}]\n", "uid"),
        ("replicas: 3\nimage: x\n", "cannot tell what this YAML example is"),
        ("# fragment\n", "an empty fragment"),
    ],
)
def test_a_wrong_example_is_refused(text: str, message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)) as info:
        load_example(text, where="guide.md:1")
    assert "guide.md:1" in str(info.value)


def test_a_fragment_is_still_parsed() -> None:
    with pytest.raises(yaml.YAMLError):
        load_example("# fragment\nspec: [unclosed\n", where="guide.md:1")
