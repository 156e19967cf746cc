"""LocalKeyBackend passes the backend contract, with an unprotected and a passphrase-protected keyring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.keys.keyring import Argon2Params, KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from tests.contract.backend_contract import BackendContractTests

CHEAP_ARGON2 = Argon2Params(iterations=1, lanes=1, memory_cost=8)


class _LocalContract(BackendContractTests):
    passphrase: bytes | None = None

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[LocalKeyBackend]:
        backend = LocalKeyBackend.create(
            path=tmp_path / "keyring", passphrase=self.passphrase, argon2=CHEAP_ARGON2
        )
        yield backend
        backend.close()

    def key_material(self, backend: LocalKeyBackend) -> list[bytes]:  # type: ignore[override]
        return list(KeyringFile(backend.path).load(self.passphrase).keys.values())


class TestLocalPlainContract(_LocalContract):
    passphrase = None


class TestLocalPassphraseContract(_LocalContract):
    passphrase = b"correct horse battery staple"
