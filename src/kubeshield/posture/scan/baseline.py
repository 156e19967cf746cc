"""Baseline files: accepted findings, by fingerprint, so CI fails only on new ones.

Format (JSON, stable)::

    {"version": 1, "findings": [{"fingerprint", "id", "rule", "file", "line"}]}

Only ``fingerprint`` decides; the other fields are for the reviewer. The file holds no secret.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubeshield.errors import ConfigError
from kubeshield.posture.findings import Report

__all__ = ["load_baseline", "write_baseline"]


def write_baseline(path: Path, report: Report) -> None:
    entries = [
        {"fingerprint": f.fingerprint, "id": f.id, "rule": f.rule, "file": f.file or f.object, "line": f.line}
        for f in report.sorted()
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "findings": entries}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_baseline(path: Path) -> frozenset[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the baseline: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: the baseline is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("findings"), list):
        raise ConfigError(f'{path}: expected {{"version": 1, "findings": [...]}}')
    out = set()
    for i, entry in enumerate(data["findings"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
            raise ConfigError(f"{path}: findings[{i}] has no fingerprint")
        out.add(entry["fingerprint"])
    return frozenset(out)
