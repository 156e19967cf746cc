"""Break-glass against a real OpenBao: the emergency keyring decrypts while the server is stopped."""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.config import KeysSettings
from kubeshield.config.settings import (
    EmergencySettings,
    HierarchySettings,
    TransitAuthSettings,
    TransitSettings,
)
from kubeshield.errors import BackendTimeout, BackendUnavailable, KeyNotFound
from kubeshield.keys.breakglass import EMERGENCY_ANNOTATION, BreakGlassBackend
from kubeshield.keys.hierarchy import HierarchicalBackend
from kubeshield.keys.registry import open_backends
from kubeshield.keys.transit import TransitKeyBackend
from kubeshield.kms.service import KMSService
from tests.support.keys import make_keyring
from tests.support.openbao import BaoServer, start_dev_server, write_secret_file

OUTAGE = (BackendUnavailable, BackendTimeout)


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[BaoServer]:
    """A dev server of this test's own: the test stops it."""
    server = start_dev_server(tmp_path / "bao")
    try:
        server.enable_transit()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def _settings(bao: BaoServer, tmp_path: Path, *, hierarchy: str) -> KeysSettings:
    key = "k-" + secrets.token_hex(4)
    bao.create_key(key)
    token = Path(write_secret_file(tmp_path / "token", bao.root_token))
    make_keyring(tmp_path / "emergency", passphrase=b"break glass")
    (tmp_path / "em-pass").write_text("break glass\n")
    return KeysSettings(
        backend="transit",
        transit=TransitSettings(address=bao.address, key=key, auth=TransitAuthSettings(token_file=token)),
        hierarchy=HierarchySettings(enabled=hierarchy),  # type: ignore[arg-type]
        emergency=EmergencySettings(keyring=tmp_path / "emergency", passphrase_file=tmp_path / "em-pass"),
    )


def test_kms_decrypts_through_the_emergency_keyring_while_openbao_is_down(
    bao: BaoServer, tmp_path: Path
) -> None:
    seen: list[str] = []
    stack = open_backends(_settings(bao, tmp_path, hierarchy="auto"), on_emergency=seen.append)
    assert isinstance(stack.primary, TransitKeyBackend)
    assert isinstance(stack.v2, HierarchicalBackend)
    service = KMSService(stack.v2, health_timeout=5.0)
    try:
        written = []
        for _ in range(20):
            seed = os.urandom(32)
            reply = service.encrypt(seed, uid=str(uuid.uuid4()))
            assert EMERGENCY_ANNOTATION in reply.annotations
            written.append((seed, reply))
        assert service.status().key_id == written[0][1].key_id

        bao.stop()
        stack.v2.clear_cache()  # as after a restart: every local KEK must come back from the remote
        for seed, reply in written:
            got = service.decrypt(
                reply.ciphertext, key_id=reply.key_id, annotations=reply.annotations, uid=str(uuid.uuid4())
            )
            assert got == seed
        assert seen == [written[0][1].key_id]  # one local KEK, recovered once, then cached
        with pytest.raises(OUTAGE):
            service.encrypt(os.urandom(32), uid=str(uuid.uuid4()))  # never through the emergency keyring
        assert not service.check_health_now().ok
    finally:
        stack.close()


def test_without_the_hierarchy_every_seed_is_escrowed(bao: BaoServer, tmp_path: Path) -> None:
    stack = open_backends(_settings(bao, tmp_path, hierarchy="off"))
    assert isinstance(stack.v2, BreakGlassBackend)
    try:
        seed = os.urandom(32)
        wrapped = stack.v2.wrap(seed, aad=b"a")
        assert wrapped.ciphertext.startswith(b"vault:v1:")
        assert stack.v2.unwrap(wrapped, aad=b"a") == seed  # through OpenBao while it is up
        bao.stop()
        assert stack.v2.unwrap(wrapped, aad=b"a") == seed
        assert stack.v2.stats().emergency_decrypts == 1  # type: ignore[attr-defined]
        with pytest.raises(OUTAGE):
            stack.v2.wrap(seed, aad=b"a")
        # KMS v1 has no annotations, so no escrow: break-glass cannot help v1 data of a remote primary
        with pytest.raises(OUTAGE):
            stack.v1.unwrap(type(wrapped)(wrapped.ciphertext, ""), aad=b"a")
    finally:
        stack.close()


def test_openbao_back_up_means_the_primary_is_used_again(bao: BaoServer, tmp_path: Path) -> None:
    stack = open_backends(_settings(bao, tmp_path, hierarchy="off"))
    try:
        wrapped = stack.v2.wrap(b"s" * 32, aad=b"a")
        bao.stop()
        assert stack.v2.unwrap(wrapped, aad=b"a") == b"s" * 32
        bao.restart()
        bao.wait_active()
        # a dev server restarts empty: its key is gone, so the primary's answer is final (not an outage)
        with pytest.raises(KeyNotFound):
            stack.v2.unwrap(wrapped, aad=b"a")
        assert stack.v2.stats().emergency_decrypts == 1  # type: ignore[attr-defined]
    finally:
        stack.close()
