"""Service mode over real mTLS on 127.0.0.1: who gets in, who is refused before any KMS call, cert reload."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import pytest

from kubeshield.errors import BackendAuthError, BackendUnavailable, ConfigError
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.api.v2 import api_pb2_grpc as v2_grpc
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import EncryptReply, KMSService, StatusReply
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials, client_credentials
from tests.support.service import RELAY_ID, Certs, GrpcUpstream, make_certs, upstream_client
from tests.support.tls import CA


class Recording:
    """A KMSAPI that records every call that reaches it, then delegates to the real service."""

    def __init__(self, service: KMSService) -> None:
        self.service = service
        self.calls: list[str] = []

    def status(self) -> StatusReply:
        self.calls.append("status")
        return self.service.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptReply:
        self.calls.append("encrypt")
        return self.service.encrypt(plaintext, uid=uid)

    def decrypt(self, ciphertext: bytes, *, key_id: str, annotations: Mapping[str, bytes], uid: str) -> bytes:
        self.calls.append("decrypt")
        return self.service.decrypt(ciphertext, key_id=key_id, annotations=annotations, uid=uid)

    def v1_encrypt(self, plain: bytes) -> bytes:
        self.calls.append("v1_encrypt")
        return self.service.v1_encrypt(plain)

    def v1_decrypt(self, cipher: bytes) -> bytes:
        self.calls.append("v1_decrypt")
        return self.service.v1_decrypt(cipher)


class Served:
    def __init__(self, tmp: Path, certs: Certs, *, allow: AllowList) -> None:
        self.certs = certs
        self.service = KMSService(LocalKeyBackend.create(path=tmp / "keyring"), health_interval=0.5)
        self.api = Recording(self.service)
        self.metrics = KMSMetrics()
        self.tls_dir = tmp / "live"
        self.tls_dir.mkdir()
        for name, src in (
            ("tls.crt", certs.server.cert),
            ("tls.key", certs.server.key),
            ("ca.crt", certs.ca.path),
        ):
            shutil.copy(src, self.tls_dir / name)
        self.credentials = ReloadingServerCredentials(
            cert=self.tls_dir / "tls.crt", key=self.tls_dir / "tls.key", client_ca=self.tls_dir / "ca.crt"
        )
        self.server = KMSServer(
            self.api,
            listen="tcp://127.0.0.1:0",
            tls=self.credentials,
            allow=allow,
            metrics=self.metrics,
        )
        self.service.start()
        self.server.start()
        self.target = f"127.0.0.1:{self.server.listen_port}"

    def close(self) -> None:
        self.server.stop(None).wait(10)
        self.service.close()


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "pki")


@pytest.fixture
def served(tmp_path: Path, certs: Certs) -> Iterator[Served]:
    s = Served(tmp_path, certs, allow=AllowList([f"dns:{RELAY_ID}"]))
    try:
        yield s
    finally:
        s.close()


def test_allowed_client_round_trip_v2_and_v1(served: Served, certs: Certs) -> None:
    client = upstream_client(served.target, certs)
    try:
        status = client.status(timeout=5)
        seed = os.urandom(32)
        reply = client.encrypt(seed, uid="u1", timeout=5)
        assert reply.key_id == status.key_id
        assert (
            client.decrypt(reply.ciphertext, key_id=reply.key_id, annotations={}, uid="u2", timeout=5) == seed
        )
        cipher = client.v1_encrypt(seed, timeout=5)
        assert client.v1_decrypt(cipher, timeout=5) == seed
    finally:
        client.close()
    assert served.api.calls == ["status", "encrypt", "decrypt", "v1_encrypt", "v1_decrypt"]


def test_ca_signed_client_off_the_allow_list_is_refused_before_any_kms_call(
    served: Served, certs: Certs
) -> None:
    client = upstream_client(served.target, certs, certs.intruder)
    try:
        with pytest.raises(BackendAuthError):
            client.status(timeout=5)
        with pytest.raises(BackendAuthError):
            client.encrypt(os.urandom(32), uid="u", timeout=5)
        with pytest.raises(BackendAuthError):
            client.v1_decrypt(b"\x01" * 40, timeout=5)
    finally:
        client.close()
    assert served.api.calls == []
    assert b'code="PERMISSION_DENIED"' in served.metrics.render()


@pytest.mark.parametrize("who", ["no-certificate", "foreign-ca"])
def test_client_without_a_valid_certificate_never_gets_a_session(
    served: Served, certs: Certs, who: str
) -> None:
    roots = certs.ca.path.read_bytes()
    if who == "no-certificate":
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=certs.foreign.key.read_bytes(),
            certificate_chain=certs.foreign.cert.read_bytes(),
        )
    with grpc.secure_channel(served.target, creds) as channel:
        stub = v2_grpc.KeyManagementServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Status(v2_pb2.StatusRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake failed
    assert served.api.calls == []


def test_plaintext_client_is_refused(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        with pytest.raises(grpc.RpcError):
            v2_grpc.KeyManagementServiceStub(channel).Status(v2_pb2.StatusRequest(), timeout=5)
    assert served.api.calls == []


def test_empty_allow_list_refuses_everyone_and_any_client_is_opt_in(tmp_path: Path, certs: Certs) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nobody = Served(tmp_path / "a", certs, allow=AllowList())
    try:
        client = upstream_client(nobody.target, certs)  # even the relay's own certificate
        try:
            with pytest.raises(BackendAuthError):
                client.status(timeout=5)
        finally:
            client.close()
    finally:
        nobody.close()
    assert nobody.api.calls == []
    anyone = Served(tmp_path / "b", certs, allow=AllowList.any_client())
    try:
        client = upstream_client(anyone.target, certs, certs.intruder)
        try:
            assert client.status(timeout=5).key_id
        finally:
            client.close()
    finally:
        anyone.close()
    assert anyone.api.calls == ["status"]


@pytest.mark.parametrize("kind", ["uri", "email"])
def test_a_dns_entry_refuses_a_uri_or_email_san_with_the_same_text(
    tmp_path: Path, certs: Certs, kind: str
) -> None:
    """Regression: grpc reports SANs without their type, and ``dns:X`` used to admit a URI/email SAN X."""
    if kind == "uri":
        impostor = certs.ca.issue("impostor", uris=(RELAY_ID,))
    else:
        impostor = certs.ca.issue("impostor", emails=(RELAY_ID,))
    s = Served(tmp_path, certs, allow=AllowList([f"dns:{RELAY_ID}"]))
    try:
        client = upstream_client(s.target, certs, impostor)
        try:
            with pytest.raises(BackendAuthError):
                client.status(timeout=5)
        finally:
            client.close()
        assert s.api.calls == []
        allowed = upstream_client(s.target, certs)  # the real relay (DNS SAN) still gets in
        try:
            assert allowed.status(timeout=5).key_id
        finally:
            allowed.close()
    finally:
        s.close()
    assert s.api.calls == ["status"]


def test_certificates_reload_without_restart(served: Served, certs: Certs, tmp_path: Path) -> None:
    """cert-manager moves the service to a new CA: new server cert, new client CA, same process."""
    new_ca = CA(tmp_path / "pki2", "rotated-ca")
    new_server = new_ca.issue("replica2", ips=("127.0.0.1",), server=True)
    new_relay = new_ca.issue("relay2", dns=(RELAY_ID,))

    def new_client() -> GrpcUpstream:
        creds = client_credentials(ca=new_ca.path, cert=new_relay.cert, key=new_relay.key)
        return GrpcUpstream(served.target, credentials=creds)

    before = new_client()
    try:
        with pytest.raises(BackendUnavailable):  # the replica still presents the old CA's certificate
            before.status(timeout=3)
    finally:
        before.close()
    old_client = upstream_client(served.target, certs)
    try:
        old_client.status(timeout=5)  # an established session of the old generation
        # a half-done update (new cert, old key) is refused and the old material stays in use
        shutil.copy(new_server.cert, served.tls_dir / "tls.crt")
        after_half = upstream_client(served.target, certs)
        try:
            assert after_half.status(timeout=5).key_id
        finally:
            after_half.close()
        assert served.credentials.failed_reloads >= 1 and served.credentials.reloads == 0
        shutil.copy(new_server.key, served.tls_dir / "tls.key")
        shutil.copy(new_ca.path, served.tls_dir / "ca.crt")
        after = new_client()
        try:
            assert after.status(timeout=5).key_id
        finally:
            after.close()
    finally:
        old_client.close()
    assert served.credentials.reloads == 1
    stale = upstream_client(served.target, certs)  # a fresh connection with the old CA is now refused
    try:
        with pytest.raises(BackendUnavailable):
            stale.status(timeout=3)
    finally:
        stale.close()


def test_listen_without_tls_is_refused(tmp_path: Path) -> None:
    service = KMSService(LocalKeyBackend.create(path=tmp_path / "k"))
    with pytest.raises(ConfigError, match="requires TLS"):
        KMSServer(service, listen="tcp://127.0.0.1:0")
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        KMSServer(service, listen="http://127.0.0.1:1")
