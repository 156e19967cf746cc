"""Evidence about the custody process: a statement signed by a TPM quote, and its verification.

``make_statement`` asks the custody process (over its socket) for its current key_id, learns its pid
from the kernel (``SO_PEERCRED`` on our side of the connection), measures it
(:func:`kubeshield.custody.measure.measure_pid`), builds the statement *body*, and has the TPM quote
the chosen PCRs with ``qualifyingData = binding(nonce, body)``. The JSON statement (version 2)::

    {"version": 2, "nonce": HEX, "keyIds": [..], "measurement": {pid, uid, gid, exe, exeSha256,
     cgroup, packageDigest, startTime}, "pcrs": [..],                         <- the body
     "quote": B64(TPMS_ATTEST), "signature": B64(DER ECDSA-SHA256), "akPublicKey": PEM}

The body is every field except ``quote``, ``signature`` and ``akPublicKey``. The binding is::

    binding(nonce, body) = SHA-256(nonce || canonical_json(body))          (32 bytes)
    canonical_json = JSON with keys sorted, separators "," and ":", ASCII only, UTF-8 bytes

``verify_statement`` is a thin wrapper over :mod:`kubeshield.attest.tpm` (which parses TPMS_ATTEST and
checks the signature with ``cryptography``): the signature over the TPMS_ATTEST bytes with the AK
public key (pinned by the verifier when given), magic 0xFF544347, type 0x8018 (quote), the statement's
nonce == the verifier's nonce (a replayed statement fails), extraData == binding(verifier's nonce,
body) (so a measurement, key_id or PCR list edited after quoting fails), and the quoted PCR selection
== ``pcrs``. The quote thus vouches, with the TPM's AK, for the measurement and key_ids the attester
reported at quoting time; it does not make the attester's measuring code trustworthy (docs/custody.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kubeshield.attest import tpm as _tpm
from kubeshield.attest.errors import AttestationError
from kubeshield.custody.measure import measure_pid, peer_credentials
from kubeshield.errors import BackendUnavailable, PolicyDenied
from kubeshield.keys._custody_protocol import (
    Op,
    ProtocolError,
    Request,
    Status,
    decode_response,
    encode_request,
    read_body,
    read_greeting,
)
from kubeshield.keys.tpm import MAX_NONCE, TpmSealer

__all__ = [
    "STATEMENT_VERSION",
    "AttestationError",
    "QuoteInfo",
    "binding",
    "make_statement",
    "parse_quote",
    "statement_body",
    "verify_statement",
]

STATEMENT_VERSION = 2
_EVIDENCE_FIELDS = ("quote", "signature", "akPublicKey")

TPM_GENERATED = _tpm.TPM_GENERATED
TPM_ST_ATTEST_QUOTE = _tpm.TPM_ST_ATTEST_QUOTE
_SHA256 = 0x000B


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    magic: int
    type: int
    extra_data: bytes
    pcrs: tuple[int, ...]
    pcr_digest: bytes


def parse_quote(attest: bytes) -> QuoteInfo:
    """Parse a TPMS_ATTEST of a quote (TPM 2.0 Part 2, 10.12.12); raises AttestationError."""
    quote = _tpm.parse_attest(attest)
    if any(sel.hash_alg != _SHA256 for sel in quote.selections):
        raise AttestationError("the quote covers a PCR bank other than sha256")
    if len(quote.extra_data) > MAX_NONCE:
        raise AttestationError("malformed TPMS_ATTEST")
    return QuoteInfo(quote.magic, quote.type, quote.extra_data, quote.pcrs, quote.pcr_digest)


def statement_body(statement: dict[str, Any]) -> dict[str, Any]:
    """The fields the quote binds: every field except ``quote``, ``signature`` and ``akPublicKey``."""
    return {k: v for k, v in statement.items() if k not in _EVIDENCE_FIELDS}


def binding(nonce: bytes, body: dict[str, Any]) -> bytes:
    """``SHA-256(nonce || canonical_json(body))``: the quote's qualifyingData (module docstring)."""
    try:
        canonical = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise AttestationError(f"statement body is not plain JSON: {type(exc).__name__}") from None
    return hashlib.sha256(nonce + canonical.encode("ascii")).digest()


def _custody_key_id(path: str, timeout: float) -> tuple[str, tuple[int, int, int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            creds = peer_credentials(s)
            response = read_greeting(s)  # None: admitted; else the refusal sent instead
            if response is None:
                s.sendall(encode_request(Request(Op.KEY_ID)))
                body = read_body(s)
                if body is None:
                    raise BackendUnavailable("the custody process closed the connection")
                response = decode_response(body)
        except (OSError, ProtocolError) as exc:
            raise BackendUnavailable(
                f"cannot reach the custody process at {path}: {type(exc).__name__}"
            ) from None
    if response.status == Status.PERMISSION_DENIED:
        raise PolicyDenied("the custody process refused this caller")
    if response.status != Status.OK or len(response.fields) != 1:
        raise BackendUnavailable(f"the custody process answered {response.status.name}")
    return response.fields[0].decode("ascii", "replace"), creds


def make_statement(
    *, socket_path: str, tcti: str, nonce: bytes, pcrs: tuple[int, ...], timeout: float = 5.0
) -> dict[str, Any]:
    """Build the signed statement described in the module docstring."""
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= MAX_NONCE:
        raise ValueError(f"nonce must be 1..{MAX_NONCE} bytes")
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
        raise ValueError("pcrs must be PCR indexes 0..23")
    key_id, (pid, uid, gid) = _custody_key_id(socket_path, timeout)
    identity = measure_pid(pid, uid, gid)
    measurement = asdict(identity)
    body: dict[str, Any] = {
        "version": STATEMENT_VERSION,
        "nonce": nonce.hex(),
        "keyIds": [key_id],
        "measurement": {
            "pid": measurement["pid"],
            "uid": measurement["uid"],
            "gid": measurement["gid"],
            "exe": measurement["exe"],
            "exeSha256": measurement["exe_sha256"],
            "cgroup": measurement["cgroup"],
            "packageDigest": None,  # no longer measured (docs/custody.md); kept for the schema
            "startTime": measurement["start_time"],
        },
        "pcrs": sorted(set(pcrs)),
    }
    quote = TpmSealer(tcti=tcti).quote(nonce=binding(nonce, body), pcrs=pcrs)
    return {
        **body,
        "quote": base64.b64encode(quote.attest).decode(),
        "signature": base64.b64encode(quote.signature).decode(),
        "akPublicKey": quote.ak_public_pem.decode(),
    }


def verify_statement(
    statement: dict[str, Any], *, nonce: bytes, ak_public_pem: bytes | None = None
) -> QuoteInfo:
    """Check a statement against the verifier's ``nonce`` (and pinned AK). Raises AttestationError."""
    try:
        if statement.get("version") != STATEMENT_VERSION:
            raise AttestationError(
                f"unsupported statement version (this kubeshield verifies {STATEMENT_VERSION})"
            )
        attest = base64.b64decode(statement["quote"], validate=True)
        signature = base64.b64decode(statement["signature"], validate=True)
        claimed_pem = str(statement["akPublicKey"]).encode()
        claimed_pcrs = tuple(sorted(int(p) for p in statement["pcrs"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AttestationError(f"malformed statement: {type(exc).__name__}") from None
    pem = ak_public_pem if ak_public_pem is not None else claimed_pem
    if ak_public_pem is not None and load_pem_public_key(claimed_pem) != load_pem_public_key(ak_public_pem):
        raise AttestationError("the statement is signed by another attestation key than the pinned one")
    key = load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AttestationError("the attestation key is not an ECC key")
    _tpm.verify_quote(message=attest, signature=_tpm.TpmSignature.ecdsa_der(signature), ak_public=key)
    info = parse_quote(attest)
    if statement.get("nonce") != nonce.hex():
        raise AttestationError("the statement's nonce is not our nonce (replayed or foreign evidence)")
    if info.extra_data != binding(nonce, statement_body(statement)):
        raise AttestationError(
            "the quote does not cover this statement body with our nonce "
            "(the measurement, key_ids or pcrs were altered, or the quote is replayed)"
        )
    if info.pcrs != claimed_pcrs:
        raise AttestationError("the quoted PCR selection differs from the statement's pcrs")
    return info


def dumps(statement: dict[str, Any]) -> str:
    return json.dumps(statement, indent=2, sort_keys=True)
