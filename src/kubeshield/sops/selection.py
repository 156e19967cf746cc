"""Which values get encrypted (sops' ``shouldBeEncrypted``), with Go's unanchored regex matching.

The rules are checked in this order, each against **every component of the key path** (an ancestor key
counts), and each later rule overrides the earlier verdict:

1. ``unencrypted_suffix`` (default ``_unencrypted`` when no rule is set): a path part ending with it
   leaves the value clear;
2. ``encrypted_suffix``: only values with a path part ending with it are encrypted;
3. ``unencrypted_regex``: a path part matching it leaves the value clear;
4. ``encrypted_regex``: only values with a path part matching it are encrypted;
5. ``unencrypted_comment_regex``: a comment line above the value (at any enclosing level) matching it
   leaves the value clear;
6. ``encrypted_comment_regex``: only values with such a comment above them are encrypted (the matching
   comment line itself stays clear).

Go's ``regexp.Match`` finds a match anywhere in the string (Python ``re.search``). Go syntax that Python
spells differently (``\\z``, ``(?<name>...)``) is translated; a pattern Python cannot compile is a
``ConfigError`` naming the rule.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kubeshield.errors import ConfigError

__all__ = ["DEFAULT_UNENCRYPTED_SUFFIX", "RULE_NAMES", "Selection", "compile_go_regex"]

DEFAULT_UNENCRYPTED_SUFFIX: Final = "_unencrypted"
RULE_NAMES: Final = (
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
)


@functools.lru_cache(maxsize=256)
def _compile(translated: str) -> re.Pattern[str]:
    return re.compile(translated)


def compile_go_regex(pattern: str, *, rule: str) -> re.Pattern[str]:
    """Compile a Go RE2 pattern for unanchored search. ``ConfigError`` names ``rule`` on failure."""
    translated = pattern.replace("(?<", "(?P<").replace("(?P<=", "(?<=").replace("(?P<!", "(?<!")
    translated = re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", translated)
    try:
        return _compile(translated)
    except re.error as exc:
        raise ConfigError(f"{rule}: not a valid regular expression ({exc.msg})") from None


@dataclass(frozen=True, slots=True)
class Selection:
    """The selection rule of one file (at most one is set by the CLI; all are honoured on read)."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    unencrypted_comment_regex: str = ""
    encrypted_comment_regex: str = ""

    def __post_init__(self) -> None:
        for name in (
            "unencrypted_regex",
            "encrypted_regex",
            "unencrypted_comment_regex",
            "encrypted_comment_regex",
        ):
            value = getattr(self, name)
            if value:
                compile_go_regex(value, rule=name)

    @classmethod
    def default(cls) -> Selection:
        return cls(unencrypted_suffix=DEFAULT_UNENCRYPTED_SUFFIX)

    def rules_set(self) -> list[str]:
        return [name for name in RULE_NAMES if getattr(self, name)]

    def _re(self, name: str) -> re.Pattern[str]:
        return compile_go_regex(getattr(self, name), rule=name)

    def should_encrypt(
        self, path: Sequence[str], comments: Sequence[Sequence[str]], *, is_comment: bool
    ) -> bool:
        encrypted = True
        suffix = self.unencrypted_suffix
        if suffix:  # the default rule, so checked once per leaf: a loop, not any() over a generator
            for part in path:
                if part.endswith(suffix):
                    encrypted = False
                    break
        if self.encrypted_suffix:
            encrypted = any(p.endswith(self.encrypted_suffix) for p in path)
        if self.unencrypted_regex:
            rx = self._re("unencrypted_regex")
            if any(rx.search(p) for p in path):
                encrypted = False
        if self.encrypted_regex:
            rx = self._re("encrypted_regex")
            encrypted = any(rx.search(p) for p in path)
        if self.unencrypted_comment_regex:
            rx = self._re("unencrypted_comment_regex")
            if any(rx.search(c) for level in comments for c in level):
                encrypted = False
        if self.encrypted_comment_regex:
            rx = self._re("encrypted_comment_regex")
            encrypted = False
            last_level = len(comments) - 1
            last_index = len(comments[-1]) - 1 if comments else -1
            for i, level in enumerate(comments):
                for j, c in enumerate(level):
                    if is_comment and i == last_level and j == last_index:
                        continue
                    if rx.search(c):
                        encrypted = True
                        break
                if encrypted:
                    break
        return encrypted
