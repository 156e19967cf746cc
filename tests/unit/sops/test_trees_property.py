"""Property tests: any tree round-trips through the YAML and JSON stores and through encryption; any
single-byte change in an encrypted file is detected (decryption refuses) unless it leaves the plaintext
exactly as it was (whitespace, or metadata sops does not authenticate: version, created_at...)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pyrage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import KubeshieldError
from kubeshield.sops.document import (
    decrypt_document,
    encrypt_document,
    parse_encrypted,
    recover_data_key,
    wrap_data_key,
)
from kubeshield.sops.masterkeys.age import AgeKey
from kubeshield.sops.masterkeys.base import KeyEnv
from kubeshield.sops.metadata import Metadata
from kubeshield.sops.stores import store_for
from kubeshield.sops.tree import Branch, Comment

_KEYS = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=12).filter(
    lambda k: k != "sops" and k.strip() == k and k not in ("<<",)
)
# U+2028/U+2029 are printable line breaks that go-yaml writes raw in single quotes and folds when it reads
# them back: sops itself does not round-trip them, so neither can a byte-compatible writer.
_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\u2028\u2029"), max_size=30)
_LEAF = st.one_of(
    _TEXT,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.booleans(),
    st.none(),
)
_COMMENT = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\n\r"), max_size=20
).map(lambda t: Comment(" " + t.strip()))


def _branch(children: st.SearchStrategy, *, comments: bool) -> st.SearchStrategy[Branch]:
    item = st.tuples(_KEYS, children)
    if comments:
        item = st.one_of(item, item, item, _COMMENT.map(lambda c: (c, None)))
    return (
        st.lists(item, max_size=5)
        .map(_dedupe)
        .filter(lambda b: any(not isinstance(k, Comment) for k, _ in b))
    )


def _dedupe(items: list) -> Branch:
    seen: set = set()
    out = Branch()
    for key, value in items:
        if isinstance(key, str):
            if key in seen:
                continue
            seen.add(key)
        out.append((key, value))
    return out


def _trees(*, comments: bool) -> st.SearchStrategy[Branch]:
    values = st.recursive(
        _LEAF,
        lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=4), _branch(inner, comments=False)),
        max_leaves=12,
    )
    return _branch(values, comments=comments)


def _normal(value):
    if isinstance(value, Branch):
        return [(k, _normal(v)) for k, v in value]
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees(comments=False))
def test_yaml_store_round_trips_any_tree(tree) -> None:
    store = store_for("yaml")
    text = store.emit_plain([tree])
    assert [_normal(b) for b in store.load_plain(text, where="t")] == [_normal(tree)]


@settings(max_examples=100, deadline=None)
@given(_trees(comments=False))
def test_json_store_round_trips_any_tree(tree) -> None:
    store = store_for("json")

    def floats(value):
        if isinstance(value, Branch):
            return Branch((k, floats(v)) for k, v in value)
        if isinstance(value, list):
            return [floats(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    loaded = store.load_plain(store.emit_plain([tree]), where="t")
    assert [_normal(b) for b in loaded] == [_normal(floats(tree))]


@pytest.fixture(scope="module")
def age_env():
    identity = pyrage.x25519.Identity.generate()
    return KeyEnv(environ={"SOPS_AGE_KEY": str(identity)}, home=Path("/nonexistent")), str(
        identity.to_public()
    )


def _encrypt(tree: Branch, recipient: str, env: KeyEnv, fmt: str = "yaml") -> bytes:
    meta = Metadata(key_groups=[[AgeKey(recipient)]])
    key = os.urandom(32)
    wrap_data_key(meta, key, env=env)
    doc = encrypt_document([tree], metadata=meta, data_key=key)
    return store_for(fmt).emit_encrypted(doc.branches, doc.metadata)


def _decrypt(data: bytes, env: KeyEnv, fmt: str = "yaml") -> list:
    store = store_for(fmt)
    doc = parse_encrypted(data, store=store, where="t")
    return decrypt_document(doc, data_key=recover_data_key(doc.metadata, env=env), where="t").branches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_trees(comments=True))
def test_encryption_round_trips_any_tree_with_comments(age_env, tree) -> None:
    env, recipient = age_env
    data = _encrypt(tree, recipient, env)
    assert [_normal(b) for b in _decrypt(data, env)] == [_normal(tree)]


_TAMPER_TREE = Branch(
    [("user", "admin"), ("password", "hunter2"), ("port", 5432), ("list", ["a", "b"]), ("ok", True)]
)


@pytest.fixture(scope="module")
def encrypted_files(age_env):
    env, recipient = age_env
    return {fmt: _encrypt(_TAMPER_TREE, recipient, env, fmt=fmt) for fmt in ("yaml", "json")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_single_byte_change_is_detected(age_env, encrypted_files, data) -> None:
    env, _recipient = age_env
    fmt = data.draw(st.sampled_from(["yaml", "json"]))
    original = encrypted_files[fmt]
    position = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]))
    changed = original[:position] + bytes([replacement]) + original[position + 1 :]
    try:
        got = _decrypt(changed, env, fmt)
    except KubeshieldError:
        return  # refused: detected
    assert [_normal(b) for b in got] == [_normal(_TAMPER_TREE)], (
        f"byte {position} changed the plaintext undetected"
    )
