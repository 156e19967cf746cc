"""HierarchicalBackend over the in-memory test double: remote calls, rotation, tampering, outages."""

from __future__ import annotations

import re
import secrets
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.errors import BackendError, BackendUnavailable, InvalidCiphertext, InvalidRequest, KeyNotFound
from kubeshield.keys.base import Wrapped
from kubeshield.keys.hierarchy import LOCAL_KEK_ANNOTATION, HierarchicalBackend
from kubeshield.keys.testing import InMemoryBackend

FQDN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def remote() -> InMemoryBackend:
    return InMemoryBackend()


def test_round_trip_and_layout_follow_the_docstring(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote)
    seed = secrets.token_bytes(32)
    wrapped = h.wrap(seed, aad=b"ctx")
    assert wrapped.key_id == remote.key_id() == h.key_id()
    assert set(wrapped.annotations) == {LOCAL_KEK_ANNOTATION}
    assert FQDN.match(LOCAL_KEK_ANNOTATION)
    # independent decoding of the documented layout
    blob = wrapped.ciphertext
    assert len(blob) == 1 + 12 + 32 + 16 and blob[0] == 0x01
    kek = remote.unwrap(
        Wrapped(wrapped.annotations[LOCAL_KEK_ANNOTATION], wrapped.key_id), aad=b"kubeshield-local-kek-v1"
    )
    assert len(kek) == 32
    assert AESGCM(kek).decrypt(blob[1:13], blob[13:], b"kubeshield-local-kek-v1\x00ctx") == seed
    assert h.unwrap(wrapped, aad=b"ctx") == seed


def test_one_remote_wrap_for_many_seeds_and_one_remote_unwrap_per_cold_replica(
    remote: InMemoryBackend,
) -> None:
    writer = HierarchicalBackend(remote)
    seeds = [secrets.token_bytes(32) for _ in range(1000)]
    wrapped = [writer.wrap(s, aad=b"a") for s in seeds]
    assert remote.wrap_calls == 1
    assert [writer.unwrap(w, aad=b"a") for w in wrapped] == seeds
    assert remote.unwrap_calls == 0  # the writer knows its own local KEK
    replica = HierarchicalBackend(remote)
    assert [replica.unwrap(w, aad=b"a") for w in wrapped] == seeds
    assert remote.unwrap_calls == 1
    stats = replica.stats()
    assert (stats.remote_unwraps, stats.cache_hits, stats.cached_keks) == (1, 999, 1)


def test_local_kek_rotates_by_age(remote: InMemoryBackend) -> None:
    clock = Clock()
    h = HierarchicalBackend(remote, max_age=3600, clock=clock)
    first = h.wrap(b"1" * 32)
    clock.now += 3599
    assert h.wrap(b"2" * 32).annotations == first.annotations
    clock.now += 1
    third = h.wrap(b"3" * 32)
    assert third.annotations != first.annotations
    assert remote.wrap_calls == 2
    clock.now -= 10_000  # a clock that jumps back also gives a new local KEK
    assert h.wrap(b"4" * 32).annotations != third.annotations
    cold = HierarchicalBackend(remote)
    assert cold.unwrap(first) == b"1" * 32 and cold.unwrap(third) == b"3" * 32


def test_local_kek_rotates_by_use_count(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote, max_uses=3)
    wrapped = [h.wrap(bytes([i]) * 32) for i in range(7)]
    assert remote.wrap_calls == 3
    assert len({w.annotations[LOCAL_KEK_ANNOTATION] for w in wrapped}) == 3
    assert h.stats().local_keks_created == 3
    assert [HierarchicalBackend(remote).unwrap(w) for w in wrapped] == [bytes([i]) * 32 for i in range(7)]


def test_remote_rotation_starts_a_new_local_kek_and_key_id(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote)
    old = h.wrap(b"o" * 32)
    new_id = h.rotate()
    assert new_id == remote.key_id() == h.key_id() != old.key_id
    new = h.wrap(b"n" * 32)
    assert new.key_id == new_id
    remote.rotate()  # rotated behind our back: picked up on the next wrap
    assert h.wrap(b"x" * 32).key_id == remote.key_id()
    assert h.unwrap(old) == b"o" * 32 and h.unwrap(new) == b"n" * 32


def test_tampered_annotation_is_invalid_ciphertext(remote: InMemoryBackend) -> None:
    wrapped = HierarchicalBackend(remote).wrap(b"s" * 32)
    annotation = bytearray(wrapped.annotations[LOCAL_KEK_ANNOTATION])
    for i in (0, len(annotation) // 2, len(annotation) - 1):
        bad = bytearray(annotation)
        bad[i] ^= 0x01
        tampered = Wrapped(wrapped.ciphertext, wrapped.key_id, {LOCAL_KEK_ANNOTATION: bytes(bad)})
        with pytest.raises(InvalidCiphertext):
            HierarchicalBackend(remote).unwrap(tampered)


def test_annotation_of_another_local_kek_is_invalid(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote, max_uses=1)
    a, b = h.wrap(b"a" * 32), h.wrap(b"b" * 32)
    swapped = Wrapped(a.ciphertext, a.key_id, b.annotations)
    with pytest.raises(InvalidCiphertext):
        h.unwrap(swapped)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: Wrapped(w.ciphertext[:-1], w.key_id, w.annotations),
        lambda w: Wrapped(w.ciphertext[:20], w.key_id, w.annotations),
        lambda w: Wrapped(b"\x02" + w.ciphertext[1:], w.key_id, w.annotations),
        lambda w: Wrapped(b"", w.key_id, w.annotations),
        lambda w: Wrapped(w.ciphertext, w.key_id, {}),
        lambda w: Wrapped(w.ciphertext, w.key_id, {LOCAL_KEK_ANNOTATION: b""}),
    ],
)
def test_damaged_input_is_invalid_ciphertext(remote: InMemoryBackend, mutate) -> None:
    h = HierarchicalBackend(remote)
    wrapped = h.wrap(b"d" * 32, aad=b"x")
    with pytest.raises(InvalidCiphertext):
        h.unwrap(mutate(wrapped), aad=b"x")


def test_unknown_key_id_is_judged_by_the_remote_even_when_cached(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote)
    wrapped = h.wrap(b"d" * 32)
    with pytest.raises(KeyNotFound):
        h.unwrap(Wrapped(wrapped.ciphertext, "memory:v9:0000", wrapped.annotations))
    assert h.unwrap(Wrapped(wrapped.ciphertext, "", wrapped.annotations)) == b"d" * 32
    assert h.unwrap(wrapped) == b"d" * 32


def test_wrong_aad_is_invalid_ciphertext(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote)
    wrapped = h.wrap(b"d" * 32, aad=b"x")
    with pytest.raises(InvalidCiphertext):
        h.unwrap(wrapped, aad=b"y")


def test_remote_down_cached_decrypts_continue_cold_ones_fail(remote: InMemoryBackend) -> None:
    clock = Clock()
    h = HierarchicalBackend(remote, max_age=60, clock=clock)
    warm = h.wrap(b"w" * 32)
    other_writer = HierarchicalBackend(remote)
    cold = other_writer.wrap(b"c" * 32)
    remote.fail_health = BackendUnavailable("down")
    remote.fail_next_unwrap = BackendUnavailable("down")
    assert h.unwrap(warm) == b"w" * 32  # no remote call: the switch is still armed
    assert remote.fail_next_unwrap is not None
    assert h.wrap(b"v" * 32).key_id == remote.key_id()  # the current local KEK still encrypts
    with pytest.raises(BackendUnavailable):
        h.unwrap(cold)
    clock.now += 61
    remote.fail_next_wrap = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        h.wrap(b"z" * 32)  # a new local KEK needs the remote
    assert not h.check_health().ok
    # the remote is back: everything recovers without intervention
    remote.fail_health = None
    assert h.unwrap(cold) == b"c" * 32
    assert h.wrap(b"z" * 32).key_id == remote.key_id()
    assert h.check_health().ok


def test_cache_is_lru_bounded(remote: InMemoryBackend) -> None:
    writer = HierarchicalBackend(remote, max_uses=1)
    wrapped = [writer.wrap(bytes([i]) * 32) for i in range(3)]
    reader = HierarchicalBackend(remote, cache_size=2)
    for w in wrapped:
        reader.unwrap(w)
    assert reader.stats().cached_keks == 2
    calls = remote.unwrap_calls
    reader.unwrap(wrapped[2])  # most recent: cached
    assert remote.unwrap_calls == calls
    reader.unwrap(wrapped[0])  # evicted: one more remote call
    assert remote.unwrap_calls == calls + 1


def test_concurrent_cold_decrypts_make_one_remote_call(remote: InMemoryBackend) -> None:
    writer = HierarchicalBackend(remote)
    wrapped = [writer.wrap(bytes([i]) * 32) for i in range(64)]
    reader = HierarchicalBackend(remote)
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = reader.unwrap(wrapped[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: bytes([i]) * 32 for i in range(64)}
    assert remote.unwrap_calls == 1


def test_health_is_the_remotes(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote)
    assert h.check_health().ok
    remote.fail_health = BackendUnavailable("down")
    health = h.check_health()
    assert not health.ok and "BackendUnavailable" in health.detail


def test_rotate_needs_a_rotatable_remote() -> None:
    class Fixed:  # a backend without the optional Rotatable/Refreshable abilities
        name = "fixed"

        def __init__(self) -> None:
            self._inner = InMemoryBackend()
            self.wrap, self.unwrap, self.key_id = self._inner.wrap, self._inner.unwrap, self._inner.key_id
            self.check_health, self.close = self._inner.check_health, self._inner.close

    h = HierarchicalBackend(Fixed())
    with pytest.raises(BackendError, match="cannot rotate"):
        h.rotate()
    assert h.refresh() is False


def test_bad_arguments_are_refused(remote: InMemoryBackend) -> None:
    bad: list[dict[str, Any]] = [{"max_age": 0}, {"max_uses": 0}, {"cache_size": 0}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            HierarchicalBackend(remote, **kwargs)
    h = HierarchicalBackend(remote)
    with pytest.raises(InvalidRequest):
        h.wrap(b"")
    with pytest.raises(TypeError):
        h.wrap("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        h.unwrap(b"x")  # type: ignore[arg-type]


def test_clear_cache_forgets_local_keks(remote: InMemoryBackend) -> None:
    h = HierarchicalBackend(remote)
    w = h.wrap(b"k" * 32)
    h.clear_cache()
    assert h.stats().cached_keks == 0
    assert h.unwrap(w) == b"k" * 32
    assert remote.unwrap_calls == 1


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=600), aad=st.binary(max_size=200))
def test_round_trip_property(plaintext: bytes, aad: bytes) -> None:
    remote = InMemoryBackend()
    wrapped = HierarchicalBackend(remote).wrap(plaintext, aad=aad)
    assert HierarchicalBackend(remote).unwrap(wrapped, aad=aad) == plaintext


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    remote = InMemoryBackend()
    h = HierarchicalBackend(remote)
    wrapped = h.wrap(b"p" * 32, aad=b"a")
    blob = bytearray(wrapped.ciphertext)
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(InvalidCiphertext):
        h.unwrap(Wrapped(bytes(blob), wrapped.key_id, wrapped.annotations), aad=b"a")
