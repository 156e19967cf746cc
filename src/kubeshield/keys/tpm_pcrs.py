"""Read sha256 PCR values from a TPM (for attestation evidence that carries the quoted PCR values).

tpm2-pytss is imported by name, lazily, as in :mod:`kubeshield.keys.tpm`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from kubeshield.errors import BackendUnavailable

__all__ = ["read_pcrs"]


def read_pcrs(*, tcti: str, pcrs: Sequence[int]) -> list[bytes]:
    """The sha256 values of ``pcrs`` (ascending order), read with TPM2_PCR_Read (8 per call)."""
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs) or len(set(pcrs)) != len(pcrs):
        raise ValueError("pcrs must be distinct PCR indexes 0..23")
    try:
        t: Any = importlib.import_module("tpm2_pytss")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise BackendUnavailable("reading PCRs needs tpm2-pytss: pip install 'kubeshield[tpm]'") from exc
    wanted = sorted(pcrs)
    values: dict[int, bytes] = {}
    try:
        ctx = t.ESAPI(t.TCTILdr.parse(tcti))
    except Exception as exc:
        raise BackendUnavailable(f"cannot open the TPM at {tcti!r}: {type(exc).__name__}") from None
    try:
        for start in range(0, len(wanted), 8):
            chunk = wanted[start : start + 8]
            sel = t.TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, chunk)))
            _, _, digests = ctx.pcr_read(sel)
            got = [bytes(d) for d in digests]
            if len(got) != len(chunk):
                raise BackendUnavailable("the TPM returned fewer PCR values than asked for")
            values.update(zip(chunk, got, strict=True))
    except BackendUnavailable:
        raise
    except Exception as exc:
        raise BackendUnavailable(f"the TPM refused to read PCRs ({type(exc).__name__})") from None
    finally:
        ctx.close()
    return [values[p] for p in wanted]
