"""The ``sops`` metadata block: what it holds, how it is read, and how it is written back.

Fields (sops' ``stores.Metadata``; written in this order, empty ones left out)::

    shamir_threshold   int, with several key groups
    key_groups         [{pgp, kms, gcp_kms, hckms, azure_kv, hc_vault, age}...] with several groups
    kms, gcp_kms, hckms, azure_kv, hc_vault, age     the keys of the only group
    lastmodified       RFC 3339 UTC, the MAC's AAD
    mac                ENC[...] of the uppercase hex SHA-512
    pgp
    unencrypted_suffix | encrypted_suffix | unencrypted_regex | encrypted_regex |
    unencrypted_comment_regex | encrypted_comment_regex      the selection rule used
    mac_only_encrypted bool
    version            the writer's version (kubeshield writes the sops version it matches)

Key types kubeshield does not implement (``gcp_kms``, ``azure_kv``, ``hckms``) are kept as they are
(:class:`~kubeshield.sops.masterkeys.base.OpaqueKey`) so a rewrite never drops them. In dotenv and INI
files the block is flattened (:func:`flatten` / :func:`unflatten`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys.age import AgeKey
from kubeshield.sops.masterkeys.awskms import KmsKey
from kubeshield.sops.masterkeys.base import MasterKey, OpaqueKey
from kubeshield.sops.masterkeys.hcvault import VaultKey
from kubeshield.sops.masterkeys.pgp import PgpKey
from kubeshield.sops.selection import RULE_NAMES, Selection
from kubeshield.sops.tree import Branch, Comment, Timestamp

__all__ = ["SOPS_VERSION", "Metadata", "flatten", "metadata_from_plain", "to_plain", "unflatten"]

#: the sops release whose file format and output kubeshield matches (and writes as ``version``)
SOPS_VERSION: Final = "3.11.0"

_KNOWN: Final[dict[str, Any]] = {"age": AgeKey, "kms": KmsKey, "hc_vault": VaultKey, "pgp": PgpKey}
_OPAQUE: Final = ("gcp_kms", "hckms", "azure_kv")
_GROUP_ORDER: Final = ("pgp", "kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "age")
_FLAT_ORDER: Final = ("kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "age")


@dataclass
class Metadata:
    key_groups: list[list[MasterKey]] = field(default_factory=list)
    shamir_threshold: int = 0
    lastmodified: str = ""
    mac: str = ""
    selection: Selection = field(default_factory=Selection.default)
    mac_only_encrypted: bool = False
    version: str = SOPS_VERSION

    def all_keys(self) -> list[MasterKey]:
        return [k for group in self.key_groups for k in group]

    def to_plain(self) -> dict[str, Any]:
        """An ordered plain structure (dicts, lists, str/int/bool) for the stores to write."""
        out: dict[str, Any] = {}
        if len(self.key_groups) > 1:
            if self.shamir_threshold:
                out["shamir_threshold"] = self.shamir_threshold
            groups = []
            for group in self.key_groups:
                entry: dict[str, Any] = {}
                for kind in _GROUP_ORDER:
                    keys = [dict(k.fields()) for k in group if k.kind == kind]
                    if keys or kind == "hc_vault":  # sops writes hc_vault: [] in every group
                        entry[kind] = keys
                groups.append(entry)
            out["key_groups"] = groups
        elif self.key_groups:
            group = self.key_groups[0]
            for kind in _FLAT_ORDER:
                keys = [dict(k.fields()) for k in group if k.kind == kind]
                if keys:
                    out[kind] = keys
        out["lastmodified"] = self.lastmodified
        out["mac"] = self.mac
        if len(self.key_groups) == 1:
            pgp = [dict(k.fields()) for k in self.key_groups[0] if k.kind == "pgp"]
            if pgp:
                out["pgp"] = pgp
        for name in RULE_NAMES:
            value = getattr(self.selection, name)
            if value:
                out[name] = value
        if self.mac_only_encrypted:
            out["mac_only_encrypted"] = True
        out["version"] = self.version
        return out


def to_plain(value: Any) -> Any:
    """A tree value as plain Python data (Branch -> dict, comments dropped)."""
    if isinstance(value, Branch):
        return {k: to_plain(v) for k, v in value if not isinstance(k, Comment)}
    if isinstance(value, list):
        return [to_plain(v) for v in value if not isinstance(v, Comment)]
    if isinstance(value, Timestamp):
        return value.rfc3339()
    return value


def _bad(field_name: str, problem: str) -> SopsError:
    return SopsError(f"sops metadata: {field_name}: {problem}", code=ExitCode.ERROR_DECRYPTING_TREE)


def _keys_of(entry: dict[str, Any], where: str) -> list[MasterKey]:
    keys: list[MasterKey] = []
    for kind in _GROUP_ORDER:
        items = entry.get(kind)
        if items in (None, ""):
            continue
        if not isinstance(items, list):
            raise _bad(f"{where}{kind}", "expected a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise _bad(f"{where}{kind}[{i}]", "expected a mapping")
            if kind in _KNOWN:
                keys.append(_KNOWN[kind].from_fields(item))
            else:
                keys.append(OpaqueKey(kind, list(item.items())))
    return keys


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise _bad(name, "expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise _bad(name, "expected an integer")


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(name, "expected true or false")


def metadata_from_plain(raw: Any) -> Metadata:
    """Read the ``sops`` block (plain data). Errors name the field; exit code as sops for bad metadata."""
    if not isinstance(raw, dict):
        raise SopsError("sops metadata not found", code=ExitCode.ERROR_DECRYPTING_TREE)
    meta = Metadata()
    flat = _keys_of(raw, "")
    groups_raw = raw.get("key_groups")
    if flat:
        meta.key_groups = [flat]
    elif isinstance(groups_raw, list) and groups_raw:
        for i, entry in enumerate(groups_raw):
            if not isinstance(entry, dict):
                raise _bad(f"key_groups[{i}]", "expected a mapping")
            meta.key_groups.append(_keys_of(entry, f"key_groups[{i}]."))
    else:
        raise SopsError("sops metadata: no keys found in file", code=ExitCode.COULD_NOT_RETRIEVE_KEY)
    if raw.get("shamir_threshold") not in (None, ""):
        meta.shamir_threshold = _as_int(raw["shamir_threshold"], "shamir_threshold")
    lastmodified = raw.get("lastmodified")
    if isinstance(lastmodified, Timestamp):
        lastmodified = lastmodified.rfc3339()
    if not isinstance(lastmodified, str) or not lastmodified:
        raise _bad("lastmodified", "missing or not a string")
    try:
        Timestamp.parse_rfc3339(lastmodified)
    except ValueError:
        raise _bad("lastmodified", "not an RFC 3339 time") from None
    meta.lastmodified = lastmodified
    mac = raw.get("mac", "")
    meta.mac = mac if isinstance(mac, str) else ""
    rules = {name: raw.get(name) or "" for name in RULE_NAMES}
    for name, value in rules.items():
        if not isinstance(value, str):
            raise _bad(name, "expected a string")
    if not any(rules.values()):
        rules["unencrypted_suffix"] = "_unencrypted"
    meta.selection = Selection(**rules)
    if raw.get("mac_only_encrypted") not in (None, ""):
        meta.mac_only_encrypted = _as_bool(raw["mac_only_encrypted"], "mac_only_encrypted")
    version = raw.get("version", "")
    meta.version = str(version) if version is not None else ""
    return meta


def flatten(value: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """sops' ``stores.Flatten``: ``a__map_b``, ``a__list_0`` paths for nested maps and lists."""
    out: list[tuple[str, Any]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}__map_{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}__list_{i}")
        else:
            out.append((prefix + path, node))

    walk(value, "")
    return out


def unflatten(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`flatten` (lists come back ordered by index)."""
    root: dict[str, Any] = {}
    for key, value in items:
        parts: list[str | int] = []
        head, *rest = key.split("__")
        parts.append(head)
        for piece in rest:
            if piece.startswith("map_"):
                parts.append(piece[4:])
            elif piece.startswith("list_") and piece[5:].isdigit():
                parts.append(int(piece[5:]))
            else:
                parts[-1] = f"{parts[-1]}__{piece}"
        node: Any = root
        for part, nxt in zip(parts, [*parts[1:], None], strict=True):
            if nxt is None:
                if isinstance(node, dict):
                    node[part] = value
                else:
                    node.setdefault(part, value)
                break
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            node = child

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            if node and all(isinstance(k, int) for k in node):
                return [fix(node[k]) for k in sorted(node)]
            return {k: fix(v) for k, v in node.items()}
        return node

    result = fix(root)
    return result if isinstance(result, dict) else {}
