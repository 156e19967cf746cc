"""The stand-in's label and field selectors, as apimachinery parses and matches them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.kubeapi._selectors import parse_field_selector, parse_label_selector
from tests.support.kubeapi._status import ApiStatus

LABELS = {"app": "web", "tier": "front", "n": "5"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (web,api)", True),
        ("app notin (web)", False),
        ("tier", True),
        ("!tier", False),
        ("!gone", True),
        ("app=web,tier=back", False),
        ("n>3", True),
        ("n<3", False),
        ("app in (a, web)", True),
    ],
)
def test_label_selectors(selector, matches):
    assert parse_label_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize("bad", ["a=b,", "=x", "app in ()", "bad key!=x", "a=" + "v" * 64])
def test_bad_label_selectors_are_400(bad):
    with pytest.raises(ApiStatus) as err:
        parse_label_selector(bad)
    assert err.value.code == 400


keys = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)


@given(st.dictionaries(keys, keys, max_size=5), st.dictionaries(keys, keys, min_size=1, max_size=3))
def test_equality_selector_matches_exactly_the_superset(labels, wanted):
    selector = ",".join(f"{k}={v}" for k, v in wanted.items())
    assert parse_label_selector(selector).matches(labels) == all(
        labels.get(k) == v for k, v in wanted.items()
    )


def test_field_selectors():
    secret = {"metadata": {"name": "s", "namespace": "ns"}, "type": "Opaque"}
    assert parse_field_selector("metadata.name=s,type=Opaque", "secrets").matches(secret)
    assert not parse_field_selector("type!=Opaque", "secrets").matches(secret)
    assert parse_field_selector("metadata.name==s", "secrets").name() == "s"
    with pytest.raises(ApiStatus, match="field label not supported"):
        parse_field_selector("spec.nodeName=n", "secrets")
    with pytest.raises(ApiStatus):
        parse_field_selector("metadata.name", "secrets")
