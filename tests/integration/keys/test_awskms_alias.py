"""Issue 15 item 5 with moto: an AWS alias moved to another key (AWS's manual rotation procedure).

Before the fix the alias was resolved once and Decrypt rebuilt the key_id from the *current* ARN, so
after the move and a restart every Secret written under the old key failed with InvalidCiphertext.
"""

from __future__ import annotations

import os
import secrets
import uuid
from typing import Any

import boto3
import pytest

from kubeshield.config.settings import AwsKmsSettings, HierarchySettings, KeysSettings
from kubeshield.errors import InvalidCiphertext
from kubeshield.keys.awskms import AwsKmsKeyBackend
from kubeshield.keys.base import Wrapped
from kubeshield.keys.registry import open_backends
from kubeshield.kms.service import KMSService
from tests.support.moto import MotoServer, create_kms_key


@pytest.fixture
def moved_alias(moto_server: MotoServer, aws_env: None) -> dict[str, Any]:
    """An alias on key A; ``move()`` points it at a new key B, as ``aws kms update-alias`` does."""
    client: Any = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_server.endpoint)
    alias = "alias/ks-move-" + secrets.token_hex(4)
    arn_a = create_kms_key(moto_server.endpoint)
    client.create_alias(AliasName=alias, TargetKeyId=arn_a)
    state: dict[str, Any] = {"alias": alias, "a": arn_a, "endpoint": moto_server.endpoint}

    def move() -> str:
        arn_b = create_kms_key(moto_server.endpoint)
        client.update_alias(AliasName=alias, TargetKeyId=arn_b)
        state["b"] = arn_b
        return arn_b

    state["move"] = move
    return state


def _backend(state: dict[str, Any], key_id: str | None = None) -> AwsKmsKeyBackend:
    return AwsKmsKeyBackend(
        key_id=key_id or state["alias"], region="us-east-1", endpoint_url=state["endpoint"]
    )


def test_old_data_still_decrypts_after_the_alias_moved_and_the_plugin_restarted(
    moved_alias: dict[str, Any],
) -> None:
    before = _backend(moved_alias)
    try:
        seed = os.urandom(32)
        old = before.wrap(seed, aad=b"/registry/secrets/ns/s")
        assert old.key_id == f"awskms:{moved_alias['a']}:1"  # the key_id format of the current release
        arn_b = moved_alias["move"]()

        assert before.refresh() is True  # a running plugin re-resolves the alias
        assert before.key_id() == f"awskms:{arn_b}:1"
        fresh = before.wrap(os.urandom(32), aad=b"x")
        assert fresh.key_id == f"awskms:{arn_b}:1"
        assert before.unwrap(old, aad=b"/registry/secrets/ns/s") == seed
    finally:
        before.close()

    restarted = _backend(moved_alias)  # a plugin started after the move
    try:
        assert restarted.key_id() == f"awskms:{arn_b}:1"
        assert restarted.unwrap(old, aad=b"/registry/secrets/ns/s") == seed
        with pytest.raises(InvalidCiphertext):
            restarted.unwrap(old, aad=b"/registry/secrets/ns/other")
        # a key_id naming a key outside this account (or a junk ARN) is refused without asking AWS
        for other in (
            old.key_id.replace(":123456789012:", ":999999999999:"),
            old.key_id.replace(":us-east-1:", ":eu-west-1:"),
            old.key_id.replace(":key/", ":alias/"),
        ):
            with pytest.raises(InvalidCiphertext):
                restarted.unwrap(Wrapped(old.ciphertext, other), aad=b"/registry/secrets/ns/s")
    finally:
        restarted.close()


def test_a_backend_configured_with_one_key_accepts_only_that_key(moved_alias: dict[str, Any]) -> None:
    via_alias = _backend(moved_alias)
    try:
        old = via_alias.wrap(b"k" * 32)
    finally:
        via_alias.close()
    arn_b = moved_alias["move"]()
    pinned = _backend(moved_alias, key_id=arn_b)
    try:
        with pytest.raises(InvalidCiphertext):
            pinned.unwrap(old)
        assert pinned.refresh() is False  # nothing to re-resolve
    finally:
        pinned.close()


def test_the_plugin_stack_reads_old_secrets_after_the_move(moved_alias: dict[str, Any]) -> None:
    """Through the v2 stack kms serve builds (the local-KEK hierarchy over AWS KMS), across a restart."""
    settings = KeysSettings(
        backend="awskms",
        awskms=AwsKmsSettings(
            key_id=moved_alias["alias"], region="us-east-1", endpoint_url=moved_alias["endpoint"]
        ),
        hierarchy=HierarchySettings(enabled="on"),
    )
    first = KMSService(open_backends(settings).v2)
    try:
        seed = os.urandom(32)
        stored = first.encrypt(seed, uid=str(uuid.uuid4()))
    finally:
        first.close()
    arn_b = moved_alias["move"]()
    second = KMSService(open_backends(settings).v2)
    try:
        assert second.status().key_id == f"awskms:{arn_b}:1"
        got = second.decrypt(
            stored.ciphertext, key_id=stored.key_id, annotations=stored.annotations, uid=str(uuid.uuid4())
        )
        assert got == seed
    finally:
        second.close()
