"""The Secret audit log: one JSON line per record, 0600, append-only, refuses a file others can touch."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubeshield.access.audit import AuditLog
from kubeshield.errors import ConfigError


def _record(log: AuditLog, **over: object) -> None:
    fields: dict[str, object] = dict(
        subject="alice", context="prod", verb="get", namespace="app", name="db", status=200, revealed=False
    )
    fields.update(over)
    log.record(**fields)  # type: ignore[arg-type]


def test_records_are_json_lines_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    with AuditLog(path) as log:
        _record(log, when=datetime(2026, 12, 2, 3, 4, 5, 6, tzinfo=UTC))
        _record(log, verb="watch", name="", status=403, revealed=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "time": "2026-12-02T03:04:05.000006Z",
        "subject": "alice",
        "context": "prod",
        "verb": "get",
        "namespace": "app",
        "name": "db",
        "status": 200,
        "revealed": False,
    }
    assert (lines[1]["verb"], lines[1]["name"], lines[1]["status"], lines[1]["revealed"]) == (
        "watch",
        "",
        403,
        True,
    )


def test_reopening_appends_and_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        _record(log)
    with AuditLog(path) as log:
        _record(log, name="second")
    names = [json.loads(line)["name"] for line in path.read_text().splitlines()]
    assert names == ["db", "second"]


def test_a_file_others_can_read_or_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        AuditLog(path)


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o600)
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open"):
        AuditLog(link)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        AuditLog(tmp_path)


def test_concurrent_writers_never_interleave_inside_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path) for _ in range(4)]

    def write(log: AuditLog, who: int) -> None:
        for i in range(200):
            _record(log, subject=f"user-{who}", name="n" * (i % 50))

    threads = [threading.Thread(target=write, args=(log, i)) for i, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    assert all(json.loads(line)["subject"].startswith("user-") for line in lines)


def test_closed_log_refuses_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.close()
    with pytest.raises(ValueError, match="closed"):
        _record(log)
    assert os.path.getsize(tmp_path / "a.jsonl") == 0
