"""Pod Security levels, policy versions and the namespace labels, as ``k8s.io/pod-security-admission/api``
parses them.

* level: ``privileged`` | ``baseline`` | ``restricted``; an invalid label value is an error and evaluates as
  ``restricted`` (fail closed), as upstream does;
* version: ``latest`` or ``v1.<minor>`` (no leading zeros); an invalid value is an error and evaluates as
  ``latest``; versions newer than the newest policy version evaluate as the newest;
* labels ``pod-security.kubernetes.io/{enforce,audit,warn}[-version]``; when ``warn`` is not set and
  ``enforce`` is set to a stricter level than the default warn level, warn follows enforce (and its
  version, unless ``warn-version`` is set).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kubeshield.posture.pss._text import go_quote

__all__ = [
    "LABEL_PREFIX",
    "LATEST",
    "LEVELS",
    "MODES",
    "LevelVersion",
    "Policy",
    "Version",
    "parse_level",
    "parse_version",
    "policy_from_labels",
]

LABEL_PREFIX = "pod-security.kubernetes.io/"
LEVELS = ("privileged", "baseline", "restricted")
_VERSION = re.compile(r"^v1\.(0|[1-9][0-9]*)$")
MODES = ("enforce", "audit", "warn")


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A policy version: ``v1.<minor>``, or ``latest`` (newer than every version)."""

    minor: int | None  # None = latest

    @property
    def latest(self) -> bool:
        return self.minor is None

    def __str__(self) -> str:
        return "latest" if self.minor is None else f"v1.{self.minor}"

    def resolve(self, newest: int) -> int:
        """The minor that is evaluated: ``latest`` and anything newer than ``newest`` become ``newest``."""
        return newest if self.minor is None or self.minor > newest else self.minor


LATEST = Version(None)


def parse_level(value: str) -> tuple[str, str | None]:
    """(level, error). An invalid level evaluates as restricted."""
    if value in LEVELS:
        return value, None
    return "restricted", f"must be one of {', '.join(LEVELS)}"


def parse_version(value: str) -> tuple[Version, str | None]:
    """(version, error). An invalid version evaluates as latest."""
    if value == "latest":
        return LATEST, None
    match = _VERSION.match(value)
    if match is None:
        return LATEST, 'must be "latest" or "v1.x"'
    return Version(int(match.group(1))), None


@dataclass(frozen=True, slots=True)
class LevelVersion:
    level: str
    version: Version = LATEST

    def __str__(self) -> str:
        return f"{self.level}:{self.version}"


def _invalid(key: str, value: object, err: str) -> str:
    return f"metadata.labels[{key}]: Invalid value: {go_quote(str(value))}: {err}"


_LEVEL_RANK = {level: i for i, level in enumerate(LEVELS)}


@dataclass(frozen=True, slots=True)
class Policy:
    """What a namespace asks for in each mode."""

    enforce: LevelVersion = LevelVersion("privileged")
    audit: LevelVersion = LevelVersion("privileged")
    warn: LevelVersion = LevelVersion("privileged")
    errors: tuple[str, ...] = field(default=(), compare=False)

    def fully_privileged(self) -> bool:
        return all(lv.level == "privileged" for lv in (self.enforce, self.audit, self.warn))


def policy_from_labels(labels: Mapping[str, str] | None, defaults: Policy = Policy()) -> Policy:
    """Upstream's PolicyToEvaluate: the namespace labels over the defaults, with the warn rule."""
    policy = replace(defaults, errors=())
    if not labels:
        return policy
    errors: list[str] = []
    values: dict[str, LevelVersion] = {m: getattr(policy, m) for m in MODES}
    has_enforce_level = has_warn_level = has_warn_version = False
    for mode in MODES:
        level_key, version_key = LABEL_PREFIX + mode, LABEL_PREFIX + mode + "-version"
        current = values[mode]
        if level_key in labels:
            level, err = parse_level(str(labels[level_key]))
            current = replace(current, level=level)
            if err:
                errors.append(_invalid(level_key, labels[level_key], err))
            if mode == "enforce":
                has_enforce_level = err is None
            if mode == "warn":
                has_warn_level = True
        if version_key in labels:
            version, err = parse_version(str(labels[version_key]))
            current = replace(current, version=version)
            if err:
                errors.append(_invalid(version_key, labels[version_key], err))
            if mode == "warn":
                has_warn_version = True
        values[mode] = current
    enforce, warn = values["enforce"], values["warn"]
    if not has_warn_level and has_enforce_level and _LEVEL_RANK[enforce.level] > _LEVEL_RANK[warn.level]:
        warn = LevelVersion(enforce.level, warn.version if has_warn_version else enforce.version)
        values["warn"] = warn
    return Policy(values["enforce"], values["audit"], values["warn"], errors=tuple(errors))
