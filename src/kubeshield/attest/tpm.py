"""TPM 2.0 quotes (TPM 2.0 Library Part 2; all integers big-endian), parsed by hand, verified with
pyca/cryptography.

    TPMS_ATTEST: magic u32 (0xFF544347 TPM_GENERATED) | type u16 (0x8018 quote)
                 | qualifiedSigner TPM2B_NAME | extraData TPM2B_DATA (the verifier's nonce / report data)
                 | clockInfo (clock u64, resetCount u32, restartCount u32, safe u8) | firmwareVersion u64
                 | TPMS_QUOTE_INFO: TPML_PCR_SELECTION (count u32, {hash u16, sizeofSelect u8, bitmap})
                 | pcrDigest TPM2B_DIGEST
    TPMT_SIGNATURE: sigAlg u16 (0x0014 RSASSA, 0x0016 RSAPSS: hash u16, TPM2B sig; 0x0018 ECDSA: hash
                 u16, TPM2B r, TPM2B s); hash 0x000B SHA-256, 0x000C SHA-384, 0x000D SHA-512

A quote verifies when the signature over the TPMS_ATTEST bytes holds under the attestation key (AK),
the magic and type are right, and - given the PCR values - ``pcrDigest = H(PCR values of the selection,
in selection order)`` with H the signature's hash. The AK itself is vouched for by nothing in a quote:
pin it in the policy (``tpm.akSha256``) or the verifier's caller.

Evidence JSON (Trustee's TPM evidence, also what :mod:`kubeshield.attest_release` attesters send)::

    {"ak_public": B64(DER SubjectPublicKeyInfo), "tpm_quote": {"message": B64(TPMS_ATTEST),
     "signature": B64(TPMT_SIGNATURE), "pcrs": [HEX, ...]}}         # pcrs: the values of the selection
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from kubeshield.attest._binary import Reader
from kubeshield.attest.errors import AttestationError, EvidenceFormatError
from kubeshield.attest.result import ClaimValue, Verification

__all__ = [
    "TPM_GENERATED",
    "TPM_ST_ATTEST_QUOTE",
    "PcrSelection",
    "TpmEvidence",
    "TpmQuote",
    "TpmSignature",
    "ak_fingerprint",
    "encode_evidence",
    "parse_attest",
    "parse_evidence",
    "parse_signature",
    "verify_quote",
    "verify_tpm",
]

TPM_GENERATED = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA = 0x0014, 0x0016, 0x0018
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    0x000B: hashes.SHA256,
    0x000C: hashes.SHA384,
    0x000D: hashes.SHA512,
}
_HASH_NAMES = {0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512", 0x0004: "sha1"}
_DIGEST_SIZES = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64}
_MAX_EVIDENCE = 64 << 10


@dataclass(frozen=True, slots=True)
class PcrSelection:
    hash_alg: int
    pcrs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TpmQuote:
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes

    @property
    def pcrs(self) -> tuple[int, ...]:
        """Every selected PCR index, sorted (all banks)."""
        return tuple(sorted({p for s in self.selections for p in s.pcrs}))


@dataclass(frozen=True, slots=True)
class TpmSignature:
    sig_alg: int
    hash_alg: int
    signature: bytes  # RSA: the signature; ECDSA: DER (r, s)

    @classmethod
    def ecdsa_der(cls, der: bytes, *, hash_alg: int = 0x000B) -> TpmSignature:
        return cls(ALG_ECDSA, hash_alg, der)

    def marshal(self) -> bytes:
        head = self.sig_alg.to_bytes(2, "big") + self.hash_alg.to_bytes(2, "big")
        if self.sig_alg == ALG_ECDSA:
            r, s = decode_dss_signature(self.signature)
            rb, sb = r.to_bytes(32, "big"), s.to_bytes(32, "big")
            return head + len(rb).to_bytes(2, "big") + rb + len(sb).to_bytes(2, "big") + sb
        return head + len(self.signature).to_bytes(2, "big") + self.signature


def parse_attest(data: bytes) -> TpmQuote:
    """Parse a TPMS_ATTEST of type quote; raises EvidenceFormatError naming the field."""
    r = Reader(data, what="tpm quote")
    magic = r.u32be("magic")
    typ = r.u16be("type")
    signer = r.sized_be16("qualifiedSigner")
    extra = r.sized_be16("extraData")
    if len(extra) > 64:
        raise r.error("extraData", f"{len(extra)} bytes (at most 64)")
    clock, reset, restart, safe = (
        r.u64be("clock"),
        r.u32be("resetCount"),
        r.u32be("restartCount"),
        r.u8("safe"),
    )
    firmware = r.u64be("firmwareVersion")
    count = r.u32be("pcrSelect.count")
    if count > 16:
        raise r.error("pcrSelect.count", f"{count} banks is out of range")
    selections = []
    for i in range(count):
        alg = r.u16be(f"pcrSelect[{i}].hash")
        size = r.u8(f"pcrSelect[{i}].sizeofSelect")
        if size > 4:
            raise r.error(f"pcrSelect[{i}].sizeofSelect", f"{size} is out of range (at most 4)")
        bitmap = r.take(size, f"pcrSelect[{i}].pcrSelect")
        pcrs = tuple(j * 8 + b for j, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1)
        selections.append(PcrSelection(alg, pcrs))
    digest = r.sized_be16("pcrDigest")
    r.end()
    return TpmQuote(
        magic, typ, signer, extra, clock, reset, restart, bool(safe), firmware, tuple(selections), digest
    )


def parse_signature(data: bytes) -> TpmSignature:
    """Parse a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA)."""
    r = Reader(data, what="tpm signature")
    alg = r.u16be("sigAlg")
    hash_alg = r.u16be("hash")
    if hash_alg not in _HASHES:
        raise r.error("hash", f"unsupported hash algorithm 0x{hash_alg:04x}")
    if alg in (ALG_RSASSA, ALG_RSAPSS):
        sig = r.sized_be16("sig")
    elif alg == ALG_ECDSA:
        rr, ss = r.sized_be16("signatureR"), r.sized_be16("signatureS")
        if not rr or not ss:
            raise r.error("signature", "empty ECDSA r or s")
        sig = encode_dss_signature(int.from_bytes(rr, "big"), int.from_bytes(ss, "big"))
    else:
        raise r.error("sigAlg", f"unsupported signature algorithm 0x{alg:04x}")
    r.end()
    return TpmSignature(alg, hash_alg, sig)


def _check_signature(message: bytes, sig: TpmSignature, key: object) -> None:
    algorithm = _HASHES[sig.hash_alg]()
    try:
        if sig.sig_alg == ALG_ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise AttestationError("tpm quote: ECDSA signature but the AK is not an EC key")
            key.verify(sig.signature, message, ec.ECDSA(algorithm))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise AttestationError("tpm quote: RSA signature but the AK is not an RSA key")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if sig.sig_alg == ALG_RSASSA
                else padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            )
            key.verify(sig.signature, message, pad, algorithm)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise AttestationError("tpm quote signature does not verify under the attestation key") from None


def verify_quote(
    *,
    message: bytes,
    signature: TpmSignature,
    ak_public: object,
    pcr_values: Sequence[bytes] | None = None,
    expected_extra_data: bytes | None = None,
) -> TpmQuote:
    """Verify a quote (signature, magic, type; PCR digest when ``pcr_values`` are given; extraData
    when ``expected_extra_data`` is given). Raises AttestationError naming the failed check."""
    _check_signature(message, signature, ak_public)
    quote = parse_attest(message)
    if quote.magic != TPM_GENERATED:
        raise AttestationError(f"tpm quote: magic is 0x{quote.magic:08x}, not TPM_GENERATED 0xff544347")
    if quote.type != TPM_ST_ATTEST_QUOTE:
        raise AttestationError(f"tpm quote: type is 0x{quote.type:04x}, not a quote (0x8018)")
    if pcr_values is not None:
        expected = sum(len(s.pcrs) for s in quote.selections)
        if len(pcr_values) != expected:
            raise AttestationError(f"tpm quote: {len(pcr_values)} PCR values for a selection of {expected}")
        h = hashlib.new(_HASH_NAMES[signature.hash_alg])
        for value in pcr_values:
            h.update(value)
        if h.digest() != quote.pcr_digest:
            raise AttestationError("tpm quote: PCR digest mismatch (the PCR values are not the quoted ones)")
    if expected_extra_data is not None and quote.extra_data != expected_extra_data:
        raise AttestationError("tpm quote: extraData is not the expected nonce / report data (wrong nonce)")
    return quote


def ak_fingerprint(key: object) -> str:
    """sha256 hex of the AK's DER SubjectPublicKeyInfo: what a policy pins as ``tpm.akSha256``."""
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TypeError("an RSA or EC public key is needed")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class TpmEvidence:
    ak_public: object
    message: bytes
    signature: TpmSignature
    pcr_values: tuple[bytes, ...]


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"tpm evidence: {what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"tpm evidence: {what} is not base64") from None


def looks_like_tpm_evidence(doc: Any) -> bool:
    return isinstance(doc, dict) and "tpm_quote" in doc and "ak_public" in doc


def parse_evidence(doc: Any) -> TpmEvidence:
    """Parse the TPM evidence JSON object (module docstring)."""
    if not looks_like_tpm_evidence(doc):
        raise EvidenceFormatError("tpm evidence: expected an object with ak_public and tpm_quote")
    quote = doc["tpm_quote"]
    if not isinstance(quote, dict):
        raise EvidenceFormatError("tpm evidence: tpm_quote must be an object")
    try:
        ak = serialization.load_der_public_key(_b64(doc["ak_public"], "ak_public"))
    except (ValueError, UnsupportedAlgorithm):
        raise EvidenceFormatError("tpm evidence: ak_public is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(ak, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise EvidenceFormatError("tpm evidence: ak_public must be an RSA or EC key")
    pcrs_raw = quote.get("pcrs", [])
    if not isinstance(pcrs_raw, list) or len(pcrs_raw) > 24 * 4:
        raise EvidenceFormatError("tpm evidence: tpm_quote.pcrs must be a list of hex strings")
    pcrs = []
    for i, item in enumerate(pcrs_raw):
        try:
            value = bytes.fromhex(item) if isinstance(item, str) else None
        except ValueError:
            value = None
        if value is None or len(value) not in _DIGEST_SIZES.values():
            raise EvidenceFormatError(f"tpm evidence: tpm_quote.pcrs[{i}] is not a hex PCR value")
        pcrs.append(value)
    return TpmEvidence(
        ak_public=ak,
        message=_b64(quote.get("message"), "tpm_quote.message"),
        signature=parse_signature(_b64(quote.get("signature"), "tpm_quote.signature")),
        pcr_values=tuple(pcrs),
    )


def encode_evidence(
    *, ak_public: object, message: bytes, signature: TpmSignature, pcr_values: Sequence[bytes]
) -> bytes:
    """The evidence JSON (UTF-8) for a quote made here (the inverse of :func:`parse_evidence`)."""
    if not isinstance(ak_public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TypeError("ak_public must be an RSA or EC public key")
    der = ak_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    doc = {
        "ak_public": base64.b64encode(der).decode(),
        "tpm_quote": {
            "message": base64.b64encode(message).decode(),
            "signature": base64.b64encode(signature.marshal()).decode(),
            "pcrs": [v.hex() for v in pcr_values],
        },
    }
    return json.dumps(doc, sort_keys=True).encode()


def _claims(ev: TpmEvidence, quote: TpmQuote | None) -> dict[str, ClaimValue]:
    out: dict[str, ClaimValue] = {"ak_sha256": ak_fingerprint(ev.ak_public)}
    if quote is None:
        return out
    out.update(
        report_data=quote.extra_data.hex(),
        pcr_digest=quote.pcr_digest.hex(),
        clock=quote.clock,
        reset_count=quote.reset_count,
        restart_count=quote.restart_count,
        firmware_version=f"{quote.firmware_version:#018x}",
    )
    selected = [(s.hash_alg, p) for s in quote.selections for p in s.pcrs]
    if len(selected) == len(ev.pcr_values):
        for (alg, index), value in zip(selected, ev.pcr_values, strict=True):
            bank = _HASH_NAMES.get(alg, f"alg{alg:04x}")
            out[f"pcr{index}" if bank == "sha256" else f"pcr{index}_{bank}"] = value.hex()
    return out


def verify_tpm(doc: Any) -> Verification:
    """Verify TPM evidence JSON (module docstring). Raises EvidenceFormatError when it does not parse."""
    ev = parse_evidence(doc)
    try:
        preview = parse_attest(ev.message)
    except EvidenceFormatError:
        preview = None
    base = Verification(tee="tpm", ok=False, claims=_claims(ev, preview))
    try:
        quote = verify_quote(
            message=ev.message, signature=ev.signature, ak_public=ev.ak_public, pcr_values=ev.pcr_values
        )
    except AttestationError as exc:
        return base.failed(str(exc))
    return Verification(tee="tpm", ok=True, claims=_claims(ev, quote))


def load_evidence_json(data: bytes) -> Any:
    if len(data) > _MAX_EVIDENCE:
        raise EvidenceFormatError(f"tpm evidence: oversized ({len(data)} bytes)")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise EvidenceFormatError("tpm evidence: not JSON") from None
