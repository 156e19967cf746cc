"""The file formats sops reads and writes: YAML, JSON, dotenv, INI and binary.

Each store turns bytes into trees and back (:class:`Store`). The format is chosen as sops chooses it
(:func:`format_for_path`): ``.yaml``/``.yml`` YAML, ``.json`` JSON, ``.env`` dotenv, ``.ini`` INI, anything
else binary; ``--input-type``/``--output-type`` override it.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.metadata import Metadata
from kubeshield.sops.tree import Branch

__all__ = ["FORMATS", "Store", "format_for_path", "store_for"]

FORMATS: Final = ("yaml", "json", "dotenv", "ini", "binary")


class Store(Protocol):
    name: str

    def load_plain(self, data: bytes, *, where: str) -> list[Branch]: ...

    def load_encrypted(self, data: bytes, *, where: str) -> tuple[list[Branch], Any]:
        """The branches without metadata, and the metadata as plain data (``None`` when absent)."""
        ...

    def emit_plain(self, branches: list[Branch]) -> bytes: ...

    def emit_encrypted(self, branches: list[Branch], metadata: Metadata) -> bytes: ...

    def emit_value(self, value: Any) -> bytes: ...

    def has_sops_key(self, branch: Branch) -> bool: ...


def format_for_path(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".env"):
        return "dotenv"
    if lower.endswith(".ini"):
        return "ini"
    return "binary"


def store_for(name: str) -> Store:
    if name == "yaml":
        from kubeshield.sops.stores.yaml import YamlStore

        return YamlStore()
    if name == "json":
        from kubeshield.sops.stores.json import JsonStore

        return JsonStore()
    if name == "dotenv":
        from kubeshield.sops.stores.dotenv import DotenvStore

        return DotenvStore()
    if name == "ini":
        from kubeshield.sops.stores.ini import IniStore

        return IniStore()
    if name == "binary":
        from kubeshield.sops.stores.json import BinaryStore

        return BinaryStore()
    raise SopsError(
        f"unknown file format {name!r}; use one of {', '.join(FORMATS)}", code=ExitCode.ERROR_GENERIC
    )
