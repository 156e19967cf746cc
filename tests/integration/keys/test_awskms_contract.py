"""The AWS KMS backend passes the shared backend contract against a real moto server."""

from __future__ import annotations

import os
from typing import Any

import pytest

from kubeshield.errors import InvalidCiphertext
from kubeshield.keys.awskms import AwsKmsKeyBackend
from tests.contract.backend_contract import BackendContractTests
from tests.support.moto import MotoServer


class TestAwsKmsContract(BackendContractTests):
    # a key_id that is not ours (ARN + generation) is a mislabelled ciphertext
    unknown_key_id_errors = (InvalidCiphertext,)

    @pytest.fixture
    def backend(
        self, awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
    ) -> AwsKmsKeyBackend:
        backend: AwsKmsKeyBackend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
        return backend

    def key_material(self, backend: AwsKmsKeyBackend) -> list[bytes]:  # type: ignore[override]
        # the key material stays in KMS; the secret this backend holds is the AWS credential
        return [os.environ["AWS_SECRET_ACCESS_KEY"].encode(), os.environ["AWS_ACCESS_KEY_ID"].encode()]
