"""Run credential rules over one file's bytes, the way gitleaks does: a keyword pre-filter, the rule's
RE2 regex, the secret group, minimum entropy, allow-lists (rule and global), and inline
``gitleaks:allow`` / ``kubeshield:allow`` markers. One RE2 set search per file finds which rules can
match at all, so a file with no credential costs one pass."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import re2

from kubeshield.posture.scan.rules import Rule, RuleSet, entropy

__all__ = ["Detector", "Hit"]

_ALLOW_MARKERS = (b"gitleaks:allow", b"kubeshield:allow")


@dataclass(frozen=True, slots=True)
class Hit:
    rule: Rule
    line: int  # 1-based
    secret: bytes
    line_text: bytes


class Detector:
    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._content_rules = [r for r in rules.rules if r.regex is not None]
        self._path_only = [r for r in rules.rules if r.regex is None and r.path is not None]
        options = re2.Options()
        options.never_capture = True
        self._set: Any = re2.Set.SearchSet(options)
        for rule in self._content_rules:
            self._set.Add(rule.pattern.encode("utf-8"))
        self._set.Compile()

    def path_allowed(self, path: str) -> bool:
        """Is ``path`` allow-listed globally (lock files, images, .git/)?"""
        encoded = path.encode("utf-8", "surrogateescape")
        return any(
            p.search(encoded)
            for a in self.rules.allowlists
            if not a.regexes and not a.stopwords and not a.commits
            for p in a.paths
        )

    def scan(self, data: bytes, path: str, *, commit: str | None = None) -> Iterator[Hit]:
        for rule in self._path_only:
            if rule.path is not None and rule.path.search(path.encode("utf-8", "surrogateescape")):
                yield Hit(rule, 0, b"", b"")
        matched = self._set.Match(data)
        if not matched:
            return
        lowered: bytes | None = None
        for index in matched:
            rule = self._content_rules[index]
            if rule.path is not None and not rule.path.search(path.encode("utf-8", "surrogateescape")):
                continue
            if rule.keywords:
                if lowered is None:
                    lowered = data.lower()
                if not any(k in lowered for k in rule.keywords):
                    continue
            yield from self._matches(rule, data, path, commit)

    def _matches(self, rule: Rule, data: bytes, path: str, commit: str | None) -> Iterator[Hit]:
        assert rule.regex is not None
        for m in rule.regex.finditer(data):
            secret = m.group(rule.secret_group) if rule.secret_group else m.group(0)
            if secret is None:
                continue
            if rule.entropy and entropy(secret) < rule.entropy:
                continue
            start, end = m.start(), m.end()
            line_start = data.rfind(b"\n", 0, start) + 1
            line_end = data.find(b"\n", end)
            line_text = data[line_start : line_end if line_end != -1 else len(data)]
            if any(marker in line_text for marker in _ALLOW_MARKERS):
                continue
            match = m.group(0)
            allowlists = (*rule.allowlists, *self.rules.allowlists)
            if any(
                a.allows(secret=secret, match=match, line=line_text, path=path, commit=commit)
                for a in allowlists
            ):
                continue
            yield Hit(rule, data.count(b"\n", 0, start) + 1, secret, line_text)
