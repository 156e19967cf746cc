"""Read Kubernetes objects from YAML/JSON files: multi-document YAML, ``kind: List`` unpacked, errors that
name the file (and the line, when the parser knows it)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeshield.posture.errors import InvalidObject

__all__ = ["Document", "iter_objects", "load_documents", "yaml_loader"]

yaml_loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FILE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Document:
    file: str
    index: int  # position of the document in the file (0-based)
    obj: Mapping[str, Any]


def load_documents(path: str | Path, *, text: str | None = None) -> list[Document]:
    """Every object in ``path`` (Lists unpacked). Raises InvalidObject naming the file."""
    path = Path(path)
    if text is None:
        try:
            if path.stat().st_size > MAX_FILE:
                raise InvalidObject(f"{path}: larger than {MAX_FILE // (1024 * 1024)} MiB; not read")
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidObject(f"{path}: not UTF-8 text") from exc
        except OSError as exc:
            raise InvalidObject(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        raw = list(yaml.load_all(text, Loader=yaml_loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidObject(f"{path}:{where}: malformed YAML: {problem}") from exc
    out: list[Document] = []
    for i, doc in enumerate(raw):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise InvalidObject(f"{path}: document {i + 1} is not an object")
        if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise InvalidObject(f"{path}: document {i + 1}: items must be a list")
            out += [Document(str(path), i, item) for item in items if isinstance(item, Mapping)]
        else:
            out.append(Document(str(path), i, doc))
    return out


def iter_objects(root: str | Path, errors: list[str]) -> Iterator[Document]:
    """Every object under ``root`` (a file or a directory, recursively); problems go to ``errors``."""
    root = Path(root)
    if not root.exists():
        errors.append(f"{root}: no such file or directory")
        return
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    )
    for f in files:
        if not f.is_file():
            continue
        try:
            yield from load_documents(f)
        except InvalidObject as exc:
            errors.append(str(exc))
