"""Attesters: produce evidence whose report data is a given 48-byte binding.

* :class:`TpmAttester`: a TPM 2.0 quote by this TPM's attestation key (the standard ECC P-256 template
  under the endorsement hierarchy, :meth:`kubeshield.keys.tpm.TpmSealer.quote`) over sha256 ``pcrs``
  with ``qualifyingData = report_data``, plus the PCR values read from the TPM, as
  :mod:`kubeshield.attest.tpm` evidence JSON.
* :class:`SampleAttester`: the no-protection sample TEE (tests and demos only).

SGX/TDX/SNP attesters need the hardware (``/dev/attestation``, ``/dev/tdx_guest``, ``/dev/sev-guest``),
absent here; their evidence is verified by the same server, so one can be added as a class with
``evidence(report_data) -> bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kubeshield.attest import tpm as attest_tpm
from kubeshield.attest.sample import encode_sample
from kubeshield.errors import BackendUnavailable
from kubeshield.keys.tpm import TpmSealer
from kubeshield.keys.tpm_pcrs import read_pcrs

__all__ = ["Attester", "SampleAttester", "TpmAttester"]


class Attester(Protocol):
    tee: str

    def evidence(self, report_data: bytes) -> bytes: ...


class TpmAttester:
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


class SampleAttester:
    """NO PROTECTION: evidence anyone can make. The server refuses it unless started with --allow-sample."""

    tee = "sample"

    def __init__(self, *, svn: int = 1) -> None:
        self._svn = svn

    def evidence(self, report_data: bytes) -> bytes:
        return encode_sample(report_data=report_data, svn=self._svn)
