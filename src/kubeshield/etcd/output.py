"""Writing recovered objects to disk: one file per object, mode 0600, written atomically.

Layout: ``<out-dir>/<resource>/<namespace>/<name>.<yaml|json>`` (cluster-scoped objects have no
namespace directory). Every path part is percent-encoded so a key with odd characters (``/``, ``..``,
control bytes) can never escape the output directory. A file is written to a temp file in the same
directory, fsynced, renamed into place and the directory fsynced, so nothing is ever half-written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from kubeshield.etcd.keys import KeyPath
from kubeshield.keys.files import write_private_atomic

__all__ = ["dump_manifest", "manifest_path", "write_private_file"]


def _part(text: str) -> str:
    safe = quote(text, safe="-_.@+=,~")
    if safe in (".", ".."):
        return safe.replace(".", "%2E")
    return safe or "_"


def manifest_path(out_dir: Path, path: KeyPath, *, fmt: str) -> Path:
    """Where the object at ``path`` goes under ``out_dir``."""
    parts = [_part(path.resource or "_")]
    if path.namespace is not None:
        parts.append(_part(path.namespace))
    parts.append(_part(path.name or "_") + "." + fmt)
    return out_dir.joinpath(*parts)


def dump_manifest(manifest: dict[str, Any], *, fmt: str) -> str:
    """One manifest as YAML (a document) or JSON (indented)."""
    if fmt == "json":
        return json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    return str(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False))


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically, creating missing directories (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_atomic(path, data)
