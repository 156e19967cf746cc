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

from kubeshield.keys.jwe import checked_jwk, decrypt_jwe, encrypt_to_jwk, generate_ephemeral_key, public_jwk

__all__ = [
    "PROTOCOL_VERSION",
    "binding",
    "decrypt_resource",
    "encrypt_resource",
    "generate_tee_key",
    "public_jwk",
]

PROTOCOL_VERSION = "0.1.0"

#: the JWE helpers live in :mod:`kubeshield.keys.jwe` (shared with the node release service)
generate_tee_key = generate_ephemeral_key
decrypt_resource = decrypt_jwe


def binding(nonce: str, jwk: Mapping[str, Any]) -> bytes:
    """``SHA-384(canonical_json({"nonce", "tee-pubkey"}))``: the report data the evidence must carry."""
    doc = {"nonce": nonce, "tee-pubkey": checked_jwk(jwk, what="tee-pubkey")}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha384(text.encode("ascii")).digest()


def encrypt_resource(plaintext: bytes, jwk: Mapping[str, Any]) -> str:
    """JWE compact (ECDH-ES, A256GCM) of ``plaintext`` to the requester's tee-pubkey."""
    return encrypt_to_jwk(plaintext, jwk, what="tee-pubkey")
