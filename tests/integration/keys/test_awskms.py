"""The AWS KMS backend against a real moto server on 127.0.0.1: contract behaviour, faults, rotation."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

import boto3
import pytest

from kubeshield.config.settings import AwsKmsSettings
from kubeshield.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnavailable,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
)
from kubeshield.keys.awskms import AwsKmsKeyBackend
from kubeshield.keys.base import Refreshable, Rotatable, Wrapped
from tests.support.moto import MotoServer, create_kms_key

DEK = bytes(range(32))


def _kms(endpoint: str) -> Any:
    return boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint)


# -- contract behaviour (until tests/contract/backend_contract.py lands) -----------------------------------


def test_round_trip_binds_aad_and_key_id(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    backend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    assert backend.key_id() == f"awskms:{kms_key_arn}:1"
    wrapped = backend.wrap(DEK, aad=b"/registry/secrets/ns/a")
    assert wrapped.key_id == backend.key_id()
    assert wrapped.ciphertext[0] == 0x01 and int.from_bytes(wrapped.ciphertext[1:5], "big") == 1
    assert len(wrapped.ciphertext) <= 1024
    assert backend.unwrap(wrapped, aad=b"/registry/secrets/ns/a") == DEK
    assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=b"/registry/secrets/ns/a") == DEK
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(wrapped, aad=b"/registry/secrets/ns/b")
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(wrapped)


def test_alias_resolves_to_the_arn(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    client = _kms(moto_server.endpoint)
    alias = f"alias/kubeshield-{kms_key_arn.rsplit('/', 1)[1][:8]}"
    client.create_alias(AliasName=alias, TargetKeyId=kms_key_arn)
    backend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=alias)
    assert backend.key_id() == f"awskms:{kms_key_arn}:1"


def test_context_binds_format_key_id_and_aad(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    """Decrypting the raw KMS blob directly shows the context KMS enforces (moto checks it like AWS)."""
    backend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    wrapped = backend.wrap(DEK, aad=b"x")
    blob = wrapped.ciphertext[5:]
    client = _kms(moto_server.endpoint)
    with pytest.raises(client.exceptions.InvalidCiphertextException):
        client.decrypt(CiphertextBlob=blob)  # no context
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(b"x").digest()).rstrip(b"=").decode()
    context = {
        "kubeshield:format": "awskms/v1",
        "kubeshield:key-id": wrapped.key_id,
        "kubeshield:aad": digest,
    }
    assert client.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == DEK


def test_every_tampered_byte_is_refused(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    backend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    wrapped = backend.wrap(DEK, aad=b"t")
    ct = wrapped.ciphertext
    for i in range(len(ct)):
        bad = ct[:i] + bytes([ct[i] ^ 0x01]) + ct[i + 1 :]
        # moto answers AccessDenied for a flipped key-id byte: the backend's own probe shows that our
        # credential can decrypt, so it is reported as the invalid ciphertext it is
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(bad, wrapped.key_id), aad=b"t")
    for bad in (b"", ct[:5], b"\x02" + ct[1:], ct[:1] + b"\x00\x00\x00\x00" + ct[5:]):
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(bad, ""), aad=b"t")
    assert backend.unwrap(wrapped, aad=b"t") == DEK


def test_ciphertext_from_another_key(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    other_arn = create_kms_key(moto_server.endpoint)
    mine = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    other = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=other_arn)
    wrapped = other.wrap(DEK)
    with pytest.raises(InvalidCiphertext):
        mine.unwrap(wrapped)  # its key_id names another ARN
    with pytest.raises(InvalidCiphertext):
        mine.unwrap(Wrapped(wrapped.ciphertext, ""))  # KMS refuses: context names another key_id


def test_ciphertext_from_another_cluster_same_key(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    """Two clusters sharing one AWS key: the etcd path (aad) keeps their ciphertexts apart."""
    a = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    wrapped = a.wrap(DEK, aad=b"/cluster-a/registry/secrets/ns/s")
    with pytest.raises(InvalidCiphertext):
        a.unwrap(wrapped, aad=b"/cluster-b/registry/secrets/ns/s")


def test_plaintext_limits(awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str) -> None:
    backend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    with pytest.raises(InvalidRequest):
        backend.wrap(b"")
    with pytest.raises(InvalidRequest):
        backend.wrap(b"x" * 4097)
    assert backend.unwrap(backend.wrap(b"x" * 4096)) == b"x" * 4096


def test_health_round_trip(awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str) -> None:
    backend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    health = backend.check_health()
    assert health.ok and health.key_id == backend.key_id()
    backend.close()
    assert not backend.check_health().ok
    with pytest.raises(BackendUnavailable):
        backend.wrap(DEK)


def test_from_settings(moto_server: MotoServer, kms_key_arn: str) -> None:
    settings = AwsKmsSettings(key_id=kms_key_arn, region="us-east-1", endpoint_url=moto_server.endpoint)
    backend = AwsKmsKeyBackend.from_settings(settings)
    try:
        assert backend.unwrap(backend.wrap(DEK)) == DEK
    finally:
        backend.close()


# -- rotation ---------------------------------------------------------------------------------------------


def test_rotate_on_demand_changes_key_id_and_old_data_still_decrypts(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    backend: AwsKmsKeyBackend = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    assert isinstance(backend, Rotatable)
    assert isinstance(backend, Refreshable)
    old = backend.wrap(DEK, aad=b"1")
    new_id = backend.rotate()
    assert new_id == f"awskms:{kms_key_arn}:2" == backend.key_id()
    new = backend.wrap(DEK, aad=b"2")
    assert new.key_id == new_id and int.from_bytes(new.ciphertext[1:5], "big") == 2
    assert backend.unwrap(old, aad=b"1") == DEK
    assert backend.unwrap(new, aad=b"2") == DEK
    with pytest.raises(InvalidCiphertext):  # a generation-1 blob relabelled as generation 2
        backend.unwrap(
            Wrapped(new.ciphertext[:1] + (1).to_bytes(4, "big") + new.ciphertext[5:], ""), aad=b"2"
        )


def test_rotation_elsewhere_is_seen_by_refresh(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    running = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    other = awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)
    before = running.key_id()
    rotated = other.rotate()  # as `kubeshield keys rotate` in another process would
    assert rotated != before
    assert running.key_id() == before
    assert running.refresh() is True and running.key_id() == rotated
    assert running.refresh() is False
    # a rotation made directly in KMS (the console, automatic rotation) counts the same way
    _kms(moto_server.endpoint).rotate_key_on_demand(KeyId=kms_key_arn)
    assert running.refresh() is True and running.key_id() == f"awskms:{kms_key_arn}:3"
    assert running.unwrap(other.wrap(DEK, aad=b"o"), aad=b"o") == DEK


# -- faults ----------------------------------------------------------------------------------------------


def test_missing_key_is_key_not_found(
    awskms_backend_factory: Any, moto_server: MotoServer, aws_env: None
) -> None:
    missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(KeyNotFound):
        awskms_backend_factory(endpoint=moto_server.endpoint, key_id=missing)


def test_disabled_key_is_key_not_found(
    awskms_backend_factory: Any, moto_server: MotoServer, kms_key_arn: str
) -> None:
    _kms(moto_server.endpoint).disable_key(KeyId=kms_key_arn.rsplit("/", 1)[1])  # moto wants the bare id
    with pytest.raises(KeyNotFound, match="not enabled"):
        awskms_backend_factory(endpoint=moto_server.endpoint, key_id=kms_key_arn)


def test_access_denied_is_backend_auth_error(
    awskms_backend_factory: Any, moto_server: MotoServer, aws_env: None
) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "kms:DescribeKey", "Resource": "*"}],
    }
    arn = _kms(moto_server.endpoint).create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    with pytest.raises(BackendAuthError) as info:
        awskms_backend_factory(endpoint=moto_server.endpoint, key_id=arn)
    assert "AccessDenied" in str(info.value) and "HTTP 400" in str(info.value)


def test_nothing_listening_is_backend_unavailable(awskms_backend_factory: Any, aws_env: None) -> None:
    from tests.support.moto import free_port

    with pytest.raises(BackendUnavailable):
        awskms_backend_factory(
            endpoint=f"http://127.0.0.1:{free_port()}",
            key_id="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        )


def test_server_killed_mid_test_then_restarted(
    awskms_backend_factory: Any, own_moto_server: MotoServer, aws_env: None
) -> None:
    arn = create_kms_key(own_moto_server.endpoint)
    backend = awskms_backend_factory(endpoint=own_moto_server.endpoint, key_id=arn)
    wrapped = backend.wrap(DEK)
    own_moto_server.kill()
    with pytest.raises(BackendUnavailable):
        backend.unwrap(wrapped)  # never a wrong plaintext
    with pytest.raises(BackendUnavailable):
        backend.wrap(DEK)
    health = backend.check_health()
    assert not health.ok and "BackendUnavailable" in health.detail
    own_moto_server.start()  # same port; moto lost its keys in the crash
    with pytest.raises(KeyNotFound):  # the same client reconnects by itself and gets a real answer
        backend.wrap(DEK)
    with pytest.raises(KeyNotFound):  # the key and its material are gone: never a plaintext
        backend.unwrap(wrapped)
    fresh = awskms_backend_factory(
        endpoint=own_moto_server.endpoint, key_id=create_kms_key(own_moto_server.endpoint)
    )
    assert fresh.unwrap(fresh.wrap(DEK)) == DEK


def test_hung_server_times_out_then_recovers(
    awskms_backend_factory: Any, own_moto_server: MotoServer, aws_env: None
) -> None:
    arn = create_kms_key(own_moto_server.endpoint)
    backend = awskms_backend_factory(
        endpoint=own_moto_server.endpoint, key_id=arn, read_timeout=0.3, connect_timeout=0.3, max_attempts=1
    )
    wrapped = backend.wrap(DEK, aad=b"h")
    own_moto_server.freeze()
    try:
        with pytest.raises(BackendTimeout):
            backend.unwrap(wrapped, aad=b"h")
        with pytest.raises(BackendTimeout):
            backend.wrap(DEK)
        assert not backend.check_health().ok
    finally:
        own_moto_server.thaw()
    assert backend.unwrap(wrapped, aad=b"h") == DEK  # the same backend recovers by itself
    assert backend.check_health().ok


def test_errors_never_carry_response_bodies(
    awskms_backend_factory: Any, moto_server: MotoServer, aws_env: None
) -> None:
    missing = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    with pytest.raises(KeyNotFound) as info:
        awskms_backend_factory(endpoint=moto_server.endpoint, key_id=missing)
    message = str(info.value)
    assert message == "AWS KMS DescribeKey failed: NotFoundException (HTTP 400)"
    assert "11111111" not in message


def test_moto_server_answers(moto_server: MotoServer) -> None:
    with urllib.request.urlopen(f"{moto_server.endpoint}/moto-api/", timeout=5) as resp:
        assert resp.status == 200
