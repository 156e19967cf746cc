"""The PKCS#11 backend passes the shared backend contract against a real SoftHSM2 token."""

from __future__ import annotations

from typing import Any

import pytest

from kubeshield.errors import InvalidCiphertext
from kubeshield.keys.pkcs11 import Pkcs11KeyBackend
from tests.contract.backend_contract import BackendContractTests
from tests.support.softhsm import SoftHsm


class TestPkcs11Contract(BackendContractTests):
    # a key_id that names no key object of ours is a mislabelled ciphertext
    unknown_key_id_errors = (InvalidCiphertext,)

    @pytest.fixture
    def backend(self, pkcs11_backend_factory: Any, softhsm: SoftHsm) -> Pkcs11KeyBackend:
        self._pin = softhsm.tokens["ks-main"].pin
        backend: Pkcs11KeyBackend = pkcs11_backend_factory()
        return backend

    def key_material(self, backend: Pkcs11KeyBackend) -> list[bytes]:  # type: ignore[override]
        # the AES keys never leave the token (CKA_SENSITIVE, not extractable): the secret this backend
        # holds outside the token is the PIN, which must not show in any key_id
        return [self._pin]
