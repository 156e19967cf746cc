"""TransitKeyBackend against a real OpenBao dev server: contract, rotation, min_decryption_version, TLS."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)

from __future__ import annotations

import base64
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import (
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
)
from kubeshield.keys.base import Refreshable, Rotatable, Wrapped
from kubeshield.keys.transit import TokenAuth, TransitKeyBackend
from tests.contract.backend_contract import BackendContractTests
from tests.support.openbao import (  # noqa: F401
    BaoServer,
    free_port,
    openbao,
    start_dev_server,
    transit_key,
    write_secret_file,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_backend(server: BaoServer, key: str, tmp_path: Path, **kwargs) -> TransitKeyBackend:
    token_file = write_secret_file(tmp_path / f"token-{secrets.token_hex(4)}", server.root_token)
    return TransitKeyBackend(address=server.address, key=key, auth=TokenAuth(token_file), **kwargs)


@pytest.fixture
def new_backend(tmp_path: Path):
    """``new_backend(server, key, **kwargs)``: a backend with a root token file, closed after the test."""
    made: list[TransitKeyBackend] = []

    def factory(server: BaoServer, key: str, **kwargs) -> TransitKeyBackend:
        made.append(make_backend(server, key, tmp_path, **kwargs))
        return made[-1]

    yield factory
    for b in made:
        b.close()


@pytest.fixture
def backend(openbao: BaoServer, transit_key: str, new_backend):
    return new_backend(openbao, transit_key)


class TestTransitContract(BackendContractTests):
    """The shared contract, plus Transit specifics. The key is exportable so the suite can check that
    no key_id leaks key material (a production key should not be exportable)."""

    @pytest.fixture
    def backend(self, openbao: BaoServer, new_backend) -> TransitKeyBackend:
        key = "k-" + secrets.token_hex(6)
        openbao.api("POST", f"transit/keys/{key}", {"type": "aes256-gcm96", "exportable": True})
        backend: TransitKeyBackend = new_backend(openbao, key)
        return backend

    def key_material(self, backend: TransitKeyBackend) -> list[bytes]:  # type: ignore[override]
        server, key = self._server, backend.key_id().split("/", 1)[1].split(":")[0]
        keys = server.api("GET", f"transit/export/encryption-key/{key}")["data"]["keys"]
        return [base64.b64decode(v) for v in keys.values()]

    @pytest.fixture(autouse=True)
    def _remember_server(self, openbao: BaoServer) -> None:
        self._server = openbao

    def test_round_trip_binds_aad_and_reports_current_key_id(self, backend: TransitKeyBackend) -> None:
        seed = secrets.token_bytes(32)
        wrapped = backend.wrap(seed, aad=b"ns/name")
        assert wrapped.key_id == backend.key_id()
        assert wrapped.ciphertext.startswith(b"vault:v1:")
        assert seed not in wrapped.ciphertext
        assert backend.unwrap(wrapped, aad=b"ns/name") == seed
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(wrapped, aad=b"ns/other")
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(wrapped)

    def test_key_id_names_mount_key_version_and_its_creation_time(
        self, backend: TransitKeyBackend, openbao: BaoServer
    ) -> None:
        match = re.fullmatch(r"transit:transit/(k-[0-9a-f]{12}):v1-([0-9]+)", backend.key_id())
        assert match is not None
        created = openbao.api("GET", f"transit/keys/{match.group(1)}")["data"]["keys"]["1"]
        assert int(match.group(2)) == created

    def test_same_plaintext_gives_different_ciphertexts(self, backend: TransitKeyBackend) -> None:
        seed = secrets.token_bytes(32)
        assert backend.wrap(seed).ciphertext != backend.wrap(seed).ciphertext

    @pytest.mark.parametrize("position", [12, 20, -3])
    def test_tampered_ciphertext_is_invalid(self, backend: TransitKeyBackend, position: int) -> None:
        wrapped = backend.wrap(secrets.token_bytes(32))
        raw = bytearray(wrapped.ciphertext)
        raw[position] = ord("A") if raw[position] != ord("A") else ord("B")
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(bytes(raw), wrapped.key_id))

    @pytest.mark.parametrize("cut", [1, 8, 30])
    def test_truncated_ciphertext_is_invalid(self, backend: TransitKeyBackend, cut: int) -> None:
        wrapped = backend.wrap(secrets.token_bytes(32))
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(wrapped.ciphertext[:-cut], wrapped.key_id))

    @pytest.mark.parametrize(
        "blob", [b"", b"garbage", b"vault:v0:AAAA", b"vault:v1:", b"vault:v1:AA AA", b"\xff" * 40]
    )
    def test_malformed_ciphertext_is_invalid(self, backend: TransitKeyBackend, blob: bytes) -> None:
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(blob, backend.key_id()))

    def test_key_id_of_another_key_is_not_found(self, backend: TransitKeyBackend) -> None:
        wrapped = backend.wrap(secrets.token_bytes(32))
        for other in (
            "transit:transit/other:v1",
            "memory:v1:abc",
            backend.key_id().replace(":v1-", ":v01-"),
            backend.key_id() + "x",
            backend.key_id().replace(":v1-", ":v1--"),
            "transit:other/k:v1",
        ):
            with pytest.raises(KeyNotFound):
                backend.unwrap(Wrapped(wrapped.ciphertext, other))

    def test_key_id_and_ciphertext_version_must_agree(self, backend: TransitKeyBackend) -> None:
        wrapped = backend.wrap(secrets.token_bytes(32))
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(wrapped.ciphertext, backend.key_id().replace(":v1", ":v2")))

    def test_empty_key_id_means_the_ciphertext_names_the_version(self, backend: TransitKeyBackend) -> None:
        seed = secrets.token_bytes(32)
        wrapped = backend.wrap(seed, aad=b"a")
        assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=b"a") == seed

    def test_ciphertext_of_another_transit_key_is_invalid(
        self,
        backend: TransitKeyBackend,
        openbao: BaoServer,
        new_backend,
    ) -> None:
        other_key = "k-" + secrets.token_hex(6)
        openbao.create_key(other_key)
        other = new_backend(openbao, other_key)
        wrapped = other.wrap(secrets.token_bytes(32))
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(wrapped.ciphertext, ""))

    def test_ciphertext_made_without_our_domain_is_invalid(
        self,
        backend: TransitKeyBackend,
        openbao: BaoServer,
    ) -> None:
        """Another Transit client with the same key cannot hand us its ciphertexts as ours."""
        key = backend.key_id().split("/", 1)[1].split(":")[0]
        reply = openbao.api(
            "POST", f"transit/encrypt/{key}", {"plaintext": base64.b64encode(b"x" * 32).decode()}
        )
        foreign = reply["data"]["ciphertext"].encode()
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(foreign, backend.key_id()))

    def test_bad_input_is_refused_clearly(self, backend: TransitKeyBackend) -> None:
        with pytest.raises(InvalidRequest, match="empty"):
            backend.wrap(b"")
        with pytest.raises(TypeError, match="plaintext"):
            backend.wrap("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="aad"):
            backend.wrap(b"x", aad="text")  # type: ignore[arg-type]

    def test_health_is_a_real_round_trip(self, backend: TransitKeyBackend) -> None:
        health = backend.check_health()
        assert health.ok, health.detail
        assert health.key_id == backend.key_id()

    def test_optional_abilities_are_declared(self, backend: TransitKeyBackend) -> None:
        assert isinstance(backend, Rotatable)
        assert isinstance(backend, Refreshable)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(plaintext=st.binary(min_size=1, max_size=512), aad=st.binary(max_size=256))
    def test_round_trip_property(self, backend: TransitKeyBackend, plaintext: bytes, aad: bytes) -> None:
        wrapped = backend.wrap(plaintext, aad=aad)
        assert len(wrapped.ciphertext) <= 1024
        assert backend.unwrap(wrapped, aad=aad) == plaintext


class TestRotation:
    def test_rotation_in_the_key_service_is_picked_up_by_refresh(
        self,
        openbao: BaoServer,
        transit_key: str,
        new_backend,
    ) -> None:
        clock = _Clock()
        backend = new_backend(openbao, transit_key, clock=clock, refresh_interval=30)
        old_id = backend.key_id()
        old = backend.wrap(b"s" * 32, aad=b"x")
        openbao.api("POST", f"transit/keys/{transit_key}/rotate")
        assert backend.refresh() is False  # cached: the interval has not passed
        assert backend.key_id() == old_id
        clock.now += 31
        assert backend.refresh() is True
        new_id = backend.key_id()
        # transit:<mount>/<key>:v<N>-<creation time of version N>: v2 has its own creation time
        prefix = old_id.rsplit(":v1-", 1)[0]
        assert old_id.startswith(prefix + ":v1-") and new_id.startswith(prefix + ":v2-"), (old_id, new_id)
        new = backend.wrap(b"t" * 32, aad=b"x")
        assert new.key_id == new_id and new.ciphertext.startswith(b"vault:v2:")
        assert backend.unwrap(old, aad=b"x") == b"s" * 32
        assert backend.refresh(force=True) is False

    def test_rotate_creates_a_new_version_and_never_reuses_an_id(
        self,
        backend: TransitKeyBackend,
        openbao: BaoServer,
        transit_key: str,
    ) -> None:
        seen = {backend.key_id()}
        wrapped = [backend.wrap(bytes([i]) * 32) for i in range(2)]
        for _ in range(3):
            new_id = backend.rotate()
            assert new_id not in seen
            seen.add(new_id)
            wrapped.append(backend.wrap(bytes([len(wrapped)]) * 32))
        info = openbao.api("GET", f"transit/keys/{transit_key}")["data"]
        latest = info["latest_version"]
        assert backend.key_id().endswith(f":v{latest}-{info['keys'][str(latest)]}")
        for i, w in enumerate(wrapped):
            assert backend.unwrap(w) == bytes([i]) * 32

    def test_stale_replica_keeps_wrapping_with_the_version_it_reports(
        self,
        openbao: BaoServer,
        transit_key: str,
        new_backend,
    ) -> None:
        stale = new_backend(openbao, transit_key, clock=_Clock(), refresh_interval=3600)
        openbao.api("POST", f"transit/keys/{transit_key}/rotate")
        wrapped = stale.wrap(b"k" * 32)
        assert wrapped.key_id == stale.key_id() and wrapped.ciphertext.startswith(b"vault:v1:")

    def test_a_key_recreated_under_the_same_name_gets_new_key_ids(
        self,
        openbao: BaoServer,
        transit_key: str,
        new_backend,
    ) -> None:
        """Issue 15 item 5: v1 of a re-created key must not reuse the deleted key's v1 key_id."""
        before = new_backend(openbao, transit_key)
        old = before.wrap(b"o" * 32, aad=b"a")
        old_ids = {before.key_id(), before.rotate()}
        openbao.api("POST", f"transit/keys/{transit_key}/config", {"deletion_allowed": True})
        openbao.api("DELETE", f"transit/keys/{transit_key}")
        time.sleep(1.1)  # Transit records creation times in whole seconds (see the module docstring)
        openbao.create_key(transit_key)

        restarted = new_backend(openbao, transit_key)  # a plugin restarted after the re-creation
        assert restarted.key_id() not in old_ids
        assert re.search(r":v1-[0-9]+$", restarted.key_id())
        fresh = restarted.wrap(b"n" * 32, aad=b"a")
        assert restarted.unwrap(fresh, aad=b"a") == b"n" * 32
        with pytest.raises(KeyNotFound, match="deleted"):
            restarted.unwrap(old, aad=b"a")

        assert before.refresh(force=True) is True  # a running plugin moves to the new key's ids
        assert before.key_id() == restarted.key_id()

    def test_key_ids_of_the_previous_release_still_decrypt(
        self, backend: TransitKeyBackend, transit_key: str
    ) -> None:
        """Stored data of the release before creation times were added: ``transit:<mount>/<key>:vN``."""
        seed = secrets.token_bytes(32)
        wrapped = backend.wrap(seed, aad=b"/registry/secrets/ns/s")
        legacy = Wrapped(wrapped.ciphertext, f"transit:transit/{transit_key}:v1")
        assert backend.unwrap(legacy, aad=b"/registry/secrets/ns/s") == seed
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(wrapped.ciphertext, f"transit:transit/{transit_key}:v2"))
        backend.rotate()
        assert backend.unwrap(legacy, aad=b"/registry/secrets/ns/s") == seed


class TestMinDecryptionVersion:
    def test_ciphertext_below_min_decryption_version_is_key_not_found(
        self,
        backend: TransitKeyBackend,
        openbao: BaoServer,
        transit_key: str,
    ) -> None:
        old = backend.wrap(b"o" * 32)
        backend.rotate()
        current = backend.wrap(b"n" * 32)
        openbao.api("POST", f"transit/keys/{transit_key}/config", {"min_decryption_version": 2})
        backend.refresh(force=True)
        with pytest.raises(KeyNotFound, match="min_decryption_version"):
            backend.unwrap(old)
        assert backend.unwrap(current) == b"n" * 32

    def test_a_raise_since_the_last_refresh_is_reported_the_same_way(
        self,
        openbao: BaoServer,
        transit_key: str,
        new_backend,
    ) -> None:
        clock = _Clock()
        backend = new_backend(openbao, transit_key, clock=clock, refresh_interval=3600)
        old = backend.wrap(b"o" * 32)
        openbao.api("POST", f"transit/keys/{transit_key}/rotate")
        openbao.api("POST", f"transit/keys/{transit_key}/config", {"min_decryption_version": 2})
        clock.now += 2  # past the re-check guard, far from the refresh interval
        with pytest.raises(KeyNotFound, match="min_decryption_version"):
            backend.unwrap(old)

    def test_lowering_it_again_restores_decryption(
        self,
        backend: TransitKeyBackend,
        openbao: BaoServer,
        transit_key: str,
    ) -> None:
        old = backend.wrap(b"o" * 32)
        backend.rotate()
        openbao.api("POST", f"transit/keys/{transit_key}/config", {"min_decryption_version": 2})
        backend.refresh(force=True)
        with pytest.raises(KeyNotFound):
            backend.unwrap(old)
        openbao.api("POST", f"transit/keys/{transit_key}/config", {"min_decryption_version": 1})
        backend.refresh(force=True)
        assert backend.unwrap(old) == b"o" * 32


class TestConfigurationAndTransport:
    def test_missing_key_is_not_found_at_start(self, openbao: BaoServer, new_backend) -> None:
        with pytest.raises(KeyNotFound):
            new_backend(openbao, "does-not-exist-" + secrets.token_hex(3))

    def test_missing_mount_is_not_found(self, openbao: BaoServer, transit_key: str, new_backend) -> None:
        with pytest.raises(KeyNotFound):
            new_backend(openbao, transit_key, mount="nope")

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"address": "127.0.0.1:8200"}, "address"),
            ({"mount": "../sys"}, "mount"),
            ({"key": "a/b"}, "key"),
            ({"timeout": 0}, "timeout"),
            ({"ca_file": "/nonexistent/ca.pem", "address": "https://127.0.0.1:1"}, "caFile"),
        ],
    )
    def test_bad_settings_name_the_field(self, tmp_path: Path, kwargs: dict[str, Any], field: str) -> None:
        settings_: dict[str, Any] = {
            "address": "http://127.0.0.1:1",
            "key": "k",
            "auth": TokenAuth(str(tmp_path / "t")),
        }
        settings_.update(kwargs)
        with pytest.raises(ConfigError, match=field):
            TransitKeyBackend(**settings_)

    def test_missing_token_file_is_a_config_error(
        self, openbao: BaoServer, transit_key: str, tmp_path: Path
    ) -> None:
        with pytest.raises(ConfigError, match="token file"):
            TransitKeyBackend(
                address=openbao.address, key=transit_key, auth=TokenAuth(str(tmp_path / "none"))
            )

    def test_nothing_listening_is_unavailable(self, tmp_path: Path) -> None:
        token = write_secret_file(tmp_path / "t", "s.whatever")
        with pytest.raises(BackendUnavailable):
            TransitKeyBackend(address=f"http://127.0.0.1:{free_port()}", key="k", auth=TokenAuth(token))

    def test_a_server_that_never_answers_is_a_timeout(self, tmp_path: Path) -> None:
        token = write_secret_file(tmp_path / "t", "s.whatever")
        with socket.socket() as silent:  # accepts connections (backlog) but never replies
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            with pytest.raises(BackendTimeout):
                TransitKeyBackend(
                    address=f"http://127.0.0.1:{port}", key="k", auth=TokenAuth(token), timeout=0.3
                )

    def test_server_stopped_after_start_is_unavailable_and_unhealthy(
        self, new_backend, tmp_path: Path
    ) -> None:
        server = start_dev_server(tmp_path / "bao")
        try:
            server.enable_transit()
            server.create_key("k")
            backend = new_backend(server, "k")
            wrapped = backend.wrap(b"z" * 32)
        finally:
            server.stop()
        with pytest.raises(BackendUnavailable):
            backend.wrap(b"z" * 32)
        with pytest.raises(BackendUnavailable):
            backend.unwrap(wrapped)
        health = backend.check_health()
        assert not health.ok and "BackendUnavailable" in health.detail

    def test_tls_with_a_ca_file(self, new_backend, tmp_path: Path) -> None:
        server = start_dev_server(tmp_path / "bao", tls=True)
        try:
            server.enable_transit()
            server.create_key("k")
            backend = new_backend(server, "k", ca_file=server.ca_file)
            assert server.address.startswith("https://")
            assert backend.unwrap(backend.wrap(b"q" * 32)) == b"q" * 32
            with pytest.raises(BackendUnavailable):  # the dev CA is not in the system trust store
                new_backend(server, "k")
        finally:
            server.stop()
