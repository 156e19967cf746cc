"""Evaluate a pod against a level and policy version, exactly as upstream's check registry does.

For each minor version from v1.0 to the newest, every check contributes the newest revision whose
minimum version is not newer; restricted is every restricted check plus the baseline checks that no
restricted revision of that version overrides. Checks run in upstream's order (baseline IDs sorted, then
restricted IDs sorted), so the aggregated message is the one kube-apiserver prints:

    violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "app" must set
    securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (...), ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubeshield.posture.pss.api import LevelVersion
from kubeshield.posture.pss.checks import CHECKS, Check, CheckFn, Violation

__all__ = ["NEWEST_VERSION", "Evaluator", "aggregate_detail", "evaluate", "evaluator"]


class Evaluator:
    """The per-version check lists, built once."""

    def __init__(self, checks: Sequence[Check] = CHECKS, *, newest: int | None = None) -> None:
        self.newest = max(r.minimum for c in checks for r in c.revisions)
        if newest is not None and newest < self.newest:
            self.newest = newest  # an emulated, older apiserver
        baseline_ids = sorted((c.id for c in checks if c.level == "baseline"), key=lambda s: s.encode())
        restricted_ids = sorted((c.id for c in checks if c.level == "restricted"), key=lambda s: s.encode())
        order = baseline_ids + restricted_ids
        by_id = {c.id: c for c in checks}
        self._baseline: list[tuple[tuple[str, CheckFn], ...]] = []
        self._restricted: list[tuple[tuple[str, CheckFn], ...]] = []
        for minor in range(self.newest + 1):
            active: dict[str, tuple[CheckFn, tuple[str, ...]]] = {}
            for check_id in order:
                revision = None
                for r in by_id[check_id].revisions:
                    if r.minimum <= minor:
                        revision = r
                if revision is not None:
                    active[check_id] = (revision.fn, revision.overrides)
            overridden = {o for i in restricted_ids if i in active for o in active[i][1]}
            self._baseline.append(tuple((i, active[i][0]) for i in baseline_ids if i in active))
            self._restricted.append(
                tuple((i, active[i][0]) for i in order if i in active and i not in overridden)
            )

    def checks_for(self, lv: LevelVersion) -> tuple[tuple[str, CheckFn], ...]:
        if lv.level == "privileged":
            return ()
        minor = lv.version.resolve(self.newest)
        return self._baseline[minor] if lv.level == "baseline" else self._restricted[minor]

    def evaluate(
        self, lv: LevelVersion, metadata: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> list[Violation]:
        out: list[Violation] = []
        for check_id, fn in self.checks_for(lv):
            result = fn(metadata, spec)
            if result is not None:
                out.append(Violation(check_id, result[0], result[1]))
        return out


_DEFAULT = Evaluator()
NEWEST_VERSION = _DEFAULT.newest


def evaluator() -> Evaluator:
    """The shared evaluator over upstream's checks."""
    return _DEFAULT


def evaluate(lv: LevelVersion, metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> list[Violation]:
    return _DEFAULT.evaluate(lv, metadata, spec)


def aggregate_detail(violations: Sequence[Violation]) -> str:
    """Upstream's AggregateCheckResult.ForbiddenDetail: ``reason (detail), reason (detail)``."""
    return ", ".join(v.message for v in violations)
