"""LazyBackend / open_during_outage: start during an outage, retry with backoff, heal (injected clock)."""

from __future__ import annotations

import os

import pytest

from kubeshield.config import KeysSettings
from kubeshield.config.settings import TransitSettings
from kubeshield.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    KeyNotFound,
)
from kubeshield.keys.base import KeyBackend, Wrapped
from kubeshield.keys.breakglass import BreakGlassBackend
from kubeshield.keys.lazy import Backoff, LazyBackend, open_during_outage
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.registry import open_backends, open_primary
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kms.service import KMSService


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyOpener:
    """Opens an InMemoryBackend after ``failures`` outages; counts every attempt."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or BackendUnavailable("cannot reach the key service (ConnectError)")
        self.calls = 0
        self.backend = InMemoryBackend()

    def __call__(self) -> KeyBackend:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.backend


NO_JITTER = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)


def lazy(opener: FlakyOpener, clock: Clock, backoff: Backoff = NO_JITTER) -> KeyBackend:
    return open_during_outage(opener, name="transit", backoff=backoff, clock=clock, rng=lambda: 0.0)


def test_a_reachable_backend_is_returned_as_it_is() -> None:
    opener = FlakyOpener(0)
    assert open_during_outage(opener, name="transit") is opener.backend


@pytest.mark.parametrize("error", [BackendUnavailable("down"), BackendTimeout("slow")])
def test_an_outage_at_start_gives_a_backend_that_is_down(error: Exception) -> None:
    clock = Clock()
    backend = lazy(FlakyOpener(1, error), clock)
    assert isinstance(backend, LazyBackend) and not backend.connected
    assert backend.name == "transit"
    for call in (backend.key_id, lambda: backend.wrap(b"s" * 32), lambda: backend.unwrap(Wrapped(b"x", "k"))):
        with pytest.raises(BackendUnavailable, match="not connected"):
            call()
    health = backend.check_health()
    assert not health.ok and "not connected" in health.detail and type(error).__name__ in health.detail


@pytest.mark.parametrize(
    "error", [ConfigError("keys.transit.key: bad"), BackendAuthError("refused"), KeyNotFound("no key")]
)
def test_a_mistake_at_start_is_raised_not_waited_out(error: Exception) -> None:
    with pytest.raises(type(error)):
        open_during_outage(FlakyOpener(1, error), name="transit")


def test_requests_never_open_the_backend_only_health_and_refresh_do() -> None:
    clock = Clock()
    opener = FlakyOpener(1)
    backend = lazy(opener, clock)
    clock.now += 100  # long past any backoff
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            backend.wrap(b"s" * 32)
        with pytest.raises(BackendUnavailable):
            backend.key_id()
    assert opener.calls == 1  # only the attempt at start
    assert backend.check_health().ok
    assert opener.calls == 2


def test_attempts_are_spaced_by_exponential_backoff() -> None:
    clock = Clock()
    opener = FlakyOpener(5)
    backend = lazy(opener, clock)
    assert isinstance(backend, LazyBackend)
    attempts_at = []
    for _ in range(100):  # the health loop checks every 0.25 s here (a power of two: exact sums)
        clock.now += 0.25
        before = opener.calls
        backend.check_health()
        if opener.calls > before:
            attempts_at.append(clock.now - 100.0)
    # failures at 0 (start), then waits of 0.5, 1, 2, 4, 4 (capped): attempts at 0.5, 1.5, 3.5, 7.5, 11.5
    assert attempts_at == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert backend.connected and opener.calls == 6
    assert backend.key_id() == opener.backend.key_id()


def test_jitter_shortens_the_wait_from_the_injected_rng() -> None:
    policy = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    assert policy.delay(1, rng=lambda: 0.0) == 1.0
    assert policy.delay(3, rng=lambda: 1.0) == 2.0
    assert policy.delay(9, rng=lambda: 0.5) == 6.0
    with pytest.raises(ValueError):
        Backoff(initial=0.0)


def test_once_connected_every_call_goes_to_the_backend() -> None:
    clock = Clock()
    opener = FlakyOpener(1)
    backend = lazy(opener, clock)
    assert isinstance(backend, LazyBackend)
    clock.now += 1
    assert backend.refresh() is True  # connecting changes the key_id from "none" to the backend's
    wrapped = backend.wrap(b"s" * 32, aad=b"a")
    assert wrapped.key_id == backend.key_id() == opener.backend.key_id()
    assert backend.unwrap(wrapped, aad=b"a") == b"s" * 32
    old = backend.key_id()
    assert backend.rotate() != old
    backend.close()
    assert not backend.check_health().ok


def test_errors_after_start_are_reported_and_retried_not_raised() -> None:
    clock = Clock()
    opener = FlakyOpener(3)
    backend = lazy(opener, clock)
    opener.error = KeyNotFound("no usable key labelled 'kek' in token 'ks'")
    clock.now += 0.5
    health = backend.check_health()
    assert not health.ok and "KeyNotFound" in health.detail
    clock.now += 1.0
    assert not backend.check_health().ok
    clock.now += 2.0
    assert backend.check_health().ok


def test_break_glass_serves_decrypts_while_the_primary_has_not_connected(tmp_path) -> None:
    clock = Clock()
    emergency = LocalKeyBackend.create(path=tmp_path / "emergency")
    opener = FlakyOpener(0)
    live = BreakGlassBackend(opener(), emergency, escrow=True)
    seed = os.urandom(32)
    wrapped = live.wrap(seed, aad=b"k")  # written before the outage, escrowed

    restarted = BreakGlassBackend(lazy(FlakyOpener(1), clock), emergency, escrow=True)
    assert restarted.unwrap(wrapped, aad=b"k") == seed
    assert restarted.stats().emergency_decrypts == 1
    with pytest.raises(BackendUnavailable):
        restarted.wrap(seed, aad=b"k")


def test_the_service_re_checks_quickly_while_unhealthy_and_heals() -> None:
    clock = Clock()
    opener = FlakyOpener(1)
    service = KMSService(lazy(opener, clock), health_interval=10.0, unhealthy_interval=1.0)
    assert not service.check_health_now().ok
    assert service.next_health_check_in() == 1.0
    with pytest.raises(BackendUnavailable):
        service.status()
    clock.now += 1.0  # the backoff has passed: the next check connects
    assert service.check_health_now().ok
    assert service.next_health_check_in() == 10.0
    assert service.status().key_id == opener.backend.key_id()


def test_open_primary_during_outage_uses_the_backends_own_settings(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s.token\n")
    settings = KeysSettings(
        backend="transit",
        transit=TransitSettings(address="http://127.0.0.1:9", key="k", auth=_token_auth(token)),
    )
    with pytest.raises(BackendUnavailable):
        open_primary(settings)  # without during_outage: the error, as for `keys rotate`
    backend = open_primary(settings, during_outage=True)
    try:
        assert isinstance(backend, LazyBackend) and not backend.connected
        stack = open_backends(settings, primary=backend)
        with pytest.raises(BackendUnavailable):
            stack.v2.key_id()
    finally:
        backend.close()


def _token_auth(path):
    from kubeshield.config.settings import TransitAuthSettings

    return TransitAuthSettings(method="token", token_file=path)
