"""TPM attestation evidence: read sha256 PCR values, and :class:`TpmAttester`, which quotes them.

:class:`TpmAttester` makes a TPM 2.0 quote by this TPM's attestation key (the standard ECC P-256
template under the endorsement hierarchy, :meth:`kubeshield.keys.tpm.TpmSealer.quote`) over sha256
``pcrs`` with ``qualifyingData = report_data``, plus the PCR values read before and after (they must
not change in between), as :mod:`kubeshield.attest.tpm` evidence JSON. tpm2-pytss is imported by name,
lazily, as in :mod:`kubeshield.keys.tpm`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kubeshield.attest import tpm as attest_tpm
from kubeshield.errors import BackendUnavailable
from kubeshield.keys.tpm import TpmSealer

__all__ = ["TpmAttester", "read_pcrs"]


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


class TpmAttester:
    """Evidence from this TPM whose report data (the quote's qualifyingData) is the given binding."""

    tee = "tpm"

    def __init__(self, *, tcti: str, pcrs: Sequence[int] = tuple(range(24))) -> None:
        self._tcti = tcti
        self._pcrs = tuple(sorted(set(pcrs)))
        if not self._pcrs or any(not 0 <= p <= 23 for p in self._pcrs):
            raise ValueError("pcrs must be PCR indexes 0..23")

    def evidence(self, report_data: bytes) -> bytes:
        before = read_pcrs(tcti=self._tcti, pcrs=self._pcrs)
        quote = TpmSealer(tcti=self._tcti).quote(nonce=report_data, pcrs=self._pcrs)
        after = read_pcrs(tcti=self._tcti, pcrs=self._pcrs)
        if before != after:
            raise BackendUnavailable("a PCR changed while quoting; try again")
        return attest_tpm.encode_evidence(
            ak_public=load_pem_public_key(quote.ak_public_pem),
            message=quote.attest,
            signature=attest_tpm.TpmSignature.ecdsa_der(quote.signature),
            pcr_values=after,
        )
