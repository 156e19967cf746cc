"""``posture pss check``: evaluate every pod-carrying document of some files.

JSON (stable, one object per input document)::

    {"file", "name", "kind", "level", "version", "allowed", "violations": [{"check", "message"}]}

plus ``"error"`` for a document that cannot be evaluated, and ``"skipped"`` for one that carries no pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeshield.posture._docs import load_documents
from kubeshield.posture.errors import InvalidObject
from kubeshield.posture.pss.api import LevelVersion
from kubeshield.posture.pss.checks import Violation
from kubeshield.posture.pss.evaluator import Evaluator, evaluator
from kubeshield.posture.pss.extract import extract_pod, object_label

__all__ = ["CheckedDocument", "check_files"]


@dataclass(frozen=True)
class CheckedDocument:
    file: str
    name: str
    kind: str
    level: str
    version: str
    violations: tuple[Violation, ...] = ()
    error: str | None = None
    skipped: str | None = None

    @property
    def allowed(self) -> bool:
        return not self.violations and self.error is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "name": self.name,
            "kind": self.kind,
            "level": self.level,
            "version": self.version,
            "allowed": self.allowed,
            "violations": [{"check": v.check, "message": v.message} for v in self.violations],
        }
        if self.error is not None:
            out["error"] = self.error
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out


def check_files(
    paths: Sequence[str | Path], lv: LevelVersion, *, pss: Evaluator | None = None
) -> tuple[list[CheckedDocument], list[str]]:
    """(one result per document, file-level errors). Bad files do not stop the run."""
    pss = pss or evaluator()
    results: list[CheckedDocument] = []
    errors: list[str] = []
    level, version = lv.level, str(lv.version)
    for path in paths:
        try:
            docs = load_documents(path)
        except InvalidObject as exc:
            errors.append(str(exc))
            continue
        for doc in docs:
            meta = doc.obj.get("metadata") if isinstance(doc.obj.get("metadata"), dict) else {}
            name = str((meta or {}).get("name") or (meta or {}).get("generateName") or "")
            kind = str(doc.obj.get("kind", ""))
            try:
                ref = extract_pod(doc.obj)
            except InvalidObject as exc:
                results.append(CheckedDocument(doc.file, name, kind, level, version, error=str(exc)))
                continue
            if ref is None:
                why = f"{object_label(doc.obj)} carries no pod template"
                results.append(CheckedDocument(doc.file, name, kind, level, version, skipped=why))
                continue
            violations = pss.evaluate(lv, ref.metadata, ref.spec)
            results.append(CheckedDocument(doc.file, name, kind, level, version, tuple(violations)))
    return results, errors
