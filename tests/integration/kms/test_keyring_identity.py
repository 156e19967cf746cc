"""Which keys a plugin serves: Status trailing metadata, `kms status`, and /metrics (issue 16 item 1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pyrage
import pytest

from kubeshield.config.settings import KeysSettings, TransitAuthSettings, TransitSettings
from kubeshield.errors import BackendUnavailable
from kubeshield.keys.identity import KeyringIdentity, identity_hash, identity_source
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.api.v2 import api_pb2_grpc as v2_grpc
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import KMSService, StatusReply
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials, client_credentials
from tests.integration.kms.conftest import run_cli
from tests.support.service import RELAY_ID, make_certs
from tests.support.tls import Issued


@dataclass
class Served:
    socket: str
    keyring: Path
    service: KMSService
    metrics: KMSMetrics


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    keyring = tmp_path / "keyring"
    backend = LocalKeyBackend.create(path=keyring)
    metrics = KMSMetrics()
    source = identity_source(KeysSettings(), backend)
    metrics.track_keyring(source)
    service = KMSService(backend, metrics=metrics, refresh_interval=0.1, health_interval=0.5)
    server = KMSServer(service, socket=str(tmp_path / "kms.sock"), metrics=metrics, keyring=source)
    service.start()
    server.start()
    try:
        yield Served(str(tmp_path / "kms.sock"), keyring, service, metrics)
    finally:
        server.stop(None).wait(10)
        service.close()


def _wait(predicate: object, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _info_line(metrics: KMSMetrics) -> str:
    lines = [
        line for line in metrics.render().decode().splitlines() if line.startswith("kubeshield_keyring_info{")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_status_names_the_keyring_and_follows_rotation(served: Served) -> None:
    info = KeyringFile(served.keyring).read_info()
    with KMSv2Client(served.socket, timeout=5) as client:
        client.status()
        assert client.keyring_id == info.keyring_id
        assert client.versions_digest == info.versions_digest
        assert client.status_metadata == {
            "kubeshield-keyring-id": info.keyring_id,
            "kubeshield-keyring-versions": info.versions_digest,
        }
        line = _info_line(served.metrics)
        assert f'keyring_id_hash="{identity_hash(info.keyring_id)}"' in line
        assert f'versions_digest="{info.versions_digest}"' in line and 'backend="local"' in line
        assert info.keyring_id not in line  # hashed, like key_id_hash
        assert run_cli("keys", "rotate", "--keyring", str(served.keyring)).returncode == 0
        rotated = KeyringFile(served.keyring).read_info()

        def moved() -> bool:
            client.status()
            return client.versions_digest == rotated.versions_digest

        _wait(moved)
        assert client.keyring_id == info.keyring_id  # same keyring, new versions
        assert f'versions_digest="{rotated.versions_digest}"' in _info_line(served.metrics)


def test_kms_status_prints_the_keyring_and_checks_expectations(served: Served) -> None:
    info = KeyringFile(served.keyring).read_info()
    result = run_cli("kms", "status", "--socket", served.socket)
    assert result.returncode == 0, result.stderr
    assert (
        f"keyring:  {info.keyring_id}" in result.stdout
        and f"versions: {info.versions_digest}" in result.stdout
    )
    ok = run_cli(
        "kms", "status", "--socket", served.socket, "--expect-keyring-id", info.keyring_id,
        "--expect-versions-digest", info.versions_digest,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    other = "00000000-0000-4000-8000-000000000000"
    bad = run_cli("kms", "status", "--socket", served.socket, "--expect-keyring-id", other)
    assert bad.returncode == 1
    assert f"mismatch: --expect-keyring-id {other} but the plugin serves {info.keyring_id}" in bad.stderr


def test_a_keyring_restored_over_the_served_one_shows_its_own_id(served: Served, tmp_path: Path) -> None:
    """Two nodes that each ran `keys init` serve different keyrings, and Status says so at once."""
    other = tmp_path / "other"
    assert run_cli("keys", "init", "--keyring", str(other)).returncode == 0
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "id").write_text(f"{identity}\n")
    backup = tmp_path / "other.age"
    made = run_cli("keys", "backup", "--keyring", str(other), "--out", str(backup),
                   "--recipient", str(identity.to_public()))  # fmt: skip
    assert made.returncode == 0, made.stderr
    restored = run_cli(
        "keys", "restore", "--in", str(backup), "--identity-file", str(tmp_path / "id"),
        "--keyring", str(served.keyring), "--force", "--allow-drop", "1",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    new_id = KeyringFile(other).read_info().keyring_id
    with KMSv2Client(served.socket, timeout=5) as client:

        def switched() -> bool:
            client.status()
            return client.keyring_id == new_id

        _wait(switched)


class _Unhealthy:
    """A KMS service whose Status fails the way an unhealthy backend does (only Status is called)."""

    def status(self) -> StatusReply:
        raise BackendUnavailable("backend down for the test")


def test_an_unhealthy_status_still_names_the_keyring(tmp_path: Path) -> None:
    identity = KeyringIdentity("local", "6f1c2a3b-0000-4000-8000-000000000001", "0123456789abcdef")
    server = KMSServer(_Unhealthy(), socket=str(tmp_path / "s.sock"), keyring=lambda: identity)  # type: ignore[arg-type]
    server.start()
    try:
        with KMSv2Client(str(tmp_path / "s.sock"), timeout=5) as client:
            with pytest.raises(BackendUnavailable):
                client.status()
            assert client.keyring_id == identity.keyring_id
        result = run_cli("kms", "status", "--socket", str(tmp_path / "s.sock"))
        assert result.returncode == 1
        assert "unhealthy" in result.stderr and f"keyring:  {identity.keyring_id}" in result.stderr
    finally:
        server.stop(None).wait(10)


def test_a_remote_backend_is_named_by_its_key_identity(tmp_path: Path) -> None:
    keys = KeysSettings(
        backend="transit",
        transit=TransitSettings(
            address="https://openbao.example:8200",
            auth=TransitAuthSettings(method="token", token_file=Path("/t")),
        ),
    )
    backend = InMemoryBackend()
    backend.rotate()
    source = identity_source(keys, backend)
    service = KMSService(backend)
    server = KMSServer(service, socket=str(tmp_path / "s.sock"), keyring=source)
    service.start()
    server.start()
    try:
        with KMSv2Client(str(tmp_path / "s.sock"), timeout=5) as client:
            client.status()
            assert client.keyring_id == "https://openbao.example:8200/v1/transit/keys/kubeshield"
            assert client.versions_digest is None
    finally:
        server.stop(None).wait(10)
        service.close()


def test_a_refused_tls_peer_learns_nothing_an_allowed_one_gets_the_keyring(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    backend = LocalKeyBackend.create(path=tmp_path / "keyring")
    service = KMSService(backend)
    credentials = ReloadingServerCredentials(
        cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.path
    )
    server = KMSServer(
        service,
        listen="tcp://127.0.0.1:0",
        tls=credentials,
        allow=AllowList((f"dns:{RELAY_ID}",)),
        keyring=identity_source(KeysSettings(), backend),
    )
    service.start()
    server.start()

    def status_as(who: Issued) -> tuple[grpc.StatusCode, dict[str, str]]:
        creds = client_credentials(ca=certs.ca.path, cert=who.cert, key=who.key)
        target = f"127.0.0.1:{server.listen_port}"
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(target, creds, options=options) as channel:
            stub = v2_grpc.KeyManagementServiceStub(channel)
            try:
                _, call = stub.Status.with_call(v2_pb2.StatusRequest(), timeout=10)
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call)
                return exc.code(), {str(k): str(v) for k, v in exc.trailing_metadata() or ()}
            return grpc.StatusCode.OK, {str(k): str(v) for k, v in call.trailing_metadata() or ()}

    try:
        code, metadata = status_as(certs.intruder)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert not [k for k in metadata if k.startswith("kubeshield-")]
        code, metadata = status_as(certs.relay)
        assert code is grpc.StatusCode.OK
        assert metadata["kubeshield-keyring-id"] == backend.keyring_id()
    finally:
        server.stop(None).wait(10)
        service.close()
