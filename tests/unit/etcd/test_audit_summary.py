"""The audit summary's problem list: counted once per record, so the table never invents hidden ones."""

from __future__ import annotations

from typing import Any

from kubeshield.etcd.audit import AuditRecord, AuditSummary


def _record(i: int, **kw: Any) -> AuditRecord:
    return AuditRecord(
        key=f"/registry/secrets/ns/s{i}", resource="secrets", namespace="ns", name=f"s{i}", **kw
    )


def test_a_plaintext_value_that_is_also_stale_is_one_problem() -> None:
    """Issue 16: '... and more; use -o json' appeared although every problem was listed."""
    summary = AuditSummary()
    for i in range(3):
        summary.add(_record(i, format="plaintext", provider="identity", stale=True))
    summary.add(_record(9, format="aesgcm", provider="k", stale=False))
    assert (summary.plaintext, summary.stale) == (3, 3)
    assert summary.problem_records == len(summary.problems) == 3


def test_problems_beyond_the_list_are_counted() -> None:
    summary = AuditSummary()
    for i in range(1003):
        summary.add(_record(i, format="unknown", error="unknown storage format"))
    assert len(summary.problems) == 1000
    assert summary.problem_records == 1003
