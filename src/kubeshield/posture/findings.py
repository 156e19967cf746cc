"""Findings: what the exposure audit and the repository scan report, and how they are rendered.

JSON (stable; extend, never rename)::

    {"findings": [{"id", "rule", "severity", "file" | "object", "line", "fingerprint", "excerpt", "fix",
                   "title", "evidence"}],
     "errors": ["<file or object>: <problem>", ...]}

``id`` is the check's stable ID (``KS-RBAC-001``, ``KS-SCAN-AWS-KEY``...); ``rule`` the rule that fired
(the check's short name, or a gitleaks rule id); ``fingerprint`` identifies the finding across runs
(``sha256(id | location | secret)`` truncated, never reversible to the secret) and is what a baseline
file lists; ``excerpt`` is redacted: a secret never appears whole in any output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SEVERITIES",
    "Finding",
    "Report",
    "fingerprint",
    "redact",
    "severity_counts",
    "to_json",
    "to_sarif",
]

SEVERITIES = ("critical", "high", "medium", "low", "info")
_SARIF_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}


def fingerprint(*parts: str) -> str:
    """A stable, one-way identifier for a finding (hex, 32 chars)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def redact(secret: str, *, keep: int = 4) -> str:
    """``AKIA****************`` style: at most ``keep`` leading characters, never more than a quarter."""
    if not secret:
        return ""
    shown = min(keep, len(secret) // 4)
    return secret[:shown] + "*" * min(max(len(secret) - shown, 4), 16)


@dataclass(frozen=True)
class Finding:
    id: str
    rule: str
    severity: str
    title: str
    fix: str
    file: str | None = None
    object: str | None = None
    line: int | None = None
    excerpt: str = ""
    evidence: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if not self.fingerprint:
            where = self.file or self.object or ""
            object.__setattr__(self, "fingerprint", fingerprint(self.id, where, self.evidence))

    @property
    def location(self) -> str:
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line else self.file
        return self.object or ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "rule": self.rule, "severity": self.severity}
        if self.file is not None:
            out["file"] = self.file
        else:
            out["object"] = self.object
        out.update(
            line=self.line,
            fingerprint=self.fingerprint,
            excerpt=self.excerpt,
            fix=self.fix,
            title=self.title,
            evidence=self.evidence,
        )
        return out


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # inputs or checks left out, and why

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def sorted(self) -> list[Finding]:
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: (rank[f.severity], f.id, f.location, f.fingerprint))


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "findings": [f.to_json() for f in report.sorted()],
            "errors": list(report.errors),
            "skipped": list(report.skipped),
        },
        indent=2,
    )


def to_sarif(report: Report, *, tool: str, version: str, rules: Iterable[tuple[str, str, str]] = ()) -> str:
    """SARIF 2.1.0 with one run. ``rules`` adds (id, short description, help) for rules not seen."""
    described: dict[str, dict[str, Any]] = {}
    for rule_id, short, help_text in rules:
        described[rule_id] = {"id": rule_id, "shortDescription": {"text": short}, "help": {"text": help_text}}
    results: list[dict[str, Any]] = []
    for f in report.sorted():
        described.setdefault(
            f.id, {"id": f.id, "shortDescription": {"text": f.title}, "help": {"text": f.fix}}
        )
        result: dict[str, Any] = {
            "ruleId": f.id,
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.title}: {f.evidence}" if f.evidence else f.title},
            "partialFingerprints": {"kubeshield/v1": f.fingerprint},
            "properties": {"severity": f.severity, "rule": f.rule, "fix": f.fix},
        }
        if f.file is not None:
            region = {"startLine": f.line} if f.line else {}
            location: dict[str, Any] = {"artifactLocation": {"uri": f.file.lstrip("/")}}
            if region:
                location["region"] = region
            result["locations"] = [{"physicalLocation": location}]
        else:
            result["locations"] = [
                {"logicalLocations": [{"fullyQualifiedName": f.object, "kind": "resource"}]}
            ]
        results.append(result)
    notifications = [{"level": "error", "message": {"text": e}} for e in report.errors]
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": tool,
                        "version": version,
                        "rules": sorted(described.values(), key=lambda r: r["id"]),
                    }
                },
                "results": results,
                "invocations": [
                    {"executionSuccessful": not report.errors, "toolExecutionNotifications": notifications}
                ],
            }
        ],
    }
    return json.dumps(sarif, indent=2)


def severity_counts(findings: Sequence[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
