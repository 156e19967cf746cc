"""The apiserver-emulating conformance suite through the relay (3 mTLS replicas) and a plain plugin."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeshield.errors import BackendUnavailable
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.relay import AioUpstream, Relay
from kubeshield.kms.relay_server import RelayServer
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import KMSService
from kubeshield.kms.tls import client_credentials
from tests.support.etcd import short_socket_dir
from tests.support.kms_conformance import check_v1, check_v2
from tests.support.service import Certs, Replica, make_certs, start_replica, wait_until


@dataclass
class Stack:
    keyring: Path
    replicas: list[Replica]
    relay: Relay
    server: RelayServer
    socket: str
    metrics: KMSMetrics


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    certs: Certs = make_certs(tmp_path / "pki")
    keyring = tmp_path / "keyring"
    LocalKeyBackend.create(path=keyring).close()
    replicas = [start_replica(keyring, certs) for _ in range(3)]
    metrics = KMSMetrics()
    credentials = client_credentials(ca=certs.ca.path, cert=certs.relay.cert, key=certs.relay.key)
    relay = Relay(
        [AioUpstream(r.target, credentials=credentials) for r in replicas],
        check_interval=0.2,
        metrics=metrics,
    )
    sock_dir = short_socket_dir()
    server = RelayServer(
        relay, socket=str(sock_dir / "relay.sock"), v1_socket=str(sock_dir / "v1.sock"), metrics=metrics
    )
    server.start()
    try:
        yield Stack(keyring, replicas, relay, server, str(sock_dir / "relay.sock"), metrics)
    finally:
        assert server.stop(None).wait(10)
        for r in replicas:
            r.stop()


def test_conformance_through_the_relay(stack: Stack) -> None:
    report = check_v2(stack.socket, rotate=lambda: LocalKeyBackend(path=stack.keyring).rotate())
    assert len(report.key_ids) == 2 and report.key_ids[1] == stack.relay.agreed_key_id
    check_v1(str(Path(stack.socket).parent / "v1.sock"))
    metrics = stack.metrics.render().decode()
    assert 'kubeshield_relay_upstream_healthy{upstream="127.0.0.1:' in metrics


def test_conformance_suite_against_a_plain_plugin(tmp_path: Path) -> None:
    """The same suite passes against a local plugin: it tests the contract, not the relay."""
    keyring = tmp_path / "keyring"
    service = KMSService(LocalKeyBackend.create(path=keyring), refresh_interval=0.1)
    sock_dir = short_socket_dir()
    server = KMSServer(service, socket=str(sock_dir / "kms.sock"), v1_socket=str(sock_dir / "v1.sock"))
    service.start()
    server.start()
    try:
        check_v2(str(sock_dir / "kms.sock"), rotate=lambda: LocalKeyBackend(path=keyring).rotate())
        check_v1(str(sock_dir / "v1.sock"))
    finally:
        server.stop(None).wait(10)
        service.close()


def test_decrypt_and_status_fail_over_when_replicas_stop(stack: Stack) -> None:
    with KMSv2Client(stack.socket, timeout=3) as client:
        key_id = client.status().key_id
        seed = os.urandom(32)
        reply = client.encrypt(seed)
        stack.replicas[0].stop()
        stack.replicas[1].stop()
        for _ in range(10):  # every call lands on the one live replica, whatever the round robin says
            assert client.decrypt(reply.ciphertext, key_id=reply.key_id) == seed
            assert client.status().key_id == key_id
        assert client.encrypt(seed).key_id == key_id
        stack.replicas[2].stop()
        wait_until(lambda: not any(s.healthy for s in stack.relay.states()), bound=10)
        with pytest.raises(BackendUnavailable):
            client.decrypt(reply.ciphertext, key_id=reply.key_id)
