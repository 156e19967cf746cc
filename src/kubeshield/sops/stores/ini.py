"""The INI store: sections become top-level keys; ``;``/``#`` comment lines kept (written with ``;``).

Values are strings, trimmed. Output follows go-ini's pretty format as sops prints it: keys padded so the
``=`` line up within a section, a blank line between sections, the default section (keys before any
header) without a header. The metadata is the flattened ``[sops]`` section.
"""

from __future__ import annotations

from typing import Any, Final

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.metadata import Metadata, flatten, unflatten
from kubeshield.sops.stores._common import decode_text
from kubeshield.sops.tree import Branch, Comment

__all__ = ["IniStore"]

_DEFAULT: Final = "DEFAULT"


class IniStore:
    name = "ini"

    def load_plain(self, data: bytes, *, where: str) -> list[Branch]:
        text = decode_text(data, where=where)
        root = Branch()
        current = Branch()
        root.append((_DEFAULT, current))
        pending: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            if line[0] in ";#":
                pending.append(line[1:].strip())
                continue
            if line.startswith("["):
                if not line.endswith("]"):
                    raise SopsError(
                        f"{where}: line {number}: unclosed section header",
                        code=ExitCode.COULD_NOT_READ_INPUT_FILE,
                    )
                current = Branch((Comment(c), None) for c in pending)
                pending = []
                root.append((line[1:-1].strip(), current))
                continue
            key, sep, value = line.partition("=")
            if not sep:
                key, sep, value = line.partition(":")
            if not sep:
                raise SopsError(
                    f"{where}: line {number} is not key = value", code=ExitCode.COULD_NOT_READ_INPUT_FILE
                )
            for c in pending:
                current.append((Comment(c), None))
            pending = []
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
                value = value[1:-1]
            current.append((key.strip(), value))
        for c in pending:
            current.append((Comment(c), None))
        if not any(not isinstance(k, Comment) for k, _ in root[0][1]) and not root[0][1]:
            root.pop(0)
        return [root]

    def load_encrypted(self, data: bytes, *, where: str) -> tuple[list[Branch], Any]:
        root = self.load_plain(data, where=where)[0]
        kept = Branch()
        meta: Any = None
        for name, section in root:
            if name == "sops" and meta is None:
                items = [(k, v.replace("\\n", "\n")) for k, v in section if not isinstance(k, Comment)]
                meta = unflatten(items)
                continue
            kept.append((name, section))
        return [kept], meta

    def emit_plain(self, branches: list[Branch]) -> bytes:
        root = branches[0] if branches else Branch()
        blocks: list[str] = []
        for name, section in root:
            if isinstance(name, Comment):
                continue
            if not isinstance(section, Branch):
                raise SopsError(
                    f"INI values must be inside a section (key {name!r})", code=ExitCode.ERROR_DUMPING_TREE
                )
            lines: list[str] = []
            items = list(section)
            leading: list[str] = []
            while items and isinstance(items[0][0], Comment):
                leading.append(items.pop(0)[0].value)
            if name != _DEFAULT:
                lines += [f"; {c}" for c in leading]
                lines.append(f"[{name}]")
                leading = []
            else:
                lines += [f"; {c}" for c in leading]
            width = max((len(str(k)) for k, _ in items if not isinstance(k, Comment)), default=0)
            for key, value in items:
                if isinstance(key, Comment):
                    lines.append(f"; {key.value}")
                    continue
                if isinstance(value, Branch | list):
                    raise SopsError(
                        f"INI values cannot be nested (key {key!r})", code=ExitCode.ERROR_DUMPING_TREE
                    )
                text = "" if value is None else str(value).replace("\n", "\\n")
                lines.append(f"{str(key).ljust(width)} = {text}")
            blocks.append("\n".join(lines))
        return ("\n\n".join(blocks) + ("\n" if blocks else "")).encode("utf-8", "surrogateescape")

    def emit_encrypted(self, branches: list[Branch], metadata: Metadata) -> bytes:
        items = [
            (k, "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)).replace("\n", "\\n"))
            for k, v in flatten(metadata.to_plain())
        ]
        root = branches[0] if branches else Branch()
        return self.emit_plain([Branch([*root, ("sops", Branch(items))])])

    def emit_value(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, Branch):
            return self.emit_plain([Branch([(_DEFAULT, value)])])
        raise SopsError("the INI store cannot emit this value", code=ExitCode.ERROR_DUMPING_TREE)

    def has_sops_key(self, branch: Branch) -> bool:
        return any(k == "sops" for k, _ in branch)
