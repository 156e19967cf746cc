"""The rendered EncryptionConfiguration passes the apiserver's rules; bad ones are refused by name."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import ConfigError
from kubeshield.kms.encryption_config import (
    encryption_config,
    render_encryption_config,
    validate_encryption_config,
)


def test_render_shape(tmp_path: Path) -> None:
    sock = tmp_path / "kms.sock"
    doc = yaml.safe_load(render_encryption_config(socket=str(sock)))
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert doc["kind"] == "EncryptionConfiguration"
    (rule,) = doc["resources"]
    assert rule["resources"] == ["secrets"]
    kms, identity = rule["providers"]
    assert identity == {"identity": {}}
    assert kms["kms"] == {
        "apiVersion": "v2",
        "name": "kubeshield",
        "endpoint": "unix://" + str(sock),
        "timeout": "3s",
    }
    assert kms["kms"]["endpoint"].startswith("unix:///")
    assert "cachesize" not in kms["kms"]


def test_render_options() -> None:
    doc = encryption_config(
        socket="/run/k.sock", name="prod", resources=["secrets", "configmaps"], timeout="5s"
    )
    kms = doc["resources"][0]["providers"][0]["kms"]
    assert (kms["name"], kms["timeout"]) == ("prod", "5s")
    assert doc["resources"][0]["resources"] == ["secrets", "configmaps"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "a:b"}, "name"),
        ({"timeout": "0s"}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"resources": ["Secrets"]}, "resources"),
        ({"resources": ["*"]}, "resources"),
        ({"resources": ["secrets", "secrets"]}, "resources"),
    ],
)
def test_render_refuses_invalid(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        encryption_config(socket="/run/k.sock", **kwargs)


def _doc() -> dict[str, Any]:
    return encryption_config(socket="/run/k.sock")


def test_missing_api_version_means_v1_and_is_refused() -> None:
    doc = _doc()
    del doc["resources"][0]["providers"][0]["kms"]["apiVersion"]
    with pytest.raises(ConfigError, match="apiVersion v2"):
        validate_encryption_config(doc)


def test_cachesize_refused_in_v2() -> None:
    doc = _doc()
    doc["resources"][0]["providers"][0]["kms"]["cachesize"] = 1000
    with pytest.raises(ConfigError, match="cachesize"):
        validate_encryption_config(doc)


def test_two_slash_endpoint_is_not_our_socket() -> None:
    doc = copy.deepcopy(_doc())
    assert doc["resources"][0]["providers"][0]["kms"]["endpoint"] == "unix:///run/k.sock"


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
def test_any_colon_free_name_renders_and_validates(name: str) -> None:
    text = render_encryption_config(socket="/run/k.sock", name=name)
    doc = yaml.safe_load(text)
    validate_encryption_config(doc)
    assert doc["resources"][0]["providers"][0]["kms"]["name"] == name


def test_no_config_points_the_apiserver_at_an_abstract_socket() -> None:
    with pytest.raises(ConfigError, match="abstract sockets have no filesystem permissions"):
        render_encryption_config(socket="@kubeshield")
