"""AWS KMS backend: the error map (real botocore exception objects) and the byte format (properties)."""

from __future__ import annotations

import botocore.exceptions as bce
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
)
from kubeshield.keys import _aws_format as fmt
from kubeshield.keys.awskms import map_exceptions

SECRET_BODY = "response-body-with-ARN-and-secrets"


def _client_error(code: str, status: int = 400, op: str = "Decrypt") -> bce.ClientError:
    return bce.ClientError(
        {"Error": {"Code": code, "Message": SECRET_BODY}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


@pytest.mark.parametrize(
    ("code", "status", "decrypting", "expected"),
    [
        ("ThrottlingException", 400, False, BackendUnavailable),
        ("LimitExceededException", 400, True, BackendUnavailable),
        ("KMSInternalException", 500, False, BackendUnavailable),
        ("SomethingNew", 503, False, BackendUnavailable),
        ("DependencyTimeoutException", 400, False, BackendTimeout),
        ("AccessDeniedException", 400, True, BackendAuthError),
        ("UnrecognizedClientException", 400, False, BackendAuthError),
        ("ExpiredTokenException", 400, False, BackendAuthError),
        ("NotFoundException", 400, False, KeyNotFound),
        ("DisabledException", 400, True, KeyNotFound),
        ("KMSInvalidStateException", 400, False, KeyNotFound),
        ("InvalidCiphertextException", 400, True, InvalidCiphertext),
        ("IncorrectKeyException", 400, True, InvalidCiphertext),
        ("ValidationException", 400, True, InvalidCiphertext),
        ("ValidationException", 400, False, InvalidRequest),
        ("InvalidCiphertextException", 400, False, BackendError),
        ("SomethingNew", 400, False, BackendError),
    ],
)
def test_client_errors_map_without_the_body(code: str, status: int, decrypting: bool, expected: type) -> None:
    with pytest.raises(expected) as info, map_exceptions(decrypting=decrypting):
        raise _client_error(code, status)
    assert type(info.value) is expected
    assert SECRET_BODY not in str(info.value)
    assert isinstance(info.value.__cause__, bce.ClientError)
    if expected is not InvalidCiphertext:
        assert code in str(info.value) and f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (bce.ConnectTimeoutError(endpoint_url="http://x"), BackendTimeout),
        (bce.ReadTimeoutError(endpoint_url="http://x"), BackendTimeout),
        (bce.EndpointConnectionError(endpoint_url="http://x"), BackendUnavailable),
        (bce.ConnectionClosedError(endpoint_url="http://x"), BackendUnavailable),
        (bce.NoCredentialsError(), BackendAuthError),
    ],
)
def test_transport_errors_map(exc: Exception, expected: type) -> None:
    with pytest.raises(expected), map_exceptions():
        raise exc


generations = st.integers(min_value=1, max_value=fmt.MAX_GENERATION)


@given(generation=generations, blob=st.binary(min_size=1, max_size=300))
def test_ciphertext_round_trip(generation: int, blob: bytes) -> None:
    data = fmt.encode_ciphertext(generation=generation, blob=blob)
    assert data[0] == 0x01 and int.from_bytes(data[1:5], "big") == generation and data[5:] == blob
    assert fmt.decode_ciphertext(data) == (generation, blob)


@given(data=st.binary(max_size=40))
def test_decode_rejects_only_with_invalid_ciphertext(data: bytes) -> None:
    try:
        generation, blob = fmt.decode_ciphertext(data)
    except InvalidCiphertext:
        return
    assert data[0] == 0x01 and generation >= 1 and blob


@given(a=st.binary(max_size=64), b=st.binary(max_size=64))
def test_context_binds_aad(a: bytes, b: bytes) -> None:
    ca = fmt.encryption_context(key_id="awskms:arn:1", aad=a)
    cb = fmt.encryption_context(key_id="awskms:arn:1", aad=b)
    assert (ca == cb) == (a == b)
    assert ca["kubeshield:format"] == "awskms/v1" and ca["kubeshield:key-id"] == "awskms:arn:1"
    assert len(ca["kubeshield:aad"]) == 43  # unpadded base64url of 32 bytes: fixed size, never empty


def test_context_changes_with_key_id() -> None:
    assert fmt.encryption_context(key_id="awskms:arn:1", aad=b"") != fmt.encryption_context(
        key_id="awskms:arn:2", aad=b""
    )
    assert fmt.make_key_id(arn="arn:aws:kms:r:1:key/k", generation=3) == "awskms:arn:aws:kms:r:1:key/k:3"
    with pytest.raises(ValueError):
        fmt.make_key_id(arn="a", generation=0)
