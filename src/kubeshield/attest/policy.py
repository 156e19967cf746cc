"""A small declarative attestation policy (YAML), evaluated to allow/deny with every failed rule named.

    version: 1
    tee: [sgx, tdx]                                  # optional: the TEE kinds accepted
    tcbStatus: [UpToDate, SWHardeningNeeded]         # optional: accepted TCB statuses (SGX/TDX)
    rejectAdvisories: [INTEL-SA-00615]               # optional: refuse when any of these is listed
    claims:                                          # optional: one entry per claim name
      mr_signer: {in: [815f42f1...]}                 # hex compared case-insensitively
      isv_svn: {min: 2}                              # integers: min / max
      debug: {equals: false}
      pcr7: {equals: 0000...}
      ak_sha256: {in: [a517f03f...]}                 # TPM: pin the attestation key

Operators: ``equals``, ``in``, ``min``, ``max``. Quote hex values (``'00ff...'``): YAML reads an unquoted
``0000...`` as the integer 0, which never equals a hex claim. A rule on a claim the evidence does not
have fails
(fail closed). The evidence must also have verified (``ok``); a policy never turns a failed
verification into an allow. Why no general-purpose language: the decisions needed here are set
membership and thresholds over a flat claim set, which this covers with errors that name the rule;
OPA/Rego would add an engine (and, in Python, no well-kept embedded one) without adding safety.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeshield.attest.result import ClaimValue, Verification
from kubeshield.errors import ConfigError

__all__ = ["ClaimRule", "Decision", "Policy", "load_policy", "parse_policy"]

_TOP = {"version", "tee", "tcbStatus", "rejectAdvisories", "claims"}
_OPS = {"equals", "in", "min", "max"}
_TEES = {"sgx", "tdx", "snp", "tpm", "sample"}


@dataclass(frozen=True, slots=True)
class ClaimRule:
    claim: str
    op: str
    value: Any

    def describe(self) -> str:
        return f"claims.{self.claim}.{self.op}"

    def check(self, claims: Mapping[str, ClaimValue]) -> str | None:
        """None when the rule holds, else why not."""
        if self.claim not in claims:
            return f"{self.describe()}: the evidence has no claim {self.claim!r}"
        have = claims[self.claim]
        if self.op in ("min", "max"):
            if isinstance(have, bool) or not isinstance(have, int):
                return f"{self.describe()}: claim {self.claim} is not an integer"
            ok = have >= self.value if self.op == "min" else have <= self.value
            return (
                None
                if ok
                else f"{self.describe()}: {have} is {'below' if self.op == 'min' else 'above'} {self.value}"
            )
        wanted = [self.value] if self.op == "equals" else list(self.value)
        if any(_same(have, w) for w in wanted):
            return None
        shown = have if not isinstance(have, str) or len(have) <= 24 else have[:24] + "..."
        what = "equal to the pinned value" if self.op == "equals" else "in the allowed set"
        return f"{self.describe()}: {shown!r} is not {what}"


def _same(have: ClaimValue, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    if isinstance(have, str) and isinstance(want, str):
        return have.lower() == want.lower()
    return bool(have == want)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    failures: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.failures)


@dataclass(frozen=True, slots=True)
class Policy:
    tee: frozenset[str] | None = None
    tcb_status: frozenset[str] | None = None
    reject_advisories: frozenset[str] = frozenset()
    claims: tuple[ClaimRule, ...] = field(default_factory=tuple)

    def evaluate(self, result: Verification) -> Decision:
        failures: list[str] = []
        if not result.ok:
            failures.append(f"evidence: not verified ({result.reason})")
        if self.tee is not None and result.tee not in self.tee:
            failures.append(f"tee: {result.tee} is not one of {', '.join(sorted(self.tee))}")
        if (
            self.tcb_status is not None
            and result.tee in ("sgx", "tdx")
            and result.status not in self.tcb_status
        ):
            failures.append(
                f"tcbStatus: {result.status or 'none'} is not one of {', '.join(sorted(self.tcb_status))}"
            )
        bad = sorted(self.reject_advisories & set(result.advisory_ids))
        if bad:
            failures.append(f"rejectAdvisories: {', '.join(bad)} listed")
        for rule in self.claims:
            problem = rule.check(result.claims)
            if problem is not None:
                failures.append(problem)
        return Decision(allowed=not failures, failures=tuple(failures))


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a non-empty list of strings")
    return value


def _rule(claim: str, spec: object, where: str) -> list[ClaimRule]:
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: must be a mapping of operators ({', '.join(sorted(_OPS))})")
    out = []
    for op, value in spec.items():
        if op not in _OPS:
            raise ConfigError(f"{where}.{op}: unknown operator (known: {', '.join(sorted(_OPS))})")
        if op in ("min", "max") and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{op}: must be an integer")
        if op == "in" and (not isinstance(value, list) or not value):
            raise ConfigError(f"{where}.in: must be a non-empty list")
        if op == "equals" and not isinstance(value, str | int | bool):
            raise ConfigError(f"{where}.equals: must be a string, integer or boolean")
        out.append(ClaimRule(claim, op, value))
    return out


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse a policy document; errors name the file and field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the policy must be a mapping")
    unknown = set(doc) - _TOP
    if unknown:
        raise ConfigError(
            f"{source}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(_TOP))})"
        )
    if doc.get("version") != 1:
        raise ConfigError(f"{source}: version: must be 1")
    tee = None
    if "tee" in doc:
        tee = frozenset(_strings(doc["tee"], f"{source}: tee"))
        if tee - _TEES:
            raise ConfigError(f"{source}: tee: unknown TEE kind(s) {', '.join(sorted(tee - _TEES))}")
    status = frozenset(_strings(doc["tcbStatus"], f"{source}: tcbStatus")) if "tcbStatus" in doc else None
    reject = (
        frozenset(_strings(doc["rejectAdvisories"], f"{source}: rejectAdvisories"))
        if "rejectAdvisories" in doc
        else frozenset()
    )
    rules: list[ClaimRule] = []
    claims = doc.get("claims", {})
    if not isinstance(claims, dict):
        raise ConfigError(f"{source}: claims: must be a mapping of claim name to rule")
    for name, spec in claims.items():
        rules += _rule(str(name), spec, f"{source}: claims.{name}")
    return Policy(tee=tee, tcb_status=status, reject_advisories=reject, claims=tuple(rules))


def load_policy(path: str | Path) -> Policy:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {type(exc).__name__}") from None
    return parse_policy(text, source=str(path))


def policy_from_mapping(doc: Mapping[str, Any], *, source: str) -> Policy:
    """A policy given inline (e.g. per resource in the release server's config)."""
    return parse_policy(yaml.safe_dump(dict(doc)), source=source)
