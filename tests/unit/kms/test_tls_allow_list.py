"""AllowList parsing and matching, and peer identity extraction (no servers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import ConfigError
from kubeshield.kms.relay import parse_upstreams
from kubeshield.kms.server import parse_listen
from kubeshield.kms.tls import AllowList, peer_identities


def test_identities_from_auth_context() -> None:
    ctx = {"x509_subject_alternative_name": [b"relay.test", b"10.0.0.1"], "x509_common_name": [b"relay"]}
    assert peer_identities(ctx) == {"relay.test", "10.0.0.1", "cn:relay"}
    assert peer_identities({}) == frozenset()


def test_allow_list_kinds_and_matching() -> None:
    allow = AllowList.parse("dns:relay.test, uri:spiffe://c/ns/x, cn:node-1,10.0.0.5")
    assert allow.entries == {"relay.test", "spiffe://c/ns/x", "cn:node-1", "10.0.0.5"}
    assert allow.permits(frozenset({"relay.test"}))
    assert allow.permits(frozenset({"cn:node-1"}))
    assert not allow.permits(frozenset({"node-1"}))  # a SAN named like the CN is not the CN
    assert not allow.permits(frozenset({"intruder.test", "cn:intruder"}))
    assert not AllowList().permits(frozenset())  # no verified certificate: never
    assert AllowList().permits(frozenset({"anything"}))
    with pytest.raises(ConfigError, match="no value"):
        AllowList.parse("dns:")


@given(st.lists(st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), min_size=1, max_size=5))
def test_every_listed_name_is_permitted_and_nothing_else(names: list[str]) -> None:
    allow = AllowList.parse(",".join(names))
    for name in names:
        assert allow.permits(frozenset({name}))
    assert not allow.permits(frozenset({"zz-not-listed-" + names[0] + "-x!"}))


def test_listen_and_upstream_parsing() -> None:
    assert parse_listen("tcp://0.0.0.0:9443") == ("0.0.0.0", 9443)
    assert parse_listen("tcp://[::1]:0") == ("::1", 0)
    for bad in ("0.0.0.0:9443", "tcp://host", "https://h:1", "tcp://h:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert parse_upstreams("https://a:1, https://b:2") == ["a:1", "b:2"]
    for bad in ("", "http://a:1", "https://a", "https://a:1,https://a:1"):
        with pytest.raises(ConfigError):
            parse_upstreams(bad)
