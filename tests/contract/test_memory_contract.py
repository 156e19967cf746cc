"""InMemoryBackend (the public test double) passes the backend contract."""

from __future__ import annotations

import pytest

from kubeshield.keys.testing import InMemoryBackend
from tests.contract.backend_contract import BackendContractTests


class TestInMemoryBackendContract(BackendContractTests):
    @pytest.fixture
    def backend(self) -> InMemoryBackend:
        return InMemoryBackend()

    def key_material(self, backend: InMemoryBackend) -> list[bytes]:  # type: ignore[override]
        return list(backend._keys.values())
