"""LocalKeyBackend beyond the contract: the documented blob layout, refresh, threads, close."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.config import LocalSettings
from kubeshield.errors import (
    BackendUnavailable,
    InvalidCiphertext,
    KeyNotFound,
    KeyringError,
    WrongPassphrase,
)
from kubeshield.keys.base import Exportable, Refreshable, Rotatable, Wrapped
from kubeshield.keys.keyring import KeyringFile, fingerprint
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring


@pytest.fixture
def path(tmp_path: Path) -> Path:
    make_keyring(tmp_path / "kr")
    return tmp_path / "kr"


def test_abilities(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    assert (
        isinstance(backend, Rotatable)
        and isinstance(backend, Refreshable)
        and isinstance(backend, Exportable)
    )
    assert backend.name == "local"


def test_blob_layout_matches_the_docstring(path: Path) -> None:
    nonce = bytes(range(12))
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE, rng=lambda n: nonce[:n])
    key = KeyringFile(path).load(PASSPHRASE).keys[1]
    seed = b"\x42" * 32
    wrapped = backend.wrap(seed, aad=b"ctx")
    key_id = wrapped.key_id
    aad = b"kubeshield/local/v1\x00" + key_id.encode() + b"\x00" + b"ctx"
    expected = b"\x01" + fingerprint(key) + nonce + AESGCM(key).encrypt(nonce, seed, aad)
    assert wrapped.ciphertext == expected
    assert len(wrapped.ciphertext) == 1 + 8 + 12 + 32 + 16
    assert wrapped.annotations == {}


def test_blob_with_the_wrong_format_byte_is_refused(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    wrapped = backend.wrap(b"s" * 32)
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(Wrapped(b"\x02" + wrapped.ciphertext[1:], wrapped.key_id))


def test_key_id_selects_and_must_agree_with_fingerprint(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    old = backend.wrap(b"s" * 32)
    backend.rotate()
    new = backend.wrap(b"t" * 32)
    # old blob claimed under the new key_id: fingerprint disagrees -> opaque failure
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(Wrapped(old.ciphertext, new.key_id))
    # a key_id from another keyring is unknown here
    other = LocalKeyBackend.create(path=path.with_name("other"), argon2=CHEAP_ARGON2)
    with pytest.raises(KeyNotFound):
        backend.unwrap(other.wrap(b"u" * 32))
    # empty key_id and a fingerprint this keyring does not have
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(Wrapped(other.wrap(b"u" * 32).ciphertext, ""))


def test_wrong_types_are_type_errors(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    with pytest.raises(TypeError, match="aad"):
        backend.wrap(b"x", aad="ctx")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrapped"):
        backend.unwrap(b"blob")  # type: ignore[arg-type]


def test_open_with_wrong_passphrase(path: Path) -> None:
    with pytest.raises(WrongPassphrase):
        LocalKeyBackend(path=path, passphrase=b"nope")


def test_refresh_is_a_noop_until_the_file_changes(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    assert backend.refresh() is False
    old_id = backend.key_id()
    old = backend.wrap(b"s" * 32)
    new_id = KeyringFile(path).rotate(passphrase=PASSPHRASE).info.primary.key_id  # another process
    assert backend.key_id() == old_id
    assert backend.refresh() is True
    assert backend.key_id() == new_id != old_id
    assert backend.unwrap(old) == b"s" * 32
    assert backend.refresh() is False


def test_refresh_failure_keeps_the_old_keys(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    wrapped = backend.wrap(b"s" * 32)
    shutil.copy(path, path.with_name("good"))
    path.write_bytes(b'{"kind": "KubeshieldKeyring", "formatVersion": 1')
    with pytest.raises(KeyringError, match="not valid JSON"):
        backend.refresh()
    assert backend.unwrap(wrapped) == b"s" * 32
    assert backend.check_health().ok
    os.unlink(path)
    with pytest.raises(KeyringError, match="cannot stat"):
        backend.refresh()
    shutil.copy(path.with_name("good"), path)
    assert backend.refresh() is False  # same keys again: the primary did not change


def test_versions_are_exported_without_material(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE, clock=lambda: 1_700_000_000.0)
    backend.rotate()
    versions = backend.versions()
    assert [(v.version, v.state) for v in versions] == [(1, "decrypt-only"), (2, "primary")]
    assert versions[1].created == 1_700_000_000.0
    assert versions[1].key_id == backend.key_id()


def test_close_forgets_keys_and_fails_closed(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    wrapped = backend.wrap(b"s" * 32)
    backend.close()
    with pytest.raises(BackendUnavailable):
        backend.unwrap(wrapped)
    with pytest.raises(BackendUnavailable):
        backend.wrap(b"s")
    health = backend.check_health()
    assert (health.ok, health.detail) == (False, "BackendUnavailable: the local key backend is closed")


def test_health_fails_when_rng_is_broken(path: Path) -> None:
    def broken_rng(n: int) -> bytes:
        raise OSError("no entropy")

    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE, rng=broken_rng)
    health = backend.check_health()
    assert health.ok is False and health.key_id is None and health.detail == "OSError"


def test_from_settings_reads_the_passphrase_file(path: Path, tmp_path: Path) -> None:
    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    settings = LocalSettings(keyring=path, passphrase_file=tmp_path / "pass")
    backend = LocalKeyBackend.from_settings(settings, environ={})
    assert backend.check_health().ok


def test_wraps_and_unwraps_from_threads_while_rotating_and_refreshing(path: Path) -> None:
    backend = LocalKeyBackend(path=path, passphrase=PASSPHRASE)
    writer = KeyringFile(path)
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                seed = os.urandom(32)
                wrapped = backend.wrap(seed, aad=b"a")
                assert backend.unwrap(wrapped, aad=b"a") == seed
                assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=b"a") == seed
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            writer.rotate(passphrase=PASSPHRASE)
            backend.refresh()
            backend.rotate()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len(backend.versions()) == 21
