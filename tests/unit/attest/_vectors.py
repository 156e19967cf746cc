"""Paths of the shared attestation vectors and small helpers for the attest tests."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

VECTORS = Path(
    os.environ.get("KUBESHIELD_ATTEST_VECTORS")
    or Path(__file__).resolve().parents[4] / "shared" / "vectors" / "attest"
)

SGX_AT = "2025-07-19T10:01:17Z"
SNP_AT = "2030-01-24T17:58:25Z"


def vector(name: str) -> bytes:
    path = VECTORS / name
    if not path.is_file():
        raise FileNotFoundError(
            f"attestation vector {path} is missing; put shared/ beside the repo "
            "or set KUBESHIELD_ATTEST_VECTORS"
        )
    return path.read_bytes()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def collateral_json() -> dict[str, str]:
    return json.loads(vector("sgx_quote_collateral.json"))


def mutate(
    data: bytes, offset: int, *, xor: int | None = None, value: int | None = None, add: int | None = None
) -> bytes:
    b = bytearray(data)
    if xor is not None:
        b[offset] ^= xor
    if value is not None:
        b[offset] = value
    if add is not None:
        b[offset] = (b[offset] + add) % 256
    return bytes(b)
