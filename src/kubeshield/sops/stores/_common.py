"""Helpers the stores share: the metadata as a tree, and text decoding with a clear error."""

from __future__ import annotations

from typing import Any

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.tree import Branch

__all__ = ["decode_text", "plain_to_tree"]


def plain_to_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return Branch((k, plain_to_tree(v)) for k, v in value.items())
    if isinstance(value, list):
        return [plain_to_tree(v) for v in value]
    return value


def decode_text(data: bytes, *, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SopsError(
            f"{where}: not UTF-8 text (byte {exc.start})", code=ExitCode.COULD_NOT_READ_INPUT_FILE
        ) from None
    return text[1:] if text.startswith("\ufeff") else text
