"""The grpc.aio relay server over real unix sockets in front of real mTLS replicas: raw Decrypt forwarding
(bad requests refused by the relay, never reaching a replica), error codes, metrics, and socket handling."""

from __future__ import annotations

import os
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeshield.config import KeysSettings
from kubeshield.errors import BackendUnavailable, ConfigError, InvalidCiphertext, KubeshieldError
from kubeshield.keys.identity import identity_source
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.client import KMSv1Client, KMSv2Client
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.relay import AioUpstream, Relay
from kubeshield.kms.relay_server import RelayServer
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import EncryptReply, KMSService, StatusReply
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials, client_credentials
from tests.support.etcd import short_socket_dir
from tests.support.service import RELAY_ID, Certs, Proc, free_port, make_certs, wait_until


class Counting:
    """A KMSAPI that counts the Decrypts that reach the replica, then delegates to the real service."""

    def __init__(self, service: KMSService) -> None:
        self.service = service
        self.decrypts = 0

    def status(self) -> StatusReply:
        return self.service.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptReply:
        return self.service.encrypt(plaintext, uid=uid)

    def v1_encrypt(self, plain: bytes) -> bytes:
        return self.service.v1_encrypt(plain)

    def decrypt(self, ciphertext: bytes, *, key_id: str, annotations: Mapping[str, bytes], uid: str) -> bytes:
        self.decrypts += 1
        return self.service.decrypt(ciphertext, key_id=key_id, annotations=annotations, uid=uid)

    def v1_decrypt(self, cipher: bytes) -> bytes:
        self.decrypts += 1
        return self.service.v1_decrypt(cipher)


@dataclass
class Stack:
    replicas: list[tuple[KMSService, KMSServer, Counting]]
    server: RelayServer
    metrics: KMSMetrics
    socket: str
    v1_socket: str
    certs: Certs
    keyring: Path

    def replica_decrypts(self) -> int:
        return sum(c.decrypts for _s, _k, c in self.replicas)


def _relay(certs: Certs, targets: list[str], metrics: KMSMetrics | None = None) -> Relay:
    creds = client_credentials(ca=certs.ca.path, cert=certs.relay.cert, key=certs.relay.key)
    return Relay([AioUpstream(t, credentials=creds) for t in targets], check_interval=0.2, metrics=metrics)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    certs = make_certs(tmp_path / "pki")
    keyring = tmp_path / "keyring"
    LocalKeyBackend.create(path=keyring).close()
    replicas = []
    for _ in range(2):
        backend = LocalKeyBackend(path=keyring)
        service = KMSService(backend, health_interval=0.5)
        api = Counting(service)
        tls = ReloadingServerCredentials(
            cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.path
        )
        kms = KMSServer(
            api,
            listen="tcp://127.0.0.1:0",
            tls=tls,
            allow=AllowList((f"dns:{RELAY_ID}",)),
            keyring=identity_source(KeysSettings(), backend),
        )
        service.start()
        kms.start()
        replicas.append((service, kms, api))
    metrics = KMSMetrics()
    sock_dir = short_socket_dir()
    sock, v1_sock = str(sock_dir / "relay.sock"), str(sock_dir / "v1.sock")
    relay = _relay(certs, [f"127.0.0.1:{k.listen_port}" for _s, k, _a in replicas], metrics)
    server = RelayServer(relay, socket=sock, v1_socket=v1_sock, metrics=metrics)
    server.start()
    try:
        yield Stack(replicas, server, metrics, sock, v1_sock, certs, keyring)
    finally:
        server.stop(None).wait(10)
        for service, kms, _api in replicas:
            kms.stop(None).wait(10)
            service.close()


def _raw(sock: str, method: str, body: bytes) -> grpc.RpcError:
    with grpc.insecure_channel("unix:" + sock) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=5)
    assert isinstance(info.value, grpc.Call)
    return info.value


def test_status_through_the_relay_carries_the_replicas_keyring_identity(stack: Stack) -> None:
    """``kms status --expect-keyring-id`` must work against the relay's socket as against a replica's."""
    backend = LocalKeyBackend(path=stack.keyring)
    expected_id, expected_digest = backend.keyring_id(), backend.versions_digest()
    backend.close()
    assert expected_id and expected_digest
    with KMSv2Client(stack.socket, timeout=5) as client:
        wait_until(lambda: _status_ok(client))
        assert client.keyring_id == expected_id
        assert client.versions_digest == expected_digest
        assert set(client.status_metadata) <= {"kubeshield-keyring-id", "kubeshield-keyring-versions"}


def _status_ok(client: KMSv2Client) -> bool:
    try:
        return client.status().healthz == "ok"
    except KubeshieldError:  # the relay has not agreed on a key_id yet
        return False


def test_a_malformed_decrypt_is_refused_by_the_relay_without_reaching_a_replica(stack: Stack) -> None:
    err = _raw(stack.socket, "/v2.KeyManagementService/Decrypt", b"\xff\xff\xff")
    assert isinstance(err, grpc.Call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (err.details() or "")
    err = _raw(stack.v1_socket, "/v1beta1.KeyManagementService/Decrypt", b"\x12\xff")
    assert isinstance(err, grpc.Call) and err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stack.replica_decrypts() == 0
    text = stack.metrics.render().decode()
    assert 'kubeshield_kms_operations_total{code="INVALID_ARGUMENT",operation="v2.Decrypt"} 1.0' in text
    assert 'kubeshield_kms_operations_total{code="INVALID_ARGUMENT",operation="v1beta1.Decrypt"} 1.0' in text


def test_an_oversized_decrypt_is_refused_by_the_relay_without_reaching_a_replica(stack: Stack) -> None:
    body = v2_pb2.DecryptRequest(ciphertext=b"x" * 1025, key_id="local:v1:00", uid="u").SerializeToString()
    err = _raw(stack.socket, "/v2.KeyManagementService/Decrypt", body)
    assert isinstance(err, grpc.Call) and err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "ciphertext is larger than 1024 bytes"
    v1_body = v1_pb2.DecryptRequest(version="v1beta1", cipher=b"x" * 65536).SerializeToString()
    err = _raw(stack.v1_socket, "/v1beta1.KeyManagementService/Decrypt", v1_body)
    assert isinstance(err, grpc.Call) and err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stack.replica_decrypts() == 0


def test_good_decrypts_are_forwarded_and_answered_by_a_replica(stack: Stack) -> None:
    seed = os.urandom(32)
    with KMSv2Client(stack.socket, timeout=5) as client:
        reply = client.encrypt(seed)
        assert client.decrypt(reply.ciphertext, key_id=reply.key_id, annotations=reply.annotations) == seed
        tampered = bytes([reply.ciphertext[0] ^ 1]) + reply.ciphertext[1:]
        with pytest.raises(InvalidCiphertext):
            client.decrypt(tampered, key_id=reply.key_id, annotations=reply.annotations)
    with KMSv1Client(stack.v1_socket, timeout=5) as v1:
        assert v1.decrypt(v1.encrypt(seed)) == seed
    assert stack.replica_decrypts() >= 4  # the tampered one failed over to every replica


def test_the_sockets_are_0600_and_removed_on_stop(tmp_path: Path, stack: Stack) -> None:
    for path in (stack.socket, stack.v1_socket):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stack.server.serving
    assert stack.server.stop(5).wait(10)
    assert not stack.server.serving
    assert not os.path.exists(stack.socket) and not os.path.exists(stack.v1_socket)


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    sock_dir = short_socket_dir()
    stale = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    first = RelayServer(_relay(certs, ["127.0.0.1:1"]), socket=str(stale))
    first.start()
    try:
        assert stat.S_ISSOCK(os.lstat(stale).st_mode) and first.serving
        second = RelayServer(_relay(certs, ["127.0.0.1:1"]), socket=str(stale))
        with pytest.raises(ConfigError, match="already listening"):
            second.start()
        assert second.wait(10) and not second.serving
        assert os.path.exists(stale)  # the failed second server did not remove the first one's socket
    finally:
        assert first.stop(None).wait(10)
    assert not os.path.exists(stale)


def test_a_regular_file_at_the_socket_path_is_refused(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    path = short_socket_dir() / "file.sock"
    path.write_bytes(b"keep me")
    server = RelayServer(_relay(certs, ["127.0.0.1:1"]), socket=str(path))
    with pytest.raises(ConfigError, match="not a socket"):
        server.start()
    assert path.read_bytes() == b"keep me"


def test_the_relay_command_serves_probes_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``kubeshield kms relay`` as a process: /livez and /readyz, then SIGTERM -> exit 0, socket removed."""
    certs = make_certs(tmp_path / "pki")
    sock = str(short_socket_dir() / "relay.sock")
    health = free_port()
    relay = Proc(
        ["kms", "relay", "--socket", sock, "--upstream", "https://127.0.0.1:1", "--tls-cert",
         str(certs.relay.cert), "--tls-key", str(certs.relay.key), "--ca", str(certs.ca.path),
         "--health-addr", f"127.0.0.1:{health}"],
        tmp_path / "relay.log",
    ).start()  # fmt: skip
    try:
        wait_until(lambda: os.path.exists(sock) and _get(health, "/livez")[0] == 200, bound=30)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        code, body = _get(health, "/readyz")
        assert code == 503 and b"0/1 replicas healthy" in body  # no replica answers
        with KMSv2Client(sock, timeout=5) as client, pytest.raises(BackendUnavailable):
            client.status()
    finally:
        returncode = relay.stop()
    assert returncode == 0, relay.output()
    assert not os.path.exists(sock)
    assert '"msg": "stopped"' in relay.output()
    assert "Traceback" not in relay.output() and "was destroyed" not in relay.output()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""
