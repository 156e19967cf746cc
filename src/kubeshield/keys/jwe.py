"""Replies encrypted to a caller's ephemeral key: JWE compact, ``alg: ECDH-ES``, ``enc: A256GCM``, P-256.

The one reply-encryption scheme of kubeshield, shared by attested key release
(:mod:`kubeshield.attest_release`) and the node release service (:mod:`kubeshield.node`): the caller makes
a fresh P-256 key pair for one request, sends the public half as a JWK (``{"kty": "EC", "crv": "P-256",
"x", "y"}``), and the server answers with a JWE only the holder of the private half can open, so a
proxy, a load balancer or a log on the way never sees the plaintext. It lives in layer 1 because two
feature packages use it (layer-2 packages do not import each other).

Any failure to open a JWE is the opaque :class:`~kubeshield.errors.InvalidCiphertext`; a malformed or
unusable public key from a caller is :class:`~kubeshield.errors.InvalidRequest` naming the problem.
Needs joserfc (``pip install 'kubeshield[attest]'`` or ``'kubeshield[node]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from kubeshield.errors import InvalidCiphertext, InvalidRequest

__all__ = [
    "JWK_FIELDS",
    "checked_jwk",
    "decrypt_jwe",
    "encrypt_to_jwk",
    "generate_ephemeral_key",
    "public_jwk",
]

JWK_FIELDS = ("crv", "kty", "x", "y")
_HEADER = {"alg": "ECDH-ES", "enc": "A256GCM"}


def generate_ephemeral_key() -> ECKey:
    """A fresh P-256 key pair for one request."""
    return ECKey.generate_key("P-256", private=True)


def public_jwk(key: ECKey) -> dict[str, str]:
    """The public half as the four-member JWK a caller sends."""
    doc = key.as_dict(private=False)
    return {k: str(doc[k]) for k in JWK_FIELDS}


def checked_jwk(jwk: object, *, what: str = "reply key") -> dict[str, str]:
    """``jwk`` reduced to ``crv, kty, x, y`` after checking it is an EC P-256 public JWK."""
    if not isinstance(jwk, Mapping) or set(jwk) - {*JWK_FIELDS, "alg", "use", "kid"}:
        raise InvalidRequest(f"{what} must be an EC JWK (crv, kty, x, y)")
    doc = {k: jwk.get(k) for k in JWK_FIELDS}
    if doc["kty"] != "EC" or doc["crv"] != "P-256" or not all(isinstance(v, str) for v in doc.values()):
        raise InvalidRequest(f"{what} must be an EC P-256 JWK")
    return {k: str(v) for k, v in doc.items()}


def encrypt_to_jwk(plaintext: bytes, jwk: Mapping[str, Any], *, what: str = "reply key") -> str:
    """JWE compact (ECDH-ES, A256GCM) of ``plaintext`` to the caller's public ``jwk``."""
    try:
        key = ECKey.import_key(dict[str, str | list[str]](checked_jwk(jwk, what=what)))
        return jwe.encrypt_compact(dict(_HEADER), plaintext, key)
    except (JoseError, ValueError) as exc:
        raise InvalidRequest(f"{what} is not a usable P-256 key ({type(exc).__name__})") from None


def decrypt_jwe(token: str, key: ECKey) -> bytes:
    """Open a JWE made by :func:`encrypt_to_jwk` with the private ``key``; any failure is opaque."""
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
