"""`kubeshield keys rotate --config` for the PKCS#11 and AWS KMS backends, seen by a running KMSService."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubeshield.cli import main
from kubeshield.config import load_config
from kubeshield.keys.registry import open_backends
from kubeshield.kms.service import KMSService
from tests.support.moto import MotoServer
from tests.support.softhsm import SoftHsm, unique_label


def _wait_for(condition: Callable[[], bool], *, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.05)


def _rotate_and_check(config: Path) -> tuple[str, str]:
    """Start a service from ``config``, rotate with the CLI, return (old key_id, new key_id)."""
    stack = open_backends(load_config(config).keys)
    service = KMSService(stack.v2, v1_backend=stack.v1, refresh_interval=0.05, health_timeout=5.0)
    service.start()
    try:
        old_id = service.status().key_id
        seed = os.urandom(32)
        old = service.encrypt(seed, uid=str(uuid.uuid4()))
        assert old.key_id == old_id

        assert main(["keys", "rotate", "--config", str(config)]) == 0
        _wait_for(lambda: service.status().key_id != old_id)
        new_id = service.status().key_id
        fresh = service.encrypt(os.urandom(32), uid=str(uuid.uuid4()))
        assert fresh.key_id == new_id
        got = service.decrypt(old.ciphertext, key_id=old.key_id, annotations=old.annotations, uid="u")
        assert got == seed
        return old_id, new_id
    finally:
        service.close()


def test_pkcs11_rotation_reaches_a_running_service(
    softhsm: SoftHsm, pkcs11_backend_factory: Callable[..., Any], tmp_path: Path, monkeypatch: Any
) -> None:
    label = unique_label()
    pkcs11_backend_factory(key_label=label)  # `keys init`'s job: the first key version in the token
    pin = tmp_path / "pin"
    pin.write_bytes(softhsm.tokens["ks-main"].pin + b"\n")
    pin.chmod(0o600)
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        "keys:\n  backend: pkcs11\n"
        f"  pkcs11: {{module: {softhsm.module}, token: ks-main, pinFile: {pin}, keyLabel: {label}}}\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.conf))
    old_id, new_id = _rotate_and_check(config)
    assert old_id.startswith("pkcs11:") and new_id.startswith("pkcs11:")
    assert old_id.rsplit(":", 1)[1].startswith("v1-") and new_id.rsplit(":", 1)[1].startswith("v2-")


def test_awskms_rotation_reaches_a_running_service(
    moto_server: MotoServer, kms_key_arn: str, tmp_path: Path
) -> None:
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        "keys:\n  backend: awskms\n"
        f"  awskms: {{keyId: '{kms_key_arn}', region: us-east-1, endpointUrl: '{moto_server.endpoint}'}}\n"
    )
    old_id, new_id = _rotate_and_check(config)  # auto: the local-KEK hierarchy sits on top
    assert (old_id, new_id) == (f"awskms:{kms_key_arn}:1", f"awskms:{kms_key_arn}:2")
