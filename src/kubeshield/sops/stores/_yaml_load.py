"""YAML text -> sops trees, with the values and comment positions sops (go-yaml v3) gives.

The structure comes from libyaml's event stream (PyYAML's C parser: the same algorithm go-yaml ports);
plain scalars are resolved by :mod:`._goyaml`, not by PyYAML. Comments are found in the text between
events (a ``#`` outside every scalar can only start a comment) and placed where sops places them:

* a comment at the end of a line goes *before* the innermost item that starts on that line;
* a full-line comment goes between the items around it; after the last item of a nested block
  collection it stays inside that collection when it is indented at least as far as the collection's
  items, and moves out otherwise (go-yaml's foot/head comments, flattened the way sops does);
* comments between a key and its nested collection open that collection.

Aliases are expanded (sops copies the anchored value); merge keys (``<<``) stay ordinary keys, as in
sops. A document that is a list or a scalar is refused, as sops refuses it.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.stores import _goyaml
from kubeshield.sops.tree import Branch, Comment

__all__ = ["load_documents"]

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader

# plain scalars that go-yaml certainly reads as strings (a letter first, then no special words)
_SIMPLE_STR: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9_./+=-]*(?: [A-Za-z0-9_./+=()-]+)*")
_WORDS: Final = frozenset("true True TRUE false False FALSE null Null NULL".split())
_STR_TAGS: Final = {"tag:yaml.org,2002:str", "!"}
_SCALAR: Final = yaml.ScalarEvent
_MAP_START: Final = yaml.MappingStartEvent
_MAP_END: Final = yaml.MappingEndEvent
_SEQ_START: Final = yaml.SequenceStartEvent
_SEQ_END: Final = yaml.SequenceEndEvent
_DOC_START: Final = yaml.DocumentStartEvent
_DOC_END: Final = yaml.DocumentEndEvent
_ALIAS: Final = yaml.AliasEvent


def _ignore(_span: tuple[int, int]) -> None:
    return None


@dataclass(slots=True)
class _Item:
    """One entry of a collection: its start (key or value), where its content ends, its value node."""

    start: int
    start_line: int
    end: int
    value: _Coll | None  # the nested block collection, if the value is one
    value_start: int


@dataclass(slots=True)
class _Coll:
    kind: str  # "map" | "seq"
    column: int
    start: int
    flow: bool
    out: Any  # the Branch or list being built
    items: list[_Item] = field(default_factory=list)
    # insertion points into ``out`` per item index (comments shift them)
    positions: list[int] = field(default_factory=list)
    pending_head: list[str] = field(default_factory=list)
    inserts: list[tuple[int, str]] = field(default_factory=list)  # (item index to insert before, text)
    tail: list[str] = field(default_factory=list)
    anchor: str | None = None
    start_line: int = 0


class _Builder:
    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.anchors: dict[str, tuple[Any, list[tuple[int, str]]]] = {}

    def fail(self, problem: str, mark: Any = None) -> SopsError:
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return SopsError(f"{self.where}: {problem}{at}", code=ExitCode.COULD_NOT_READ_INPUT_FILE)

    def scalar(self, event: Any) -> Any:
        tag = event.tag
        value: str = event.value
        style = event.style or ""
        if tag is None and style == "" and event.implicit[0]:
            if value not in _WORDS and _SIMPLE_STR.fullmatch(value):
                return value
            resolved = _goyaml.resolve_plain(value)
            if isinstance(resolved, float) and math.isnan(resolved):
                return math.nan
            return resolved
        if tag == "!" and style == "" and event.implicit[0]:
            resolved = _goyaml.resolve_plain(value)
            if isinstance(resolved, float) and math.isnan(resolved):
                return math.nan
            return resolved
        if tag is None or tag in _STR_TAGS:
            return value
        short = tag.replace("tag:yaml.org,2002:", "!!")
        if short == "!!binary":
            try:
                return base64.b64decode("".join(value.split())).decode("utf-8", "surrogateescape")
            except (binascii.Error, ValueError):
                raise self.fail("a !!binary value is not base64", event.start_mark) from None
        if short in ("!!int", "!!float", "!!bool", "!!null", "!!timestamp"):
            resolved = _goyaml.resolve_plain(value)
            ok = {
                "!!int": isinstance(resolved, int) and not isinstance(resolved, bool),
                "!!float": isinstance(resolved, int | float) and not isinstance(resolved, bool),
                "!!bool": isinstance(resolved, bool),
                "!!null": resolved is None,
            }.get(short, True)
            if not ok:
                raise self.fail(f"cannot decode {value!r} as a {short}", event.start_mark)
            if short == "!!float" and isinstance(resolved, int) and not isinstance(resolved, bool):
                return float(resolved)
            return resolved
        return value  # an application tag: go-yaml hands sops the string


def _comments(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int, int, str, bool]]:
    """(index, line, column, text after '#', trailing) for every comment outside ``spans``.

    A comment starts at a ``#`` that begins a line or follows a blank, outside every scalar, and runs to
    the end of the line. A ``#`` inside a scalar is skipped and the search goes on from the next
    character, so ``a: "x #y" # z`` keeps its comment (go-yaml keeps it; a regex scan that consumed the
    rest of the line lost it). ``str.find`` jumps from ``#`` to ``#``: the regex scan of a 1 MiB file
    without comments took ~0.2 s.
    """
    found: list[tuple[int, int, int, str, bool]] = []
    pos = text.find("#")
    if pos < 0:
        return found
    starts = [s for s, _ in spans]
    line_starts = [0, *[m.end() for m in re.finditer("\n", text)]]
    while pos >= 0:
        if pos and text[pos - 1] not in " \t\n":
            pos = text.find("#", pos + 1)
            continue
        end = text.find("\n", pos)
        if end < 0:
            end = len(text)
        i = bisect_right(starts, pos) - 1
        if i >= 0 and spans[i][0] <= pos < spans[i][1]:
            # inside a scalar ('a: "x #y" # z'): not a comment, and a real one may follow on the line
            pos = text.find("#", pos + 1)
            continue
        line = bisect_right(line_starts, pos) - 1
        column = pos - line_starts[line]
        before = text[line_starts[line] : pos]
        body = text[pos + 1 : end].rstrip("\r")
        found.append((pos, line, column, body, bool(before.strip())))
        pos = text.find("#", end)
    return found


def load_documents(text: str, *, where: str) -> list[Branch]:
    """Every document of ``text`` as a Branch. ``SopsError`` (exit 2) names the line of a syntax error."""
    builder = _Builder(text, where)
    try:
        events: list[Any] = list(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise builder.fail(f"invalid YAML: {exc.problem}", mark) from None
    except yaml.YAMLError as exc:
        raise builder.fail(f"invalid YAML: {exc}") from None
    docs: list[tuple[int, int, _Coll | None, Any]] = []  # (start, end, root coll, value)
    spans: list[tuple[int, int]] = []
    # one pass building nested values; collections remember item geometry for the comment pass. No '#'
    # anywhere: no comment to place, so neither the geometry nor the scalar spans (which tell a '#' inside
    # a scalar from a comment) are needed, and a 10,000-leaf file loads ~30% faster without them.
    geometry = "#" in text
    record = spans.append if geometry else _ignore
    stack: list[_Coll] = []
    pending_key: list[tuple[Any, int, int] | None] = []
    doc_start = 0
    root_value: Any = None
    root_coll: _Coll | None = None
    anchors: dict[str, tuple[Any, _Coll | None]] = {}

    def attach(value: Any, coll: _Coll | None, start_index: int, start_line: int, end_index: int) -> None:
        nonlocal root_value, root_coll
        if not stack:
            root_value, root_coll = value, coll
            return
        parent = stack[-1]
        if parent.kind == "seq":
            parent.out.append(value)
            if geometry:
                parent.items.append(_Item(start_index, start_line, end_index, coll, start_index))
            return
        key_info = pending_key[-1]
        if key_info is None:
            pending_key[-1] = (value, start_index, start_line)
            if coll is not None:
                raise builder.fail("a mapping key that is a collection is not supported", None)
            return
        key, key_start, key_line = key_info
        parent.out.append((key, value))
        if geometry:
            parent.items.append(_Item(key_start, key_line, end_index, coll, start_index))
        pending_key[-1] = None

    for event in events:
        cls = type(event)
        if cls is _SCALAR:
            start_mark = event.start_mark
            end_index = event.end_mark.index
            record((start_mark.index, end_index))
            value = builder.scalar(event)
            if event.anchor:
                anchors[event.anchor] = (value, None)
            attach(value, None, start_mark.index, start_mark.line, end_index)
        elif cls is _MAP_START or cls is _SEQ_START:
            flow = bool(event.flow_style)
            start_mark = event.start_mark
            record((start_mark.index, event.end_mark.index if flow else start_mark.index))
            kind = "map" if cls is _MAP_START else "seq"
            coll = _Coll(kind, start_mark.column, start_mark.index, flow, Branch() if kind == "map" else [])
            coll.anchor = event.anchor
            coll.start_line = start_mark.line
            stack.append(coll)
            pending_key.append(None)
        elif cls is _MAP_END or cls is _SEQ_END:
            coll = stack.pop()
            pending_key.pop()
            if coll.flow:
                record((event.start_mark.index, event.end_mark.index))
            end = coll.items[-1].end if coll.items else coll.start
            if coll.flow:
                end = event.end_mark.index
            if coll.anchor:
                anchors[coll.anchor] = (coll.out, coll)
            attach(coll.out, coll, coll.start, coll.start_line, end)
        elif cls is _DOC_START:
            doc_start = event.start_mark.index
            root_value, root_coll = None, None
            stack.clear()
        elif cls is _DOC_END:
            docs.append((doc_start, event.end_mark.index, root_coll, root_value))
        elif cls is _ALIAS:
            record((event.start_mark.index, event.end_mark.index))
            if event.anchor not in anchors:
                raise builder.fail(f"unknown alias *{event.anchor}", event.start_mark)
            from kubeshield.sops.tree import copy_value

            value, _ = anchors[event.anchor]
            attach(
                copy_value(value), None, event.start_mark.index, event.start_mark.line, event.end_mark.index
            )
    spans.sort()
    comments = _comments(text, spans)
    branches: list[Branch] = []
    for index, (start, _end, root, value) in enumerate(docs):
        next_start = docs[index + 1][0] if index + 1 < len(docs) else len(text) + 1
        lo = 0 if index == 0 else start
        mine = [c for c in comments if lo <= c[0] < next_start]
        if root is None:
            if value is not None:
                raise builder.fail("YAML documents that are values are not supported")
            branch = Branch((Comment(c[3]), None) for c in mine)
            branches.append(branch)
            continue
        if root.kind != "map":
            raise builder.fail("YAML documents that are sequences are not supported")
        _place_all(root, mine)
        branches.append(root.out)
    return branches


def _place_all(root: _Coll, comments: list[tuple[int, int, int, str, bool]]) -> None:
    placements: dict[int, list[tuple[int, str]]] = {}  # id(coll) -> [(slot, text)]
    colls: dict[int, _Coll] = {}

    def add(coll: _Coll, slot: int, text: str) -> None:
        colls[id(coll)] = coll
        placements.setdefault(id(coll), []).append((slot, text))

    def innermost_on_line(coll: _Coll, line: int) -> tuple[_Coll, int] | None:
        for i, item in enumerate(coll.items):
            if item.value is not None and item.value.items:
                found = innermost_on_line(item.value, line)
                if found is not None:
                    return found
            if item.start_line == line:
                return coll, i
        return None

    def chain_at(index: int) -> list[tuple[_Coll, int]]:
        """(collection, index of the last item starting before ``index``) from the root down."""
        chain: list[tuple[_Coll, int]] = []
        coll = root
        while True:
            starts = [it.start for it in coll.items]
            i = bisect_right(starts, index) - 1
            chain.append((coll, i))
            if i < 0:
                return chain
            item = coll.items[i]
            nested = item.value
            if nested is None or nested.flow or not nested.items or index < item.value_start:
                return chain
            coll = nested

    run_key: tuple[int, int] | None = None
    prev_col = 0
    level = 0  # index into the chain of the collection the run currently fills

    def place(index: int, column: int, text: str) -> None:
        nonlocal run_key, prev_col, level
        chain = chain_at(index)
        coll, i = chain[-1]
        if i < 0:
            add(coll, 0, text)  # before the first item
            run_key = None
            return
        item = coll.items[i]
        if index < item.value_start:  # between a key and its value
            if item.value is not None:
                add(item.value, 0, text)
            else:
                add(coll, i, text)
            run_key = None
            return
        # after item i of the innermost collection: the next token is at the deepest level that has one
        k = 0
        next_col = 0
        for depth in range(len(chain) - 1, -1, -1):
            c, j = chain[depth]
            if j + 1 < len(c.items):
                k, next_col = depth, c.column
                break
        key = (id(chain[k][0]), chain[k][1])
        if key != run_key:
            run_key = key
            level = k if column <= next_col else len(chain) - 1
        elif column < prev_col and level > k:
            if column <= next_col:
                level = k
            else:
                while level > k and chain[level][0].column > column:
                    level -= 1
        prev_col = column
        c, j = chain[level]
        add(c, j + 1, text)

    for index, line, column, text, trailing in comments:
        if trailing:
            found = innermost_on_line(root, line)
            if found is not None:
                add(found[0], found[1], text)
                run_key = None
                continue
        place(index, column, text)

    for key, entries in placements.items():
        coll = colls[key]
        out = coll.out
        # slots refer to item indices; rebuild the list with comments before item ``slot``
        items = list(out)
        by_slot: dict[int, list[str]] = {}
        for slot, text in entries:
            by_slot.setdefault(slot, []).append(text)
        rebuilt: list[Any] = []
        for i, entry in enumerate(items):
            for text in by_slot.get(i, []):
                rebuilt.append((Comment(text), None) if coll.kind == "map" else Comment(text))
            rebuilt.append(entry)
        for text in by_slot.get(len(items), []):
            rebuilt.append((Comment(text), None) if coll.kind == "map" else Comment(text))
        out[:] = rebuilt
