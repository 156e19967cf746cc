"""The dotenv store, as sops 3.11 reads and writes it.

Each non-empty line is ``#comment`` or ``KEY=value`` split at the first ``=``; nothing is trimmed or
unquoted (``A = 1`` has the key ``"A "``); ``\\n`` in a value is a newline (written back as ``\\n``).
Keys starting with ``sops_`` hold the flattened metadata, so a plaintext file with such a key is refused.
"""

from __future__ import annotations

from typing import Any, Final

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.metadata import Metadata, flatten
from kubeshield.sops.stores._common import decode_text
from kubeshield.sops.tree import Branch, Comment

__all__ = ["SOPS_PREFIX", "DotenvStore"]

SOPS_PREFIX: Final = "sops_"


class DotenvStore:
    name = "dotenv"

    def load_plain(self, data: bytes, *, where: str) -> list[Branch]:
        text = decode_text(data, where=where)
        branch = Branch()
        for number, line in enumerate(text.split("\n"), start=1):
            if not line:
                continue
            if line.startswith("#"):
                branch.append((Comment(line[1:]), None))
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise SopsError(
                    f"{where}: line {number} is not KEY=value (invalid dotenv input line)",
                    code=ExitCode.COULD_NOT_READ_INPUT_FILE,
                )
            branch.append((key, value.replace("\\n", "\n")))
        return [branch]

    def load_encrypted(self, data: bytes, *, where: str) -> tuple[list[Branch], Any]:
        branch = self.load_plain(data, where=where)[0]
        kept = Branch()
        meta: list[tuple[str, Any]] = []
        for key, value in branch:
            if isinstance(key, str) and key.startswith(SOPS_PREFIX):
                meta.append((key[len(SOPS_PREFIX) :], value))
            else:
                kept.append((key, value))
        if not meta:
            return [kept], None
        from kubeshield.sops.metadata import unflatten

        return [kept], unflatten(meta)

    def emit_plain(self, branches: list[Branch]) -> bytes:
        out: list[str] = []
        for key, value in branches[0] if branches else ():
            if isinstance(value, Branch | list):
                raise SopsError(
                    f"cannot use a complex value in a dotenv file (key {key!r})",
                    code=ExitCode.ERROR_DUMPING_TREE,
                )
            if isinstance(key, Comment):
                out.append(f"#{key.value}\n")
            else:
                out.append(f"{key}={_text(value).replace(chr(10), chr(92) + 'n')}\n")
        return "".join(out).encode("utf-8", "surrogateescape")

    def emit_encrypted(self, branches: list[Branch], metadata: Metadata) -> bytes:
        items = flatten(metadata.to_plain())
        extra = Branch((SOPS_PREFIX + k, _text(v)) for k, v in sorted(items) if v is not None)
        first = branches[0] if branches else Branch()
        return self.emit_plain([Branch([*first, *extra])])

    def emit_value(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        raise SopsError("the dotenv store only emits strings", code=ExitCode.ERROR_DUMPING_TREE)

    def has_sops_key(self, branch: Branch) -> bool:
        return any(isinstance(k, str) and k.startswith(SOPS_PREFIX) for k, _ in branch)


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return str(value)
