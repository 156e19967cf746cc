"""HierarchicalBackend over the in-memory double passes the shared backend contract."""

from __future__ import annotations

import pytest

from kubeshield.errors import InvalidCiphertext, KeyNotFound
from kubeshield.keys.hierarchy import HierarchicalBackend
from kubeshield.keys.testing import InMemoryBackend
from tests.contract.backend_contract import BackendContractTests


class TestHierarchyOverMemoryContract(BackendContractTests):
    # The hierarchy needs its annotation (KMS v2 only); the suite's re-made Wrapped values drop
    # annotations, so without them an unknown key_id is an invalid ciphertext, and empty key_id is out.
    unknown_key_id_errors = (KeyNotFound, InvalidCiphertext)
    supports_empty_key_id = False

    @pytest.fixture
    def backend(self) -> HierarchicalBackend:
        return HierarchicalBackend(InMemoryBackend(), max_uses=3)  # local KEKs change during the suite

    def key_material(self, backend: HierarchicalBackend) -> list[bytes]:  # type: ignore[override]
        return list(backend._remote._keys.values())  # type: ignore[attr-defined]
