"""Load a YAML example the way its consumer would, and say what it was loaded as.

One rule for every YAML example of README.md, docs/*.md and deploy/ (tests/integration/docs/
test_yaml_examples.py): a document is

* a **fragment** when its first line is ``# fragment`` (``# fragment: ...``): YAML-parsed only, and must
  not be empty;
* a **named file** when its first line is a comment naming a file whose consumer we know:
  ``.sops.yaml`` (kubeshield.sops's rule loader), ``kustomization.yaml``, ``.pre-commit-config.yaml``
  (its hooks must be ones this repository provides), ``release.yaml`` (the attested key-release
  server's loader), ``*values*.yaml`` (rendered by the real helm with the chart in deploy/helm, every
  rendered object validated);
* otherwise recognised by its shape: a Kubernetes object (``apiVersion`` + ``kind``; an
  EncryptionConfiguration goes through kubeshield.config.encryption, kubeshield's own kinds through their
  loaders, everything else through kubernetes-validate), a kubeshield.yaml (only its sections at the
  top: kubeshield.config's loader), a custody policy (``version`` + ``rules``), an attestation policy
  (``version`` + ``tee``/``tcbStatus``/``claims``/...).

Anything else is an error that says how to mark it, so a new example cannot go unchecked. A document of
comments only (a file's header) is skipped; a value elided with ``...`` (``exeSha256: 3f0c...``,
``age1qz...``) is filled with a valid value of its kind first (hex to 64 digits, a fresh age recipient),
so that everything else about the example is checked.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kubeshield.config.settings import Settings

# the top-level sections of kubeshield.yaml (kms, keys, seal, ...): a new section is recognised at once
_CONFIG_SECTIONS = {f.name for f in dataclasses.fields(Settings)}

__all__ = ["REPO", "load_example", "split_documents"]

REPO = Path(__file__).resolve().parents[3]
_FIRST_COMMENT = re.compile(r"\A\s*#\s*(?P<text>[^\n]*)")
_KUSTOMIZE_FIELDS = {
    "apiVersion", "kind", "resources", "generators", "transformers", "validators", "components",
    "namespace", "namePrefix", "nameSuffix", "labels", "commonLabels", "commonAnnotations", "patches",
    "images", "replicas", "configMapGenerator", "secretGenerator", "generatorOptions", "crds",
    "openapi", "buildMetadata", "helmCharts", "replacements", "sortOptions",
}  # fmt: skip
_ATTEST_POLICY_KEYS = {"tee", "tcbStatus", "rejectAdvisories", "claims"}


def split_documents(text: str) -> list[str]:
    """The documents of a YAML text (``---`` lines separate them), each with its own leading comments."""
    return [doc for doc in re.split(r"^---[ \t]*$\n?", text, flags=re.M) if doc.strip()]


def fill_elisions(doc: str) -> str:
    """``age1...``-style and ``3f0c...``-style elided values, filled with valid ones of their kind."""
    import pyrage

    doc = re.sub(
        r"\bage1[0-9a-z]*\.\.\.[\w-]*", lambda _: str(pyrage.x25519.Identity.generate().to_public()), doc
    )
    return re.sub(r"\b([0-9a-f]{2,63})\.\.\.", lambda m: m[1] + "0" * (64 - len(m[1])), doc)


def load_example(text: str, *, where: str) -> list[str]:
    """Load every document of ``text``; return what each was loaded as. Raises AssertionError naming
    ``where`` (file:line) for anything its consumer refuses, or that cannot be classified."""
    kinds = []
    for raw in split_documents(text):
        doc = fill_elisions(raw)
        if yaml.safe_load(doc) is None and not doc.lstrip().startswith("# fragment"):
            if all(not line.strip() or line.lstrip().startswith("#") for line in doc.splitlines()):
                continue  # a header of comments only
        try:
            kinds.append(_load_document(doc, where))
        except AssertionError:
            raise
        except Exception as exc:  # the consumer's own error, named
            raise AssertionError(f"{where}: refused: {type(exc).__name__}: {exc}") from exc
    if not kinds:
        raise AssertionError(f"{where}: an empty YAML example")
    return kinds


def _load_document(doc: str, where: str) -> str:
    data = yaml.safe_load(doc)
    comment = _FIRST_COMMENT.match(doc)
    first = comment["text"].strip() if comment else ""
    if first.startswith("fragment"):
        if data is None:
            raise AssertionError(f"{where}: an empty fragment")
        return "fragment"
    named = first.split()[0] if first else ""
    if named == ".sops.yaml":
        return _sops_rules(doc)
    if named == "kustomization.yaml":
        return _kustomization(data, where)
    if named == ".pre-commit-config.yaml":
        return _pre_commit(data, where)
    if named == "release.yaml":
        return _release_config(doc)
    if re.fullmatch(r"[\w.-]*values[\w.-]*\.ya?ml", named) or named == "values.yaml":
        return _helm_values(doc, where)
    if not isinstance(data, dict):
        raise AssertionError(f"{where}: not a mapping; mark it with a first line `# fragment`")
    if "apiVersion" in data and "kind" in data:
        return _kubernetes(data, where)
    if data and set(data) <= _CONFIG_SECTIONS:
        from kubeshield.config import settings_from_mapping

        settings_from_mapping(data)
        return "kubeshield.yaml"
    if "version" in data and "rules" in data:
        from kubeshield.custody.policy import parse_policy as custody_policy

        custody_policy(doc, source=where)
        return "custody policy"
    if "version" in data and set(data) & _ATTEST_POLICY_KEYS:
        from kubeshield.attest.policy import parse_policy as attest_policy

        attest_policy(doc, source=where)
        return "attestation policy"
    raise AssertionError(
        f"{where}: cannot tell what this YAML example is (top-level keys {sorted(map(str, data))}): make "
        "it a complete kubeshield.yaml, Kubernetes object or policy, name its file in a first-line comment "
        "(`# .sops.yaml`), or mark it `# fragment`"
    )


def _kubernetes(data: dict[str, Any], where: str) -> str:
    kind = data["kind"]
    if kind == "EncryptionConfiguration":
        from kubeshield.config.encryption import parse_encryption_config

        parse_encryption_config(data)
        return "EncryptionConfiguration"
    if kind == "SopsGenerator" and data["apiVersion"] == "kubeshield.io/v1alpha1":
        # kubeshield sops kustomize reads `files` (sops/gitops.py); the function annotation runs it
        files = data.get("files")
        assert isinstance(files, list) and files and all(isinstance(f, str) for f in files), where
        function = yaml.safe_load(data["metadata"]["annotations"]["config.kubernetes.io/function"])
        assert function["exec"]["path"], where
        return "SopsGenerator"
    from tests.unit.deploy.test_manifests import _validate

    _validate(data)
    return f"Kubernetes {kind}"


def _sops_rules(doc: str) -> str:
    from kubeshield.sops.rules import load_rules

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ".sops.yaml"
        path.write_text(doc)
        rules = load_rules(path)
    assert rules, "a .sops.yaml without creation_rules"
    return ".sops.yaml"


def _kustomization(data: object, where: str) -> str:
    assert isinstance(data, dict) and data, f"{where}: a kustomization is a mapping"
    unknown = set(data) - _KUSTOMIZE_FIELDS
    assert not unknown, f"{where}: not kustomization fields: {sorted(unknown)}"
    return "kustomization.yaml"


def _pre_commit(data: object, where: str) -> str:
    assert isinstance(data, dict) and isinstance(data.get("repos"), list), f"{where}: needs repos"
    provided = {h["id"] for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    for repo in data["repos"]:
        assert {"repo", "rev", "hooks"} <= set(repo), f"{where}: a repo needs repo, rev and hooks"
        for hook in repo["hooks"]:
            assert hook["id"] in provided, f"{where}: hook {hook['id']!r} is not in .pre-commit-hooks.yaml"
    return ".pre-commit-config.yaml"


def _release_config(doc: str) -> str:
    from kubeshield.attest_release.server import load_release_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "release.yaml"
        path.write_text(doc)
        config = load_release_config(path)
    assert config.resources
    return "release.yaml"


def _helm_values(doc: str, where: str) -> str:
    from tests.unit.deploy.test_manifests import _docs_text, _render, _validate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "values.yaml"
        path.write_text(doc)
        rendered = _docs_text(_render("-f", str(path)).stdout)
    assert rendered, f"{where}: the chart rendered nothing"
    for obj in rendered:
        _validate(obj)
    return "helm values"
