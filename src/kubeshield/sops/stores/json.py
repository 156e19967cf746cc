"""The JSON store (key order kept, every number a float as in Go) and the binary store built on it.

Output is Go's ``encoding/json`` indented with tabs: HTML characters and U+2028/U+2029 escaped,
floats as Go formats them (``1e+21`` -> ``1e+21``, ``1.5e-07`` -> ``1.5e-7``), a final newline. Only the
first branch of a tree is written (a JSON file holds one document).

Binary store: the whole file is one value under ``data`` (encrypted as type ``str``), written as a
JSON document; decrypting gives back the exact bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from kubeshield.sops import _gofmt
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.metadata import Metadata, to_plain
from kubeshield.sops.stores._common import decode_text, plain_to_tree
from kubeshield.sops.tree import Branch, Comment, Timestamp

__all__ = ["BinaryStore", "JsonStore", "encode_json"]

_ESC: Final = {
    '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
    "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029",
}  # fmt: skip


def _string(value: str) -> str:
    out = ['"']
    for ch in value:
        esc = _ESC.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\udc80" <= ch <= "\udcff":
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _encode(value: Any, indent: int, out: list[str]) -> None:
    if isinstance(value, Branch):
        items = [(k, v) for k, v in value if not isinstance(k, Comment)]
        if not items:
            out.append("{}")
            return
        out.append("{\n")
        for i, (k, v) in enumerate(items):
            out.append("\t" * (indent + 1) + _string(str(k)) + ": ")
            _encode(v, indent + 1, out)
            out.append(",\n" if i < len(items) - 1 else "\n")
        out.append("\t" * indent + "}")
    elif isinstance(value, list):
        items = [v for v in value if not isinstance(v, Comment)]
        if not items:
            out.append("[]")
            return
        out.append("[\n")
        for i, v in enumerate(items):
            out.append("\t" * (indent + 1))
            _encode(v, indent + 1, out)
            out.append(",\n" if i < len(items) - 1 else "\n")
        out.append("\t" * indent + "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise SopsError("JSON cannot hold NaN or infinity", code=ExitCode.ERROR_DUMPING_TREE)
        out.append(_gofmt.format_float_json(value))
    elif isinstance(value, Timestamp):
        out.append(_string(value.rfc3339()))
    elif isinstance(value, bytes):
        out.append(_string(value.decode("utf-8", "surrogateescape")))
    elif isinstance(value, str):
        out.append(_string(value))
    else:
        raise SopsError(f"cannot write a {type(value).__name__} as JSON", code=ExitCode.ERROR_DUMPING_TREE)


def encode_json(value: Any) -> str:
    out: list[str] = []
    _encode(value, 0, out)
    return "".join(out)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=Branch,
            parse_float=float,
            parse_int=float,
            parse_constant=_reject_constant,
        )
    except ValueError as exc:
        detail = (
            f"line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "value"
        )
        raise SopsError(
            f"{where}: invalid JSON at {detail}", code=ExitCode.COULD_NOT_READ_INPUT_FILE
        ) from None


class JsonStore:
    name = "json"

    def load_plain(self, data: bytes, *, where: str) -> list[Branch]:
        value = _parse(decode_text(data, where=where), where)
        if not isinstance(value, Branch):
            raise SopsError(
                f"{where}: the JSON document must be an object", code=ExitCode.COULD_NOT_READ_INPUT_FILE
            )
        return [value]

    def load_encrypted(self, data: bytes, *, where: str) -> tuple[list[Branch], Any]:
        branch = self.load_plain(data, where=where)[0]
        metadata: Any = None
        kept = Branch()
        for key, value in branch:
            if key == "sops" and metadata is None:
                metadata = to_plain(value)
                continue
            kept.append((key, value))
        return [kept], metadata

    def emit_plain(self, branches: list[Branch]) -> bytes:
        return (encode_json(branches[0] if branches else Branch()) + "\n").encode("utf-8")

    def emit_encrypted(self, branches: list[Branch], metadata: Metadata) -> bytes:
        first = branches[0] if branches else Branch()
        return self.emit_plain([Branch([*first, ("sops", plain_to_tree(metadata.to_plain()))])])

    def emit_value(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        return encode_json(value).encode("utf-8")

    def has_sops_key(self, branch: Branch) -> bool:
        return any(k == "sops" for k, _ in branch)


class BinaryStore:
    name = "binary"

    def load_plain(self, data: bytes, *, where: str) -> list[Branch]:
        return [Branch([("data", data)])]

    def load_encrypted(self, data: bytes, *, where: str) -> tuple[list[Branch], Any]:
        return JsonStore().load_encrypted(data, where=where)

    def emit_plain(self, branches: list[Branch]) -> bytes:
        for key, value in branches[0] if branches else ():
            if key == "data":
                if isinstance(value, bytes):
                    return value
                if isinstance(value, str):
                    return value.encode("utf-8", "surrogateescape")
        raise SopsError("no binary data found in tree", code=ExitCode.ERROR_DUMPING_TREE)

    def emit_encrypted(self, branches: list[Branch], metadata: Metadata) -> bytes:
        return JsonStore().emit_encrypted(branches, metadata)

    def emit_value(self, value: Any) -> bytes:
        return JsonStore().emit_value(value)

    def has_sops_key(self, branch: Branch) -> bool:
        return False
