"""What produces evidence: an object with a TEE kind and ``evidence(report_data) -> bytes``.

Implementations: :class:`kubeshield.keys.tpm_attest.TpmAttester` (a TPM quote; in ``keys`` because it
drives the TPM) and :class:`kubeshield.attest.sample.SampleAttester` (no protection). SGX/TDX/SNP
attesters need the hardware's guest device (``/dev/attestation``, ``/dev/tdx_guest``, ``/dev/sev-guest``),
absent on this machine; their evidence is verified by the same code, so one is a class with this shape.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Attester"]


class Attester(Protocol):
    tee: str

    def evidence(self, report_data: bytes) -> bytes:
        """Evidence whose report data is ``report_data`` (zero-padded to the TEE's report data size)."""
        ...
