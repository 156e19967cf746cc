"""Go-style durations (``3s``, ``1m30s``, ``24h``, ``250ms``) as used in kubeshield.yaml and flags."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_MAX_TEXT = 64


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds. ``"0"`` is zero; every other value needs a unit.

    Raises ``ValueError`` (with a message that quotes the input and shows examples) on anything else,
    including a sign: negative durations are never meaningful in our settings.
    """
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string, got {type(text).__name__}")
    if text == "0":
        return 0.0
    if not text or len(text) > _MAX_TEXT:
        raise ValueError(f"invalid duration {text[:_MAX_TEXT]!r} (use e.g. 3s, 250ms, 5m, 24h)")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use e.g. 3s, 250ms, 5m, 24h)")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Text for ``seconds`` at nanosecond resolution, in the largest whole unit (``86400.0`` -> ``"24h"``)."""
    if seconds < 0:
        raise ValueError("duration must not be negative")
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0"
    for unit, scale in (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if nanos % scale == 0:
            return f"{nanos // scale}{unit}"
    return f"{nanos}ns"
