"""ID token verification: every refusal reason, with keys and tokens made at test time (joserfc)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from kubeshield.access.idtoken import IdTokenError, IdTokenVerifier, JwksCache, JwksError

ISSUER = "https://login.example.test"
CLIENT = "kubeshield"
NOW = 1_800_000_000.0

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS256", "use": "sig"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "alg": "ES256", "use": "sig"})
OTHER_RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, not the provider's


class Jwks:
    """The provider's key set as bytes, with a fetch counter (the JWKS endpoint's stand-in)."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.fetches = 0

    def fetch(self) -> bytes:
        self.fetches += 1
        return json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()


def claims(**over: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "alice", "iat": NOW - 10, "exp": NOW + 300, "email": "a@x"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = RSA, alg: str = "RS256", **header: Any) -> str:
    hdr = {"alg": alg, "kid": key.kid if key.kid else None, **header}
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jws.serialize_compact(hdr, json.dumps(payload).encode(), key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verifier(jwks: Jwks | None = None, **kw: Any) -> IdTokenVerifier:
    jwks = jwks or Jwks(RSA, EC)
    return IdTokenVerifier(
        issuer=ISSUER,
        client_id=CLIENT,
        jwks=JwksCache(fetch=jwks.fetch, clock=kw.pop("mono", time.monotonic)),
        clock=lambda: NOW,
        **kw,
    )


def refused(token: object, match: str, v: IdTokenVerifier | None = None, **kw: Any) -> None:
    with pytest.raises(IdTokenError, match=match) as info:
        (v or verifier()).verify(token, **kw)
    if isinstance(token, str):  # the message never echoes the token or any part of it
        assert all(part not in str(info.value) for part in token.split(".") if len(part) >= 8)


def test_a_valid_rs256_and_es256_token_verifies() -> None:
    v = verifier()
    got = v.verify(sign(claims()))
    assert got.subject == "alice" and got.claims["email"] == "a@x" and got.issuer == ISSUER
    assert v.verify(sign(claims(sub="bob"), EC, "ES256")).subject == "bob"
    assert "alice" in repr(got) and "a@x" not in repr(got)


def test_alg_none_is_refused_by_name() -> None:
    unsigned = f"{b64(json.dumps({'alg': 'none'}).encode())}.{b64(json.dumps(claims()).encode())}."
    refused(unsigned, "alg none")
    refused(unsigned + "c2lnbmF0dXJl", "alg none")


def test_hmac_signed_with_the_public_key_is_refused() -> None:
    # the classic confusion: HS256 with the provider's public key (which everybody has) as the secret
    pem = RSA.as_pem(private=False)
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa-1'}).encode())}.{b64(json.dumps(claims()).encode())}"
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    refused(f"{signing_input}.{b64(mac)}", "HMAC")


def test_an_alg_outside_the_allowed_list_is_refused() -> None:
    v = verifier(allowed_algs=("ES256",))
    refused(sign(claims()), "alg 'RS256' is not allowed", v)


def test_a_forged_signature_is_refused() -> None:
    refused(sign(claims(), OTHER_RSA), "signature does not verify")
    good = sign(claims())
    head, _, sig = good.split(".")
    tampered = b64(json.dumps(claims(sub="mallory")).encode())
    refused(f"{head}.{tampered}.{sig}", "signature does not verify")


def test_a_key_of_the_wrong_type_for_the_alg_is_refused() -> None:
    # kid names the RSA key, the header claims ES256
    token = sign(claims(), EC, "ES256", kid="rsa-1")
    refused(token, "not a key for ES256")


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"iss": "https://evil.example.test"}, "issuer 'https://evil.example.test' is not the expected"),
        ({"iss": None}, "issuer None"),
        ({"aud": "someone-else"}, "audience 'someone-else' does not include 'kubeshield'"),
        ({"aud": ["kubeshield", "other"]}, "several audiences and no azp"),
        ({"aud": ["kubeshield", "other"], "azp": "other"}, "azp 'other' is not"),
        ({"aud": 7}, "aud is missing"),
        ({"exp": NOW - 61}, "expired at"),
        ({"exp": None}, "exp is missing"),
        ({"exp": "tomorrow"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"iat": NOW + 3600}, "issued in the future"),
        ({"nbf": NOW + 3600}, "not valid before"),
        ({"sub": ""}, "sub is missing"),
    ],
)
def test_claims_are_checked(over: dict[str, Any], match: str) -> None:
    refused(sign(claims(**over)), match)


def test_leeway_admits_small_skew_only() -> None:
    v = verifier(leeway=60)
    assert v.verify(sign(claims(exp=NOW - 30))).subject == "alice"
    assert v.verify(sign(claims(iat=NOW + 30))).subject == "alice"
    refused(sign(claims(exp=NOW - 30)), "expired", verifier(leeway=0))


def test_an_audience_list_with_azp_naming_the_client_is_accepted() -> None:
    assert verifier().verify(sign(claims(aud=["kubeshield", "other"], azp=CLIENT))).subject == "alice"


def test_nonce_must_match_when_the_flow_sent_one() -> None:
    v = verifier()
    assert v.verify(sign(claims(nonce="n-123")), nonce="n-123").subject == "alice"
    refused(sign(claims(nonce="n-123")), "nonce is not the one", nonce="n-999")
    refused(sign(claims()), "carries none", nonce="n-123")


def test_an_unknown_kid_refreshes_the_jwks_once_and_finds_a_rotated_key() -> None:
    jwks = Jwks(RSA)
    clock = [0.0]
    v = verifier(jwks, mono=lambda: clock[0])
    assert v.verify(sign(claims())).subject == "alice"
    assert jwks.fetches == 1
    clock[0] = 60.0
    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
    jwks.keys.append(rotated)
    assert v.verify(sign(claims(), rotated)).subject == "alice"
    assert jwks.fetches == 2


def test_refreshes_are_rate_limited_so_forged_kids_cannot_hammer_the_provider() -> None:
    jwks = Jwks(RSA)
    clock = [0.0]
    v = verifier(jwks, mono=lambda: clock[0])
    stranger = RSAKey.generate_key(2048, parameters={"kid": "nope"})
    for _ in range(5):
        refused(sign(claims(), stranger), "has no key 'nope'", v)
    assert jwks.fetches == 1  # the first load; no refresh within 30 s of it
    clock[0] = 31.0
    refused(sign(claims(), stranger), "has no key 'nope'", v)
    assert jwks.fetches == 2


def test_symmetric_and_encryption_keys_in_the_jwks_are_ignored() -> None:
    secret = OctKey.generate_key(256, parameters={"kid": "oct"})
    doc = {"keys": [secret.as_dict(private=True), {**RSA.as_dict(private=False), "use": "enc"}]}
    v = IdTokenVerifier(
        issuer=ISSUER,
        client_id=CLIENT,
        jwks=JwksCache(fetch=lambda: json.dumps(doc).encode()),
        clock=lambda: NOW,
    )
    refused(sign(claims()), "has no key 'rsa-1'", v)


def test_a_broken_jwks_is_a_jwks_error() -> None:
    v = IdTokenVerifier(
        issuer=ISSUER, client_id=CLIENT, jwks=JwksCache(fetch=lambda: b"<html>"), clock=lambda: NOW
    )
    with pytest.raises(JwksError, match="not JSON"):
        v.verify(sign(claims()))


@pytest.mark.parametrize(
    ("token", "match"),
    [
        (None, "expected a string"),
        ("", "not a JWS"),
        ("a.b", "not a JWS"),
        ("a.b.c.d.e", "encrypted"),
        ("!!!.e30.c2ln", "header is not base64url"),
        (f"{b64(b'[1]')}.e30.c2ln", "header is not a JSON object"),
        (f"{b64(b'{}')}.e30.c2ln", "no alg"),
        (f"{b64(json.dumps({'alg': 'RS256', 'crit': ['x']}).encode())}.e30.c2ln", "crit"),
        ("x" * 20000, "longer than"),
    ],
)
def test_malformed_tokens_are_refused_with_a_named_reason(token: object, match: str) -> None:
    refused(token, match)


def test_the_configuration_refuses_symmetric_algorithms() -> None:
    with pytest.raises(ValueError, match="HS256"):
        verifier(allowed_algs=("RS256", "HS256"))
    with pytest.raises(ValueError, match="none"):
        verifier(allowed_algs=("none",))


# --- property tests --------------------------------------------------------------------------------

_VALID = sign(claims())
_V = verifier()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_refused_with_an_id_token_error(text: str) -> None:
    with pytest.raises(IdTokenError):
        _V.verify(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_VALID) - 1), st.sampled_from("AQgz09-_.="))
def test_any_one_character_change_of_a_valid_token_is_refused_or_identical(pos: int, ch: str) -> None:
    mutated = _VALID[:pos] + ch + _VALID[pos + 1 :]
    if mutated == _VALID:
        return
    try:
        got = _V.verify(mutated)
    except IdTokenError:
        return
    # base64url's last character can carry unused bits: a change there may decode to the same bytes
    assert got.claims == json.loads(base64.urlsafe_b64decode(_VALID.split(".")[1] + "=="))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["iss", "aud", "sub", "exp", "iat", "nbf", "azp", "nonce"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=True),
            st.text(max_size=20),
            st.lists(st.text(max_size=10), max_size=3),
        ),
    )
)
def test_signed_tokens_with_arbitrary_claims_verify_or_are_refused_cleanly(payload: dict[str, Any]) -> None:
    token = sign(payload)
    try:
        got = _V.verify(token, nonce="n")
    except IdTokenError:
        return
    assert got.claims["iss"] == ISSUER and CLIENT in (
        got.claims["aud"] if isinstance(got.claims["aud"], list) else [got.claims["aud"]]
    )


def test_pem_of_the_public_key_is_really_public() -> None:
    # guard for the HMAC test above: it must use the public key, which anyone can fetch from the JWKS
    assert b"PRIVATE" not in RSA.as_pem(private=False)
    assert serialization.load_pem_public_key(RSA.as_pem(private=False))
