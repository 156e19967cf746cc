"""The plugin driven by the apiserver emulator: prime, store, rotate the keyring while serving, read back."""

from __future__ import annotations

import os

import pytest

from kubeshield.errors import BackendUnavailable, ContractViolation
from kubeshield.kms.client import KMSv1Client, KMSv2Client
from tests.integration.kms.conftest import Plugin, run_cli, wait_for_key_change
from tests.support.apiserver import EmulatedAPIServer, NoTransformerError, StateExpiredError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_prime_store_rotate_and_read_back(plugin: Plugin, client: KMSv2Client) -> None:
    api = EmulatedAPIServer(client)
    with pytest.raises(NoTransformerError):
        api.store("/registry/secrets/ns/early", b"x")
    first = api.probe()
    assert api.encrypt_calls == 1
    secrets = {f"/registry/secrets/ns/s{i}": os.urandom(100) for i in range(5)}
    for key, value in secrets.items():
        stored = api.store(key, value)
        assert stored.startswith(b"k8s:enc:kms:v2:kubeshield:")
        assert value not in stored
    api.probe()  # same key_id: no new Encrypt
    assert api.encrypt_calls == 1

    result = run_cli("keys", "rotate", "--keyring", str(plugin.keyring))
    assert result.returncode == 0, result.stderr
    new_key_id = wait_for_key_change(client, first.key_id)
    assert new_key_id not in api.key_ids_seen  # never used before
    second = api.probe()
    assert second.key_id == new_key_id and api.encrypt_calls == 2
    api.store("/registry/secrets/ns/after", b"after-rotation")

    api.restart()  # a fresh apiserver: empty caches, reads call Decrypt with old key_ids
    api.probe()
    for key, value in secrets.items():
        plaintext, stale = api.read(key)
        assert plaintext == value and stale
    assert api.read("/registry/secrets/ns/after") == (b"after-rotation", False)
    assert api.decrypt_calls == 2  # one per distinct encrypted seed, then cached


def test_value_moved_to_another_key_fails(plugin: Plugin, client: KMSv2Client) -> None:
    api = EmulatedAPIServer(client)
    api.probe()
    api.store("/registry/secrets/a/b", b"v")
    api.etcd["/registry/secrets/a/c"] = api.etcd["/registry/secrets/a/b"]
    with pytest.raises(Exception, match="invalid ciphertext"):
        api.read("/registry/secrets/a/c")


def test_write_state_expires_without_probes(plugin: Plugin, client: KMSv2Client) -> None:
    clock = FakeClock()
    api = EmulatedAPIServer(client, clock=clock)
    api.probe()
    clock.now += 179
    api.store("/registry/secrets/a/b", b"v")
    clock.now += 2
    with pytest.raises(StateExpiredError):
        api.store("/registry/secrets/a/b", b"v")
    api.probe()
    api.store("/registry/secrets/a/b", b"v")


def test_unhealthy_backend_makes_status_a_grpc_error(plugin: Plugin, client: KMSv2Client) -> None:
    api = EmulatedAPIServer(client)
    api.probe()
    plugin.backend.close()  # keys gone: the deep check fails
    plugin.service.check_health_now()
    with pytest.raises(BackendUnavailable):
        client.status()


def test_v1_api(plugin: Plugin) -> None:
    with KMSv1Client(plugin.v1_socket, timeout=5) as v1:
        version = v1.version()
        assert (version.version, version.runtime_name) == ("v1beta1", "kubeshield")
        dek = os.urandom(32)
        assert v1.decrypt(v1.encrypt(dek)) == dek
        assert v1.decrypt(v1.encrypt(b"ping")) == b"ping"


def test_v1_blob_is_refused_by_v2(plugin: Plugin, client: KMSv2Client) -> None:
    with KMSv1Client(plugin.v1_socket, timeout=5) as v1:
        blob = v1.encrypt(b"k" * 32)
    with pytest.raises(Exception, match="invalid ciphertext"):
        client.decrypt(blob, key_id=client.status().key_id)


def test_socket_mode_is_0600(plugin: Plugin) -> None:
    assert os.stat(plugin.socket).st_mode & 0o777 == 0o600


def test_client_version_is_constant(client: KMSv2Client) -> None:
    assert client.status().version == "v2"
    client._version = "v2beta1"  # as if the first Status had said v2beta1
    with pytest.raises(ContractViolation, match="changed"):
        client.status()
