"""EncryptionConfiguration parsing and validation (contract §2.2)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.config.encryption import (
    EncryptionConfiguration,
    ProviderConfig,
    load_encryption_config,
    parse_encryption_config,
    socket_path_from_endpoint,
)
from kubeshield.errors import ConfigError


def _doc(*providers: dict[str, Any], resources: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": resources or ["secrets"], "providers": list(providers)}],
    }


def _key(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode()


def _providers(config: EncryptionConfiguration, resource: str) -> tuple[ProviderConfig, ...]:
    found = config.providers_for(resource)
    assert found is not None
    return found


KMS_V2 = {"kms": {"apiVersion": "v2", "name": "k", "endpoint": "unix:///tmp/k.sock"}}


def test_full_config_parses_in_order_with_defaults() -> None:
    config = parse_encryption_config(
        _doc(
            KMS_V2,
            {"aesgcm": {"keys": [{"name": "a", "secret": _key(16)}, {"name": "b", "secret": _key(32)}]}},
            {"kms": {"name": "old", "endpoint": "unix:/tmp/old.sock"}},
            {"identity": {}},
        )
    )
    providers = _providers(config, "secrets")
    assert [p.kind for p in providers] == ["kms", "aesgcm", "kms", "identity"]
    assert providers[0].api_version == "v2" and providers[0].timeout == 3.0 and providers[0].cachesize is None
    assert providers[2].api_version == "v1" and providers[2].cachesize == 1000  # apiVersion defaults to v1
    assert [k.name for k in providers[1].keys] == ["a", "b"]
    assert config.providers_for("configmaps") is None


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (
            {"kms": {"apiVersion": "v2", "name": "k", "endpoint": "unix:///s", "cachesize": 10}},
            "not supported in v2",
        ),
        ({"kms": {"apiVersion": "v2", "name": "a:b", "endpoint": "unix:///s"}}, "must not contain ':'"),
        ({"kms": {"apiVersion": "v3", "name": "k", "endpoint": "unix:///s"}}, "apiVersion"),
        ({"kms": {"apiVersion": "v2", "name": "k", "endpoint": "tcp://h:1"}}, "only unix is supported"),
        ({"kms": {"apiVersion": "v2", "name": "k", "endpoint": "unix:///s", "timeout": "0s"}}, "timeout"),
        ({"kms": {"apiVersion": "v2", "name": "k", "endpoint": "unix:///s", "timeout": "soon"}}, "timeout"),
        ({"kms": {"name": "k", "endpoint": "unix:///s", "cachesize": 0}}, "cachesize"),
        ({"kms": {"apiVersion": "v2", "endpoint": "unix:///s"}}, "name"),
        (
            {"kms": {"apiVersion": "v2", "name": "k", "endpoint": "unix:///s", "keyID": "x"}},
            "keyID: unknown field",
        ),
        ({"aesgcm": {"keys": []}}, "non-empty list"),
        ({"aesgcm": {"keys": [{"name": "a", "secret": "not base64!"}]}}, "base64"),
        ({"aescbc": {"keys": [{"name": "a", "secret": _key(20)}]}}, "16 or 24 or 32 bytes, got 20"),
        ({"secretbox": {"keys": [{"name": "a", "secret": _key(16)}]}}, "32 bytes, got 16"),
        ({"aesgcm": {"keys": [{"secret": _key(32)}]}}, r"keys\[0\]\.name"),
        ({"identity": {}, "aesgcm": {"keys": []}}, "exactly one"),
        ({"rot13": {}}, "rot13: unknown field"),
    ],
)
def test_invalid_providers_name_the_field(provider: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_encryption_config(_doc(provider))
    assert "resources[0].providers[0]" in str(info.value)


def test_secret_never_appears_in_errors() -> None:
    secret = _key(20)
    with pytest.raises(ConfigError) as info:
        parse_encryption_config(_doc({"aesgcm": {"keys": [{"name": "a", "secret": secret}]}}))
    assert secret not in str(info.value)
    config = parse_encryption_config(_doc({"aesgcm": {"keys": [{"name": "a", "secret": _key(32)}]}}))
    assert "secret" not in repr(config.rules[0].providers[0].keys[0])


def test_duplicate_v2_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="must be unique"):
        parse_encryption_config(_doc(KMS_V2, KMS_V2))


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ("Secrets", "lowercase"),
        ("*", "'\\*' is not allowed"),
        ("serviceipallocations", "cannot be encrypted"),
        ("events.events.k8s.io", "not allowed"),
        ("foo.*", "not allowed"),
    ],
)
def test_invalid_resource_names(resource: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_encryption_config(_doc({"identity": {}}, resources=[resource]))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (None, "mapping"),
        ({"kind": "Other"}, "kind"),
        ({"kind": "EncryptionConfiguration", "apiVersion": "v1"}, "apiVersion"),
    ],
)
def test_top_level_errors(doc: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_encryption_config(doc)


def test_wildcards_match_like_the_apiserver() -> None:
    config = parse_encryption_config(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {"resources": ["secrets"], "providers": [KMS_V2]},
                {"resources": ["*.example.com"], "providers": [{"identity": {}}]},
                {
                    "resources": ["*.*"],
                    "providers": [{"secretbox": {"keys": [{"name": "s", "secret": _key(32)}]}}],
                },
            ],
        }
    )
    assert _providers(config, "secrets")[0].kind == "kms"
    assert _providers(config, "widgets.example.com")[0].kind == "identity"
    assert _providers(config, "configmaps")[0].kind == "secretbox"


@given(st.integers(min_value=1, max_value=64))
def test_aes_key_sizes(size: int) -> None:
    doc = _doc({"aesgcm": {"keys": [{"name": "a", "secret": base64.b64encode(bytes(size)).decode()}]}})
    if size in (16, 24, 32):
        assert parse_encryption_config(doc).rules[0].providers[0].keys[0].secret == bytes(size)
    else:
        with pytest.raises(ConfigError, match="must decode to"):
            parse_encryption_config(doc)


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("unix:///var/run/kms.sock", "/var/run/kms.sock"),
        ("unix:/var/run/kms.sock", "/var/run/kms.sock"),
        ("unix:///@abstract", "@abstract"),
        ("unix://var/run/kms.sock", "/run/kms.sock"),
    ],
)
def test_socket_path_like_parse_endpoint(endpoint: str, path: str) -> None:
    assert socket_path_from_endpoint(endpoint) == path


def test_load_names_yaml_problems(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_encryption_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_encryption_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_doc({"identity": {}})))
    assert _providers(load_encryption_config(good), "secrets")[0].kind == "identity"
