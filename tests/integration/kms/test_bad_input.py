"""Bad input gets the right gRPC code, error texts hold no key material, and the server keeps serving."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest

from kubeshield.kms._socket import grpc_address
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.client import KMSv2Client
from tests.integration.kms.conftest import Plugin


def _raw(channel: grpc.Channel, method: str, body: bytes) -> grpc.RpcError:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(body, timeout=5)
    return info.value


@pytest.fixture
def channel(plugin: Plugin):
    with grpc.insecure_channel(grpc_address(plugin.socket)) as ch:
        yield ch


@pytest.mark.parametrize("method", ["Status", "Encrypt", "Decrypt"])
@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08"])
def test_malformed_protobuf(
    plugin: Plugin, channel: grpc.Channel, client: KMSv2Client, method: str, body: bytes
):
    err = _raw(channel, f"/v2.KeyManagementService/{method}", body)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in (err.details() or "")
    assert client.status().healthz == "ok"  # still serving


def _decrypt(channel: grpc.Channel, **fields: Any) -> grpc.RpcError:
    body = v2_pb2.DecryptRequest(uid="u", **fields).SerializeToString()
    return _raw(channel, "/v2.KeyManagementService/Decrypt", body)


@pytest.fixture
def sealed(client: KMSv2Client):
    seed = os.urandom(32)
    return seed, client.encrypt(seed)


def test_bad_ciphertexts(channel: grpc.Channel, client: KMSv2Client, sealed) -> None:
    seed, reply = sealed
    cases = {
        "empty": b"",
        "truncated": reply.ciphertext[:-1],
        "very short": reply.ciphertext[:3],
        "tampered": reply.ciphertext[:-1] + bytes([reply.ciphertext[-1] ^ 1]),
        "oversized": reply.ciphertext + b"\x00" * 1024,
    }
    for name, ciphertext in cases.items():
        err = _decrypt(channel, ciphertext=ciphertext, key_id=reply.key_id)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, name
        details = err.details() or ""
        assert reply.ciphertext.hex()[:16] not in details and seed.hex()[:16] not in details
    assert client.decrypt(reply.ciphertext, key_id=reply.key_id, annotations=reply.annotations) == seed


def test_unknown_key_id_is_not_found(channel: grpc.Channel, client: KMSv2Client, sealed) -> None:
    _, reply = sealed
    err = _decrypt(channel, ciphertext=reply.ciphertext, key_id="local:v99:0000000000000000")
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert client.status().healthz == "ok"


def test_empty_key_id_is_invalid(channel: grpc.Channel, sealed) -> None:
    _, reply = sealed
    assert (
        _decrypt(channel, ciphertext=reply.ciphertext, key_id="").code() is grpc.StatusCode.INVALID_ARGUMENT
    )


def test_wrong_annotations_are_invalid(channel: grpc.Channel, sealed) -> None:
    _, reply = sealed
    for bad in ({"NOT_A_DOMAIN": b"1"}, {"a.example.com": b"x" * 40000}):
        err = _decrypt(channel, ciphertext=reply.ciphertext, key_id=reply.key_id, annotations=bad)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_empty_and_oversized_plaintext(channel: grpc.Channel, client: KMSv2Client) -> None:
    for plaintext in (b"", b"p" * 5000):
        body = v2_pb2.EncryptRequest(plaintext=plaintext, uid="u").SerializeToString()
        err = _raw(channel, "/v2.KeyManagementService/Encrypt", body)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert client.status().healthz == "ok"


def test_message_over_the_size_limit_is_refused(channel: grpc.Channel, client: KMSv2Client) -> None:
    body = v2_pb2.EncryptRequest(plaintext=b"p" * (512 * 1024), uid="u").SerializeToString()
    assert (
        _raw(channel, "/v2.KeyManagementService/Encrypt", body).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert client.status().healthz == "ok"


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    err = _raw(channel, "/v2alpha1.KeyManagementService/Status", b"")
    assert err.code() is grpc.StatusCode.UNIMPLEMENTED
