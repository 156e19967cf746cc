"""Go number formats, go-yaml scalar resolution, selection rules, Shamir, metadata flattening, Bech32."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import ConfigError
from kubeshield.sops import _gofmt, shamir
from kubeshield.sops.masterkeys import _bech32
from kubeshield.sops.metadata import flatten, unflatten
from kubeshield.sops.selection import Selection
from kubeshield.sops.stores._goyaml import UINT64, resolve_plain
from kubeshield.sops.tree import Timestamp


@pytest.mark.parametrize(
    ("value", "f", "g", "j"),
    [
        (2.0, "2", "2", "2"),
        (1e20, "100000000000000000000", "1e+20", "100000000000000000000"),
        (1e21, "1000000000000000000000", "1e+21", "1e+21"),
        (1.5e-7, "0.00000015", "1.5e-07", "1.5e-7"),
        (123456789.0, "123456789", "1.23456789e+08", "123456789"),
        (-0.0, "-0", "-0", "-0"),
        (0.1, "0.1", "0.1", "0.1"),
    ],
)
def test_go_float_formats(value, f, g, j) -> None:
    assert (_gofmt.format_float_f(value), _gofmt.format_float_g(value), _gofmt.format_float_json(value)) == (
        f,
        g,
        j,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"), ("on", "on"), ("true", True), ("FALSE", False), ("~", None), ("", None),
        ("0x1F", 31), ("0o17", 15), ("0777", 511), ("09", 9.0), ("1_000", 1000), ("+5", 5),
        ("1e3", 1000.0), (".5", 0.5), ("1.", 1.0), ("99999999999999999999", 1e20),
        ("2024-01-01", Timestamp(2024, 1, 1)), ("2024-1-2", Timestamp(2024, 1, 2)),
        ("2001-12-14 21:59:43.10 -5", "2001-12-14 21:59:43.10 -5"), ("2024-02-30", "2024-02-30"),
        ("1:20", "1:20"), ("-foo", "-foo"),
    ],
)  # fmt: skip
def test_go_yaml_plain_scalar_resolution(text, expected) -> None:
    got = resolve_plain(text)
    assert got == expected and type(got) is type(expected)


def test_uint64_range_and_special_floats() -> None:
    assert isinstance(resolve_plain("9223372036854775808"), UINT64)
    assert math.isnan(resolve_plain(".nan")) and resolve_plain("-.Inf") == -math.inf


def test_selection_rules_in_sops_order_with_unanchored_go_regex() -> None:
    default = Selection.default()
    assert default.should_encrypt(["a"], [[]], is_comment=False)
    assert not default.should_encrypt(["a_unencrypted", "b"], [[]], is_comment=False)  # an ancestor counts
    k8s = Selection(encrypted_regex="^(data|stringData)$")
    assert k8s.should_encrypt(["data", "password"], [[]], is_comment=False)
    assert not k8s.should_encrypt(["metadata", "name"], [[]], is_comment=False)
    unanchored = Selection(encrypted_regex="pass")
    assert unanchored.should_encrypt(["db", "my_password_x"], [[]], is_comment=False)  # search, not match
    comments = Selection(encrypted_comment_regex="sops:enc")
    assert comments.should_encrypt(["k"], [["sops:enc"]], is_comment=False)
    assert not comments.should_encrypt([], [["sops:enc"]], is_comment=True)  # the marker stays clear
    assert not Selection(unencrypted_comment_regex="clear").should_encrypt(
        ["k"], [["keep clear"]], is_comment=False
    )


def test_go_regex_syntax_is_translated_and_bad_patterns_named() -> None:
    assert Selection(encrypted_regex=r"(?<name>x)\z").should_encrypt(["x"], [[]], is_comment=False)
    with pytest.raises(ConfigError, match="encrypted_regex"):
        Selection(encrypted_regex="(")


@given(st.binary(min_size=1, max_size=40), st.integers(2, 6), st.data())
def test_shamir_any_threshold_subset_recovers(secret, parts, data) -> None:
    threshold = data.draw(st.integers(2, parts))
    shares = shamir.split(secret, parts=parts, threshold=threshold)
    subset = data.draw(st.permutations(shares)).__getitem__(slice(0, threshold))
    assert shamir.combine(subset) == secret
    assert all(len(s) == len(secret) + 1 for s in shares)
    assert len({s[-1] for s in shares}) == parts


def test_shamir_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        shamir.split(b"k", parts=2, threshold=1)
    share = shamir.split(os.urandom(32), parts=2, threshold=2)[0]
    with pytest.raises(ValueError, match="duplicate"):
        shamir.combine([share, share])


def test_flatten_matches_sops_names_and_round_trips() -> None:
    meta = {"age": [{"recipient": "r", "enc": "e"}], "lastmodified": "t", "mac_only_encrypted": True}
    flat = flatten(meta)
    assert ("age__list_0__map_recipient", "r") in flat
    assert unflatten(flat) == meta


@given(st.binary(max_size=60))
def test_bech32_round_trip(data) -> None:
    text = _bech32.encode("age1kubeshield", data)
    assert _bech32.decode(text) == ("age1kubeshield", data)
    assert _bech32.decode(text.upper())[1] == data
    flipped = text[:-1] + ("q" if text[-1] != "q" else "p")
    with pytest.raises(ValueError):
        _bech32.decode(flipped)
