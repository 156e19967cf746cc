"""relay.yaml: defaults, camelCase, relative paths, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.access.relay_settings import load_relay_settings, relay_settings_from_mapping
from kubeshield.errors import ConfigError

MINIMAL: dict[str, Any] = {
    "tls": {"cert": "relay.crt", "key": "relay.key"},
    "oidc": {"issuer": "https://login.example.test", "clientId": "kubeshield"},
    "ca": {"file": "relay-ca.json"},
}


def with_(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {k: dict(v) for k, v in MINIMAL.items()}
    for dotted, value in over.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return doc


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    (tmp_path / "relay.yaml").write_text(yaml.safe_dump(MINIMAL))
    s = load_relay_settings(tmp_path / "relay.yaml")
    assert s.listen == "127.0.0.1:8443"
    assert s.certificates.lifetime == 15 * 60 and s.certificates.max_lifetime == 3600
    assert s.oidc.username_claim == "email" and s.oidc.groups_claim == "groups"
    assert "openid" in s.oidc.scopes and "RS256" in s.oidc.allowed_algs
    assert s.keys.backend == "local"
    # relative paths are relative to the file, not to the working directory
    assert s.tls.cert == tmp_path / "relay.crt" and s.ca.file == tmp_path / "relay-ca.json"


def test_a_full_file_decodes(tmp_path: Path) -> None:
    (tmp_path / "prod-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    doc = with_(
        listen="0.0.0.0:9443",
        oidc__usernameClaim="sub",
        oidc__usernamePrefix="oidc:",
        oidc__groupsPrefix="oidc:",
        oidc__allowedAlgs=["ES256"],
        oidc__leeway="30s",
        certificates={"lifetime": "10m", "maxLifetime": "2h"},
        clusters=[{"name": "prod", "server": "https://prod:6443", "caFile": str(tmp_path / "prod-ca.pem")}],
        keys={"backend": "local", "local": {"keyring": "/var/lib/k"}},
        attestation={"policy": "/etc/p.yaml", "pcrs": [0, 7]},
    )
    s = relay_settings_from_mapping(doc)
    assert s.oidc.username_prefix == "oidc:" and s.oidc.allowed_algs == ("ES256",) and s.oidc.leeway == 30
    assert s.certificates.lifetime == 600 and s.certificates.max_lifetime == 7200
    assert s.keys.local.keyring == Path("/var/lib/k")
    assert s.attestation is not None and s.attestation.pcrs == (0, 7)
    (endpoint,) = s.endpoints()
    assert endpoint.name == "prod" and endpoint.ca_pem is not None and b"BEGIN CERTIFICATE" in endpoint.ca_pem


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (with_(oidc__clientSecret="x"), r"oidc\.clientSecret: unknown field \(secrets are never read"),
        (with_(oidc__usernameClaimm="sub"), r"oidc\.usernameClaimm: unknown field"),
        (
            with_(keys={"backend": "local", "local": {"passphraseFlie": "x"}}),
            r"keys\.local\.passphraseFlie: unknown field",
        ),
        ({"tls": MINIMAL["tls"], "ca": MINIMAL["ca"]}, r"oidc: required"),
        (with_(oidc__issuer="http://login.example.test"), r"oidc\.issuer: expected an https:// URL"),
        (with_(oidc__scopes=["email"]), r"oidc\.scopes: must include openid"),
        (with_(oidc__allowedAlgs=["HS256"]), r"oidc\.allowedAlgs\[0\]: 'HS256' not allowed"),
        (with_(oidc__allowedAlgs=["none"]), r"oidc\.allowedAlgs\[0\]: 'none' not allowed"),
        (with_(certificates={"lifetime": "2h"}), r"certificates\.maxLifetime: must not be shorter"),
        (with_(certificates={"lifetime": "10s"}), r"certificates\.lifetime: at least 1m"),
        (with_(certificates={"maxLifetime": "48h", "lifetime": "1h"}), r"at most 24h"),
        (with_(certificates={"lifetime": 15}), r"certificates\.lifetime: expected a duration"),
        (with_(listen="nowhere"), r"listen: expected HOST:PORT"),
        (
            with_(clusters=[{"name": "a", "server": "http://a"}]),
            r"clusters\[0\]\.server: expected an https://",
        ),
        (
            with_(clusters=[{"name": "a", "server": "https://a"}, {"name": "a", "server": "https://b"}]),
            r"clusters\[1\]\.name: 'a' appears twice",
        ),
        (with_(clusters=[{"server": "https://a"}]), r"clusters\[0\]\.name: required"),
        (with_(attestation={"pcrs": [1]}), r"attestation: give policy"),
        (with_(attestation={"policy": "p", "pcrs": [24]}), r"attestation\.pcrs"),
        (with_(attestation={"policy": "p", "pcrs": ["7"]}), r"attestation\.pcrs\[0\]: expected an integer"),
        (with_(ca__keyType="rsa"), r"ca\.keyType: must be one of"),
        (["not", "a", "mapping"], r"expected a mapping"),
    ],
)
def test_errors_name_the_field(doc: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        relay_settings_from_mapping(doc)


def test_loopback_http_issuer_is_allowed_for_local_providers() -> None:
    s = relay_settings_from_mapping(with_(oidc__issuer="http://127.0.0.1:5556"))
    assert s.oidc.issuer == "http://127.0.0.1:5556"


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_relay_settings(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tls: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line"):
        load_relay_settings(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(with_(oidc__isuer="x")))
    with pytest.raises(ConfigError, match=r"typo\.yaml: oidc\.isuer: unknown field"):
        load_relay_settings(tmp_path / "typo.yaml")


def test_an_unreadable_cluster_ca_is_named(tmp_path: Path) -> None:
    s = relay_settings_from_mapping(
        with_(clusters=[{"name": "a", "server": "https://a", "caFile": str(tmp_path / "x")}])
    )
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.caFile: cannot read"):
        s.endpoints()


_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=12), st.lists(st.text(max_size=5), max_size=2)
)
_tree = st.recursive(_leaf, lambda c: st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["tls", "oidc", "ca", "listen", "certificates", "clusters", "attestation", "x"]),
        _tree,
        max_size=6,
    )
)
def test_arbitrary_documents_decode_or_fail_with_a_config_error(doc: dict[str, Any]) -> None:
    try:
        relay_settings_from_mapping(doc)
    except ConfigError:
        pass
