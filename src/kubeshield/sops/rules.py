"""``.sops.yaml``: creation rules that pick master keys and the selection rule for a file.

Found as sops finds it: ``--config``, else the first ``.sops.yaml`` from the working directory up to
``/``. The first creation rule whose ``path_regex`` (Go regex, unanchored) matches the file wins; the
path is tried as given and relative to the config file's directory. A rule holds either flat keys
(``age``, ``pgp``, ``kms``, ``hc_vault_transit_uri``: comma-separated strings or lists;
``kubeshield``: kubeshield.yaml paths, kubeshield's own addition) or ``key_groups`` with
``shamir_threshold``, at most one selection rule, and ``mac_only_encrypted``.

A rule that sets two selection rules, or both flat keys and ``key_groups``, is refused naming the rule
(exit 1, as sops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys import kubeshield as ks
from kubeshield.sops.masterkeys.age import AgeKey, parse_recipient
from kubeshield.sops.masterkeys.awskms import KmsKey
from kubeshield.sops.masterkeys.base import MasterKey
from kubeshield.sops.masterkeys.hcvault import VaultKey
from kubeshield.sops.masterkeys.pgp import PgpKey
from kubeshield.sops.selection import RULE_NAMES, compile_go_regex

__all__ = ["CONFIG_NAME", "CreationRule", "find_config", "load_rules", "match_rule"]

CONFIG_NAME = ".sops.yaml"
_FLAT = ("age", "pgp", "kms", "hc_vault_transit_uri", "kubeshield", "gcp_kms", "azure_keyvault")
_ALLOWED = {
    "path_regex", "filename_regex", "key_groups", "shamir_threshold", "mac_only_encrypted", "aws_profile",
    "encryption_context", *RULE_NAMES, *_FLAT,
}  # fmt: skip


@dataclass
class CreationRule:
    index: int
    path_regex: str = ""
    key_groups: list[list[MasterKey]] = field(default_factory=list)
    shamir_threshold: int = 0
    selection: dict[str, str] = field(default_factory=dict)
    mac_only_encrypted: bool = False


def find_config(start: Path) -> Path | None:
    current = start.resolve()
    for directory in (current, *current.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _bad(where: str, problem: str) -> SopsError:
    return SopsError(f"{where}: {problem}", code=ExitCode.ERROR_GENERIC)  # sops exits 1 here


def _split(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise _bad(where, "expected a comma-separated string or a list of strings")


def _keys(entry: dict[str, Any], where: str, *, base: Path, profile: str) -> list[MasterKey]:
    keys: list[MasterKey] = []
    for recipient in _split(entry.get("age"), f"{where}.age"):
        try:
            parse_recipient(recipient)
        except SopsError as exc:
            raise _bad(f"{where}.age", str(exc)) from None
        keys.append(AgeKey(recipient))
    for config in _split(entry.get("kubeshield"), f"{where}.kubeshield"):
        keys.append(AgeKey(ks.recipient_for((base / config) if not config.startswith("/") else config)))
    keys += [PgpKey(fp) for fp in _split(entry.get("pgp"), f"{where}.pgp")]
    kms = entry.get("kms")
    if isinstance(kms, list) and kms and all(isinstance(k, dict) for k in kms):
        for i, item in enumerate(kms):
            if "arn" not in item:
                raise _bad(f"{where}.kms[{i}]", "arn is required")
            context = item.get("context") or {}
            keys.append(
                KmsKey(
                    str(item["arn"]),
                    role=str(item.get("role") or ""),
                    context={str(k): str(v) for k, v in context.items()},
                    aws_profile=str(item.get("aws_profile") or profile),
                )
            )
    else:
        context = entry.get("encryption_context") or {}
        for arn in _split(kms, f"{where}.kms"):
            keys.append(
                KmsKey.from_flag(
                    arn, context={str(k): str(v) for k, v in dict(context).items()}, aws_profile=profile
                )
            )
    vault = entry.get("hc_vault_transit_uri", entry.get("hc_vault"))
    for uri in _split(vault, f"{where}.hc_vault_transit_uri"):
        try:
            keys.append(VaultKey.from_uri(uri))
        except SopsError as exc:
            raise _bad(f"{where}.hc_vault_transit_uri", str(exc)) from None
    for other in ("gcp_kms", "azure_keyvault", "azure_kv"):
        if entry.get(other):
            raise _bad(
                f"{where}.{other}", "this key type is not implemented by kubeshield; use the sops binary"
            )
    return keys


def _rule(raw: Any, index: int, *, base: Path, where: str) -> CreationRule:
    here = f"{where}: creation_rules[{index}]"
    if not isinstance(raw, dict):
        raise _bad(here, "expected a mapping")
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        raise _bad(here, f"unknown field {unknown[0]!r}")
    rule = CreationRule(index=index)
    regex = raw.get("path_regex", raw.get("filename_regex", ""))
    if not isinstance(regex, str):
        raise _bad(f"{here}.path_regex", "expected a string")
    if regex:
        try:
            compile_go_regex(regex, rule=f"{here}.path_regex")
        except Exception as exc:
            raise _bad(f"{here}.path_regex", str(exc)) from None
    rule.path_regex = regex
    chosen = [name for name in RULE_NAMES if raw.get(name)]
    if len(chosen) > 1:
        raise _bad(
            here, f"cannot use more than one of {', '.join(RULE_NAMES)} (found {' and '.join(chosen)})"
        )
    for name in chosen:
        if not isinstance(raw[name], str):
            raise _bad(f"{here}.{name}", "expected a string")
        if "regex" in name:
            compile_go_regex(raw[name], rule=f"{here}.{name}")
        rule.selection[name] = raw[name]
    profile = str(raw.get("aws_profile") or "")
    flat = [name for name in _FLAT if raw.get(name)]
    groups = raw.get("key_groups")
    if groups and flat:
        raise _bad(here, f"cannot use key_groups together with {flat[0]}")
    if groups:
        if not isinstance(groups, list):
            raise _bad(f"{here}.key_groups", "expected a list")
        for g, entry in enumerate(groups):
            if not isinstance(entry, dict):
                raise _bad(f"{here}.key_groups[{g}]", "expected a mapping")
            rule.key_groups.append(_keys(entry, f"{here}.key_groups[{g}]", base=base, profile=profile))
    elif flat:
        rule.key_groups = [_keys(raw, here, base=base, profile=profile)]
    threshold = raw.get("shamir_threshold", 0)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        raise _bad(f"{here}.shamir_threshold", "expected a non-negative integer")
    if threshold and len(rule.key_groups) > 1 and threshold > len(rule.key_groups):
        raise _bad(
            f"{here}.shamir_threshold", f"{threshold} is more than the {len(rule.key_groups)} key groups"
        )
    rule.shamir_threshold = threshold
    mac_only = raw.get("mac_only_encrypted", False)
    if not isinstance(mac_only, bool):
        raise _bad(f"{here}.mac_only_encrypted", "expected true or false")
    rule.mac_only_encrypted = mac_only
    return rule


def load_rules(path: Path) -> list[CreationRule]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SopsError(
            f"{path}: cannot read config: {exc.strerror}", code=ExitCode.ERROR_READING_CONFIG
        ) from None
    except yaml.YAMLError:
        raise SopsError(f"{path}: not valid YAML", code=ExitCode.ERROR_READING_CONFIG) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise _bad(str(path), "expected a mapping with creation_rules")
    rules = data.get("creation_rules") or []
    if not isinstance(rules, list):
        raise _bad(f"{path}: creation_rules", "expected a list")
    return [_rule(raw, i, base=path.parent, where=str(path)) for i, raw in enumerate(rules)]


def match_rule(rules: list[CreationRule], file_path: str, *, config_path: Path) -> CreationRule | None:
    candidates = [file_path]
    try:
        candidates.append(str(Path(file_path).resolve().relative_to(config_path.parent.resolve())))
    except ValueError:
        pass
    for rule in rules:
        if not rule.path_regex:
            return rule
        rx = compile_go_regex(rule.path_regex, rule="path_regex")
        if any(rx.search(c) for c in candidates):
            return rule
    return None
