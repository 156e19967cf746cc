"""This TPM's attestation key (AK): its public key and fingerprint, to be recorded by a trusted route.

``custody attest`` signs with an AK that is a *primary* key of the endorsement hierarchy, made from a
fixed template (ECC P-256, restricted, sign, fixedTPM): the TPM derives it from its endorsement
primary seed, so the same TPM always gives the same AK, until that seed is changed
(``TPM2_ChangeEPS``; ``TPM2_Clear`` does not change it). ``kubeshield custody ak`` prints it.

The fingerprint is ``sha256:`` + hex of SHA-256 over the DER SubjectPublicKeyInfo of the key, the
same value ``custody verify`` prints for the key that signed a statement and checks against
``--ak-fingerprint``.

How to obtain the AK by a trusted route (docs/custody.md): run ``custody ak`` on the node while it is
provisioned (from its console or the provisioning system, before it joins the cluster), record the
fingerprint where verifiers read it, and compare out of band. This module does not bind the AK to
the TPM's endorsement key certificate (that needs ``TPM2_ActivateCredential``); a statement verified
against a recorded AK proves "the TPM we recorded", not "a genuine TPM from a vendor".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from kubeshield.keys.tpm import TpmSealer

__all__ = ["AkPublic", "ak_fingerprint", "read_ak_public"]


@dataclass(frozen=True, slots=True)
class AkPublic:
    pem: str
    fingerprint: str


def ak_fingerprint(pem: bytes) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo of a PEM public key. Raises ``ValueError``."""
    der = load_pem_public_key(pem).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def read_ak_public(*, tcti: str) -> AkPublic:
    """The AK of the TPM at ``tcti`` (derived as ``custody attest`` derives it, by one quote of PCR 0).

    Raises ``BackendUnavailable`` when the TPM cannot be reached or refuses.
    """
    quote = TpmSealer(tcti=tcti).quote(nonce=os.urandom(16), pcrs=(0,))
    return AkPublic(pem=quote.ak_public_pem.decode(), fingerprint=ak_fingerprint(quote.ak_public_pem))
