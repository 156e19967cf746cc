"""The message helpers pod-security-admission formats its reasons with (Go semantics, byte for byte)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["go_quote", "join_quote", "pluralize"]

_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}


def pluralize(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def join_quote(items: Iterable[str]) -> str:
    """``"a", "b"`` (no escaping, exactly like upstream's joinQuote); empty for no items."""
    items = list(items)
    if not items:
        return ""
    return '"' + '", "'.join(items) + '"'


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` (what ``%q`` prints for a string)."""
    out = ['"']
    for ch in text:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
