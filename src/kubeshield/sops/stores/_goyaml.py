"""How go-yaml v3 (the YAML library sops uses) resolves untagged plain scalars, and what it quotes.

:func:`resolve_plain` gives the value sops sees for a plain scalar (``node.Decode(&interface{})``):
``null``/``~``/empty -> ``None``; ``true|True|TRUE``/``false...`` -> bool (``yes``/``on`` stay strings);
``.inf``/``.nan`` forms -> float; ``strconv.ParseInt(text without '_', 0, 64)`` -> int (so ``0x1F``,
``0o17``, ``0b1`` and 1.1-style octal ``0777``); a YAML-style float -> float; ``YYYY-M-D`` timestamps (the
four layouts go-yaml accepts) -> :class:`~kubeshield.sops.tree.Timestamp`; anything else a string.
Integers beyond int64 that fit uint64 are what Go calls ``uint64`` (sops cannot walk them: an error).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from kubeshield.sops.tree import Timestamp

__all__ = ["UINT64", "is_base60_float", "is_old_bool", "resolve_plain", "resolves_to_str"]

_MAP: Final[dict[str, Any]] = {
    "true": True, "True": True, "TRUE": True,
    "false": False, "False": False, "FALSE": False,
    "": None, "~": None, "null": None, "Null": None, "NULL": None,
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
}  # fmt: skip
_YAML_FLOAT: Final = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_INT: Final = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_BASE60: Final = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_OLD_BOOL: Final = frozenset("y Y yes Yes YES on On ON n N no No NO off Off OFF".split())
_TS: Final = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:(?:([Tt])|( ))(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?)?"
)
_INT64: Final = (-(1 << 63), (1 << 63) - 1)


class UINT64(int):
    """An integer in (int64 max, uint64 max]: go-yaml gives Go a ``uint64``, which sops cannot walk."""

    __slots__ = ()


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _timestamp(text: str) -> Timestamp | None:
    match = _TS.fullmatch(text)
    if match is None:
        return None
    year, month, day = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        return None
    if match.group(6) is None:
        return Timestamp(year, month, day)
    if match.group(5) is not None and match.group(10) is not None:
        return None  # "2006-1-2 15:4:5" takes no zone
    if match.group(4) is not None and match.group(10) is None:
        return None  # the T layouts need a zone
    hour, minute, second = int(match.group(6)), int(match.group(7)), int(match.group(8))
    if hour > 23 or minute > 59 or second > 59:
        return None
    frac = match.group(9) or ""
    if len(frac) > 9:
        return None
    nanos = int(frac.ljust(9, "0")) if frac else 0
    zone = match.group(10)
    offset = None
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            return None
        offset = sign * (zh * 3600 + zm * 60) or None
    return Timestamp(year, month, day, hour, minute, second, nanos, offset)


def _go_int(text: str) -> int | None:
    if not _GO_INT.fullmatch(text):
        return None
    sign = -1 if text[0] == "-" else 1
    body = text.lstrip("+-")
    lower = body.lower()
    if lower.startswith("0x"):
        value = int(body[2:], 16)
    elif lower.startswith("0o"):
        value = int(body[2:], 8)
    elif lower.startswith("0b"):
        value = int(body[2:], 2)
    elif len(body) > 1 and body[0] == "0":
        value = int(body, 8)
    else:
        value = int(body)
    return sign * value


def resolve_plain(text: str) -> Any:
    if text in _MAP:
        return _MAP[text]
    if not text:
        return text
    first = text[0]
    if first.isdigit() or first in "+-":
        if first.isdigit():
            ts = _timestamp(text)
            if ts is not None:
                return ts
        plain = text.replace("_", "")
        value = _go_int(plain)
        if value is not None:
            if _INT64[0] <= value <= _INT64[1]:
                return value
            if 0 <= value < (1 << 64):
                return UINT64(value)
        if _YAML_FLOAT.fullmatch(plain):
            try:
                return float(plain)
            except ValueError:
                pass
        return text
    if first == ".":
        try:
            if re.fullmatch(r"\.[0-9]+([eE][-+]?[0-9]+)?", text):
                return float(text)
        except ValueError:
            pass
    return text


def resolves_to_str(text: str) -> bool:
    return isinstance(resolve_plain(text), str)


def is_base60_float(text: str) -> bool:
    return bool(text) and _BASE60.fullmatch(text) is not None


def is_old_bool(text: str) -> bool:
    return text in _OLD_BOOL
