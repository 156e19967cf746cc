"""Kubernetes-aware repository checks: where a cluster's Secrets sit in the clear in Git.

* ``KS-SCAN-SECRET``: a ``Secret`` manifest (YAML or JSON, a Helm chart's template or its rendered
  output) with a literal value in ``data`` (base64 is an encoding, not encryption) or ``stringData``;
  template expressions (``{{ ... }}``), SOPS values (``ENC[...]``) and public certificates are not secrets;
* ``KS-SCAN-KUSTOMIZE``: a kustomize ``secretGenerator`` fed by ``literals`` or by a committed file;
* ``KS-SCAN-KUBECONFIG``: a kubeconfig whose users embed a client key, a token, a password or an
  auth-provider secret;
* ``KS-SCAN-SOPS-MAC``: a SOPS file whose MAC is missing or empty (its values can be changed unseen);
  ``KS-SCAN-SOPS-PLAINTEXT``: SOPS metadata but no encrypted value (decrypted in place and committed);
* ``KS-SCAN-SEALED-NS``: a SealedSecret sealed for one namespace in an overlay that deploys it to another
  (strict and namespace-wide scopes bind the ciphertext to the namespace; the controller will refuse it,
  or a Secret sealed for another environment was copied here).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeshield.posture._docs import yaml_loader

__all__ = ["K8sHit", "looks_kubernetes", "scan_kubernetes"]

_TEMPLATE = re.compile(r"\{\{.*?\}\}")
_TEMPLATE_LINE = re.compile(
    r"^\s*\{\{-?\s*(?:if|else|end|range|with|define|template|include|/\*|-?\s*\$)[^}]*\}\}\s*$"
)
_PLACEHOLDER = "__kubeshield_template__"
# bytes one of the Kubernetes-aware checks needs; a file without any is not parsed as YAML at all
# (Secret / SealedSecret kinds, kustomize generators, SOPS metadata, kubeconfig users)
_TRIGGERS = (b"Secret", b"secretGenerator", b"sops", b"users:", b'"users"')
_CERT_ONLY = re.compile(r"^\s*(?:-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\s*)+$")


@dataclass(frozen=True, slots=True)
class K8sHit:
    id: str
    rule: str
    severity: str
    title: str
    fix: str
    line: int
    secret: str  # what the fingerprint is made of (never printed)
    shown: str  # the redaction-ready context, e.g. "password: <value>"
    evidence: str
    extra_file: str | None = None  # a finding that belongs to another file (kustomize files:)


def looks_kubernetes(data: bytes) -> bool:
    return any(t in data for t in _TRIGGERS)


def _doc_starts(lines: list[str]) -> list[int]:
    starts = [0]
    for i, line in enumerate(lines):
        if line.startswith("---") and (len(line) == 3 or line[3] in " \t\r"):
            starts.append(i + 1)
    return starts


def _find_line(lines: list[str], needle: str, start: int, key: str | None = None) -> int:
    """1-based line of the first line at or after ``start`` holding ``key:`` and ``needle``."""
    if needle:
        first = needle.splitlines()[0][:200] if needle.splitlines() else needle
        for i in range(start, len(lines)):
            if first in lines[i] and (key is None or key in lines[i]):
                return i + 1
    if key is not None:
        for i in range(start, len(lines)):
            if key in lines[i]:
                return i + 1
    return start + 1


def _is_template(value: str) -> bool:
    return _PLACEHOLDER in value or "{{" in value


def _strip_helm(text: str) -> str:
    out = []
    for line in text.splitlines():
        if _TEMPLATE_LINE.match(line):
            out.append("")
        else:
            out.append(_TEMPLATE.sub(_PLACEHOLDER, line))
    return "\n".join(out)


def _load(text: str) -> list[Any] | None:
    try:
        return list(yaml.load_all(text, Loader=yaml_loader))
    except yaml.YAMLError:
        return None


def scan_kubernetes(path: str, text: str, *, root: Path, helm_template: bool = False) -> Iterator[K8sHit]:
    """Kubernetes-aware hits in one text file. ``root`` is the scanned directory (for kustomize files)."""
    source = _strip_helm(text) if helm_template else text
    docs = _load(source)
    if docs is None:
        return
    lines = source.splitlines()
    starts = _doc_starts(lines)
    for i, doc in enumerate(docs):
        start = starts[i] if i < len(starts) else 0
        if not isinstance(doc, Mapping):
            continue
        if isinstance(doc.get("sops"), Mapping):
            yield from _sops(doc, lines, start)
        kind = doc.get("kind")
        if kind == "List" and isinstance(doc.get("items"), list):
            for item in doc["items"]:
                if isinstance(item, Mapping):
                    yield from _object(item, path, lines, start, root)
            continue
        yield from _object(doc, path, lines, start, root)


def _object(doc: Mapping[str, Any], path: str, lines: list[str], start: int, root: Path) -> Iterator[K8sHit]:
    kind = doc.get("kind")
    if kind == "Secret" and doc.get("apiVersion") == "v1" and not isinstance(doc.get("sops"), Mapping):
        yield from _secret(doc, lines, start)
    elif kind == "Config" and isinstance(doc.get("users"), list):
        yield from _kubeconfig(doc, lines, start)
    elif kind == "SealedSecret" and str(doc.get("apiVersion", "")).startswith("bitnami.com/"):
        yield from _sealed(doc, path, lines, start, root)
    elif kind == "Kustomization" or isinstance(doc.get("secretGenerator"), list):
        yield from _kustomize(doc, path, lines, start, root)


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = doc.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _ref(doc: Mapping[str, Any]) -> str:
    meta = _meta(doc)
    ns = meta.get("namespace")
    return (
        f"{doc.get('kind')} {ns + '/' if isinstance(ns, str) and ns else ''}{meta.get('name', '<unnamed>')}"
    )


_SECRET_FIX = (
    "Do not commit Secret values: seal them (kubeshield seal), encrypt the file with SOPS, or reference an "
    "external store; rotate the value, it is in the history"
)


def _secret(doc: Mapping[str, Any], lines: list[str], start: int) -> Iterator[K8sHit]:
    for section in ("data", "stringData"):
        values = doc.get(section)
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if value is None or not isinstance(value, (str, int, float)):
                continue
            text = str(value)
            if not text.strip() or _is_template(text) or text.startswith("ENC["):
                continue
            plain = text
            if section == "data":
                try:
                    plain = base64.b64decode(text, validate=False).decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    plain = text
            if not plain.strip() or _CERT_ONLY.match(plain):
                continue
            line = _find_line(lines, text, start, key=str(key))
            yield K8sHit(
                id="KS-SCAN-SECRET",
                rule="kubernetes-secret",
                severity="high",
                title=f"{_ref(doc)} holds {section}.{key} in the clear"
                + (" (base64 is not encryption)" if section == "data" else ""),
                fix=_SECRET_FIX,
                line=line,
                secret=text,
                shown=f"{key}: {text}",
                evidence=f"{_ref(doc)} {section}.{key}",
            )


_KUBECONFIG_FIELDS = ("client-key-data", "token", "password")
_AUTH_PROVIDER_FIELDS = ("id-token", "refresh-token", "client-secret", "access-token")


def _kubeconfig(doc: Mapping[str, Any], lines: list[str], start: int) -> Iterator[K8sHit]:
    for entry in doc.get("users") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("user"), Mapping):
            continue
        name, user = str(entry.get("name", "")), entry["user"]
        found: list[tuple[str, str]] = [
            (f, str(user[f])) for f in _KUBECONFIG_FIELDS if isinstance(user.get(f), str) and user[f]
        ]
        provider = user.get("auth-provider")
        if isinstance(provider, Mapping) and isinstance(provider.get("config"), Mapping):
            found += [
                (f"auth-provider.config.{f}", str(provider["config"][f]))
                for f in _AUTH_PROVIDER_FIELDS
                if isinstance(provider["config"].get(f), str) and provider["config"][f]
            ]
        for field, value in found:
            if _is_template(value):
                continue
            yield K8sHit(
                id="KS-SCAN-KUBECONFIG",
                rule="kubeconfig-credential",
                severity="critical",
                title=f"kubeconfig user {name!r} embeds {field}",
                fix="Revoke this credential; use short-lived credentials from an exec plugin "
                "(kubeshield access exec-credential) instead of embedding them",
                line=_find_line(lines, value, start, key=field.rpartition(".")[2]),
                secret=value,
                shown=f"{field.rpartition('.')[2]}: {value}",
                evidence=f"user {name} {field}",
            )


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _sops(doc: Mapping[str, Any], lines: list[str], start: int) -> Iterator[K8sHit]:
    meta = doc["sops"]
    mac = meta.get("mac")
    if not isinstance(mac, str) or not mac.startswith("ENC["):
        state = "missing" if mac in (None, "") else "not encrypted"
        yield K8sHit(
            id="KS-SCAN-SOPS-MAC",
            rule="sops-mac",
            severity="high",
            title=f"SOPS file with its MAC {state}: values can be changed without detection",
            fix="Re-encrypt with sops (it writes the MAC); never commit files edited with --ignore-mac",
            line=_find_line(lines, "", start, key="mac:")
            if state != "missing"
            else _find_line(lines, "", start, key="sops:"),
            secret=f"sops-mac:{state}",
            shown="",
            evidence=f"sops.mac {state}",
        )
    body = {k: v for k, v in doc.items() if k != "sops"}
    strings = [v for v in _leaves(body) if isinstance(v, str) and v]
    if strings and not any(v.startswith("ENC[") for v in strings):
        yield K8sHit(
            id="KS-SCAN-SOPS-PLAINTEXT",
            rule="sops-plaintext",
            severity="critical",
            title=(
                "file carries SOPS metadata but no encrypted value: it was decrypted in place and committed"
            ),
            fix="Rotate every value in it, then commit only the encrypted file (sops encrypt)",
            line=start + 1,
            secret="sops-plaintext:" + "|".join(sorted(strings))[:4096],
            shown="",
            evidence="no ENC[...] value outside the sops block",
        )


def _kustomization_namespace(directory: Path, root: Path) -> tuple[str, Path] | None:
    """The namespace the nearest kustomization (this directory or an ancestor inside ``root``) sets."""
    current = directory.resolve()
    top = root.resolve()
    while True:
        for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
            candidate = current / name
            if candidate.is_file():
                try:
                    data = yaml.load(candidate.read_text(encoding="utf-8"), Loader=yaml_loader)
                except (OSError, UnicodeDecodeError, yaml.YAMLError):
                    data = None
                if isinstance(data, Mapping) and isinstance(data.get("namespace"), str) and data["namespace"]:
                    return data["namespace"], candidate
        if current == top or current.parent == current or top not in current.parents:
            return None
        current = current.parent


def _sealed(doc: Mapping[str, Any], path: str, lines: list[str], start: int, root: Path) -> Iterator[K8sHit]:
    meta = _meta(doc)
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    assert isinstance(annotations, Mapping)
    if annotations.get("sealedsecrets.bitnami.com/cluster-wide") == "true":
        return
    template = doc.get("spec", {}).get("template", {}) if isinstance(doc.get("spec"), Mapping) else {}
    tmeta = template.get("metadata", {}) if isinstance(template, Mapping) else {}
    sealed_ns = meta.get("namespace") or (tmeta.get("namespace") if isinstance(tmeta, Mapping) else None)
    if not isinstance(sealed_ns, str) or not sealed_ns:
        return
    overlay = _kustomization_namespace(
        (root / path).parent if not Path(path).is_absolute() else Path(path).parent, root
    )
    if overlay is None or overlay[0] == sealed_ns:
        return
    yield K8sHit(
        id="KS-SCAN-SEALED-NS",
        rule="sealedsecret-namespace",
        severity="medium",
        title=f"{_ref(doc)} was sealed for namespace {sealed_ns!r} but its overlay deploys to {overlay[0]!r}",
        fix="Seal it again for the overlay's namespace (kubeshield seal --namespace ...); if it was "
        "copied from another environment, that environment's secret is now in this overlay",
        line=_find_line(lines, sealed_ns, start, key="namespace"),
        secret=f"{sealed_ns}->{overlay[0]}",
        shown="",
        evidence=f"sealed for {sealed_ns}, {overlay[1].name} sets namespace {overlay[0]}",
    )


def _kustomize(
    doc: Mapping[str, Any], path: str, lines: list[str], start: int, root: Path
) -> Iterator[K8sHit]:
    generators = doc.get("secretGenerator")
    if not isinstance(generators, list):
        return
    base = Path(path).parent
    for gen in generators:
        if not isinstance(gen, Mapping):
            continue
        name = str(gen.get("name", ""))
        for literal in gen.get("literals") or []:
            if not isinstance(literal, str) or "=" not in literal:
                continue
            key, _, value = literal.partition("=")
            if not value or _is_template(value):
                continue
            yield K8sHit(
                id="KS-SCAN-KUSTOMIZE",
                rule="kustomize-secret-literal",
                severity="high",
                title=f"secretGenerator {name!r} has the literal {key!r} in the clear",
                fix=_SECRET_FIX,
                line=_find_line(lines, literal, start),
                secret=value,
                shown=f"{key}={value}",
                evidence=f"secretGenerator {name} literal {key}",
            )
        for source in [*(gen.get("files") or []), *(gen.get("envs") or [])]:
            if not isinstance(source, str):
                continue
            relative = source.partition("=")[2] if "=" in source else source
            target = base / relative
            full = root / target if not target.is_absolute() else target
            try:
                content = full.read_bytes()
            except OSError:
                continue
            if not content.strip():
                continue
            yield K8sHit(
                id="KS-SCAN-KUSTOMIZE",
                rule="kustomize-secret-file",
                severity="high",
                title=f"secretGenerator {name!r} is fed by the committed file {relative!r}",
                fix=_SECRET_FIX,
                line=_find_line(lines, source, start),
                secret=content.decode("utf-8", "replace"),
                shown=f"{relative}: {content[:64].decode('utf-8', 'replace')}",
                evidence=f"secretGenerator {name} file {relative}",
                extra_file=str(target),
            )
