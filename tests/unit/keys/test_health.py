"""The shared deep health check: a real round trip, and a detail that never carries foreign text."""

from __future__ import annotations

from kubeshield.errors import BackendUnavailable, InvalidCiphertext
from kubeshield.keys.base import Wrapped
from kubeshield.keys.health import round_trip, safe_detail
from kubeshield.keys.testing import InMemoryBackend


def test_a_working_backend_is_healthy_under_its_current_key_id() -> None:
    backend = InMemoryBackend()
    health = round_trip(backend)
    assert health.ok and health.key_id == backend.key_id() and health.detail == "ok"
    assert backend.wrap_calls == 1 and backend.unwrap_calls == 1


def test_a_failing_backend_is_unhealthy_and_says_why() -> None:
    backend = InMemoryBackend()
    backend.fail_next_unwrap = BackendUnavailable("key service at 127.0.0.1 refused the connection")
    health = round_trip(backend)
    assert not health.ok and health.key_id is None
    assert health.detail == "BackendUnavailable: key service at 127.0.0.1 refused the connection"


def test_a_backend_that_returns_other_bytes_is_unhealthy() -> None:
    class Lying(InMemoryBackend):
        def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
            return bytes(32)

    health = round_trip(Lying())
    assert not health.ok and "different bytes" in health.detail


def test_before_runs_first_and_its_failure_counts() -> None:
    calls: list[str] = []

    def refresh() -> None:
        calls.append("refresh")
        raise BackendUnavailable("metadata read failed")

    backend = InMemoryBackend()
    health = round_trip(backend, before=refresh)
    assert calls == ["refresh"] and not health.ok and backend.wrap_calls == 0


def test_foreign_exception_text_never_reaches_the_detail() -> None:
    secret = "AKIA-token-s3cr3t"
    assert safe_detail(RuntimeError(f"response body: {secret}")) == "RuntimeError"
    assert safe_detail(InvalidCiphertext()) == "InvalidCiphertext"

    class Leaky(InMemoryBackend):
        def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
            raise ValueError(f"cannot wrap {plaintext.hex()} with {secret}")

    detail = round_trip(Leaky()).detail
    assert detail == "ValueError" and secret not in detail
