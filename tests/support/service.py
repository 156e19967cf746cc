"""Service mode helpers: TLS material, in-process mTLS replicas, and real ``kubeshield`` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v1beta1 import api_pb2_grpc as v1_grpc
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.api.v2 import api_pb2_grpc as v2_grpc
from kubeshield.kms.client import error_from_rpc
from kubeshield.kms.relay_upstream import channel_options, encrypt_reply, status_reply
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import EncryptReply, KMSService, StatusReply
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials, client_credentials
from tests.support.etcd import free_port
from tests.support.tls import CA, Issued

_T = TypeVar("_T")

__all__ = [
    "KUBESHIELD",
    "RELAY_ALLOW",
    "Certs",
    "GrpcUpstream",
    "Proc",
    "Replica",
    "make_certs",
    "start_replica",
    "upstream_client",
    "wait_until",
]

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")
RELAY_ID = "relay.kubeshield.test"
RELAY_ALLOW = f"dns:{RELAY_ID}"  # the allow-list entry that names the relay's DNS SAN


@dataclass(frozen=True)
class Certs:
    ca: CA
    server: Issued
    relay: Issued  # on the allow-list
    intruder: Issued  # signed by the CA, not on the allow-list
    foreign: Issued  # signed by another CA
    foreign_ca: CA


def make_certs(directory: Path) -> Certs:
    ca = CA(directory / "ca")
    foreign_ca = CA(directory / "foreign", "foreign-ca")
    return Certs(
        ca=ca,
        server=ca.issue("replica", dns=("localhost",), ips=("127.0.0.1",), server=True),
        relay=ca.issue("relay", dns=(RELAY_ID,)),
        intruder=ca.issue("intruder", dns=("intruder.kubeshield.test",)),
        foreign=foreign_ca.issue("relay-foreign", dns=(RELAY_ID,)),
        foreign_ca=foreign_ca,
    )


def upstream_client(target: str, certs: Certs, issued: Issued | None = None) -> GrpcUpstream:
    """An mTLS client to one replica (``GrpcUpstream`` doubles as a plain client)."""
    who = issued or certs.relay
    return GrpcUpstream(target, credentials=client_credentials(ca=certs.ca.path, cert=who.cert, key=who.key))


@dataclass
class Replica:
    """An in-process service replica on 127.0.0.1 with mTLS."""

    service: KMSService
    server: KMSServer
    credentials: ReloadingServerCredentials
    target: str = ""

    def stop(self) -> None:
        self.server.stop(None).wait(10)
        self.service.close()


def start_replica(
    keyring: Path, certs: Certs, *, allow: tuple[str, ...] = (RELAY_ALLOW,), server: Issued | None = None
) -> Replica:
    backend = LocalKeyBackend(path=keyring)
    service = KMSService(backend, refresh_interval=0.1, health_interval=0.5)
    issued = server or certs.server
    credentials = ReloadingServerCredentials(cert=issued.cert, key=issued.key, client_ca=certs.ca.path)
    kms = KMSServer(service, listen="tcp://127.0.0.1:0", tls=credentials, allow=AllowList(allow))
    service.start()
    kms.start()
    return Replica(service, kms, credentials, f"127.0.0.1:{kms.listen_port}")


def wait_until(predicate: Callable[[], bool], *, bound: float = 30.0, step: float = 0.05) -> float:
    """Poll ``predicate`` (bounded); return the seconds it took. Raises AssertionError on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < bound:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"condition not met within {bound}s")


@dataclass
class Proc:
    """A real ``kubeshield`` subprocess; stderr goes to a log file."""

    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
        env.update(self.extra_env)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                [KUBESHIELD, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def replica_args(
    *, keyring: Path, port: int, certs: Certs, passphrase_file: Path, etcd: str | None, health_port: int
) -> list[str]:
    args = [
        "kms", "serve", "--keyring", str(keyring), "--passphrase-file", str(passphrase_file),
        "--listen", f"tcp://127.0.0.1:{port}", "--tls-cert", str(certs.server.cert),
        "--tls-key", str(certs.server.key), "--client-ca", str(certs.ca.path), "--allow", RELAY_ALLOW,
        "--health-addr", f"127.0.0.1:{health_port}",
    ]  # fmt: skip
    if etcd is not None:
        args += ["--etcd-endpoints", etcd, "--sync-interval", "0.5"]
    return args


__all__ += ["free_port", "replica_args"]


class GrpcUpstream:
    """A plain synchronous mTLS client to one replica; replies checked like the relay checks them."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials,
        server_name: str | None = None,
        max_reconnect_backoff_ms: int = 1000,
    ) -> None:
        self.name = target
        options = channel_options(server_name=server_name, max_reconnect_backoff_ms=max_reconnect_backoff_ms)
        self._channel = grpc.secure_channel(target, credentials, options=options)
        self._v2 = v2_grpc.KeyManagementServiceStub(self._channel)
        self._v1 = v1_grpc.KeyManagementServiceStub(self._channel)

    def _call(self, operation: str, method: Callable[..., _T], request: Any, timeout: float) -> _T:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, operation=operation) from None

    def status(self, *, timeout: float) -> StatusReply:
        return status_reply(self._call("Status", self._v2.Status, v2_pb2.StatusRequest(), timeout))

    def encrypt(self, plaintext: bytes, *, uid: str, timeout: float) -> EncryptReply:
        request = v2_pb2.EncryptRequest(plaintext=plaintext, uid=uid)
        return encrypt_reply(self._call("Encrypt", self._v2.Encrypt, request, timeout))

    def decrypt(
        self, ciphertext: bytes, *, key_id: str, annotations: Mapping[str, bytes], uid: str, timeout: float
    ) -> bytes:
        request = v2_pb2.DecryptRequest(
            ciphertext=ciphertext, key_id=key_id, annotations=dict(annotations), uid=uid
        )
        plaintext: bytes = self._call("Decrypt", self._v2.Decrypt, request, timeout).plaintext
        return plaintext

    def v1_encrypt(self, plain: bytes, *, timeout: float) -> bytes:
        request = v1_pb2.EncryptRequest(version="v1beta1", plain=plain)
        cipher: bytes = self._call("Encrypt", self._v1.Encrypt, request, timeout).cipher
        return cipher

    def v1_decrypt(self, cipher: bytes, *, timeout: float) -> bytes:
        request = v1_pb2.DecryptRequest(version="v1beta1", cipher=cipher)
        plain: bytes = self._call("Decrypt", self._v1.Decrypt, request, timeout).plain
        return plain

    def close(self) -> None:
        self._channel.close()
