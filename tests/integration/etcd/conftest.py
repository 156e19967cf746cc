"""Fixtures: one real etcd per session (each test gets its own key prefix), base64 KMS plugins,
an EncryptionConfiguration with fresh keys."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.config.encryption import EncryptionConfiguration, parse_encryption_config
from tests.support.etcd import (
    Base64KMSPlugin,
    Base64KMSv1Plugin,
    EtcdServer,
    TLSFiles,
    encryption_config_yaml,
    short_socket_dir,
)


@pytest.fixture
def prefix() -> str:
    """A fresh --etcd-prefix per test, like the apiserver integration tests' /<uuid>/registry."""
    return f"/{uuid.uuid4()}/registry"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = short_socket_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kms_plugin(socket_dir: Path) -> Iterator[Base64KMSPlugin]:
    plugin = Base64KMSPlugin(socket_dir / "kms.sock").start()
    try:
        yield plugin
    finally:
        plugin.stop()


@pytest.fixture
def kms_v1_plugin(socket_dir: Path) -> Iterator[Base64KMSv1Plugin]:
    plugin = Base64KMSv1Plugin(socket_dir / "kms-v1.sock").start()
    try:
        yield plugin
    finally:
        plugin.stop()


class EncConfig:
    """An EncryptionConfiguration file plus its parsed form and keys."""

    def __init__(self, path: Path, text: str, keys: dict[str, str]) -> None:
        import yaml

        self.path, self.text, self.keys = path, text, keys
        self.config: EncryptionConfiguration = parse_encryption_config(yaml.safe_load(text))

    def rewrite_first(self, first: str, **endpoints: str) -> EncConfig:
        text, _ = encryption_config_yaml(aes_keys=self.keys, first=first, **endpoints)
        path = self.path.with_name(f"enc-{first}.yaml")
        path.write_text(text)
        return EncConfig(path, text, self.keys)


@pytest.fixture
def enc_config(tmp_path: Path, kms_plugin: Base64KMSPlugin, kms_v1_plugin: Base64KMSv1Plugin) -> EncConfig:
    text, keys = encryption_config_yaml(
        kms_v2_endpoint=kms_plugin.endpoint, kms_v1_endpoint=kms_v1_plugin.endpoint
    )
    path = tmp_path / "enc.yaml"
    path.write_text(text)
    return EncConfig(path, text, keys)


@pytest.fixture(scope="session")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd that requires TLS client certificates (certs generated now, never committed)."""
    base = tmp_path_factory.mktemp("etcd-tls")
    server = EtcdServer(base / "data", tls=TLSFiles(base / "pki")).start()
    try:
        yield server
    finally:
        server.stop()
