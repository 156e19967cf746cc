"""The kubeconfig's current namespace, as kubectl and kubeseal pick it, without any Kubernetes library.

``$KUBECONFIG`` (colon-separated; the first file that sets ``current-context`` wins, and the first
definition of a context wins, as client-go merges them), else ``~/.kube/config``. Returns None when no
file is found or the current context sets no namespace; a file that is not valid YAML is an error
naming it, never silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kubeshield.errors import ConfigError

__all__ = ["kubeconfig_namespace"]


def _files(environ: Mapping[str, str]) -> list[Path]:
    listed = [Path(p).expanduser() for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return [p for p in (listed or [Path("~/.kube/config").expanduser()]) if p.is_file()]


def _load(path: Path) -> Mapping[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"kubeconfig {path} cannot be read: {type(exc).__name__}") from None
    return doc if isinstance(doc, Mapping) else {}


def kubeconfig_namespace(environ: Mapping[str, str] | None = None) -> str | None:
    docs = [_load(p) for p in _files(os.environ if environ is None else environ)]
    current = next((d["current-context"] for d in docs if d.get("current-context")), None)
    if not isinstance(current, str):
        return None
    for doc in docs:
        for entry in doc.get("contexts") or []:
            if isinstance(entry, Mapping) and entry.get("name") == current:
                context = entry.get("context")
                namespace = context.get("namespace") if isinstance(context, Mapping) else None
                return namespace if isinstance(namespace, str) and namespace else None
    return None
