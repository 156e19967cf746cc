"""The ordered tree that every SOPS store reads into and writes from (sops' ``TreeBranch``).

A document is a :class:`Branch`: an ordered list of ``(key, value)`` pairs. A key is a ``str`` or a
:class:`Comment` (a comment line standing between items, with value ``None``). Values are:

* ``str`` (arbitrary bytes survive as lone surrogates: ``surrogateescape``), ``int``, ``float``,
  ``bool``, ``None``, :class:`Timestamp` (YAML timestamps, kept to the nanosecond as Go does) and
  ``bytes`` (the binary store's whole file);
* a nested :class:`Branch` (a mapping);
* a ``list`` (a sequence) whose elements are values or :class:`Comment` lines.

A file is a list of branches (``Tree.branches``): YAML can hold several documents, the other stores one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

__all__ = ["Branch", "Comment", "Leaf", "Timestamp", "Value", "copy_value", "path_get"]


@dataclass(frozen=True, slots=True)
class Comment:
    """One comment line (without its ``#``)."""

    value: str


_TS_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A point in time as Go's ``time.Time`` formats it (RFC 3339 with nanoseconds).

    ``offset`` is the UTC offset in seconds, or ``None`` for UTC (printed ``Z``).
    """

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    nanosecond: int = 0
    offset: int | None = None

    def rfc3339(self) -> str:
        """``time.Time.MarshalText``: RFC 3339, fractional seconds without trailing zeros."""
        text = (
            f"{self.year:04d}-{self.month:02d}-{self.day:02d}T{self.hour:02d}:{self.minute:02d}:"
            f"{self.second:02d}"
        )
        if self.nanosecond:
            text += "." + f"{self.nanosecond:09d}".rstrip("0")
        if self.offset is None:
            return text + "Z"
        sign = "+" if self.offset >= 0 else "-"
        minutes = abs(self.offset) // 60
        return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"

    @classmethod
    def parse_rfc3339(cls, text: str) -> Timestamp:
        """Parse what :meth:`rfc3339` prints (``time.Time.UnmarshalText``). Raises ``ValueError``."""
        match = _TS_RE.fullmatch(text)
        if match is None:
            raise ValueError("not an RFC 3339 timestamp")
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        frac = match.group(7) or ""
        nanos = int(frac.ljust(9, "0")) if frac else 0
        zone = match.group(8)
        offset: int | None = None
        if zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
            if offset == 0:
                offset = None
        return cls(year, month, day, hour, minute, second, nanos, offset)

    def __str__(self) -> str:
        return self.rfc3339()


class Branch(list[tuple[Any, Any]]):
    """An ordered mapping: a list of ``(key, value)`` pairs where a key may be a :class:`Comment`."""

    __slots__ = ()

    def get_item(self, key: str) -> Any:
        """The value under ``key``; ``KeyError`` when absent."""
        for k, v in self:
            if k == key and not isinstance(k, Comment):
                return v
        raise KeyError(key)

    def keys_only(self) -> list[Any]:
        return [k for k, _ in self if not isinstance(k, Comment)]


Leaf: TypeAlias = str | int | float | bool | bytes | Timestamp | Comment | None
Value: TypeAlias = Any  # Leaf | Branch | list[Value]


def copy_value(value: Any) -> Any:
    """A deep copy of a tree value (leaves are immutable)."""
    if isinstance(value, Branch):
        return Branch((k, copy_value(v)) for k, v in value)
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    return value


def path_get(branch: Branch, path: list[str | int]) -> Any:
    """Follow ``path`` as sops' ``Truncate`` does: map keys, and list indices that count comment lines.

    Raises ``KeyError`` (missing key, or an index into a non-list) or ``IndexError``.
    """
    current: Any = branch
    for part in path:
        if isinstance(part, int):
            if not isinstance(current, list) or isinstance(current, Branch):
                raise KeyError(part)
            current = current[part]
        else:
            if not isinstance(current, Branch):
                raise KeyError(part)
            current = current.get_item(part)
    return current
