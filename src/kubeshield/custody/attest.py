"""Evidence about the custody process: a statement signed by a TPM quote, and its verification.

``make_statement`` asks the custody process (over its socket) for its current key_id, learns its pid
from the kernel (``SO_PEERCRED`` on our side of the connection), measures it
(:func:`kubeshield.custody.measure.measure_pid`), and has the TPM quote the chosen PCRs with
``qualifyingData = nonce``. The JSON statement (version 1)::

    {"version": 1, "nonce": HEX, "keyIds": [..], "measurement": {pid, uid, gid, exe, exeSha256,
     cgroup, packageDigest, startTime}, "pcrs": [..], "quote": B64(TPMS_ATTEST),
     "signature": B64(DER ECDSA-SHA256), "akPublicKey": PEM}

``verify_statement`` needs only ``cryptography``: the signature over the TPMS_ATTEST bytes with the AK
public key (pinned by the verifier when given), magic 0xFF544347, type 0x8018 (quote), extraData ==
the verifier's nonce (a replayed statement fails), and the quoted PCR selection == ``pcrs``.

What the quote binds: the nonce and the PCR values. The measurement and key_ids are claims made by
the attesting side next to the quote, not inside it; a verifier that must rely on them needs them
measured into a PCR (see docs/custody.md).
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kubeshield.custody.measure import measure_pid, peer_credentials
from kubeshield.errors import BackendUnavailable, PolicyDenied
from kubeshield.keys._custody_protocol import Op, Request, Status, decode_response, encode_request, read_body
from kubeshield.keys.tpm import MAX_NONCE, TpmSealer

__all__ = ["AttestationError", "QuoteInfo", "make_statement", "parse_quote", "verify_statement"]

TPM_GENERATED = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
_SHA256 = 0x000B


class AttestationError(PolicyDenied):
    """Evidence does not verify. The message names the failed check."""


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    magic: int
    type: int
    extra_data: bytes
    pcrs: tuple[int, ...]
    pcr_digest: bytes


def parse_quote(attest: bytes) -> QuoteInfo:
    """Parse a TPMS_ATTEST of a quote (TPM 2.0 Part 2, 10.12.12); raises AttestationError."""
    try:
        magic, typ = struct.unpack_from(">IH", attest, 0)
        pos = 6
        (n,) = struct.unpack_from(">H", attest, pos)
        pos += 2 + n  # qualifiedSigner
        (n,) = struct.unpack_from(">H", attest, pos)
        extra = attest[pos + 2 : pos + 2 + n]
        pos += 2 + n
        pos += 17 + 8  # clockInfo, firmwareVersion
        (count,) = struct.unpack_from(">I", attest, pos)
        pos += 4
        pcrs: list[int] = []
        for _ in range(count):
            alg, size = struct.unpack_from(">HB", attest, pos)
            bitmap = attest[pos + 3 : pos + 3 + size]
            pos += 3 + size
            if alg != _SHA256:
                raise AttestationError("the quote covers a PCR bank other than sha256")
            pcrs += [i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1]
        (n,) = struct.unpack_from(">H", attest, pos)
        digest = attest[pos + 2 : pos + 2 + n]
        if pos + 2 + n != len(attest) or len(extra) > MAX_NONCE:
            raise AttestationError("malformed TPMS_ATTEST")
    except struct.error:
        raise AttestationError("malformed TPMS_ATTEST (truncated)") from None
    return QuoteInfo(magic, typ, bytes(extra), tuple(sorted(pcrs)), bytes(digest))


def _custody_key_id(path: str, timeout: float) -> tuple[str, tuple[int, int, int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            creds = peer_credentials(s)
            s.sendall(encode_request(Request(Op.KEY_ID)))
            body = read_body(s)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot reach the custody process at {path}: {type(exc).__name__}"
            ) from None
    if body is None:
        raise BackendUnavailable("the custody process closed the connection")
    response = decode_response(body)
    if response.status == Status.PERMISSION_DENIED:
        raise PolicyDenied("the custody process refused this caller")
    if response.status != Status.OK or len(response.fields) != 1:
        raise BackendUnavailable(f"the custody process answered {response.status.name}")
    return response.fields[0].decode("ascii", "replace"), creds


def make_statement(
    *, socket_path: str, tcti: str, nonce: bytes, pcrs: tuple[int, ...], timeout: float = 5.0
) -> dict[str, Any]:
    """Build the signed statement described in the module docstring."""
    key_id, (pid, uid, gid) = _custody_key_id(socket_path, timeout)
    identity = measure_pid(pid, uid, gid)
    quote = TpmSealer(tcti=tcti).quote(nonce=nonce, pcrs=pcrs)
    measurement = asdict(identity)
    return {
        "version": 1,
        "nonce": nonce.hex(),
        "keyIds": [key_id],
        "measurement": {
            "pid": measurement["pid"],
            "uid": measurement["uid"],
            "gid": measurement["gid"],
            "exe": measurement["exe"],
            "exeSha256": measurement["exe_sha256"],
            "cgroup": measurement["cgroup"],
            "packageDigest": measurement["package_digest"],
            "startTime": measurement["start_time"],
        },
        "pcrs": list(quote.pcrs),
        "quote": base64.b64encode(quote.attest).decode(),
        "signature": base64.b64encode(quote.signature).decode(),
        "akPublicKey": quote.ak_public_pem.decode(),
    }


def verify_statement(
    statement: dict[str, Any], *, nonce: bytes, ak_public_pem: bytes | None = None
) -> QuoteInfo:
    """Check a statement against the verifier's ``nonce`` (and pinned AK). Raises AttestationError."""
    try:
        if statement.get("version") != 1:
            raise AttestationError("unsupported statement version")
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
    try:
        key.verify(signature, attest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError("the quote signature does not verify") from None
    info = parse_quote(attest)
    if info.magic != TPM_GENERATED:
        raise AttestationError(f"magic is 0x{info.magic:08x}, not TPM_GENERATED 0xff544347")
    if info.type != TPM_ST_ATTEST_QUOTE:
        raise AttestationError(f"type is 0x{info.type:04x}, not a quote (0x8018)")
    if info.extra_data != nonce:
        raise AttestationError("the quote's extraData is not our nonce (replayed or foreign evidence)")
    if statement.get("nonce") != nonce.hex():
        raise AttestationError("the statement's nonce is not our nonce")
    if info.pcrs != claimed_pcrs:
        raise AttestationError("the quoted PCR selection differs from the statement's pcrs")
    return info


def dumps(statement: dict[str, Any]) -> str:
    return json.dumps(statement, indent=2, sort_keys=True)
