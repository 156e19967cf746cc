"""Credential rules: our defaults, and rule files in gitleaks' TOML format.

Regexes are compiled by RE2 (``google-re2``), the engine whose syntax Go's ``regexp`` follows, so a
gitleaks rule means the same here as in gitleaks; they run over UTF-8 bytes. Supported gitleaks fields:

* ``[[rules]]``: ``id``, ``description``, ``regex``, ``secretGroup``, ``entropy``, ``keywords``, ``path``,
  ``tags``, allow-lists as ``[rules.allowlist]`` (old) or ``[[rules.allowlists]]`` (new);
* allow-lists: ``regexes``, ``regexTarget`` (``secret`` | ``match`` | ``line``), ``paths``, ``stopwords``,
  ``commits``, ``condition`` (``OR`` | ``AND``); global ``[allowlist]`` / ``[[allowlists]]``;
* ``[extend]``: ``useDefault = true`` adds kubeshield's default rules (not gitleaks' own list, which we
  do not ship), ``path`` extends another file (relative to this one), ``disabledRules`` drops rules by id.

A rule file that cannot be used (bad TOML, an invalid RE2 regex, a rule with neither ``regex`` nor
``path``) is an :class:`InvalidRuleFile` naming the file and the rule.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from kubeshield.posture.errors import InvalidRuleFile

__all__ = ["DEFAULT_RULES", "Allowlist", "Rule", "RuleSet", "entropy", "load_rules"]


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per character (what gitleaks' ``entropy`` compares with)."""
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def _compile(pattern: str, where: str) -> Any:
    try:
        return re2.compile(pattern.encode("utf-8"))
    except (re2.error, TypeError, ValueError) as exc:
        raise InvalidRuleFile(f"{where}: invalid RE2 regex: {exc}") from None


@dataclass(frozen=True)
class Allowlist:
    regexes: tuple[Any, ...] = ()
    regex_target: str = "secret"  # secret | match | line
    paths: tuple[Any, ...] = ()
    stopwords: tuple[bytes, ...] = ()
    commits: frozenset[str] = frozenset()
    condition: str = "OR"

    def allows(self, *, secret: bytes, match: bytes, line: bytes, path: str, commit: str | None) -> bool:
        target = {"secret": secret, "match": match, "line": line}[self.regex_target]
        checks: list[bool] = []
        if self.commits:
            checks.append(commit is not None and commit in self.commits)
        if self.paths:
            checks.append(any(p.search(path.encode()) for p in self.paths))
        if self.regexes:
            checks.append(any(r.search(target) for r in self.regexes))
        if self.stopwords:
            lowered = secret.lower()
            checks.append(any(w in lowered for w in self.stopwords))
        if not checks:
            return False
        return all(checks) if self.condition == "AND" else any(checks)


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    regex: Any | None  # compiled RE2 (bytes), or None for a path-only rule
    pattern: str = ""
    secret_group: int = 0
    entropy: float = 0.0
    keywords: tuple[bytes, ...] = ()  # lower-case
    path: Any | None = None
    tags: tuple[str, ...] = ()
    allowlists: tuple[Allowlist, ...] = ()
    severity: str = "high"


@dataclass
class RuleSet:
    rules: list[Rule]
    allowlists: list[Allowlist] = field(default_factory=list)


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRuleFile(f"{where}: expected a list of strings")
    return list(value)


def _allowlist(raw: Any, where: str) -> Allowlist:
    if not isinstance(raw, Mapping):
        raise InvalidRuleFile(f"{where}: an allowlist must be a table")
    target = raw.get("regexTarget", "secret") or "secret"
    if target not in ("secret", "match", "line"):
        raise InvalidRuleFile(f"{where}.regexTarget: must be secret, match or line")
    condition = str(raw.get("condition", "OR") or "OR").upper()
    if condition not in ("OR", "AND"):
        raise InvalidRuleFile(f"{where}.condition: must be OR or AND")
    return Allowlist(
        regexes=tuple(
            _compile(r, f"{where}.regexes") for r in _strings(raw.get("regexes"), f"{where}.regexes")
        ),
        regex_target=str(target),
        paths=tuple(_compile(p, f"{where}.paths") for p in _strings(raw.get("paths"), f"{where}.paths")),
        stopwords=tuple(w.lower().encode() for w in _strings(raw.get("stopwords"), f"{where}.stopwords")),
        commits=frozenset(_strings(raw.get("commits"), f"{where}.commits")),
        condition=condition,
    )


def _allowlists(table: Mapping[str, Any], where: str) -> list[Allowlist]:
    out: list[Allowlist] = []
    if "allowlist" in table:
        out.append(_allowlist(table["allowlist"], f"{where}.allowlist"))
    raw = table.get("allowlists")
    if raw is not None:
        if not isinstance(raw, list):
            raise InvalidRuleFile(f"{where}.allowlists: expected an array of tables")
        out += [_allowlist(a, f"{where}.allowlists[{i}]") for i, a in enumerate(raw)]
    return out


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise InvalidRuleFile(f"{where}: a rule must be a table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise InvalidRuleFile(f"{where}: a rule needs an id")
    where = f"{where} (id {rule_id!r})"
    pattern = raw.get("regex")
    path = raw.get("path")
    if pattern is None and path is None:
        raise InvalidRuleFile(f"{where}: a rule needs a regex or a path")
    if pattern is not None and not isinstance(pattern, str):
        raise InvalidRuleFile(f"{where}.regex: expected a string")
    group = raw.get("secretGroup", 0)
    if not isinstance(group, int) or group < 0:
        raise InvalidRuleFile(f"{where}.secretGroup: expected a non-negative integer")
    compiled = _compile(pattern, f"{where}.regex") if pattern is not None else None
    if compiled is not None and group > compiled.groups:
        raise InvalidRuleFile(f"{where}.secretGroup: the regex has only {compiled.groups} groups")
    ent = raw.get("entropy", 0.0)
    if not isinstance(ent, (int, float)):
        raise InvalidRuleFile(f"{where}.entropy: expected a number")
    return Rule(
        id=rule_id,
        description=str(raw.get("description", rule_id)),
        regex=compiled,
        pattern=pattern or "",
        secret_group=group,
        entropy=float(ent),
        keywords=tuple(k.lower().encode() for k in _strings(raw.get("keywords"), f"{where}.keywords")),
        path=_compile(path, f"{where}.path") if isinstance(path, str) else None,
        tags=tuple(_strings(raw.get("tags"), f"{where}.tags")),
        allowlists=tuple(_allowlists(raw, where)),
    )


def load_rules(path: str | Path, *, _seen: tuple[Path, ...] = ()) -> RuleSet:
    """Load a gitleaks TOML rule file."""
    path = Path(path)
    if path.resolve() in _seen:
        raise InvalidRuleFile(f"{path}: [extend] path loops back to itself")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRuleFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRuleFile(f"{path}: not valid TOML: {exc}") from None
    rules_raw = data.get("rules", [])
    if not isinstance(rules_raw, list):
        raise InvalidRuleFile(f"{path}: rules must be an array of tables ([[rules]])")
    rules = [_rule(r, f"{path}: rules[{i}]") for i, r in enumerate(rules_raw)]
    allowlists = _allowlists(data, str(path))
    extend = data.get("extend", {})
    if not isinstance(extend, Mapping):
        raise InvalidRuleFile(f"{path}: [extend] must be a table")
    base: list[Rule] = []
    if extend.get("useDefault"):
        base += DEFAULT_RULES.rules
        allowlists += DEFAULT_RULES.allowlists
    if isinstance(extend.get("path"), str):
        other = load_rules(path.parent / extend["path"], _seen=(*_seen, path.resolve()))
        base += other.rules
        allowlists += other.allowlists
    disabled = set(_strings(extend.get("disabledRules"), f"{path}: extend.disabledRules"))
    ids = {r.id for r in rules}
    merged = [r for r in base if r.id not in ids and r.id not in disabled] + rules
    return RuleSet(merged, allowlists)


# -- defaults -----------------------------------------------------------------------------------------------

_GENERIC_STOPWORDS = (
    "example",
    "sample",
    "placeholder",
    "changeme",
    "dummy",
    "redacted",
    "xxxxxx",
    "your_",
    "<",
    "${",
    "{{",
    "secretref",
    "secretkeyref",
    "valuefrom",
    "getenv",
    "environ",
    "process.env",
    "os.getenv",
    "password:",
    "true",
    "false",
    "null",
    "none",
)


def _default(
    rule_id: str,
    description: str,
    pattern: str,
    *,
    keywords: Sequence[str],
    group: int = 0,
    min_entropy: float = 0.0,
    severity: str = "high",
    stopwords: Sequence[str] = (),
    allow_regexes: Sequence[str] = (),
    allow_match_regexes: Sequence[str] = (),
) -> Rule:
    allow: tuple[Allowlist, ...] = ()
    if stopwords or allow_regexes:
        allow = (
            Allowlist(
                regexes=tuple(_compile(r, rule_id) for r in allow_regexes),
                stopwords=tuple(w.encode() for w in stopwords),
            ),
        )
    if allow_match_regexes:
        by_match = tuple(_compile(r, rule_id) for r in allow_match_regexes)
        allow += (Allowlist(regexes=by_match, regex_target="match"),)
    return Rule(
        id=rule_id,
        description=description,
        regex=_compile(pattern, rule_id),
        pattern=pattern,
        secret_group=group,
        entropy=min_entropy,
        keywords=tuple(k.lower().encode() for k in keywords),
        allowlists=allow,
        severity=severity,
    )


DEFAULT_RULES = RuleSet(
    rules=[
        _default(
            "aws-access-key-id",
            "AWS access key ID",
            r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
            keywords=("akia", "asia", "abia", "acca"),
            group=1,
            allow_regexes=(r"EXAMPLE$",),
        ),
        _default(
            "aws-secret-access-key",
            "AWS secret access key",
            r"(?i)aws_?secret_?(?:access_?)?key\b[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)",
            keywords=("aws",),
            group=1,
            min_entropy=3.5,
            stopwords=("example",),
        ),
        _default(
            "github-token",
            "GitHub token",
            r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{82})\b",
            keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
            group=1,
        ),
        _default(
            "gitlab-token", "GitLab token", r"\b(glpat-[A-Za-z0-9_-]{20,})\b", keywords=("glpat-",), group=1
        ),
        _default(
            "slack-token",
            "Slack token",
            r"\b(xox[abprs]-[A-Za-z0-9-]{10,250})\b",
            keywords=("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"),
            group=1,
        ),
        _default(
            "slack-webhook",
            "Slack incoming-webhook URL",
            r"(https://hooks\.slack\.com/services/[A-Za-z0-9+/]{40,})",
            keywords=("hooks.slack.com",),
            group=1,
        ),
        _default(
            "stripe-key",
            "Stripe secret key",
            r"\b((?:sk|rk)_live_[A-Za-z0-9]{24,99})\b",
            keywords=("sk_live_", "rk_live_"),
            group=1,
        ),
        _default(
            "google-api-key", "Google API key", r"\b(AIza[0-9A-Za-z_-]{35})\b", keywords=("aiza",), group=1
        ),
        _default(
            "private-key",
            "Private key",
            r"(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[\s\S]{64,}?-----END[ "
            r"A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)",
            keywords=("private key",),
            group=1,
            severity="critical",
        ),
        _default(
            "jwt",
            "JSON Web Token",
            r"\b(ey[A-Za-z0-9_-]{10,}\.ey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})",
            keywords=("eyj",),
            group=1,
            severity="medium",
        ),
        _default(
            "password-in-url",
            "Password in a URL",
            r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^/\s:@'\"]{1,64}:([^/\s:@'\"]{3,128})@[A-Za-z0-9.-]+",
            keywords=("://",),
            group=1,
            stopwords=("${", "{{", "<", "password", "passwd", "pass", "example", "xxx", "user:pass", "****"),
        ),
        _default(
            "generic-credential",
            "Credential assigned in code or config",
            r"(?i)(?:api[_-]?key|apikey|secret|token|passwd|password|pwd|client[_-]?secret|access[_-]?key)"
            r"[\w.-]{0,20}[\"']?\s*(?:=|:|:=|=>)\s*[\"']?"
            r"([A-Za-z0-9_+=.~!@#$%^&*-][A-Za-z0-9_+/=.~!@#$%^&*-]{11,127})(?:[\"'\s,;}]|$)",
            keywords=("key", "secret", "token", "passw", "pwd"),
            group=1,
            min_entropy=3.5,
            severity="medium",
            stopwords=_GENERIC_STOPWORDS,
            # names, not values: words-with-dashes, attribute access (a.b.c), CONSTANT_NAMES
            allow_regexes=(
                r"^[a-z]+(?:[-_.][a-z]+)+$",
                r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$",
                r"^[A-Z][A-Z0-9_]+$",
            ),
            # keys that hold a reference (secretName, tokenFile, keyRef, passwordPath...), not a value
            allow_match_regexes=(r"(?i)(?:name|ref|file|path|dir|id)[\"']?\s*(?:=|:|:=|=>)",),
        ),
    ],
    allowlists=[
        Allowlist(
            paths=(
                _compile(r"(?:^|/)\.git/", "defaults"),
                _compile(
                    r"(?:^|/)(?:go\.sum|package-lock\.json|yarn\.lock|poetry\.lock|Cargo\.lock|pnpm-lock\.yaml)$",
                    "defaults",
                ),
                _compile(r"\.(?:png|jpe?g|gif|ico|pdf|zip|gz|tgz|jar|woff2?|ttf|svg)$", "defaults"),
            )
        )
    ],
)
