"""The ``sample`` TEE: evidence anyone can write, for tests and demos without hardware. NO PROTECTION.

Like Trustee's sample attester it proves nothing: the "evidence" is a JSON object a process makes up::

    {"sample": {"svn": 1, "report_data": HEX(<= 64 bytes), "measurement": HEX (optional)}}

:func:`verify_sample` refuses it unless the caller passes ``allow_sample=True`` (``--allow-sample`` on
the CLI and the release server); even then the result carries the claim ``"protection": "none"``.
"""

from __future__ import annotations

import json
from typing import Any

from kubeshield.attest.errors import EvidenceFormatError
from kubeshield.attest.result import ClaimValue, Verification

__all__ = ["NO_PROTECTION", "SampleAttester", "encode_sample", "looks_like_sample", "verify_sample"]

NO_PROTECTION = "sample evidence gives no protection: anyone can produce it"


def looks_like_sample(doc: Any) -> bool:
    return isinstance(doc, dict) and set(doc) == {"sample"}


def _hex(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"sample evidence: {what} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise EvidenceFormatError(f"sample evidence: {what} is not hex") from None
    if len(raw) > limit:
        raise EvidenceFormatError(f"sample evidence: {what} is longer than {limit} bytes")
    return (raw + bytes(limit - len(raw))).hex() if what == "report_data" else raw.hex()


def encode_sample(*, report_data: bytes, svn: int = 1, measurement: bytes = b"") -> bytes:
    doc = {"sample": {"svn": svn, "report_data": report_data.hex(), "measurement": measurement.hex()}}
    return json.dumps(doc, sort_keys=True).encode()


def verify_sample(doc: Any, *, allow_sample: bool) -> Verification:
    if not looks_like_sample(doc) or not isinstance(doc["sample"], dict):
        raise EvidenceFormatError('sample evidence: expected {"sample": {...}}')
    body = doc["sample"]
    unknown = set(body) - {"svn", "report_data", "measurement"}
    if unknown:
        raise EvidenceFormatError(f"sample evidence: unknown field(s) {', '.join(sorted(unknown))}")
    svn = body.get("svn", 0)
    if isinstance(svn, bool) or not isinstance(svn, int) or not 0 <= svn <= 0xFFFFFFFF:
        raise EvidenceFormatError("sample evidence: svn must be an integer 0..2^32-1")
    claims: dict[str, ClaimValue] = {
        "svn": svn,
        "report_data": _hex(body.get("report_data", ""), "report_data", 64),
        "measurement": _hex(body.get("measurement", ""), "measurement", 64),
        "protection": "none",
    }
    result = Verification(tee="sample", ok=False, claims=claims)
    if not allow_sample:
        return result.failed(f"{NO_PROTECTION}; refused unless explicitly enabled (--allow-sample)")
    return Verification(tee="sample", ok=True, status="NoProtection", claims=claims)


class SampleAttester:
    """NO PROTECTION: evidence anyone can make. Verifiers refuse it unless the sample TEE is enabled."""

    tee = "sample"

    def __init__(self, *, svn: int = 1) -> None:
        self._svn = svn

    def evidence(self, report_data: bytes) -> bytes:
        return encode_sample(report_data=report_data, svn=self._svn)
