"""The release protocol: RCAR (Request, Challenge, Attestation, Response) as Trustee's KBS does it.

    1. client -> POST /kbs/v0/auth     {"version": "0.1.0", "tee": "tpm|sgx|tdx|snp|sample", "resource": NAME}
       server <- 200 {"session": ID, "nonce": B64URL(32 random bytes), "expiresAt": UNIX}
    2. client makes an ephemeral EC P-256 key (the "tee-pubkey", a JWK) and evidence whose report data is
       ``binding(nonce, jwk)`` (below), then
       client -> POST /kbs/v0/attest   {"session": ID, "tee-pubkey": JWK, "evidence": B64(evidence),
                                        "collateral": B64 (optional: SGX/TDX collateral, SNP VCEK)}
       server: the session must exist, be unexpired and unused (it is consumed now: a second attempt
       with the same nonce is refused); the evidence must verify with report data == binding; the
       resource's policy must allow the claims; then
       server <- 200 {"jwe": JWE compact, alg ECDH-ES, enc A256GCM, to the tee-pubkey}
       or 401 (session: unknown, expired, reused), 403 (evidence or policy: every failed rule named),
       404 (no such resource), 400 (malformed request).

    binding(nonce, jwk) = SHA-384(canonical_json({"nonce": nonce, "tee-pubkey": {"crv","kty","x","y"}}))
    canonical_json = keys sorted, separators "," ":", ASCII.     48 bytes, zero-padded in report data.

Only the TEE that holds the private half of the tee-pubkey can read the resource, and the hash in its
hardware-signed report data ties that key to this nonce (no replay) and to this evidence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from kubeshield.errors import InvalidCiphertext, InvalidRequest

__all__ = [
    "PROTOCOL_VERSION",
    "binding",
    "decrypt_resource",
    "encrypt_resource",
    "generate_tee_key",
    "public_jwk",
]

PROTOCOL_VERSION = "0.1.0"
_JWK_FIELDS = ("crv", "kty", "x", "y")
_HEADER = {"alg": "ECDH-ES", "enc": "A256GCM"}


def generate_tee_key() -> ECKey:
    """A fresh ephemeral P-256 key pair for one request."""
    return ECKey.generate_key("P-256", private=True)


def public_jwk(key: ECKey) -> dict[str, str]:
    doc = key.as_dict(private=False)
    return {k: str(doc[k]) for k in _JWK_FIELDS}


def _checked_jwk(jwk: object) -> dict[str, str]:
    if not isinstance(jwk, Mapping) or set(jwk) - {*_JWK_FIELDS, "alg", "use", "kid"}:
        raise InvalidRequest("tee-pubkey must be an EC JWK (crv, kty, x, y)")
    doc = {k: jwk.get(k) for k in _JWK_FIELDS}
    if doc["kty"] != "EC" or doc["crv"] != "P-256" or not all(isinstance(v, str) for v in doc.values()):
        raise InvalidRequest("tee-pubkey must be an EC P-256 JWK")
    return {k: str(v) for k, v in doc.items()}


def binding(nonce: str, jwk: Mapping[str, Any]) -> bytes:
    """``SHA-384(canonical_json({"nonce", "tee-pubkey"}))``: the report data the evidence must carry."""
    doc = {"nonce": nonce, "tee-pubkey": _checked_jwk(jwk)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha384(text.encode("ascii")).digest()


def encrypt_resource(plaintext: bytes, jwk: Mapping[str, Any]) -> str:
    """JWE compact (ECDH-ES, A256GCM) of ``plaintext`` to the requester's tee-pubkey."""
    try:
        key = ECKey.import_key(dict[str, str | list[str]](_checked_jwk(jwk)))
        return jwe.encrypt_compact(dict(_HEADER), plaintext, key)
    except (JoseError, ValueError) as exc:
        raise InvalidRequest(f"tee-pubkey is not a usable P-256 key ({type(exc).__name__})") from None


def decrypt_resource(token: str, key: ECKey) -> bytes:
    """Open the server's JWE with the ephemeral private key; any failure is ``InvalidCiphertext``."""
    try:
        obj = jwe.decrypt_compact(token, key)
    except (JoseError, ValueError, TypeError):
        raise InvalidCiphertext() from None
    if (
        obj.headers().get("alg") != "ECDH-ES"
        or obj.headers().get("enc") != "A256GCM"
        or obj.plaintext is None
    ):
        raise InvalidCiphertext()
    return bytes(obj.plaintext)
