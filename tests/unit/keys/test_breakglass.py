"""BreakGlassBackend: the emergency keyring decrypts only while the primary is unreachable."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ContractViolation,
    InvalidCiphertext,
    KeyNotFound,
)
from kubeshield.keys import backup as backups
from kubeshield.keys.base import KeyBackend, Wrapped
from kubeshield.keys.breakglass import EMERGENCY_ANNOTATION, BreakGlassBackend
from kubeshield.keys.hierarchy import HierarchicalBackend
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.testing import InMemoryBackend
from tests.support.keys import make_keyring

AAD = b"kubeshield/kms/v2"


class Switchable:
    """A real backend whose unwrap/wrap can be made to raise a given error (an outage, a refusal)."""

    def __init__(self, inner: KeyBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.unwrap_error: Exception | None = None
        self.wrap_error: Exception | None = None

    def key_id(self) -> str:
        return self.inner.key_id()

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        if self.wrap_error is not None:
            raise self.wrap_error
        return self.inner.wrap(plaintext, aad=aad)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        if self.unwrap_error is not None:
            raise self.unwrap_error
        return self.inner.unwrap(wrapped, aad=aad)

    def check_health(self):  # type: ignore[no-untyped-def]
        return self.inner.check_health()

    def close(self) -> None:
        self.inner.close()


def _restored_copy(source: Path, target: Path) -> LocalKeyBackend:
    """The emergency keyring as an operator makes it: a restored backup of ``source``."""
    contents = backups.parse_payload(backups.export_payload(KeyringFile(source).load(None)))
    backups.restore_backup(contents, keyring=target)
    return LocalKeyBackend(path=target)


@pytest.fixture
def local_pair(tmp_path: Path) -> tuple[LocalKeyBackend, LocalKeyBackend]:
    make_keyring(tmp_path / "primary", passphrase=None, rotations=1)
    return LocalKeyBackend(path=tmp_path / "primary"), _restored_copy(tmp_path / "primary", tmp_path / "em")


def test_local_primary_down_decrypts_through_the_restored_backup(
    local_pair: tuple[LocalKeyBackend, LocalKeyBackend], caplog: pytest.LogCaptureFixture
) -> None:
    primary, emergency = local_pair
    seen: list[str] = []
    backend = BreakGlassBackend(primary, emergency, on_emergency=seen.append)
    seed = os.urandom(32)
    wrapped = backend.wrap(seed, aad=AAD)
    assert EMERGENCY_ANNOTATION not in wrapped.annotations  # same keys: no escrow needed
    primary.close()  # the primary is now unavailable
    with caplog.at_level(logging.WARNING, logger="kubeshield.keys.breakglass"):
        assert backend.unwrap(wrapped, aad=AAD) == seed
    assert seen == [wrapped.key_id]
    assert backend.stats().emergency_decrypts == 1
    record = next(r for r in caplog.records if "BREAK-GLASS" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert record.fields == {  # type: ignore[attr-defined]
        "event": "break_glass_decrypt",
        "key_id": wrapped.key_id,
        "path": "keyring",
        "primary_error": "BackendUnavailable",
    }
    assert seed.hex() not in caplog.text
    with pytest.raises(BackendUnavailable):
        backend.wrap(os.urandom(32), aad=AAD)
    assert backend.stats().emergency_decrypts == 1


def test_kms_v1_empty_key_id_finds_the_key_by_fingerprint(
    local_pair: tuple[LocalKeyBackend, LocalKeyBackend],
) -> None:
    primary, emergency = local_pair
    backend = BreakGlassBackend(primary, emergency)
    wrapped = backend.wrap(b"v1 dek", aad=b"kubeshield/kms/v1")
    primary.close()
    assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=b"kubeshield/kms/v1") == b"v1 dek"


def test_healthy_primary_is_always_used(local_pair: tuple[LocalKeyBackend, LocalKeyBackend]) -> None:
    primary, emergency = local_pair
    seen: list[str] = []
    backend = BreakGlassBackend(primary, emergency, on_emergency=seen.append)
    for _ in range(3):
        seed = os.urandom(32)
        assert backend.unwrap(backend.wrap(seed, aad=AAD), aad=AAD) == seed
    assert seen == [] and backend.stats().emergency_decrypts == 0
    assert backend.key_id() == primary.key_id()
    assert backend.check_health().ok


@pytest.mark.parametrize(
    "refusal",
    [InvalidCiphertext(), BackendAuthError("token revoked"), KeyNotFound("retired"), BackendError("other")],
)
def test_answers_from_the_primary_are_never_overridden(
    local_pair: tuple[LocalKeyBackend, LocalKeyBackend], refusal: Exception
) -> None:
    primary, emergency = local_pair
    switch = Switchable(primary)
    seen: list[str] = []
    backend = BreakGlassBackend(switch, emergency, on_emergency=seen.append)
    wrapped = backend.wrap(os.urandom(32), aad=AAD)
    switch.unwrap_error = refusal
    with pytest.raises(type(refusal)):
        backend.unwrap(wrapped, aad=AAD)
    assert seen == []


@pytest.mark.parametrize("outage", [BackendUnavailable("down"), BackendTimeout("slow")])
def test_both_kinds_of_outage_fall_back(
    local_pair: tuple[LocalKeyBackend, LocalKeyBackend], outage: Exception
) -> None:
    primary, emergency = local_pair
    switch = Switchable(primary)
    backend = BreakGlassBackend(switch, emergency)
    seed = os.urandom(32)
    wrapped = backend.wrap(seed, aad=AAD)
    switch.unwrap_error = outage
    assert backend.unwrap(wrapped, aad=AAD) == seed


def test_emergency_without_the_key_reports_the_outage(tmp_path: Path) -> None:
    make_keyring(tmp_path / "primary", passphrase=None)
    make_keyring(tmp_path / "unrelated", passphrase=None)
    primary = LocalKeyBackend(path=tmp_path / "primary")
    backend = BreakGlassBackend(primary, LocalKeyBackend(path=tmp_path / "unrelated"))
    wrapped = backend.wrap(os.urandom(32), aad=AAD)
    primary.close()
    with pytest.raises(BackendUnavailable):
        backend.unwrap(wrapped, aad=AAD)
    with pytest.raises(BackendUnavailable):  # v1: tried by fingerprint, refused, still the outage
        backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=AAD)
    assert backend.stats().emergency_decrypts == 0
    assert backend.stats().emergency_failures == 1


def test_a_failing_hook_does_not_fail_the_decrypt(
    local_pair: tuple[LocalKeyBackend, LocalKeyBackend],
) -> None:
    primary, emergency = local_pair

    def broken(key_id: str) -> None:
        raise RuntimeError("metrics down")

    backend = BreakGlassBackend(primary, emergency, on_emergency=broken)
    wrapped = backend.wrap(b"x" * 32, aad=AAD)
    primary.close()
    assert backend.unwrap(wrapped, aad=AAD) == b"x" * 32


def test_emergency_must_be_a_local_keyring() -> None:
    with pytest.raises(TypeError, match="LocalKeyBackend"):
        BreakGlassBackend(InMemoryBackend(), InMemoryBackend())  # type: ignore[arg-type]


# -- escrow: a primary whose keys cannot be copied ------------------------------------------------------


@pytest.fixture
def emergency(tmp_path: Path) -> LocalKeyBackend:
    make_keyring(tmp_path / "em", passphrase=None)
    return LocalKeyBackend(path=tmp_path / "em")


def test_escrow_under_the_hierarchy_decrypts_after_a_restart_while_the_remote_is_down(
    emergency: LocalKeyBackend,
) -> None:
    remote = Switchable(InMemoryBackend())
    seen: list[str] = []
    writer = HierarchicalBackend(BreakGlassBackend(remote, emergency, on_emergency=seen.append, escrow=True))
    data = [(seed, writer.wrap(seed, aad=AAD)) for seed in (os.urandom(32) for _ in range(5))]
    assert all(EMERGENCY_ANNOTATION in w.annotations for _, w in data)
    assert remote.inner.wrap_calls == 1  # type: ignore[attr-defined]  # one local KEK, escrowed once
    assert len(data[0][1].annotations[EMERGENCY_ANNOTATION]) == 69

    remote.unwrap_error = BackendUnavailable("key service down")
    remote.wrap_error = BackendUnavailable("key service down")
    restarted = HierarchicalBackend(
        BreakGlassBackend(remote, emergency, on_emergency=seen.append, escrow=True)
    )
    for seed, wrapped in data:
        assert restarted.unwrap(wrapped, aad=AAD) == seed
    assert seen == [data[0][1].key_id]  # one emergency unwrap: the local KEK is cached after it
    with pytest.raises(BackendUnavailable):
        restarted.wrap(os.urandom(32), aad=AAD)


def test_escrow_without_the_hierarchy(emergency: LocalKeyBackend) -> None:
    remote = Switchable(InMemoryBackend())
    backend = BreakGlassBackend(remote, emergency, escrow=True)
    seed = os.urandom(32)
    wrapped = backend.wrap(seed, aad=AAD)
    assert remote.unwrap(Wrapped(wrapped.ciphertext, wrapped.key_id), aad=AAD) == seed  # primary untouched
    remote.unwrap_error = BackendTimeout("slow")
    assert backend.unwrap(wrapped, aad=AAD) == seed
    with pytest.raises(BackendTimeout):  # wrong aad: the escrow refuses, the primary's outage is reported
        backend.unwrap(wrapped, aad=b"other")


def test_an_escrow_only_opens_with_its_own_ciphertext(emergency: LocalKeyBackend) -> None:
    remote = Switchable(InMemoryBackend())
    backend = BreakGlassBackend(remote, emergency, escrow=True)
    a, b = backend.wrap(b"a" * 32, aad=AAD), backend.wrap(b"b" * 32, aad=AAD)
    swapped = Wrapped(a.ciphertext, a.key_id, {EMERGENCY_ANNOTATION: b.annotations[EMERGENCY_ANNOTATION]})
    remote.unwrap_error = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        backend.unwrap(swapped, aad=AAD)
    assert backend.stats().emergency_failures == 1


def test_the_primary_may_not_use_the_reserved_annotation(emergency: LocalKeyBackend) -> None:
    class Greedy(InMemoryBackend):
        def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
            w = super().wrap(plaintext, aad=aad)
            return Wrapped(w.ciphertext, w.key_id, {EMERGENCY_ANNOTATION: b"x"})

    with pytest.raises(ContractViolation, match="reserved annotation"):
        BreakGlassBackend(Greedy(), emergency).wrap(b"x", aad=AAD)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=64), st.data())
def test_a_tampered_escrow_never_yields_plaintext(
    emergency: LocalKeyBackend, plaintext: bytes, data: st.DataObject
) -> None:
    remote = Switchable(InMemoryBackend())
    backend = BreakGlassBackend(remote, emergency, escrow=True)
    wrapped = backend.wrap(plaintext, aad=AAD)
    escrow = bytearray(wrapped.annotations[EMERGENCY_ANNOTATION])
    index = data.draw(st.integers(0, len(escrow) - 1))
    escrow[index] ^= data.draw(st.integers(1, 255))
    remote.unwrap_error = BackendUnavailable("down")
    assert backend.unwrap(wrapped, aad=AAD) == plaintext
    tampered = Wrapped(wrapped.ciphertext, wrapped.key_id, {EMERGENCY_ANNOTATION: bytes(escrow)})
    with pytest.raises(BackendUnavailable):
        backend.unwrap(tampered, aad=AAD)
