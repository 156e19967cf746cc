"""Structured JSON log lines for the plugin: one object per line, ``{"ts", "level", "msg", "fields"}``.

Only safe values reach a line: ``fields`` may hold str, int, float, bool and None; ``bytes`` are never
written (they become ``"<N bytes>"``), anything else becomes its type name. Callers pass lengths, key_ids
(not secret), uids and error *class* names, never plaintext, keys or ciphertext.

    log = get_logger("server")
    log.info("encrypt", extra=fields(uid=uid, key_id=key_id, bytes=len(plaintext)))
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["JsonFormatter", "configure_logging", "fields", "get_logger", "safe_value"]

_ROOT = "kubeshield"


def safe_value(value: object) -> str | int | float | bool | None:
    """Reduce ``value`` to something that may be logged."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


def fields(**values: object) -> dict[str, Any]:
    """``extra=`` argument carrying structured, sanitised fields."""
    return {"fields": {key: safe_value(value) for key, value in values.items()}}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object. Tracebacks are included (local logs only)."""

    def format(self, record: logging.LogRecord) -> str:
        raw = getattr(record, "fields", None)
        extra = {k: safe_value(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "fields": extra,
        }
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, sort_keys=False, ensure_ascii=True)


def get_logger(name: str) -> logging.Logger:
    """The logger ``kubeshield.<name>``."""
    return logging.getLogger(f"{_ROOT}.{name}")


def configure_logging(level: str = "info", *, stream: IO[str] | None = None) -> None:
    """Send every ``kubeshield.*`` log line as JSON to ``stream`` (default stderr) at ``level``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    root.propagate = False
