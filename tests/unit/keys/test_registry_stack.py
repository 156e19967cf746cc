"""open_backends: primary -> [break-glass] -> [hierarchy], and the v1 stack without the hierarchy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubeshield.config import KeysSettings, LocalSettings
from kubeshield.config.settings import (
    EmergencySettings,
    HierarchySettings,
    TransitAuthSettings,
    TransitSettings,
)
from kubeshield.errors import BackendUnavailable, ConfigError, KeyringError, WrongPassphrase
from kubeshield.keys.base import Wrapped
from kubeshield.keys.breakglass import EMERGENCY_ANNOTATION, BreakGlassBackend
from kubeshield.keys.hierarchy import LOCAL_KEK_ANNOTATION, HierarchicalBackend
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.registry import NETWORK_BACKENDS, hierarchy_enabled, open_backend, open_backends
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.keys.transit import AppRoleAuth, KubernetesAuth, TokenAuth, auth_from_settings
from tests.support.keys import make_keyring

AAD = b"kubeshield/kms/v2"
TRANSIT = TransitSettings(address="http://127.0.0.1:1", auth=TransitAuthSettings(token_file=Path("/t")))


@pytest.fixture(autouse=True)
def _no_env_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBESHIELD_KEYRING_PASSPHRASE", raising=False)


@pytest.mark.parametrize(
    ("backend", "enabled", "expected"),
    [
        ("transit", "auto", True),
        ("awskms", "auto", True),
        ("local", "auto", False),
        ("pkcs11", "auto", False),
        ("tpm", "auto", False),
        ("custody", "auto", False),
        ("local", "on", True),
        ("transit", "off", False),
    ],
)
def test_hierarchy_auto_is_on_for_network_backends_only(backend: str, enabled: str, expected: bool) -> None:
    settings = KeysSettings(backend=backend, hierarchy=HierarchySettings(enabled=enabled))  # type: ignore[arg-type]
    assert hierarchy_enabled(settings) is expected
    assert NETWORK_BACKENDS == {"transit", "awskms"}


def test_local_default_stack_is_the_bare_backend(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    stack = open_backends(KeysSettings(local=LocalSettings(keyring=tmp_path / "kr")))
    assert isinstance(stack.v2, LocalKeyBackend)
    assert stack.v1 is stack.v2 is stack.primary
    stack.close()


def test_local_with_emergency_gets_break_glass_without_escrow(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    make_keyring(tmp_path / "em", passphrase=b"emergency pass")
    (tmp_path / "em-pass").write_text("emergency pass\n")
    settings = KeysSettings(
        local=LocalSettings(keyring=tmp_path / "kr"),
        emergency=EmergencySettings(keyring=tmp_path / "em", passphrase_file=tmp_path / "em-pass"),
    )
    seen: list[str] = []
    stack = open_backends(settings, on_emergency=seen.append)
    assert isinstance(stack.v2, BreakGlassBackend) and isinstance(stack.v1, BreakGlassBackend)
    assert EMERGENCY_ANNOTATION not in stack.v2.wrap(b"x" * 32, aad=AAD).annotations
    stack.close()
    with pytest.raises(BackendUnavailable):
        stack.primary.key_id()


def test_remote_primary_gets_hierarchy_over_escrowing_break_glass_and_a_bare_v1(tmp_path: Path) -> None:
    make_keyring(tmp_path / "em", passphrase=None)
    settings = KeysSettings(
        backend="transit", transit=TRANSIT, emergency=EmergencySettings(keyring=tmp_path / "em")
    )
    remote = InMemoryBackend()
    stack = open_backends(settings, primary=remote)
    assert isinstance(stack.v2, HierarchicalBackend)
    seed = os.urandom(32)
    v2 = stack.v2.wrap(seed, aad=AAD)
    assert {LOCAL_KEK_ANNOTATION, EMERGENCY_ANNOTATION} <= set(v2.annotations)
    assert stack.v2.unwrap(v2, aad=AAD) == seed
    # v1 keeps no annotations: its stack must not use the hierarchy (nor escrow)
    v1 = stack.v1.wrap(seed, aad=b"kubeshield/kms/v1")
    assert v1.annotations == {}
    assert stack.v1.unwrap(Wrapped(v1.ciphertext, ""), aad=b"kubeshield/kms/v1") == seed
    assert stack.v2.key_id() == stack.v1.key_id() == remote.key_id()
    stack.close()


def test_hierarchy_without_emergency(tmp_path: Path) -> None:
    stack = open_backends(KeysSettings(backend="transit", transit=TRANSIT), primary=InMemoryBackend())
    assert isinstance(stack.v2, HierarchicalBackend)
    assert stack.v1 is stack.primary
    assert EMERGENCY_ANNOTATION not in stack.v2.wrap(b"s" * 32, aad=AAD).annotations


def test_a_bad_emergency_keyring_closes_the_primary_and_names_the_path(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    primary = LocalKeyBackend(path=tmp_path / "kr")
    settings = KeysSettings(emergency=EmergencySettings(keyring=tmp_path / "missing"))
    with pytest.raises(KeyringError, match="missing"):
        open_backends(settings, primary=primary)
    with pytest.raises(BackendUnavailable):
        primary.key_id()


def test_the_emergency_keyring_does_not_borrow_the_primary_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_keyring(tmp_path / "kr", passphrase=b"primary")
    make_keyring(tmp_path / "em", passphrase=b"primary")
    monkeypatch.setenv("KUBESHIELD_KEYRING_PASSPHRASE", "primary")
    settings = KeysSettings(
        local=LocalSettings(keyring=tmp_path / "kr"), emergency=EmergencySettings(keyring=tmp_path / "em")
    )
    with pytest.raises(KeyringError, match="passphrase-protected"):
        open_backends(settings)
    (tmp_path / "wrong").write_text("nope\n")
    settings = KeysSettings(
        local=LocalSettings(keyring=tmp_path / "kr"),
        emergency=EmergencySettings(keyring=tmp_path / "em", passphrase_file=tmp_path / "wrong"),
    )
    with pytest.raises(WrongPassphrase):
        open_backends(settings)


def test_open_backend_is_the_v2_stack(tmp_path: Path) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    settings = KeysSettings(local=LocalSettings(keyring=tmp_path / "kr"), hierarchy=HierarchySettings("on"))
    assert isinstance(open_backend(settings), HierarchicalBackend)


def test_transit_auth_from_settings_names_missing_fields() -> None:
    assert auth_from_settings(TransitAuthSettings(token_file=Path("/t"))) == TokenAuth("/t")
    approle = auth_from_settings(
        TransitAuthSettings(method="approle", role_id="r", secret_id_file=Path("/s"))
    )
    assert approle == AppRoleAuth(role_id="r", secret_id_file="/s")
    assert auth_from_settings(TransitAuthSettings(method="kubernetes", role="kms")) == KubernetesAuth(
        role="kms"
    )
    with pytest.raises(ConfigError, match=r"keys\.transit\.auth\.tokenFile"):
        auth_from_settings(TransitAuthSettings())
    with pytest.raises(ConfigError, match=r"keys\.transit\.auth\.secretIdFile"):
        auth_from_settings(TransitAuthSettings(method="approle", role_id="r"))
    with pytest.raises(ConfigError, match=r"keys\.transit\.auth\.role:"):
        auth_from_settings(TransitAuthSettings(method="kubernetes"))
