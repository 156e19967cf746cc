"""Fixtures shared by the integration suites: one real etcd for the session and a client to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubeshield.etcd.client import EtcdClient
from tests.support.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdClient]:
    with EtcdClient([etcd_server.endpoint]) as client:
        yield client
