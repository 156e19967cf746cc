"""sops trees -> YAML text, byte for byte as sops prints it (go-yaml v3's emitter, indent 4).

What go-yaml does and this module reproduces:

* block style everywhere; empty maps and lists as ``{}`` and ``[]``; no line folding;
* indentation: a nested collection under a key moves to the next multiple of 4 columns, a collection
  inside a list item sits 2 columns after its ``-``; lists under a key are indented (not compact);
* strings: plain when go-yaml would read them back as the same string and libyaml's scalar analysis
  allows it, otherwise single-quoted, or double-quoted (with escapes) when single quotes cannot hold
  them; strings with a newline as literal blocks (``|``, ``|-``, ``|+``, an indentation digit when they
  start with a space or newline); strings that look like YAML 1.1 booleans (``yes``, ``on``...) or
  sexagesimal numbers double-quoted;
* ints in decimal, floats as Go's ``%g`` (``1e+20``, ``.inf``, ``.nan``), booleans ``true``/``false``,
  ``null``, timestamps in RFC 3339 with nanoseconds; strings that are not UTF-8 as ``!!binary``;
* comments as ``#`` lines at the indentation of the collection holding them; several documents
  separated by ``---``; a document holding only comments ends with ``{}``.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, Final

from kubeshield.sops import _gofmt
from kubeshield.sops.stores import _goyaml
from kubeshield.sops.tree import Branch, Comment, Timestamp

__all__ = ["emit_documents", "emit_value"]

_INDENT: Final = 4
_SIMPLE_PLAIN: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9_./=+-]*(?: [A-Za-z0-9_./=+()-]+)*")
_ENC_PLAIN: Final = re.compile(
    r"ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]*,tag:[A-Za-z0-9+/=]*,type:[a-z0-9]+\]"
)
_ESCAPES: Final = {
    "\0": "\\0", "\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f",
    "\r": "\\r", "\x1b": "\\e", '"': '\\"', "\\": "\\\\", "\x85": "\\N", "\xa0": "\\_",
    "\u2028": "\\L", "\u2029": "\\P",
}  # fmt: skip
_BREAKS: Final = "\n\r\x85\u2028\u2029"
_BREAK_RUN: Final = re.compile("[\n\r\x85\u2028\u2029]+(?=[^\n\r\x85\u2028\u2029])")


def _printable(ch: str) -> bool:
    """go-yaml's ``is_printable``: unlike libyaml it excludes NEL (U+0085) and everything past U+FFFF."""
    o = ord(ch)
    return o == 0x0A or 0x20 <= o <= 0x7E or (0xA0 <= o <= 0xD7FF) or (0xE000 <= o <= 0xFFFD and o != 0xFEFF)


class _Analysis:
    """libyaml's ``yaml_emitter_analyze_scalar``: which styles can hold ``value``.

    Printable ASCII without tabs (nearly every value and key, and every decrypted random token) takes a
    few ``str`` searches instead of the character loop, which cost ~0.2 s per 10,000 values; the result
    is the same (a property test compares the two).
    """

    __slots__ = ("block_allowed", "block_plain", "multiline", "single_allowed")

    def __init__(self, value: str) -> None:
        if not value:
            self.multiline = False
            self.block_plain = True
            self.single_allowed = True
            self.block_allowed = False
            return
        if value.isascii() and value.isprintable():  # 0x20-0x7E: no breaks, no specials, space the only blank
            n = len(value)
            first = value[0]
            block_ind = (
                first in "#,[]{}&*!|>'\"%@`"
                or (first in "?:-" and (n == 1 or value[1] == " "))
                or value.startswith(("---", "..."))
                or value.find(": ", 1) >= 0
                or (n > 1 and value[-1] == ":")
                or " #" in value
            )
            trailing_space = value[-1] == " "
            self.multiline = False
            self.block_plain = not (block_ind or first == " " or trailing_space)
            self.single_allowed = True
            self.block_allowed = not trailing_space
            return
        self._analyse(value)

    def _analyse(self, value: str) -> None:
        """The character loop, as libyaml writes it (any non-empty string)."""
        block_ind = line_breaks = special = False
        leading_space = leading_break = trailing_space = trailing_break = False
        break_space = space_break = previous_space = previous_break = False
        if value.startswith(("---", "...")):
            block_ind = True
        preceded_ws = True
        n = len(value)
        followed_ws = n == 1 or value[1] in " \t\n\r\x85\u2028\u2029"
        for i, ch in enumerate(value):
            if i == 0:
                if ch in "#,[]{}&*!|>'\"%@`":
                    block_ind = True
                if ch in "?:" and followed_ws:
                    block_ind = True
                if ch == "-" and followed_ws:
                    block_ind = True
            else:
                if ch == ":" and followed_ws:
                    block_ind = True
                if ch == "#" and preceded_ws:
                    block_ind = True
            if not _printable(ch) or ch == "\ufeff":
                special = True
            if ch in _BREAKS:
                line_breaks = True
            if ch == " ":
                if i == 0:
                    leading_space = True
                if i == n - 1:
                    trailing_space = True
                if previous_break:
                    break_space = True
                previous_space, previous_break = True, False
            elif ch in _BREAKS:
                if i == 0:
                    leading_break = True
                if i == n - 1:
                    trailing_break = True
                if previous_space:
                    space_break = True
                previous_space, previous_break = False, True
            else:
                previous_space = previous_break = False
            preceded_ws = ch in " \t\n\r\x85\u2028\u2029"
            followed_ws = i + 2 >= n or value[i + 2] in " \t\n\r\x85\u2028\u2029"
        self.multiline = line_breaks
        block_plain = single = block = True
        if leading_space or leading_break or trailing_space or trailing_break:
            block_plain = False
        if trailing_space:
            block = False
        if break_space:
            block_plain = single = False
        if space_break or special:
            block_plain = single = block = False
        if line_breaks:
            block_plain = False
        if block_ind:
            block_plain = False
        self.block_plain = block_plain
        self.single_allowed = single
        self.block_allowed = block


def _double(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in _ESCAPES and ch != "\xa0":  # NBSP is printable: go-yaml keeps it
            out.append(_ESCAPES[ch])
        elif not _printable(ch) or ch == "\ufeff":
            o = ord(ch)
            if o <= 0xFF:
                out.append(f"\\x{o:02X}")
            elif o <= 0xFFFF:
                out.append(f"\\u{o:04X}")
            else:
                out.append(f"\\U{o:08X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _string_style(value: str, *, key: bool) -> str:
    """'plain' | 'single' | 'double' | 'literal' as go-yaml chooses for a string."""
    if _ENC_PLAIN.fullmatch(value):  # every encrypted value: block-plain, resolves to a string
        return "plain"
    if _SIMPLE_PLAIN.fullmatch(value) and not _goyaml.is_old_bool(value) and _goyaml.resolves_to_str(value):
        return "plain"
    can_plain = _goyaml.resolves_to_str(value) and not (
        _goyaml.is_base60_float(value) or _goyaml.is_old_bool(value)
    )
    analysis = _Analysis(value)
    if "\n" in value:
        style = "literal"
    elif can_plain:
        style = "plain"
    else:
        style = "double"
    if key and analysis.multiline:
        style = "double"
    if style == "plain":
        if not analysis.block_plain or (not value and key):
            style = "single"
    if style == "single" and not analysis.single_allowed:
        style = "double"
    if style == "literal" and (not analysis.block_allowed or key):
        style = "double"
    return style


_SURROGATE: Final = re.compile("[\udc80-\udcff]")


def _is_surrogate_escaped(value: str) -> bool:
    return value.isascii() is False and _SURROGATE.search(value) is not None


def _scalar_text(value: Any, *, key: bool = False) -> tuple[str, str]:
    """(style, text) for a leaf; style 'literal' text is the raw string."""
    if value is None:
        return "plain", "null"
    if value is True:
        return "plain", "true"
    if value is False:
        return "plain", "false"
    if isinstance(value, int):
        return "plain", str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "plain", ".nan"
        if math.isinf(value):
            return "plain", ".inf" if value > 0 else "-.inf"
        return "plain", _gofmt.format_float_g(value)
    if isinstance(value, Timestamp):
        return "plain", value.rfc3339()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        if _is_surrogate_escaped(value):
            raw = value.encode("utf-8", "surrogateescape")
            return "plain", "!!binary " + base64.b64encode(raw).decode("ascii")
        style = _string_style(value, key=key)
        if style == "plain":
            return style, value
        if style == "single":
            return style, "'" + value.replace("'", "''") + "'"
        if style == "double":
            return style, _double(value)
        return style, value
    raise TypeError(f"cannot emit a {type(value).__name__} as YAML")


def _literal(value: str, indent: int) -> list[str]:
    """The header suffix and lines of a literal block scalar at ``indent``."""
    header = "|"
    if value[0] in " \n\r\x85\u2028\u2029":
        header += str(_INDENT)
    if value[-1] not in "\n":
        header += "-"
    elif len(value) == 1 or value[-2] == "\n":
        header += "+"
    lines = value.split("\n")
    if value.endswith("\n"):
        lines = lines[:-1]
    body = [(" " * indent + line) if line else "" for line in lines]
    return [header, *body]


def _next_indent(indent: int, in_seq_item: bool) -> int:
    if in_seq_item:
        return indent + 2
    return _INDENT * ((indent + _INDENT) // _INDENT)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        # the same keys recur in every section of a large file: their quoting is worked out once
        self._key_text: dict[Any, str] = {}

    def comment(self, indent: int, text: str) -> None:
        self.lines.append(" " * indent + "#" + text)

    def mapping(self, branch: Branch, indent: int, *, first_prefix: str | None = None) -> None:
        """Write ``branch``'s items at ``indent``; ``first_prefix`` is the ``- `` line the first key joins."""
        prefix = first_prefix
        for key, value in branch:
            if isinstance(key, Comment):
                if prefix is not None:
                    # comments cannot follow "- " on its line: go-yaml prints them before it
                    self.lines.append(" " * (indent - 2) + "#" + key.value)
                    continue
                self.comment(indent, key.value)
                continue
            key_text = self._key_text.get(key) if type(key) is str else None
            if key_text is None:
                _style, key_text = _scalar_text(key, key=True)
                if type(key) is str and len(self._key_text) < 4096:
                    self._key_text[key] = key_text
            head = (prefix if prefix is not None else " " * indent) + key_text + ":"
            prefix = None
            self.value_after(head, value, indent, in_seq_item=False)

    def value_after(self, head: str, value: Any, indent: int, *, in_seq_item: bool) -> None:
        """Write ``value`` after ``head`` (``key:`` or ``-``) on the same line or nested below it."""
        if isinstance(value, Branch):
            if not any(not isinstance(k, Comment) for k, _ in value):
                comments = [k.value for k, _ in value]
                nested = _next_indent(indent, in_seq_item)
                for text in comments:
                    self.comment(nested, text)
                self.lines.append(head + " {}")
                return
            self.lines.append(head)
            self.mapping(value, _next_indent(indent, in_seq_item))
            return
        if isinstance(value, list):
            if not any(not isinstance(v, Comment) for v in value):
                nested = _next_indent(indent, in_seq_item)
                for v in value:
                    self.comment(nested, v.value)
                self.lines.append(head + " []")
                return
            self.lines.append(head)
            self.sequence(value, _next_indent(indent, in_seq_item))
            return
        style, text = _scalar_text(value)
        if style == "single" and any(ch in _BREAKS for ch in text):
            # go-yaml writes a line-break character and then indents the next character
            text = _BREAK_RUN.sub(lambda m: m.group(0) + " " * _next_indent(indent, in_seq_item), text)
        if style == "literal":
            block_indent = _next_indent(indent, in_seq_item)
            header, *body = _literal(text, block_indent)
            self.lines.append(f"{head} {header}")
            self.lines.extend(body)
            return
        self.lines.append(f"{head} {text}")

    def sequence(self, items: list[Any], indent: int) -> None:
        for item in items:
            if isinstance(item, Comment):
                self.comment(indent, item.value)
                continue
            dash = " " * indent + "-"
            if isinstance(item, Branch) and any(not isinstance(k, Comment) for k, _ in item):
                leading = []
                for k, _ in item:
                    if not isinstance(k, Comment):
                        break
                    leading.append(k.value)
                for text in leading:
                    self.comment(indent, text)
                rest = Branch(item[len(leading) :])
                self.mapping(rest, indent + 2, first_prefix=dash + " ")
                continue
            if isinstance(item, list) and any(not isinstance(v, Comment) for v in item):
                leading = []
                for v in item:
                    if not isinstance(v, Comment):
                        break
                    leading.append(v.value)
                for text in leading:
                    self.comment(indent, text)
                rest_items = item[len(leading) :]
                before = len(self.lines)
                self.sequence(rest_items, indent + 2)
                first = self.lines[before]
                self.lines[before] = dash + " " + first[indent + 2 :]
                continue
            self.value_after(dash, item, indent, in_seq_item=True)


def emit_value(branch: Branch) -> str:
    writer = _Writer()
    if not any(not isinstance(k, Comment) for k, _ in branch):
        for k, _ in branch:
            writer.comment(0, k.value)
        writer.lines.append("{}")
    else:
        writer.mapping(branch, 0)
    return "\n".join(writer.lines) + "\n"


def emit_documents(branches: list[Branch]) -> str:
    """Several documents as go-yaml's Encoder writes them (``---`` before the second and later)."""
    return "---\n".join(emit_value(b) for b in branches)
