"""The caller allow-list of the custody process.

A policy file is YAML::

    version: 1
    rules:
      - name: kms-plugin                 # required, shown in logs
        uid: 0                           # who: at least one of uid, gid, cgroupPrefix
        gid: 0
        cgroupPrefix: /kubepods/         # a cgroup path (third field of a /proc/<pid>/cgroup line)
        exeSha256: 3f0c...               # narrows a rule: sha256 hex of /proc/<pid>/exe
        ops: [wrap, unwrap, key_id, health]   # optional; default all but rotate

A caller is allowed when every condition of at least one rule holds for it. Every rule names *who*
(uid, gid or cgroupPrefix, which the kernel reports and an unprivileged process cannot change);
``exeSha256`` only narrows such a rule, because any user can run any executable it can read.
``cgroupPrefix`` matches whole path components: ``/kubepods/pod1`` matches ``/kubepods/pod1`` and
``/kubepods/pod1/ctr``, not ``/kubepods/pod12``. ``packageDigest`` is gone (it was computed from inputs
the caller chooses; see :mod:`kubeshield.custody.measure`): a policy that still has it is refused,
rather than silently allowing more than it says. Anything the loader does not understand (an unknown
field, a wrong type, a rule without uid/gid/cgroupPrefix, a file that is not YAML) is a
``ConfigError`` that names the line, and the custody process refuses to start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubeshield.custody.measure import PeerIdentity
from kubeshield.errors import ConfigError

__all__ = ["ALL_OPS", "DEFAULT_OPS", "Policy", "Rule", "load_policy", "parse_policy"]

ALL_OPS = frozenset({"wrap", "unwrap", "key_id", "health", "rotate"})
DEFAULT_OPS = frozenset({"wrap", "unwrap", "key_id", "health"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RULE_FIELDS = {"name", "uid", "gid", "exeSha256", "cgroupPrefix", "ops"}
_WHO = ("uid", "gid", "cgroup_prefix")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    uid: int | None = None
    gid: int | None = None
    exe_sha256: str | None = None
    cgroup_prefix: str | None = None
    ops: frozenset[str] = DEFAULT_OPS

    def __post_init__(self) -> None:
        if all(getattr(self, field) is None for field in _WHO):
            raise ValueError("a rule needs at least one of uid, gid or cgroup_prefix")

    def matches(self, peer: PeerIdentity) -> bool:
        if self.uid is not None and peer.uid != self.uid:
            return False
        if self.gid is not None and peer.gid != self.gid:
            return False
        if self.exe_sha256 is not None and peer.exe_sha256 != self.exe_sha256:
            return False
        if self.cgroup_prefix is not None:
            paths = [line.split(":", 2)[2] for line in peer.cgroup.splitlines() if line.count(":") >= 2]
            if not any(_under(p, self.cgroup_prefix) for p in paths):
                return False
        return True


def _under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it, by whole path components."""
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/") or (not base and path.startswith("/"))


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]

    def match(self, peer: PeerIdentity) -> Rule | None:
        """The first rule that allows ``peer``, or None."""
        for rule in self.rules:
            if rule.matches(peer):
                return rule
        return None


def _err(node: yaml.Node, source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: line {node.start_mark.line + 1}: {message}")


def _scalar(node: yaml.Node, source: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise _err(node, source, f"{what} must be a scalar")
    return str(node.value)


def _int(node: yaml.Node, source: str, what: str) -> int:
    value = _scalar(node, source, what)
    if node.tag != "tag:yaml.org,2002:int" or not value.isdigit():
        raise _err(node, source, f"{what} must be a non-negative integer")
    return int(value)


def _pairs(node: yaml.Node, source: str, what: str) -> Iterable[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _err(node, source, f"{what} must be a mapping")
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = _scalar(key_node, source, "a key")
        if key in seen:
            raise _err(key_node, source, f"duplicate field {key!r}")
        seen.add(key)
        yield key, key_node, value_node


def _rule(node: yaml.Node, source: str) -> Rule:
    values: dict[str, object] = {}
    for key, key_node, value in _pairs(node, source, "a rule"):
        if key == "packageDigest":
            raise _err(
                key_node,
                source,
                "packageDigest is no longer supported: it was computed from the caller's own argv[0] "
                "and working directory, so any Python process could present it; remove it and pin "
                "uid/gid/cgroupPrefix (and exeSha256)",
            )
        if key not in _RULE_FIELDS:
            raise _err(
                key_node, source, f"unknown field {key!r} in rule (known: {', '.join(sorted(_RULE_FIELDS))})"
            )
        if key in ("uid", "gid"):
            values[key] = _int(value, source, key)
        elif key == "exeSha256":
            text = _scalar(value, source, key).lower()
            if not _HEX64.match(text):
                raise _err(value, source, "exeSha256 must be 64 hex digits")
            values["exe_sha256"] = text
        elif key == "cgroupPrefix":
            text = _scalar(value, source, key)
            if not text.startswith("/"):
                raise _err(value, source, "cgroupPrefix must be an absolute cgroup path starting with '/'")
            values["cgroup_prefix"] = text
        elif key == "name":
            text = _scalar(value, source, key)
            if not text:
                raise _err(value, source, "name must not be empty")
            values["name"] = text
        else:  # ops
            if not isinstance(value, yaml.SequenceNode) or not value.value:
                raise _err(value, source, "ops must be a non-empty list")
            ops = set()
            for item in value.value:
                op = _scalar(item, source, "an op")
                if op not in ALL_OPS:
                    raise _err(item, source, f"unknown op {op!r} (known: {', '.join(sorted(ALL_OPS))})")
                ops.add(op)
            values["ops"] = frozenset(ops)
    if "name" not in values:
        raise _err(node, source, "a rule needs a name")
    if not {"uid", "gid", "cgroup_prefix"} & set(values):
        raise _err(
            node,
            source,
            f"rule {values['name']!r} needs at least one of uid, gid or cgroupPrefix "
            "(exeSha256 only narrows a rule: any user can run that executable)",
        )
    return Rule(**values)  # type: ignore[arg-type]


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse a policy document; every error names its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{source}: {where}not valid YAML") from None
    if root is None:
        raise ConfigError(f"{source}: line 1: the policy is empty")
    rules: list[Rule] = []
    version_seen = False
    for key, key_node, value in _pairs(root, source, "the policy"):
        if key == "version":
            if _int(value, source, "version") != 1:
                raise _err(value, source, "unsupported policy version (expected 1)")
            version_seen = True
        elif key == "rules":
            if not isinstance(value, yaml.SequenceNode) or not value.value:
                raise _err(value, source, "rules must be a non-empty list")
            rules = [_rule(item, source) for item in value.value]
        else:
            raise _err(key_node, source, f"unknown field {key!r} (known: rules, version)")
    if not version_seen:
        raise _err(root, source, "version is required (version: 1)")
    if not rules:
        raise _err(root, source, "rules is required")
    return Policy(rules=tuple(rules))


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {type(exc).__name__}") from None
    return parse_policy(text, source=str(path))
