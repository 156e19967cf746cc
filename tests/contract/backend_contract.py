"""The one contract every KeyBackend passes (DESIGN.md "Contracts", keys/base.py).

Subclass ``BackendContractTests`` in a ``test_*.py`` module, provide a ``backend`` fixture and
``key_material(backend)`` (the raw KEKs the backend holds, so the suite can check that no key_id leaks
them). Class attributes tune the few places where backends may legitimately differ.
"""

from __future__ import annotations

import base64
import os
import string

import pytest

from kubeshield.errors import InvalidCiphertext, InvalidRequest, KeyNotFound
from kubeshield.keys.base import Exportable, KeyBackend, Rotatable, Wrapped

AAD = b"/registry/secrets/default/db-password"
_PRINTABLE = set(string.printable) - set(string.whitespace) | {" "}


class BackendContractTests:
    """Behaviour every backend must show. Not collected itself (its name has no ``Test`` prefix)."""

    #: what unwrap raises for a key_id the backend never issued
    unknown_key_id_errors: tuple[type[Exception], ...] = (KeyNotFound,)
    #: whether unwrap finds the KEK from the ciphertext alone (KMS v1 has no key_id)
    supports_empty_key_id = True

    @pytest.fixture
    def backend(self) -> KeyBackend:  # pragma: no cover - always overridden
        raise NotImplementedError

    def key_material(self, backend: KeyBackend) -> list[bytes]:  # pragma: no cover - always overridden
        raise NotImplementedError

    # --- round trips ---------------------------------------------------------------------------------

    def test_round_trip_binds_key_id_and_aad(self, backend: KeyBackend) -> None:
        seed = os.urandom(32)
        wrapped = backend.wrap(seed, aad=AAD)
        assert wrapped.key_id == backend.key_id()
        assert wrapped.ciphertext != seed and seed not in wrapped.ciphertext
        assert backend.unwrap(wrapped, aad=AAD) == seed

    def test_wrap_is_randomised(self, backend: KeyBackend) -> None:
        seed = os.urandom(32)
        assert backend.wrap(seed, aad=AAD).ciphertext != backend.wrap(seed, aad=AAD).ciphertext

    @pytest.mark.parametrize("size", [1, 32, 1024])
    def test_sizes_round_trip(self, backend: KeyBackend, size: int) -> None:
        plaintext = os.urandom(size)
        assert backend.unwrap(backend.wrap(plaintext, aad=AAD), aad=AAD) == plaintext

    def test_ciphertext_of_a_seed_fits_the_kms_limit(self, backend: KeyBackend) -> None:
        ciphertext = backend.wrap(os.urandom(32), aad=AAD).ciphertext
        assert 0 < len(ciphertext) <= 1024

    def test_empty_plaintext_is_allowed_or_refused_consistently(self, backend: KeyBackend) -> None:
        outcomes = []
        for _ in range(2):
            try:
                wrapped = backend.wrap(b"", aad=AAD)
            except InvalidRequest:
                outcomes.append("refused")
            else:
                assert backend.unwrap(wrapped, aad=AAD) == b""
                outcomes.append("allowed")
        assert outcomes[0] == outcomes[1]

    def test_non_bytes_plaintext_is_a_type_error(self, backend: KeyBackend) -> None:
        with pytest.raises(TypeError):
            backend.wrap("not bytes", aad=AAD)  # type: ignore[arg-type]

    # --- every tampering is the same opaque error ----------------------------------------------------

    def test_wrong_aad(self, backend: KeyBackend) -> None:
        wrapped = backend.wrap(os.urandom(32), aad=AAD)
        for other in (b"", AAD + b"x", AAD[:-1], b"/registry/secrets/default/other"):
            with pytest.raises(InvalidCiphertext) as info:
                backend.unwrap(wrapped, aad=other)
            assert str(info.value) == "invalid ciphertext"

    def test_every_truncation(self, backend: KeyBackend) -> None:
        wrapped = backend.wrap(os.urandom(32), aad=AAD)
        for n in range(len(wrapped.ciphertext)):
            with pytest.raises(InvalidCiphertext):
                backend.unwrap(Wrapped(wrapped.ciphertext[:n], wrapped.key_id), aad=AAD)

    def test_appended_byte(self, backend: KeyBackend) -> None:
        wrapped = backend.wrap(os.urandom(32), aad=AAD)
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(wrapped.ciphertext + b"\x00", wrapped.key_id), aad=AAD)

    def test_every_flipped_bit(self, backend: KeyBackend) -> None:
        wrapped = backend.wrap(os.urandom(32), aad=AAD)
        blob = wrapped.ciphertext
        for bit in range(len(blob) * 8):
            tampered = bytearray(blob)
            tampered[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(InvalidCiphertext):
                backend.unwrap(Wrapped(bytes(tampered), wrapped.key_id), aad=AAD)

    def test_unknown_key_id(self, backend: KeyBackend) -> None:
        wrapped = backend.wrap(os.urandom(32), aad=AAD)
        with pytest.raises(self.unknown_key_id_errors):
            backend.unwrap(Wrapped(wrapped.ciphertext, wrapped.key_id + "x"), aad=AAD)

    def test_empty_key_id_finds_the_kek(self, backend: KeyBackend) -> None:
        seed = os.urandom(32)
        if not self.supports_empty_key_id:
            # a backend that needs its key_id (and annotations) must refuse, never guess (KMS v1 gets the
            # bare backend instead: keys.registry.open_backends)
            wrapped = backend.wrap(seed, aad=AAD)
            with pytest.raises((InvalidCiphertext, KeyNotFound)):
                backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=AAD)
            return

        wrapped = backend.wrap(seed, aad=AAD)
        assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=AAD) == seed
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=b"other")

    # --- key_id rules --------------------------------------------------------------------------------

    def test_key_id_rules(self, backend: KeyBackend) -> None:
        key_id = backend.key_id()
        assert key_id == backend.key_id(), "key_id must be stable while the KEK is unchanged"
        assert 0 < len(key_id.encode("utf-8")) <= 1024
        assert set(key_id) <= _PRINTABLE, "key_id must be printable ASCII"

    def test_key_id_holds_no_key_material(self, backend: KeyBackend) -> None:
        if isinstance(backend, Rotatable):
            backend.rotate()
        materials = self.key_material(backend)
        assert materials, "the subclass must expose the KEKs for this check"
        ids = [backend.key_id()]
        if isinstance(backend, Exportable):
            ids += [v.key_id for v in backend.versions()]
        for key in materials:
            encodings = {
                key.hex(),
                key.hex().upper(),
                key[:8].hex(),
                base64.b64encode(key).decode(),
                base64.urlsafe_b64encode(key).decode().rstrip("="),
                base64.b64encode(key[:9]).decode(),
            }
            for key_id in ids:
                for encoded in encodings:
                    assert encoded not in key_id

    # --- health --------------------------------------------------------------------------------------

    def test_check_health(self, backend: KeyBackend) -> None:
        health = backend.check_health()
        assert health.ok is True
        assert health.key_id == backend.key_id()
        assert health.latency_seconds >= 0

    def test_check_health_after_close_reports_not_ok_without_raising(self, backend: KeyBackend) -> None:
        backend.close()
        health = backend.check_health()
        assert health.ok is False
        assert health.detail

    # --- rotation ------------------------------------------------------------------------------------

    def test_rotation(self, backend: KeyBackend) -> None:
        if not isinstance(backend, Rotatable):
            pytest.skip("backend is not Rotatable")
        seeds = []
        ids = [backend.key_id()]
        for _ in range(4):
            seed = os.urandom(32)
            seeds.append((seed, backend.wrap(seed, aad=AAD)))
            new_id = backend.rotate()
            assert new_id == backend.key_id()
            assert new_id not in ids, "a rotation must never reuse a key_id"
            ids.append(new_id)
        assert backend.wrap(b"x" * 32, aad=AAD).key_id == ids[-1]
        for seed, wrapped in seeds:
            assert backend.unwrap(wrapped, aad=AAD) == seed
            if self.supports_empty_key_id:
                assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=AAD) == seed
        if isinstance(backend, Exportable):
            assert [v.key_id for v in backend.versions()] == ids

    def test_ciphertext_under_one_version_does_not_open_under_another(self, backend: KeyBackend) -> None:
        if not isinstance(backend, Rotatable):
            pytest.skip("backend is not Rotatable")
        old = backend.wrap(os.urandom(32), aad=AAD)
        new_id = backend.rotate()
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(old.ciphertext, new_id), aad=AAD)
