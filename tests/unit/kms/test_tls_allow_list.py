"""AllowList parsing and typed matching, and peer identity extraction from real certificates (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import ConfigError
from kubeshield.kms.relay import parse_upstreams
from kubeshield.kms.server import parse_listen
from kubeshield.kms.tls import AllowList, identities_of, peer_identities
from tests.support.tls import CA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_identities_are_typed_from_the_certificate_itself(ca: CA) -> None:
    issued = ca.issue(
        "relay",
        dns=("Relay.Test",),
        ips=("10.0.0.1", "::1"),
        uris=("spiffe://c/ns/x",),
        emails=("Ops@Example.COM",),
    )
    assert identities_of(_cert(issued.cert)) == {
        "dns:relay.test",  # DNS names compare case-blind
        "ip:10.0.0.1",
        "ip:::1",
        "uri:spiffe://c/ns/x",
        "email:Ops@example.com",  # the domain part is case-blind, the local part is not
        "cn:relay",
    }


def test_peer_identities_come_from_the_verified_pem_certificate(ca: CA) -> None:
    issued = ca.issue("relay", dns=("relay.test",))
    pem = issued.cert.read_bytes()
    # grpc's untyped SAN list is not used: only the certificate grpc verified
    ctx = {"x509_pem_cert": [pem], "x509_subject_alternative_name": [b"intruder.test"]}
    assert peer_identities(ctx) == {"dns:relay.test", "cn:relay"}
    assert peer_identities({"x509_subject_alternative_name": [b"relay.test"]}) == frozenset()
    assert peer_identities({"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nnope\n"]}) == frozenset()
    assert peer_identities({}) == frozenset()


def test_an_entry_matches_only_an_identity_of_its_own_type(ca: CA) -> None:
    """Regression: ``dns:X`` used to accept a certificate whose URI or email SAN was ``X``."""
    allow = AllowList.parse("dns:relay.test")
    as_dns = identities_of(_cert(ca.issue("a", dns=("relay.test",)).cert))
    as_uri = identities_of(_cert(ca.issue("b", uris=("relay.test",)).cert))
    as_email = identities_of(_cert(ca.issue("c", emails=("relay.test",)).cert))
    named_cn = identities_of(_cert(ca.issue("relay.test").cert))
    assert allow.permits(as_dns)
    assert not allow.permits(as_uri)
    assert not allow.permits(as_email)
    assert not allow.permits(named_cn)  # a CN is not a DNS SAN
    assert AllowList.parse("cn:relay.test").permits(named_cn)
    assert not AllowList.parse("cn:relay.test").permits(as_dns)


def test_allow_list_parsing_normalises_and_refuses_what_is_unclear() -> None:
    allow = AllowList.parse("DNS:Relay.Test., uri:spiffe://c/ns/x, cn:node-1, ip:0:0::1, email:a@B.org")
    assert allow.entries == {"dns:relay.test", "uri:spiffe://c/ns/x", "cn:node-1", "ip:::1", "email:a@b.org"}
    for bad, why in (
        ("relay.test", "has no type"),
        ("spiffe://c/ns/x", "has no type"),  # a URI without uri: is as unclear as a bare name
        ("host:relay", "has no type"),
        ("dns:", "no value"),
        ("ip:not-an-ip", "not an IP address"),
    ):
        with pytest.raises(ConfigError, match=why):
            AllowList.parse(bad)
    with pytest.raises(ConfigError, match="contradict"):
        AllowList(["dns:a"], allow_any=True)


def test_empty_permits_nobody_and_any_client_is_explicit() -> None:
    someone = frozenset({"dns:anything", "cn:x"})
    assert not AllowList().permits(someone)
    assert not AllowList.parse("").permits(someone)
    assert not AllowList() and AllowList.any_client()
    assert AllowList.any_client().permits(someone)
    assert not AllowList.any_client().permits(frozenset())  # no verified certificate: never


@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9-]{0,9}(\.[a-z][a-z0-9-]{0,9}){0,2}", fullmatch=True),
        min_size=1,
        max_size=5,
    )
)
def test_every_listed_name_is_permitted_as_that_type_and_nothing_else(names: list[str]) -> None:
    allow = AllowList.parse(",".join(f"dns:{n}" for n in names))
    for name in names:
        assert allow.permits(frozenset({f"dns:{name}"}))
        assert not allow.permits(frozenset({f"uri:{name}", f"email:{name}", f"cn:{name}"}))
    assert not allow.permits(frozenset({"dns:zz-not-listed-" + names[0] + "-x!"}))


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
