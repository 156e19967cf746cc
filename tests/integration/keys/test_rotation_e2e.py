"""`kubeshield keys rotate` on a running plugin: a KMSService sees the new key_id without a restart."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kubeshield.cli import main
from kubeshield.config import load_config
from kubeshield.keys.hierarchy import LOCAL_KEK_ANNOTATION, HierarchicalBackend
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.registry import open_backend, open_backends
from kubeshield.keys.transit import TokenAuth, TransitKeyBackend
from kubeshield.kms.service import KMSService
from tests.support.openbao import BaoServer, openbao, transit_key, write_secret_file  # noqa: F401


def _wait_for(condition: Callable[[], bool], *, deadline: float = 30.0) -> None:
    """Poll until ``condition`` holds (a generous deadline, not a timing assertion)."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.02)


def _uid() -> str:
    return str(uuid.uuid4())


def test_local_rotation_is_picked_up_by_a_running_service(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KUBESHIELD_KEYRING_PASSPHRASE", raising=False)
    (tmp_path / "pass").write_text("pw\n")
    args = ["--keyring", str(tmp_path / "kr"), "--passphrase-file", str(tmp_path / "pass")]
    assert main(["keys", "init", *args]) == 0
    service = KMSService(LocalKeyBackend(path=tmp_path / "kr", passphrase=b"pw"), refresh_interval=0.05)
    service.start()
    try:
        old_id = service.status().key_id
        old_seed = os.urandom(32)
        old = service.encrypt(old_seed, uid=_uid())
        assert old.key_id == old_id

        assert main(["keys", "rotate", *args]) == 0
        _wait_for(lambda: service.status().key_id != old_id)
        new_id = service.status().key_id
        assert new_id.startswith("local:v2:")
        fresh = service.encrypt(b"n" * 32, uid=_uid())
        assert fresh.key_id == new_id
        assert service.decrypt(old.ciphertext, key_id=old.key_id, annotations={}, uid=_uid()) == old_seed
        assert service.v1_decrypt(service.v1_encrypt(b"dek")) == b"dek"
    finally:
        service.close()


def _config(tmp_path: Path, server: BaoServer, key: str) -> Path:
    token = write_secret_file(tmp_path / "token", server.root_token)
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        "keys:\n"
        "  backend: transit\n"
        f"  transit:\n    address: '{server.address}'\n    key: {key}\n"
        f"    auth: {{method: token, tokenFile: {token}}}\n"
    )
    return config


def _transit_key_id(server: BaoServer, key: str, version: int) -> str:
    """The key_id the backend must report: version and its creation time as the key service has it."""
    created = server.api("GET", f"transit/keys/{key}")["data"]["keys"][str(version)]
    return f"transit:transit/{key}:v{version}-{created}"


def test_transit_from_config_builds_the_hierarchy(
    openbao: BaoServer, transit_key: str, tmp_path: Path
) -> None:
    settings = load_config(_config(tmp_path, openbao, transit_key)).keys
    backend = open_backend(settings)
    try:
        assert isinstance(backend, HierarchicalBackend)
        assert backend.key_id() == _transit_key_id(openbao, transit_key, 1)
        wrapped = backend.wrap(b"s" * 32, aad=b"a")
        assert LOCAL_KEK_ANNOTATION in wrapped.annotations
        assert backend.unwrap(wrapped, aad=b"a") == b"s" * 32
    finally:
        backend.close()


def test_transit_rotation_is_picked_up_by_a_running_service(
    openbao: BaoServer, transit_key: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, openbao, transit_key)
    settings = load_config(config).keys
    # the primary as from_settings builds it, with a short metadata refresh so the test is quick
    primary = TransitKeyBackend(
        address=openbao.address,
        key=transit_key,
        auth=TokenAuth(str(tmp_path / "token")),
        refresh_interval=0.05,
    )
    stack = open_backends(settings, primary=primary)
    service = KMSService(stack.v2, refresh_interval=0.05, health_timeout=5.0)
    service.start()
    try:
        v1_id = _transit_key_id(openbao, transit_key, 1)
        assert service.status().key_id == v1_id
        seed = os.urandom(32)
        old = service.encrypt(seed, uid=_uid())
        assert old.key_id == v1_id

        assert main(["keys", "rotate", "--config", str(config)]) == 0
        v2_id = _transit_key_id(openbao, transit_key, 2)
        _wait_for(lambda: service.status().key_id == v2_id)
        fresh = service.encrypt(os.urandom(32), uid=_uid())
        assert fresh.key_id == v2_id
        assert fresh.annotations[LOCAL_KEK_ANNOTATION] != old.annotations[LOCAL_KEK_ANNOTATION]
        assert fresh.annotations[LOCAL_KEK_ANNOTATION].startswith(b"vault:v2:")
        stack.v2.clear_cache()  # type: ignore[attr-defined]  # old data needs the v1 remote unwrap again
        got = service.decrypt(old.ciphertext, key_id=old.key_id, annotations=old.annotations, uid=_uid())
        assert got == seed
    finally:
        service.close()
