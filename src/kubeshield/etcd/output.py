"""Writing recovered objects to disk: one file per object, mode 0600, written atomically.

Layout: ``<out-dir>/<resource>/<namespace>/<name>.<yaml|json>`` (cluster-scoped objects have no
namespace directory). Every path part is percent-encoded so a key with odd characters (``/``, ``..``,
control bytes) can never escape the output directory. A file is written to a temp file in the same
directory, fsynced, renamed into place and the directory fsynced, so nothing is ever half-written.
Directories it creates (the output directory itself included) get mode 0700, like the files' 0600.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from kubeshield.errors import KubeshieldError
from kubeshield.etcd.keys import KeyPath
from kubeshield.keys.files import write_private_atomic

__all__ = ["OutputError", "dump_manifest", "manifest_path", "write_private_file"]


class OutputError(KubeshieldError):
    """The output directory cannot be written safely; names the path."""


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


def _mkdir_private(path: Path) -> None:
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


def _private_dirs(directory: Path, *, root: Path | None) -> None:
    """Create ``directory`` and every missing parent with mode 0700 (``mkdir(parents=True)`` would give
    the parents the umask's mode, typically 0755).

    Below ``root`` (the output directory) each component is checked *before* anything is created in it:
    it must be a real directory, not a symlink or a file, because that tree is ours and a link in it was
    planted. ``root`` itself and its parents are the user's path and may contain symlinks.
    """
    below: list[Path] = []
    top = directory
    if root is not None and (top == root or root in top.parents):
        while top != root:
            below.append(top)
            top = top.parent
    missing: list[Path] = []
    current = top
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for component in reversed(missing):
        _mkdir_private(component)
    for component in reversed(below):
        try:
            info = os.lstat(component)
        except FileNotFoundError:
            _mkdir_private(component)
            continue
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise OutputError(
                f"{component} is not a directory (a symlink or file in the output tree); refusing"
            )


def write_private_file(path: Path, data: bytes, *, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically, creating missing directories with mode 0700.

    ``root`` is the output directory: components between it and ``path`` must be real directories.
    """
    _private_dirs(path.parent, root=root)
    write_private_atomic(path, data)
