"""Backend registry: lazy, explicit, with actionable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeshield.config import KeysSettings, LocalSettings
from kubeshield.errors import ConfigError
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.registry import BUILTIN_BACKENDS, known_backends, load_backend_class, open_backend
from tests.support.keys import make_keyring


def test_builtin_table_names_every_configurable_backend() -> None:
    assert set(BUILTIN_BACKENDS) == {"local", "pkcs11", "transit", "awskms", "tpm", "custody"}
    assert set(BUILTIN_BACKENDS) <= set(known_backends())


def test_local_loads() -> None:
    assert load_backend_class("local") is LocalKeyBackend


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key backend 'vault'; known backends: .*local.*pkcs11"):
        load_backend_class("vault")


def test_missing_sdk_names_the_extra() -> None:
    table = {"fake": "tests.support.keys_missing_sdk:Backend"}
    with pytest.raises(ConfigError, match=r"pip install 'kubeshield\[fakeextra\]'"):
        load_backend_class("fake", table=table, extras={"fake": "fakeextra"})


def test_module_not_in_this_build() -> None:
    with pytest.raises(ConfigError, match="not available in this build"):
        load_backend_class("x", table={"x": "kubeshield.keys.does_not_exist:Backend"})
    with pytest.raises(ConfigError, match="not available in this build"):
        load_backend_class("x", table={"x": "kubeshield.keys.local:NoSuchClass"})


def test_open_backend_builds_the_local_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_keyring(tmp_path / "kr", passphrase=None)
    monkeypatch.delenv("KUBESHIELD_KEYRING_PASSPHRASE", raising=False)
    backend = open_backend(KeysSettings(local=LocalSettings(keyring=tmp_path / "kr")))
    assert isinstance(backend, LocalKeyBackend)
    assert backend.check_health().ok


def test_open_backend_requires_a_section_without_defaults() -> None:
    with pytest.raises(ConfigError, match=r"keys\.pkcs11: required when keys\.backend is pkcs11"):
        open_backend(KeysSettings(backend="pkcs11"))
