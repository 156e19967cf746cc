"""GitOps helpers: the kustomize KRM function, the ``git diff`` textconv helper, the pre-commit check.

* :func:`kustomize_resource_list` is an exec KRM function (what KSOPS does): it reads a
  ``ResourceList`` whose ``functionConfig`` lists ``files``, decrypts them, and returns the list with the
  decrypted resources appended. :func:`kustomize_legacy` serves the legacy exec-plugin form.
* :func:`textconv` prints a decrypted view of a SOPS file for ``git diff`` (the file itself when it
  cannot be decrypted, with a note on stderr, so diffs never break).
* :func:`check_paths` finds Kubernetes Secret manifests that would be committed with plaintext values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubeshield.sops.document import decrypt_document, parse_encrypted, recover_data_key
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys.base import KeyEnv
from kubeshield.sops.metadata import to_plain
from kubeshield.sops.ops import decrypt_bytes, plaintext_secret_values
from kubeshield.sops.stores import format_for_path, store_for
from kubeshield.sops.tree import Branch, Comment

__all__ = ["check_paths", "kustomize_legacy", "kustomize_resource_list", "textconv"]


def _decrypted_resources(path: Path, *, env: KeyEnv) -> list[Any]:
    fmt = format_for_path(str(path))
    if fmt not in ("yaml", "json"):
        raise SopsError(f"{path}: kustomize needs YAML or JSON manifests", code=ExitCode.ERROR_GENERIC)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SopsError(
            f"{path}: cannot read: {exc.strerror}", code=ExitCode.COULD_NOT_READ_INPUT_FILE
        ) from None
    store = store_for(fmt)
    doc = parse_encrypted(data, store=store, where=str(path))
    key = recover_data_key(doc.metadata, env=env)
    plain = decrypt_document(doc, data_key=key, where=str(path))
    return [to_plain(b) for b in plain.branches if any(not isinstance(k, Comment) for k, _ in b)]


def kustomize_resource_list(text: str, *, env: KeyEnv, base: Path) -> str:
    try:
        resource_list = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise SopsError("kustomize: stdin is not a YAML ResourceList", code=ExitCode.ERROR_GENERIC) from None
    if not isinstance(resource_list, dict) or resource_list.get("kind") != "ResourceList":
        raise SopsError("kustomize: stdin is not a ResourceList", code=ExitCode.ERROR_GENERIC)
    config = resource_list.get("functionConfig") or {}
    files = config.get("files") if isinstance(config, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not files:
        raise SopsError(
            "kustomize: functionConfig.files must list the SOPS files to decrypt", code=ExitCode.ERROR_GENERIC
        )
    items = list(resource_list.get("items") or [])
    for name in files:
        path = Path(name) if Path(name).is_absolute() else base / name
        items.extend(_decrypted_resources(path, env=env))
    resource_list["items"] = items
    return yaml.safe_dump(resource_list, sort_keys=False)


def kustomize_legacy(config_path: Path, *, env: KeyEnv, base: Path) -> str:
    """The legacy exec generator: ``files`` are relative to ``base``, the kustomization directory.

    kustomize writes the generator's config to a temporary file and runs the plugin with the
    kustomization root as its working directory, so relative names resolve against that, not
    against the temporary file's directory (KSOPS resolves them the same way).
    """
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        raise SopsError(
            f"{config_path}: cannot read the generator config", code=ExitCode.ERROR_GENERIC
        ) from None
    files = config.get("files") if isinstance(config, dict) else None
    if not isinstance(files, list) or not files:
        raise SopsError(
            f"{config_path}: files must list the SOPS files to decrypt", code=ExitCode.ERROR_GENERIC
        )
    docs: list[Any] = []
    for name in files:
        path = Path(name) if Path(name).is_absolute() else base / name
        docs.extend(_decrypted_resources(path, env=env))
    return yaml.safe_dump_all(docs, sort_keys=False)


def textconv(path: Path, *, env: KeyEnv) -> tuple[bytes, str | None]:
    """(what to show, a note for stderr or None)."""
    data = path.read_bytes()
    fmt = format_for_path(str(path))
    try:
        return decrypt_bytes(data, where=str(path), in_format=fmt, out_format=fmt, env=env), None
    except SopsError as exc:
        return (
            data,
            f"kubeshield sops diff-helper: {path}: shown encrypted "
            f"({exc.__class__.__name__}, exit {exc.code})",
        )


def check_paths(paths: list[Path]) -> list[str]:
    """Findings: Secret manifests without sops metadata, or with plaintext data/stringData values."""
    findings: list[str] = []
    for path in paths:
        fmt = format_for_path(str(path))
        if fmt not in ("yaml", "json"):
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            findings.append(f"{path}: cannot read ({exc.strerror})")
            continue
        store = store_for(fmt)
        try:
            branches, meta = store.load_encrypted(data, where=str(path))
        except SopsError as exc:
            findings.append(f"{path}: cannot parse ({exc})")
            continue
        secrets = [b for b in branches if any(k == "kind" and v == "Secret" for k, v in b)]
        if not secrets:
            continue
        if meta is None:
            for branch in secrets:
                findings.append(f"{path}: Secret {_name(branch)} is not encrypted (no sops metadata)")
            continue
        for name, key in plaintext_secret_values(branches):
            findings.append(f"{path}: Secret {name}: {key} is in plaintext")
    return findings


def _name(branch: Branch) -> str:
    for key, value in branch:
        if key == "metadata" and isinstance(value, Branch):
            for k, v in value:
                if k == "name":
                    return str(v)
    return "?"
