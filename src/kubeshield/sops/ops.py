"""The operations behind ``kubeshield sops ...``: encrypt, decrypt, rotate, updatekeys, set, unset.

Each takes the file's bytes and returns new bytes (the CLI reads, writes atomically, and renders);
nothing here prints. Behaviour follows the sops binary:

* **encrypt** refuses a file that already has sops metadata (exit 203); keys come from flags, else from
  the matching ``.sops.yaml`` creation rule; a Kubernetes ``kind: Secret`` manifest gets
  ``encrypted_regex: ^(data|stringData)$`` unless a flag or rule sets a selection rule;
* **decrypt** checks the MAC (exit 51) unless ``ignore_mac``; ``extract`` returns one value;
* **rotate** (``-r``) makes a new data key, re-encrypts every value and re-wraps it for every master key,
  adding/removing keys on request; **updatekeys** re-wraps the *same* data key for the keys the
  ``.sops.yaml`` rule now lists (values and MAC untouched);
* **set**/**unset** change one value; the other values keep their IVs (small diffs).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kubeshield.sops.document import (
    DecryptedDocument,
    decrypt_document,
    encrypt_document,
    parse_encrypted,
    recover_data_key,
    wrap_data_key,
)
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys import kubeshield as ks
from kubeshield.sops.masterkeys.age import AgeKey, parse_recipient
from kubeshield.sops.masterkeys.awskms import KmsKey
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey
from kubeshield.sops.masterkeys.hcvault import VaultKey
from kubeshield.sops.masterkeys.pgp import PgpKey
from kubeshield.sops.metadata import Metadata
from kubeshield.sops.rules import find_config, load_rules, match_rule
from kubeshield.sops.selection import RULE_NAMES, Selection
from kubeshield.sops.stores import Store, store_for
from kubeshield.sops.tree import Branch, Comment, path_get

__all__ = [
    "KUBERNETES_SECRET_REGEX",
    "Creation",
    "KeyFlags",
    "decrypt_bytes",
    "encrypt_bytes",
    "parse_tree_path",
    "plaintext_secret_values",
    "resolve_creation",
    "rotate_bytes",
    "set_bytes",
    "unset_bytes",
    "updatekeys_bytes",
    "write_atomic",
]

KUBERNETES_SECRET_REGEX: Final = "^(data|stringData)$"
_INDEX_RE: Final = re.compile(r"\[(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|-?\d+)\]")


@dataclass
class KeyFlags:
    """Master keys named on the command line (comma-separated lists, as sops takes them)."""

    age: list[str] = field(default_factory=list)
    pgp: list[str] = field(default_factory=list)
    kms: list[str] = field(default_factory=list)
    hc_vault: list[str] = field(default_factory=list)
    kubeshield: list[str] = field(default_factory=list)
    encryption_context: dict[str, str] = field(default_factory=dict)
    aws_profile: str = ""

    def keys(self) -> list[MasterKey]:
        out: list[MasterKey] = []
        for recipient in _items(self.age):
            parse_recipient(recipient)
            out.append(AgeKey(recipient))
        for config in _items(self.kubeshield):
            out.append(AgeKey(ks.recipient_for(config)))
        out += [PgpKey(fp) for fp in _items(self.pgp)]
        out += [
            KmsKey.from_flag(arn, context=self.encryption_context, aws_profile=self.aws_profile)
            for arn in _items(self.kms)
        ]
        out += [VaultKey.from_uri(uri) for uri in _items(self.hc_vault)]
        return out


def _items(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@dataclass
class Creation:
    key_groups: list[list[MasterKey]]
    shamir_threshold: int
    selection: Selection
    selection_explicit: bool
    mac_only_encrypted: bool


def resolve_creation(
    *,
    file_path: str,
    flags: KeyFlags,
    selection_flags: dict[str, str],
    mac_only_encrypted: bool,
    shamir_threshold: int,
    config: Path | None,
    cwd: Path,
) -> Creation:
    """Keys and rules for a new file: flags first, else the ``.sops.yaml`` rule matching ``file_path``."""
    chosen = {k: v for k, v in selection_flags.items() if v}
    if len(chosen) > 1:
        raise SopsError(
            f"cannot use more than one of --{', --'.join(n.replace('_', '-') for n in RULE_NAMES)}",
            code=ExitCode.ERROR_CONFLICTING_PARAMETERS,
        )
    keys = flags.keys()
    rule = None
    config_path = config if config is not None else find_config(cwd)
    if config is not None and not config.is_file():
        raise SopsError(f"{config}: config file not found", code=ExitCode.CONFIG_FILE_NOT_FOUND)
    if not keys and config_path is not None:
        rules = load_rules(config_path)
        rule = match_rule(rules, file_path, config_path=config_path)
        if rule is None and rules:
            raise SopsError(
                f"no matching creation rule in {config_path} for {file_path}",
                code=ExitCode.NO_ENCRYPTION_KEY_FOUND,
            )
    groups = [keys] if keys else (rule.key_groups if rule else [])
    if not groups or not any(groups):
        raise SopsError(
            "no master key: give --age, --pgp, --kms, --hc-vault-transit or --kubeshield, "
            "or add a .sops.yaml "
            "creation rule",
            code=ExitCode.NO_ENCRYPTION_KEY_FOUND,
        )
    selection = dict(chosen)
    if not selection and rule is not None:
        selection = dict(rule.selection)
    explicit = bool(selection)
    return Creation(
        key_groups=groups,
        shamir_threshold=shamir_threshold or (rule.shamir_threshold if rule else 0),
        selection=Selection(**selection) if selection else Selection.default(),
        selection_explicit=explicit,
        mac_only_encrypted=mac_only_encrypted or (rule.mac_only_encrypted if rule else False),
    )


def _is_secret(branches: list[Branch]) -> bool:
    for branch in branches:
        for key, value in branch:
            if key == "kind" and value == "Secret":
                return True
    return False


def plaintext_secret_values(
    branches: list[Branch], encrypted: list[Branch] | None = None
) -> list[tuple[str, str]]:
    """(Secret name, key) of every ``data``/``stringData`` value left in plaintext in Secret documents.

    ``branches`` tell which documents are Secrets (and their names); ``encrypted`` (default: the same
    branches) is where the values are looked at, so a rule that also encrypts ``kind`` is handled.
    """
    found: list[tuple[str, str]] = []
    for index, branch in enumerate(branches):
        items = {k: v for k, v in branch if isinstance(k, str)}
        if items.get("kind") != "Secret":
            continue
        meta = items.get("metadata")
        name = meta.get_item("name") if isinstance(meta, Branch) and "name" in meta.keys_only() else "?"
        target = encrypted[index] if encrypted is not None and index < len(encrypted) else branch
        values_of = {k: v for k, v in target if isinstance(k, str)}
        for section in ("data", "stringData"):
            values = values_of.get(section)
            if not isinstance(values, Branch):
                continue
            for key, value in values:
                if isinstance(key, str) and isinstance(value, str) and value and not value.startswith("ENC["):
                    found.append((str(name), f"{section}.{key}"))
    return found


def encrypt_bytes(
    data: bytes,
    *,
    where: str,
    in_format: str,
    out_format: str,
    creation: Creation,
    env: KeyEnv,
    clock: Callable[[], float] = time.time,
) -> tuple[bytes, list[str]]:
    """The encrypted file and any warnings (plaintext Secret values)."""
    store_in, store_out = store_for(in_format), store_for(out_format)
    branches = store_in.load_plain(data, where=where)
    if any(store_in.has_sops_key(b) for b in branches):
        raise SopsError(
            f"{where}: the file already has sops metadata (a top-level 'sops' key, or 'sops_' keys in flat "
            "formats): it is probably encrypted already; use 'kubeshield sops edit' to change it",
            code=ExitCode.FILE_ALREADY_ENCRYPTED,
        )
    selection = creation.selection
    if not creation.selection_explicit and in_format in ("yaml", "json") and _is_secret(branches):
        selection = Selection(encrypted_regex=KUBERNETES_SECRET_REGEX)
    metadata = Metadata(
        key_groups=creation.key_groups,
        shamir_threshold=creation.shamir_threshold if len(creation.key_groups) > 1 else 0,
        selection=selection,
        mac_only_encrypted=creation.mac_only_encrypted,
    )
    data_key = env.rng(32)
    wrap_data_key(metadata, data_key, env=env, rng=env.rng)
    doc = encrypt_document(branches, metadata=metadata, data_key=data_key, clock=clock)
    warnings = [
        f"{where}: Secret {name}: {key} stays in plaintext (the selection rule leaves it clear)"
        for name, key in plaintext_secret_values(branches, doc.branches)
    ]
    return store_out.emit_encrypted(doc.branches, doc.metadata), warnings


def _open(
    data: bytes, *, where: str, in_format: str, env: KeyEnv, ignore_mac: bool, remember_ivs: bool = True
) -> tuple[Store, DecryptedDocument]:
    store = store_for(in_format)
    doc = parse_encrypted(data, store=store, where=where)
    key = recover_data_key(doc.metadata, env=env)
    return store, decrypt_document(
        doc, data_key=key, ignore_mac=ignore_mac, where=where, remember_ivs=remember_ivs
    )


def parse_tree_path(text: str) -> list[str | int]:
    """``["a"]["b"][0]`` -> ``["a", "b", 0]``. ``SopsError`` exit 91 when malformed."""
    parts: list[str | int] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _INDEX_RE.match(text, pos)
        if match is None:
            raise SopsError(
                f'invalid tree path {text!r}: expected segments like ["key"] or [0]',
                code=ExitCode.INVALID_TREE_PATH_FORMAT,
            )
        token = match.group(1)
        if token[0] == '"':
            parts.append(json.loads(token))
        elif token[0] == "'":
            parts.append(token[1:-1].replace("\\'", "'"))
        else:
            parts.append(int(token))
        pos = match.end()
    if not parts:
        raise SopsError("the tree path is empty", code=ExitCode.INVALID_TREE_PATH_FORMAT)
    return parts


def decrypt_bytes(
    data: bytes,
    *,
    where: str,
    in_format: str,
    out_format: str,
    env: KeyEnv,
    ignore_mac: bool = False,
    extract: str | None = None,
) -> bytes:
    _store, doc = _open(
        data, where=where, in_format=in_format, env=env, ignore_mac=ignore_mac, remember_ivs=False
    )
    out = store_for(out_format)
    if extract is not None:
        path = parse_tree_path(extract)
        try:
            value = path_get(doc.branches[0], path)
        except (KeyError, IndexError):
            raise SopsError(
                f"{where}: the path {extract} is not in the file", code=ExitCode.ERROR_GENERIC
            ) from None
        return out.emit_value(value)
    return out.emit_plain(doc.branches)


def rotate_bytes(
    data: bytes,
    *,
    where: str,
    in_format: str,
    out_format: str,
    env: KeyEnv,
    add: Sequence[MasterKey] = (),
    remove: Sequence[MasterKey] = (),
    clock: Callable[[], float] = time.time,
) -> bytes:
    _store, doc = _open(data, where=where, in_format=in_format, env=env, ignore_mac=False)
    meta = doc.metadata
    if add:
        meta.key_groups[0].extend(add)
    drop = {k.describe() for k in remove}
    if drop:
        meta.key_groups = [[k for k in g if k.describe() not in drop] for g in meta.key_groups]
    for group in meta.key_groups:
        for key in group:
            key.enc = ""
    data_key = env.rng(32)
    wrap_data_key(meta, data_key, env=env, rng=env.rng)
    new = encrypt_document(doc.branches, metadata=meta, data_key=data_key, clock=clock)
    return store_for(out_format).emit_encrypted(new.branches, new.metadata)


def updatekeys_bytes(
    data: bytes,
    *,
    where: str,
    in_format: str,
    env: KeyEnv,
    creation: Creation,
) -> tuple[bytes | None, list[str]]:
    """New bytes (``None`` when the keys already match) and a description of the change per group."""
    store = store_for(in_format)
    doc = parse_encrypted(data, store=store, where=where)
    old = [[k.describe() for k in g] for g in doc.metadata.key_groups]
    new = [[k.describe() for k in g] for g in creation.key_groups]
    threshold = creation.shamir_threshold if len(creation.key_groups) > 1 else 0
    if old == new and threshold == doc.metadata.shamir_threshold:
        return None, []
    changes: list[str] = []
    for i in range(max(len(old), len(new))):
        before = old[i] if i < len(old) else []
        after = new[i] if i < len(new) else []
        changes.append(f"Group {i + 1}")
        changes += [f"    {k}" for k in after if k in before]
        changes += [f"+++ {k}" for k in after if k not in before]
        changes += [f"--- {k}" for k in before if k not in after]
    data_key = recover_data_key(doc.metadata, env=env)
    doc.metadata.key_groups = creation.key_groups
    doc.metadata.shamir_threshold = threshold
    wrap_data_key(doc.metadata, data_key, env=env, rng=env.rng)
    return store.emit_encrypted(doc.branches, doc.metadata), changes


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return Branch((k, _from_json(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _set(node: Any, path: list[str | int], value: Any) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = node if isinstance(node, list) and not isinstance(node, Branch) else []
        if head >= len(items):
            items.append(_set(None, rest, value) if rest else value)
        else:
            items[head] = _set(items[head], rest, value) if rest else value
        return items
    branch = node if isinstance(node, Branch) else Branch()
    for i, (key, old) in enumerate(branch):
        if key == head and not isinstance(key, Comment):
            branch[i] = (key, _set(old, rest, value) if rest else value)
            return branch
    branch.append((head, _set(None, rest, value) if rest else value))
    return branch


def set_bytes(
    data: bytes,
    *,
    where: str,
    in_format: str,
    path: str,
    value_json: str,
    env: KeyEnv,
    clock: Callable[[], float] = time.time,
) -> bytes:
    try:
        value = _from_json(json.loads(value_json))
    except ValueError:
        raise SopsError("the value is not valid JSON", code=ExitCode.ERROR_INVALID_SET_FORMAT) from None
    parts = parse_tree_path(path)
    store, doc = _open(data, where=where, in_format=in_format, env=env, ignore_mac=False)
    doc.branches[0] = _set(doc.branches[0], parts, value)
    new = encrypt_document(
        doc.branches, metadata=doc.metadata, data_key=doc.data_key, cipher=doc.cipher, clock=clock
    )
    return store.emit_encrypted(new.branches, new.metadata)


def unset_bytes(
    data: bytes, *, where: str, in_format: str, path: str, env: KeyEnv, clock: Callable[[], float] = time.time
) -> bytes:
    parts = parse_tree_path(path)
    store, doc = _open(data, where=where, in_format=in_format, env=env, ignore_mac=False)
    parent: Any = doc.branches[0]
    try:
        if len(parts) > 1:
            parent = path_get(doc.branches[0], parts[:-1])
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(parent, list) or isinstance(parent, Branch):
                raise KeyError(last)
            del parent[last]
        else:
            if not isinstance(parent, Branch):
                raise KeyError(last)
            index = next(i for i, (k, _) in enumerate(parent) if k == last and not isinstance(k, Comment))
            del parent[index]
    except (KeyError, IndexError, StopIteration):
        raise SopsError(f"{where}: the path {path} is not in the file", code=ExitCode.ERROR_GENERIC) from None
    new = encrypt_document(
        doc.branches, metadata=doc.metadata, data_key=doc.data_key, cipher=doc.cipher, clock=clock
    )
    return store.emit_encrypted(new.branches, new.metadata)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, keeping its mode (0644 minus umask for a new file)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
