"""A safe subset of Go ``text/template`` + Sprig for ``spec.template.data`` (what sealed-secrets renders).

sealed-secrets runs each ``spec.template.data`` entry as a Go template over the decrypted values (a
``map[string]string``) with Sprig's ``GenericFuncMap`` minus ``env``, ``expandenv`` and
``getHostByName``. kubeshield renders the same templates with an interpreter written for this subset:

* text, ``{{ pipeline }}``, trim markers ``{{- ... -}}``, comments ``{{/* ... */}}``;
* operands: ``.``, ``.key`` (a value), ``$`` and ``$.key``, string literals (``"..."`` with Go escapes,
  and raw backquoted strings), integers, ``true``, ``false``, ``nil``, parenthesised pipelines;
* pipelines with ``|`` (the piped value becomes the last argument, as in Go);
* ``{{ if }} / {{ else if }} / {{ else }} / {{ end }}`` with Go's truth rules;
* the functions in :data:`FUNCTIONS` (Go builtins and the Sprig string and encoding functions, with
  Sprig's argument order).

Everything else (``range``, ``with``, ``define``, ``template``, ``block``, variables ``$x :=``, method
calls, any other function) is a :class:`~kubeshield.seal.errors.TemplateError` naming the entry and
the construct. One deliberate difference from Go: a key that is not among the decrypted values is an
error (``missing key "x"``), where Go would silently print ``<no value>`` into the Secret.

Values are byte strings carried as ``str`` decoded with ``surrogateescape``, so binary values survive
``b64enc`` and plain interpolation byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeshield.seal.errors import TemplateError

__all__ = ["FUNCTIONS", "render"]

_MAX_OUTPUT = 1 << 20


def _b(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _s(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class _Fail(Exception):
    """Raised inside the interpreter; turned into a TemplateError naming the entry."""


# --- values and functions -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """How Go's fmt prints a value with %v / print."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_text(v) for v in value) + "]"
    return str(value)


def _truth(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str | list | dict):
        return bool(value)
    return True


def _str_arg(value: Any, fn: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise _Fail(f"{fn}: expected a string, got {_kind(value)}")
    if isinstance(value, int):
        return str(value)
    raise _Fail(f"{fn}: expected a string, got {_kind(value)}")


def _int_arg(value: Any, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Fail(f"{fn}: expected an integer, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    return {bool: "bool", int: "int", str: "string", list: "list", dict: "map"}.get(type(value), "value")


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([svdqxXt%])")


def _printf(fmt: Any, *args: Any) -> str:
    fmt = _str_arg(fmt, "printf")
    out: list[str] = []
    pos = 0
    arg_index = 0
    while True:
        i = fmt.find("%", pos)
        if i < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:i])
        m = _VERB.match(fmt, i)
        if m is None:
            raise _Fail("printf: unsupported format directive (supported: %s %v %d %q %x %X %t %%)")
        flags, width, precision, verb = m.groups()
        pos = m.end()
        if verb == "%":
            out.append("%")
            continue
        if arg_index >= len(args):
            raise _Fail("printf: not enough arguments for the format")
        arg = args[arg_index]
        arg_index += 1
        if verb in "sv":
            piece = _text(arg)
            if precision is not None and verb == "s":
                piece = piece[: int(precision)]
        elif verb == "d":
            piece = str(_int_arg(arg, "printf %d"))
        elif verb == "t":
            if not isinstance(arg, bool):
                raise _Fail("printf %t: expected a bool")
            piece = _text(arg)
        elif verb == "q":
            piece = json.dumps(_str_arg(arg, "printf %q"), ensure_ascii=False)
        else:
            raw = _b(arg) if isinstance(arg, str) else None
            if raw is None:
                piece = format(_int_arg(arg, "printf %x"), "x")
            else:
                piece = raw.hex()
            if verb == "X":
                piece = piece.upper()
        if width is not None and len(piece) < int(width):
            pad = int(width) - len(piece)
            piece = piece + " " * pad if "-" in flags else (("0" if "0" in flags else " ") * pad) + piece
        out.append(piece)
    if arg_index < len(args):
        raise _Fail("printf: more arguments than the format uses")
    return "".join(out)


def _index(container: Any, *keys: Any) -> Any:
    value = container
    for key in keys:
        if isinstance(value, dict):
            k = _str_arg(key, "index")
            if k not in value:
                raise _Fail(f"missing key {k!r}")
            value = value[k]
        elif isinstance(value, list | str):
            i = _int_arg(key, "index")
            seq: Sequence[Any] = value if isinstance(value, list) else list(_b(value))
            if not 0 <= i < len(seq):
                raise _Fail(f"index: {i} is out of range")
            value = seq[i]
        else:
            raise _Fail(f"index: cannot index a {_kind(value)}")
    return value


def _b64dec(value: Any) -> str:
    try:
        return _s(base64.b64decode(_b(_str_arg(value, "b64dec")), validate=True))
    except (binascii.Error, ValueError):
        raise _Fail("b64dec: the input is not standard base64") from None


def _b32dec(value: Any) -> str:
    try:
        return _s(base64.b32decode(_b(_str_arg(value, "b32dec"))))
    except (binascii.Error, ValueError):
        raise _Fail("b32dec: the input is not base32") from None


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise _Fail("eq: missing argument for comparison")
    return any(a == b and type(a) is type(b) for b in others)


def _indent(n: Any, s: Any) -> str:
    pad = " " * _int_arg(n, "indent")
    return pad + _str_arg(s, "indent").replace("\n", "\n" + pad)


def _substr(start: Any, end: Any, s: Any) -> str:
    text = _str_arg(s, "substr")
    a, b = _int_arg(start, "substr"), _int_arg(end, "substr")
    if a < 0:
        return text[:b] if b >= 0 else text
    if b < 0 or b > len(text):
        return text[a:]
    return text[a:b] if a <= b else ""


def _trunc(n: Any, s: Any) -> str:
    text, c = _str_arg(s, "trunc"), _int_arg(n, "trunc")
    if c < 0:
        return text[len(text) + c :] if -c < len(text) else text
    return text[:c]


def _default(dflt: Any, *given: Any) -> Any:
    if not given or not _truth(given[0]):
        return dflt
    return given[0]


def _title(s: Any) -> str:
    return re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), _str_arg(s, "title"))


def _two(fn: str, op: Callable[[str, str], Any]) -> Callable[[Any, Any], Any]:
    return lambda a, b: op(_str_arg(a, fn), _str_arg(b, fn))


def _one(fn: str, op: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda a: op(_str_arg(a, fn))


def _toJson(value: Any) -> str:  # noqa: N802 - Sprig's name
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _and(*args: Any) -> Any:
    if not args:
        raise _Fail("and: needs at least one argument")
    for a in args:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    if not args:
        raise _Fail("or: needs at least one argument")
    for a in args:
        if _truth(a):
            return a
    return args[-1]


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(_b(value))
    if isinstance(value, list | dict):
        return len(value)
    raise _Fail(f"len: cannot take the length of a {_kind(value)}")


def _join(sep: Any, items: Any) -> str:
    if not isinstance(items, list):
        raise _Fail("join: expected a list")
    return _str_arg(sep, "join").join(_text(i) for i in items)


#: every function a template may call: Go's builtins and Sprig's string/encoding functions (Sprig order)
FUNCTIONS: dict[str, Callable[..., Any]] = {
    # Go text/template builtins
    "index": _index,
    "print": lambda *a: "".join(_text(x) for x in a),
    "println": lambda *a: " ".join(_text(x) for x in a) + "\n",
    "printf": _printf,
    "len": _len,
    "and": _and,
    "or": _or,
    "not": lambda a: not _truth(a),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "urlquery": lambda *a: urllib.parse.quote_plus("".join(_text(x) for x in a)),
    "js": lambda a: json.dumps(_str_arg(a, "js"))[1:-1].replace("'", "\\'"),
    "html": lambda a: (
        _str_arg(a, "html")
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    ),
    # Sprig: encodings and digests
    "b64enc": _one("b64enc", lambda s: base64.b64encode(_b(s)).decode("ascii")),
    "b64dec": _b64dec,
    "b32enc": _one("b32enc", lambda s: base64.b32encode(_b(s)).decode("ascii")),
    "b32dec": _b32dec,
    "sha1sum": _one("sha1sum", lambda s: hashlib.sha1(_b(s)).hexdigest()),
    "sha256sum": _one("sha256sum", lambda s: hashlib.sha256(_b(s)).hexdigest()),
    "toJson": _toJson,
    # Sprig: strings
    "upper": _one("upper", str.upper),
    "lower": _one("lower", str.lower),
    "title": _title,
    "trim": _one("trim", str.strip),
    "trimAll": _two("trimAll", lambda cut, s: s.strip(cut)),
    "trimPrefix": _two("trimPrefix", lambda p, s: s.removeprefix(p)),
    "trimSuffix": _two("trimSuffix", lambda p, s: s.removesuffix(p)),
    "trunc": _trunc,
    "substr": _substr,
    "nospace": _one("nospace", lambda s: re.sub(r"\s", "", s)),
    "repeat": lambda n, s: _str_arg(s, "repeat") * max(0, _int_arg(n, "repeat")),
    "replace": lambda old, new, s: _str_arg(s, "replace").replace(
        _str_arg(old, "replace"), _str_arg(new, "replace")
    ),
    "contains": _two("contains", lambda sub, s: sub in s),
    "hasPrefix": _two("hasPrefix", lambda p, s: s.startswith(p)),
    "hasSuffix": _two("hasSuffix", lambda p, s: s.endswith(p)),
    "quote": lambda *a: " ".join(json.dumps(_text(x), ensure_ascii=False) for x in a),
    "squote": lambda *a: " ".join("'" + _text(x) + "'" for x in a),
    "cat": lambda *a: " ".join(_text(x) for x in a if x is not None),
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "default": _default,
    "empty": lambda a: not _truth(a),
    "coalesce": lambda *a: next((x for x in a if _truth(x)), None),
    "list": lambda *a: list(a),
    "join": _join,
    "splitList": _two("splitList", lambda sep, s: s.split(sep)),
}

#: Go template keywords that are outside the subset (a clear error instead of a parse failure)
_UNSUPPORTED_KEYWORDS = {"range", "with", "define", "template", "block", "break", "continue"}

# --- lexer ----------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>-?\d+)
  | (?P<field>(?:\$|)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<dollar>\$[A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<declare>:?=)
  | (?P<punct>[|()])
  | (?P<char>'(?:[^'\\]|\\.)*')
""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str


def _lex(action: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(action):
        m = _TOKEN.match(action, pos)
        if m is None:
            raise _Fail(f"unexpected {action[pos]!r} in action")
        kind = m.lastgroup or ""
        pos = m.end()
        if kind == "space":
            continue
        if kind == "char":
            raise _Fail("character constants are not supported")
        if kind == "declare":
            raise _Fail("variables ($x := ...) are not supported")
        out.append(_Tok(kind, m.group()))
    return out


def _unquote(tok: _Tok) -> str:
    if tok.kind == "raw":
        return tok.text[1:-1]
    body = tok.text
    try:
        # Go and JSON agree on \n \t \\ \" \uXXXX; Go's other escapes are mapped first.
        body = re.sub(r"\\x([0-9A-Fa-f]{2})", lambda m: "\\u00" + m.group(1), body)
        body = body.replace("\\a", "\\u0007").replace("\\v", "\\u000b").replace("\\'", "'")
        value = json.loads(body)
    except ValueError:
        raise _Fail("invalid string literal") from None
    if not isinstance(value, str):  # pragma: no cover - the regex only matches strings
        raise _Fail("invalid string literal")
    return value


# --- parser: nodes are tuples, evaluated by _Eval -------------------------------------------------------

# ("text", str) | ("out", pipeline) | ("if", [(pipeline, body), ...], else_body)
# pipeline: list of commands; command: list of operands; operand:
#   ("lit", value) | ("dot",) | ("root",) | ("field", root: bool, names) | ("fn", name) | ("sub", pipeline)

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


def _parse(template: str) -> list[Any]:
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            pieces.append(("text", text))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            pieces.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = template[pos:]
    if "{{" in tail:
        raise _Fail("unclosed action")
    if trim_next:
        tail = tail.lstrip()
    if tail:
        pieces.append(("text", tail))
    nodes, rest, end = _block(pieces, 0, top=True)
    if rest != len(pieces) or end is not None:  # pragma: no cover - _block consumes all at top level
        raise _Fail("unexpected {{end}}")
    return nodes


def _block(pieces: list[tuple[str, str]], i: int, *, top: bool) -> tuple[list[Any], int, str | None]:
    nodes: list[Any] = []
    while i < len(pieces):
        kind, body = pieces[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        toks = _lex(body)
        if not toks:
            raise _Fail("empty action {{}}")
        head = toks[0]
        if head.kind == "ident" and head.text in _UNSUPPORTED_KEYWORDS:
            raise _Fail(
                f"{{{{{head.text}}}}} is not supported (supported: if/else/end, pipelines, functions)"
            )
        if head.kind == "ident" and head.text in ("end", "else"):
            if top:
                raise _Fail(f"unexpected {{{{{head.text}}}}}")
            return nodes, i, body
        if head.kind == "ident" and head.text == "if":
            node, i = _if(pieces, i, toks[1:])
            nodes.append(node)
            continue
        nodes.append(("out", _pipeline(toks)))
        i += 1
    if not top:
        raise _Fail("missing {{end}}")
    return nodes, i, None


def _if(pieces: list[tuple[str, str]], i: int, cond: list[_Tok]) -> tuple[Any, int]:
    branches: list[tuple[Any, list[Any]]] = []
    else_body: list[Any] = []
    pipeline = _pipeline(cond)
    i += 1
    while True:
        body, i, end = _block(pieces, i, top=False)
        if end is None:  # pragma: no cover - _block raises when not top
            raise _Fail("missing {{end}}")
        toks = _lex(end)
        branches.append((pipeline, body))
        if toks[0].text == "end":
            if len(toks) != 1:
                raise _Fail("unexpected tokens after {{end}}")
            return ("if", branches, else_body), i + 1
        # else / else if
        if len(toks) >= 2 and toks[1].kind == "ident" and toks[1].text == "if":
            pipeline = _pipeline(toks[2:])
            i += 1
            continue
        if len(toks) != 1:
            raise _Fail("unexpected tokens after {{else}}")
        else_body, i, end = _block(pieces, i + 1, top=False)
        if end is None or _lex(end)[0].text != "end" or len(_lex(end)) != 1:
            raise _Fail("expected {{end}} after {{else}}")
        return ("if", branches, else_body), i + 1


def _pipeline(toks: list[_Tok]) -> list[list[Any]]:
    if not toks:
        raise _Fail("missing value in action")
    commands: list[list[Any]] = []
    current: list[Any] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.text == "|":
            if not current:
                raise _Fail("missing command before |")
            commands.append(current)
            current = []
            i += 1
            continue
        if tok.text == "(":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[j].text, 0)
                j += 1
            if depth:
                raise _Fail("unclosed (")
            current.append(("sub", _pipeline(toks[i + 1 : j - 1])))
            i = j
            continue
        if tok.text == ")":
            raise _Fail("unexpected )")
        current.append(_operand(tok))
        i += 1
    if not current:
        raise _Fail("missing command after |")
    commands.append(current)
    for n, command in enumerate(commands):
        if command[0][0] != "fn" and len(command) > 1:
            raise _Fail("a value cannot take arguments (did you mean a function?)")
        if n > 0 and command[0][0] != "fn":
            raise _Fail("only a function can follow |")
    return commands


def _operand(tok: _Tok) -> Any:
    if tok.kind in ("string", "raw"):
        return ("lit", _unquote(tok))
    if tok.kind == "number":
        return ("lit", int(tok.text))
    if tok.kind == "dot":
        return ("dot",)
    if tok.kind == "field":
        root = tok.text.startswith("$")
        names = tok.text.lstrip("$").split(".")[1:]
        return ("field", root, names)
    if tok.kind == "dollar":
        if tok.text != "$":
            raise _Fail("variables ($x) are not supported")
        return ("root",)
    if tok.kind == "ident":
        if tok.text in ("true", "false"):
            return ("lit", tok.text == "true")
        if tok.text == "nil":
            return ("lit", None)
        if tok.text in ("if", "else", "end") or tok.text in _UNSUPPORTED_KEYWORDS:
            raise _Fail(f"{tok.text!r} is not allowed here")
        if tok.text not in FUNCTIONS:
            raise _Fail(f"function {tok.text!r} is not in the supported subset (see docs/sealed-secrets.md)")
        return ("fn", tok.text)
    raise _Fail(f"unexpected {tok.text!r}")  # pragma: no cover - every token kind is handled


class _Eval:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.out: list[str] = []
        self.size = 0

    def nodes(self, nodes: list[Any]) -> None:
        for node in nodes:
            if node[0] == "text":
                self.emit(node[1])
            elif node[0] == "out":
                self.emit(_text(self.pipeline(node[1])))
            else:
                _, branches, else_body = node
                for cond, body in branches:
                    if _truth(self.pipeline(cond)):
                        self.nodes(body)
                        break
                else:
                    self.nodes(else_body)

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > _MAX_OUTPUT:
            raise _Fail(f"output is larger than {_MAX_OUTPUT} bytes")
        self.out.append(text)

    def pipeline(self, commands: list[list[Any]]) -> Any:
        value: Any = None
        for n, command in enumerate(commands):
            extra = [value] if n > 0 else []
            value = self.command(command, extra)
        return value

    def command(self, command: list[Any], extra: list[Any]) -> Any:
        head = command[0]
        if head[0] != "fn":
            return self.operand(head)
        args = [self.operand(a) for a in command[1:]] + extra
        try:
            return FUNCTIONS[head[1]](*args)
        except TypeError:
            raise _Fail(f"{head[1]}: wrong number of arguments ({len(args)})") from None

    def operand(self, op: Any) -> Any:
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind in ("dot", "root"):
            return self.data
        if kind == "sub":
            return self.pipeline(op[1])
        if kind == "field":
            value: Any = self.data
            for name in op[2]:
                if not isinstance(value, dict):
                    raise _Fail(f"cannot read field {name!r} of a {_kind(value)}")
                if name not in value:
                    raise _Fail(f"missing key {name!r}")
                value = value[name]
            return value
        if kind == "fn":
            try:
                return FUNCTIONS[op[1]]()
            except TypeError:
                raise _Fail(f"{op[1]}: wrong number of arguments (0)") from None
        raise _Fail("unexpected operand")  # pragma: no cover


def render(template: str, values: Mapping[str, bytes], *, where: str) -> bytes:
    """Render one ``spec.template.data`` entry over the decrypted ``values``.

    ``where`` names the entry in errors (``SealedSecret ns/name: spec.template.data.config``); an error
    never quotes a value.
    """
    data: dict[str, Any] = {k: _s(v) for k, v in values.items()}
    try:
        ev = _Eval(data)
        ev.nodes(_parse(template))
    except _Fail as exc:
        raise TemplateError(f"{where}: {exc}") from None
    except RecursionError:
        raise TemplateError(f"{where}: the template nests too deeply") from None
    return _b("".join(ev.out))
