"""The one result type of every verifier: which TEE, whether it verified, its TCB status, its claims.

``Verification.to_json()`` is the stable ``kubeshield attest verify -o json`` schema (DESIGN.md)::

    {"tee": "sgx|tdx|snp|tpm|sample", "ok": bool, "status": "<TCB status or empty>",
     "advisory_ids": [...], "claims": {<name>: <hex string | int | bool | str>}, "reason": "<why not ok>"}

``claims`` are filled as soon as the evidence parses, also when it does not verify (then they are
*unverified* and ``ok`` is false: never base a decision on them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["TCB_STATUSES", "ClaimValue", "TeeKind", "Verification"]

TeeKind = Literal["sgx", "tdx", "snp", "tpm", "sample"]
ClaimValue = str | int | bool | list[str] | dict[str, str]

#: The TCB status names Intel's PCS, the QVL and dcap-qvl use (tcbStatus of TCB info / QE identity).
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "Unknown",
)


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of verifying one piece of evidence."""

    tee: TeeKind
    ok: bool
    status: str = ""
    advisory_ids: tuple[str, ...] = ()
    claims: Mapping[str, ClaimValue] = field(default_factory=dict)
    reason: str = ""

    def failed(self, reason: str) -> Verification:
        """The same evidence, not verified, for ``reason``."""
        return replace(self, ok=False, reason=reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "tee": self.tee,
            "ok": self.ok,
            "status": self.status,
            "advisory_ids": list(self.advisory_ids),
            "claims": dict(self.claims),
            "reason": self.reason,
        }
