"""KMSService on the InMemoryBackend double: replies, limits, domain separation, health and refresh."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import pytest

from kubeshield.errors import (
    BackendUnavailable,
    ContractViolation,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
)
from kubeshield.keys.base import Health, Wrapped
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kms.metrics import KMSMetrics, key_id_hash
from kubeshield.kms.service import AAD_V1, AAD_V2, MAX_PLAINTEXT, KMSService


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


@pytest.fixture
def service(backend: InMemoryBackend) -> KMSService:
    return KMSService(backend)


def test_status_reports_v2_ok_and_the_backend_key_id(service: KMSService, backend: InMemoryBackend) -> None:
    reply = service.status()
    assert (reply.version, reply.healthz, reply.key_id) == ("v2", "ok", backend.key_id())


def test_encrypt_decrypt_round_trip_with_status_key_id(service: KMSService) -> None:
    seed = os.urandom(32)
    reply = service.encrypt(seed, uid="u1")
    assert reply.key_id == service.status().key_id
    assert 1 <= len(reply.ciphertext) <= 1024
    assert seed not in reply.ciphertext
    assert (
        service.decrypt(reply.ciphertext, key_id=reply.key_id, annotations=reply.annotations, uid="u2")
        == seed
    )


def test_decrypt_after_rotation_uses_the_old_key_id(service: KMSService, backend: InMemoryBackend) -> None:
    seed = os.urandom(32)
    old = service.encrypt(seed, uid="u")
    backend.rotate()
    assert service.status().key_id != old.key_id
    assert service.decrypt(old.ciphertext, key_id=old.key_id, annotations={}, uid="u") == seed


def test_v1_round_trip_accepts_ping(service: KMSService) -> None:
    assert service.v1_decrypt(service.v1_encrypt(b"ping")) == b"ping"


def test_v1_and_v2_are_domain_separated(service: KMSService) -> None:
    v2 = service.encrypt(b"k" * 32, uid="u")
    with pytest.raises(InvalidCiphertext):
        service.v1_decrypt(v2.ciphertext)
    v1 = service.v1_encrypt(b"k" * 32)
    with pytest.raises(InvalidCiphertext):
        service.decrypt(v1, key_id=v2.key_id, annotations={}, uid="u")
    assert AAD_V1 != AAD_V2


@pytest.mark.parametrize("plaintext", [b"", b"x" * (MAX_PLAINTEXT + 1)])
def test_encrypt_refuses_empty_or_oversized(service: KMSService, plaintext: bytes) -> None:
    with pytest.raises(InvalidRequest):
        service.encrypt(plaintext, uid="u")
    with pytest.raises(InvalidRequest):
        service.v1_encrypt(plaintext)


@pytest.mark.parametrize(
    ("ciphertext", "key_id", "annotations"),
    [
        (b"", "k", {}),
        (b"x" * 1025, "k", {}),
        (b"x" * 40, "", {}),
        (b"x" * 40, "k" * 1025, {}),
        (b"x" * 40, "k", {"not-an-fqdn": b"v"}),
    ],
)
def test_decrypt_refuses_bad_requests(
    service: KMSService, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]
) -> None:
    with pytest.raises(InvalidRequest):
        service.decrypt(ciphertext, key_id=key_id, annotations=annotations, uid="u")


def test_decrypt_tampered_is_opaque(service: KMSService) -> None:
    reply = service.encrypt(b"s" * 32, uid="u")
    tampered = bytes([reply.ciphertext[0] ^ 1]) + reply.ciphertext[1:]
    with pytest.raises(InvalidCiphertext) as info:
        service.decrypt(tampered, key_id=reply.key_id, annotations={}, uid="u")
    assert str(info.value) == "invalid ciphertext"


def test_decrypt_unknown_key_id(service: KMSService) -> None:
    reply = service.encrypt(b"s" * 32, uid="u")
    with pytest.raises(KeyNotFound):
        service.decrypt(reply.ciphertext, key_id="memory:v9:unknown", annotations={}, uid="u")


def test_status_fails_with_grpc_error_when_health_fails(backend: InMemoryBackend) -> None:
    backend.fail_health = BackendUnavailable("down")
    service = KMSService(backend)
    with pytest.raises(BackendUnavailable):
        service.status()
    backend.fail_health = None
    service.check_health_now()
    assert service.status().healthz == "ok"


def test_status_uses_the_cached_health(backend: InMemoryBackend) -> None:
    service = KMSService(backend)
    service.check_health_now()
    backend.fail_health = BackendUnavailable("down")  # not seen until the next deep check
    assert service.status().healthz == "ok"
    service.check_health_now()
    with pytest.raises(BackendUnavailable):
        service.status()


def test_stale_health_fails_status(backend: InMemoryBackend) -> None:
    clock = FakeClock()
    service = KMSService(backend, clock=clock, health_interval=10, health_timeout=2)
    service.check_health_now()
    clock.now += service.max_health_age + 1
    assert not service.is_healthy()
    with pytest.raises(BackendUnavailable, match="stale"):
        service.status()


class HangingHealthBackend(InMemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def check_health(self) -> Health:
        self.release.wait(30)
        return super().check_health()


def test_health_check_is_bounded_by_timeout() -> None:
    backend = HangingHealthBackend()
    service = KMSService(backend, health_timeout=0.05)
    try:
        state = service.check_health_now()
        assert not state.ok and "timed out" in state.detail
        again = service.check_health_now()  # the first probe is still stuck: no pile-up
        assert not again.ok and "still running" in again.detail
    finally:
        backend.release.set()


class RotatingDuringWrap(InMemoryBackend):
    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        wrapped = super().wrap(plaintext, aad=aad)
        self.rotate()
        return wrapped


def test_rotation_during_encrypt_reports_the_wrap_key_id() -> None:
    backend = RotatingDuringWrap()
    service = KMSService(backend)
    before = backend.key_id()
    reply = service.encrypt(b"s" * 32, uid="u")
    assert reply.key_id == before
    assert service.status().key_id == backend.key_id() != before
    assert service.decrypt(reply.ciphertext, key_id=reply.key_id, annotations={}, uid="u") == b"s" * 32


class BadReplyBackend(InMemoryBackend):
    def __init__(
        self, *, key_id: str | None = None, annotations: dict[str, bytes] | None = None, big: bool = False
    ):
        super().__init__()
        self._bad_key_id = key_id
        self._bad_annotations = annotations
        self._big = big

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        w = super().wrap(plaintext, aad=aad)
        return Wrapped(
            ciphertext=w.ciphertext * 40 if self._big else w.ciphertext,
            key_id=self._bad_key_id if self._bad_key_id is not None else w.key_id,
            annotations=self._bad_annotations or {},
        )


@pytest.mark.parametrize(
    "backend",
    [
        BadReplyBackend(key_id=""),
        BadReplyBackend(key_id="k" * 1025),
        BadReplyBackend(annotations={"Not_FQDN": b"x"}),
        BadReplyBackend(annotations={"a.example.com": b"x" * 40000}),
        BadReplyBackend(big=True),
    ],
)
def test_own_replies_are_validated_fail_closed(backend: BadReplyBackend) -> None:
    with pytest.raises(ContractViolation):
        KMSService(backend).encrypt(b"s" * 32, uid="u")


def test_valid_annotations_are_returned(backend: InMemoryBackend) -> None:
    good = BadReplyBackend(annotations={"version.kubeshield.io": b"1"})
    reply = KMSService(good).encrypt(b"s" * 32, uid="u")
    assert dict(reply.annotations) == {"version.kubeshield.io": b"1"}


class RefreshableBackend(InMemoryBackend):
    """Emulates a keyring rotated by another process: refresh() makes a pending rotation visible."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = False
        self.refreshed = threading.Event()

    def refresh(self) -> bool:
        self.refreshed.set()
        if self.pending:
            self.pending = False
            self.rotate()
            return True
        return False


def test_refresh_now_updates_status_and_metric() -> None:
    backend = RefreshableBackend()
    metrics = KMSMetrics()
    service = KMSService(backend, metrics=metrics)
    first = service.status().key_id
    assert service.refresh_now() is False
    backend.pending = True
    assert service.refresh_now() is True
    second = service.status().key_id
    assert second != first
    text = metrics.render().decode()
    assert f'key_id_hash="{key_id_hash(second)}"' in text
    assert key_id_hash(first) not in text
    assert second not in text and first not in text


def test_background_threads_run_refresh_and_stop() -> None:
    backend = RefreshableBackend()
    service = KMSService(backend, refresh_interval=0.01, health_interval=0.01)
    service.start()
    try:
        assert backend.refreshed.wait(10)
    finally:
        service.stop()
    assert service.is_healthy()


def test_refresh_errors_are_swallowed_and_logged() -> None:
    class Broken(RefreshableBackend):
        def refresh(self) -> bool:
            raise OSError("disk gone")

    assert KMSService(Broken()).refresh_now() is False


def test_health_metrics_are_recorded(backend: InMemoryBackend) -> None:
    metrics = KMSMetrics()
    service = KMSService(backend, metrics=metrics, wall_clock=lambda: 1234.0)
    service.check_health_now()
    text = metrics.render().decode()
    assert "kubeshield_backend_healthy 1.0" in text
    assert "kubeshield_backend_last_healthy_timestamp_seconds 1234.0" in text
    backend.fail_health = BackendUnavailable("x")
    service.check_health_now()
    assert "kubeshield_backend_healthy 0.0" in metrics.render().decode()


def test_invalid_intervals_are_refused(backend: InMemoryBackend) -> None:
    with pytest.raises(ValueError):
        KMSService(backend, health_interval=0)


def test_plaintext_must_be_bytes(service: KMSService) -> None:
    with pytest.raises(TypeError):
        service.encrypt("text", uid="u")  # type: ignore[arg-type]
