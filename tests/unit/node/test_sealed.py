"""The per-ServiceAccount sealed-value format: round trips, binding, tampering, canonical text, properties."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import InvalidCiphertext, InvalidRequest
from kubeshield.node.identity import Binding, Identity, parse_selector
from kubeshield.node.sealed import (
    MAX_PLAINTEXT,
    MODE_KEY,
    MODE_PUBLIC,
    PREFIX,
    derive_public_key,
    open_sealed,
    parse_sealed,
    seal_to_public,
    seal_with_root,
)

# a public known-answer vector (not a key anyone uses): root = 00 01 .. 1f, every random byte fixed
ROOT = bytes(range(32))
APP = Binding(Identity("ns-a", "app"))


def counter_rng():
    state = [0]

    def rng(n: int) -> bytes:
        out = bytes((state[0] + i) % 256 for i in range(n))
        state[0] += n
        return out

    return rng


def _raw(text: str) -> bytes:
    body = text[len(PREFIX) :]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _text(raw: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


KAT_KEY_MODE = (
    "kubeshield:node:v1:AQEAAAABABh7Im5zIjoibnMtYSIsInNhIjoiYXBwIn0AAQIDBAUGBwgJCgszrciz1i6lb4xlUR5Ph3MR"
    "OYTMOCCS"
)
KAT_PUBLIC = (
    "kubeshield:node:v1:AQIAAAAHABh7Im5zIjoibnMtYSIsInNhIjoiYXBwIn2PQMWtto8lYkrlshTqdnpuyU2CnT17XhrRum8-ITgoXyAh"
    "IiMkJSYnKCkqK88Dy82xmN-r0OnzGBYZYPCjpaLrCNU"
)


def _spec_hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def test_known_answer_vectors_match_the_documented_layout() -> None:
    """The pinned texts, and the same bytes built here from the module docstring with raw primitives."""
    info = b"kubeshield/node/v1/identity\x00ns-a\x00app"
    binding = b'{"ns":"ns-a","sa":"app"}'
    # mode 0x01: K = HKDF(R, info); nonce = the 12 rng bytes 00..0b
    header = bytes([1, 1]) + struct.pack(">IH", 1, len(binding)) + binding
    nonce = bytes(range(12))
    ct = AESGCM(_spec_hkdf(ROOT, None, info)).encrypt(nonce, b"s3cret", b"kubeshield/node/v1\x00" + header)
    assert _text(header + nonce + ct) == KAT_KEY_MODE
    assert seal_with_root(b"s3cret", binding=APP, root=ROOT, key_version=1, rng=counter_rng()) == KAT_KEY_MODE
    # mode 0x02: ephemeral private = rng bytes 00..1f, nonce = 20..2b; S = X25519(HKDF(R, "x25519"))
    static = X25519PrivateKey.from_private_bytes(_spec_hkdf(ROOT, None, b"kubeshield/node/v1/x25519"))
    s_pub = static.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert s_pub == derive_public_key(ROOT)
    eph = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    e_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = bytes([1, 2]) + struct.pack(">IH", 7, len(binding)) + binding + e_pub
    key = _spec_hkdf(eph.exchange(static.public_key()), e_pub + s_pub, info)
    nonce = bytes(range(32, 44))
    ct = AESGCM(key).encrypt(nonce, b"s3cret", b"kubeshield/node/v1\x00" + header)
    assert _text(header + nonce + ct) == KAT_PUBLIC
    sealed = seal_to_public(b"s3cret", binding=APP, public_key=s_pub, key_version=7, rng=counter_rng())
    assert sealed == KAT_PUBLIC
    assert open_sealed(parse_sealed(KAT_KEY_MODE), root=ROOT) == b"s3cret"
    assert open_sealed(parse_sealed(KAT_PUBLIC), root=ROOT) == b"s3cret"


@pytest.mark.parametrize("mode", [MODE_KEY, MODE_PUBLIC])
def test_round_trip_and_public_parts(mode: int) -> None:
    binding = Binding(Identity("ns-a", "app"), "kubeshield", {"app": "web", "tier": "front"})
    if mode == MODE_KEY:
        text = seal_with_root(b"v", binding=binding, root=ROOT, key_version=3)
    else:
        text = seal_to_public(b"v", binding=binding, public_key=derive_public_key(ROOT), key_version=3)
    value = parse_sealed(text)
    assert (value.mode, value.key_version, value.binding) == (mode, 3, binding)
    assert open_sealed(value, root=ROOT) == b"v"
    assert "ns-a:app" in repr(value) and f"ciphertext=<{len(value.ciphertext)} bytes>" in repr(value)


def test_each_identity_has_its_own_key() -> None:
    a = seal_with_root(b"same", binding=APP, root=ROOT, key_version=1, rng=counter_rng())
    b = seal_with_root(
        b"same", binding=Binding(Identity("ns-a", "other")), root=ROOT, key_version=1, rng=counter_rng()
    )
    # same nonce, same plaintext: only the derived per-identity key differs
    assert _raw(a)[-22:] != _raw(b)[-22:]


@pytest.mark.parametrize("mode", [MODE_KEY, MODE_PUBLIC])
def test_the_binding_cannot_be_changed(mode: int) -> None:
    pub = derive_public_key(ROOT)
    seal = (
        (lambda b: seal_with_root(b"v", binding=b, root=ROOT, key_version=1))
        if mode == MODE_KEY
        else (lambda b: seal_to_public(b"v", binding=b, public_key=pub, key_version=1))
    )
    raw = _raw(seal(APP))
    other = Binding(Identity("ns-b", "app")).to_bytes()  # same length as ns-a:app
    forged = raw[:8] + other + raw[8 + len(other) :]
    with pytest.raises(InvalidCiphertext):
        open_sealed(parse_sealed(_text(forged)), root=ROOT)
    forged_version = raw[:2] + struct.pack(">I", 2) + raw[6:]
    with pytest.raises(InvalidCiphertext):
        open_sealed(parse_sealed(_text(forged_version)), root=ROOT)


def test_another_root_does_not_open() -> None:
    text = seal_with_root(b"v", binding=APP, root=ROOT, key_version=1)
    with pytest.raises(InvalidCiphertext):
        open_sealed(parse_sealed(text), root=bytes(32))


@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    raw = bytearray(
        _raw(seal_to_public(b"payload", binding=APP, public_key=derive_public_key(ROOT), key_version=1))
    )
    raw[position % len(raw)] ^= flip
    with pytest.raises(InvalidCiphertext):
        open_sealed(parse_sealed(_text(bytes(raw))), root=ROOT)


@given(st.text(max_size=400))
@settings(max_examples=300)
def test_parser_raises_only_invalid_ciphertext_on_any_text(text: str) -> None:
    for candidate in (text, PREFIX + text):
        try:
            parse_sealed(candidate)
        except InvalidCiphertext:
            pass


@given(st.binary(max_size=600))
@settings(max_examples=400)
def test_parser_raises_only_invalid_ciphertext_on_any_bytes(raw: bytes) -> None:
    try:
        value = parse_sealed(_text(raw))
    except InvalidCiphertext:
        return
    with pytest.raises(InvalidCiphertext):  # random bytes never open
        open_sealed(value, root=ROOT)


namespaces = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
labels = st.dictionaries(
    st.from_regex(r"[a-z]([a-z0-9.]{0,10}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?", fullmatch=True),
    max_size=4,
)


@given(
    plaintext=st.binary(max_size=2048),
    ns=namespaces,
    sa=namespaces,
    audience=st.none() | st.from_regex(r"[\x21-\x7e]{1,20}", fullmatch=True),
    selector=labels,
    version=st.integers(min_value=1, max_value=2**32 - 1),
    public=st.booleans(),
)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_property(plaintext, ns, sa, audience, selector, version, public) -> None:
    binding = Binding(Identity(ns, sa), audience, selector)
    if public:
        text = seal_to_public(
            plaintext, binding=binding, public_key=derive_public_key(ROOT), key_version=version
        )
    else:
        text = seal_with_root(plaintext, binding=binding, root=ROOT, key_version=version)
    value = parse_sealed(text)
    assert value.binding == binding and value.key_version == version
    assert open_sealed(value, root=ROOT) == plaintext
    assert Binding.from_bytes(binding.to_bytes()) == binding


def test_text_must_be_the_canonical_encoding() -> None:
    text = seal_with_root(b"v", binding=APP, root=ROOT, key_version=1)
    for bad in (
        text + "=",
        text + "==",
        text[:-1] + ("A" if text[-1] != "A" else "B"),
        text.replace("-", "+"),
    ):
        if bad == text:
            continue
        with pytest.raises(InvalidCiphertext):
            open_sealed(parse_sealed(bad), root=ROOT)
    assert parse_sealed("  " + text + "\n").binding == APP  # surrounding whitespace (YAML block scalars)


@pytest.mark.parametrize(
    "header",
    [
        bytes([2, MODE_KEY]) + struct.pack(">IH", 1, 25),  # unknown format version
        bytes([1, 9]) + struct.pack(">IH", 1, 25),  # unknown mode
        bytes([1, MODE_KEY]) + struct.pack(">IH", 0, 25),  # key version 0
        bytes([1, MODE_KEY]) + struct.pack(">IH", 1, 0),  # empty binding
    ],
)
def test_unknown_versions_and_modes_are_refused(header: bytes) -> None:
    raw = _raw(seal_with_root(b"v", binding=APP, root=ROOT, key_version=1))
    with pytest.raises(InvalidCiphertext):
        parse_sealed(_text(header + raw[8:]))


def test_non_canonical_binding_is_refused() -> None:
    raw = _raw(seal_with_root(b"v", binding=APP, root=ROOT, key_version=1))
    spaced = b'{"ns": "ns-a","sa":"app"}'[: len(APP.to_bytes())]
    assert len(spaced) == len(APP.to_bytes()) and spaced != APP.to_bytes()
    with pytest.raises(InvalidCiphertext):
        parse_sealed(_text(raw[:8] + spaced + raw[8 + len(spaced) :]))
    with pytest.raises(InvalidRequest):
        Binding.from_bytes(b'{"ns":"ns-a","sa":"app","x":1}')


def test_limits_and_argument_errors() -> None:
    with pytest.raises(InvalidRequest):
        seal_with_root(b"x" * (MAX_PLAINTEXT + 1), binding=APP, root=ROOT, key_version=1)
    with pytest.raises(ValueError):
        seal_with_root(b"x", binding=APP, root=b"short", key_version=1)
    with pytest.raises(ValueError):
        seal_with_root(b"x", binding=APP, root=ROOT, key_version=0)
    with pytest.raises(TypeError):
        seal_with_root("text", binding=APP, root=ROOT, key_version=1)  # type: ignore[arg-type]
    assert seal_with_root(b"", binding=APP, root=ROOT, key_version=1)  # an empty value is a value


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Identity("NS", "app"), "namespace"),
        (lambda: Identity("ns", "App_1"), "service account"),
        (lambda: Identity.parse("no-colon"), "<namespace>:<serviceaccount>"),
        (lambda: Binding(Identity("ns", "sa"), "has space"), "audience"),
        (lambda: parse_selector("app"), "key=value"),
        (lambda: parse_selector("app=web,app=db"), "twice"),
        (lambda: parse_selector("-bad=x"), "label key"),
        (lambda: parse_selector("app=not valid"), "label value"),
    ],
)
def test_bad_identities_name_the_problem(make, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        make()


def test_identity_from_token_review_usernames() -> None:
    assert Identity.from_username("system:serviceaccount:ns-a:app") == Identity("ns-a", "app")
    assert Identity.from_username("system:node:n1") is None
    assert Identity.from_username("alice") is None
    assert Identity.from_username("system:serviceaccount:BAD:app") is None
    assert str(Identity.parse("ns-a:app")) == "ns-a:app"
    assert parse_selector("app=web, tier=front") == {"app": "web", "tier": "front"}
