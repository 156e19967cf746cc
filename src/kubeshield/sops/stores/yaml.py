"""The YAML store: comments, key order and several documents kept; output as sops prints it."""

from __future__ import annotations

from typing import Any

from kubeshield.sops.metadata import Metadata, to_plain
from kubeshield.sops.stores import _yaml_emit, _yaml_load
from kubeshield.sops.stores._common import decode_text, plain_to_tree
from kubeshield.sops.tree import Branch, Comment

__all__ = ["YamlStore"]


class YamlStore:
    name = "yaml"

    def load_plain(self, data: bytes, *, where: str) -> list[Branch]:
        return _yaml_load.load_documents(decode_text(data, where=where), where=where)

    def load_encrypted(self, data: bytes, *, where: str) -> tuple[list[Branch], Any]:
        branches = self.load_plain(data, where=where)
        metadata: Any = None
        out = []
        for index, branch in enumerate(branches):
            kept = Branch()
            removed = False
            for key, value in branch:
                if not removed and key == "sops" and not isinstance(key, Comment):
                    removed = True
                    if index == 0:
                        metadata = to_plain(value)
                    continue
                kept.append((key, value))
            out.append(kept)
        return out, metadata

    def emit_plain(self, branches: list[Branch]) -> bytes:
        return _yaml_emit.emit_documents(branches).encode("utf-8", "surrogateescape")

    def emit_encrypted(self, branches: list[Branch], metadata: Metadata) -> bytes:
        meta = plain_to_tree(metadata.to_plain())
        docs = [Branch([*b, ("sops", meta)]) for b in branches]
        return self.emit_plain(docs)

    def emit_value(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, Branch):
            return _yaml_emit.emit_value(value).encode("utf-8", "surrogateescape")
        if isinstance(value, list):
            writer = _yaml_emit._Writer()
            writer.sequence(value, 0)
            return ("\n".join(writer.lines) + "\n").encode("utf-8", "surrogateescape")
        _style, text = _yaml_emit._scalar_text(value)
        return (text + "\n").encode("utf-8")

    def has_sops_key(self, branch: Branch) -> bool:
        return any(k == "sops" for k, _ in branch if not isinstance(k, Comment))
