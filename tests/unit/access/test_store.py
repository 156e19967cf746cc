"""The sealed credential store: round trips, one opaque error for tampering, wrong passphrase, files."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from kubeshield.access.store import STORE_FILE, Argon2Params, CredentialStore, StoreKey, default_store_dir
from kubeshield.errors import ConfigError, InvalidCiphertext, WrongPassphrase
from kubeshield.keys.testing import InMemoryBackend
from tests.support.access_agent import cert_credential, token_credential

CHEAP = Argon2Params(iterations=1, lanes=1, memory_kib=64)  # tests only: the default is 64 MiB


def _pass(secret: bytes = b"correct horse") -> StoreKey:
    return StoreKey(passphrase=secret, argon2=CHEAP)


def test_a_passphrase_store_round_trips_every_field(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "access")
    creds = [cert_credential("prod", subject="alice"), token_credential("dev")]
    store.save(creds, _pass())
    back = store.load(_pass())
    assert back == creds
    assert [c.client_key_pem for c in back] == [c.client_key_pem for c in creds]
    assert [c.token for c in back] == [c.token for c in creds]
    assert store.protection_kind() == "passphrase"


def test_a_backend_store_round_trips_and_another_backend_cannot_open_it(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    store = CredentialStore(tmp_path / "access")
    creds = [token_credential("dev")]
    store.save(creds, StoreKey(backend=backend))
    assert store.load(StoreKey(backend=backend)) == creds
    assert store.protection_kind() == "backend"
    with pytest.raises(InvalidCiphertext):
        store.load(StoreKey(backend=InMemoryBackend()))


def test_the_file_holds_no_plaintext_and_is_private(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "access")
    cred = cert_credential("prod")
    token = token_credential("dev", token="very-secret-token-value-123")
    store.save([cred, token], _pass())
    raw = store.path.read_bytes()
    assert b"very-secret-token-value-123" not in raw and b"PRIVATE KEY" not in raw
    assert base64.b64encode(cred.client_key_pem or b"")[:40] not in raw
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700


def test_a_wrong_passphrase_is_named(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "access")
    store.save([token_credential()], _pass())
    with pytest.raises(WrongPassphrase):
        store.load(_pass(b"wrong"))


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrappedKey"])
@pytest.mark.parametrize("kind", ["passphrase", "backend"])
def test_any_tampered_byte_is_the_one_opaque_error(tmp_path: Path, field: str, kind: str) -> None:
    backend = InMemoryBackend()
    key = _pass() if kind == "passphrase" else StoreKey(backend=backend)
    store = CredentialStore(tmp_path / "access")
    store.save([cert_credential()], key)
    document = json.loads(store.path.read_text())
    raw = bytearray(base64.b64decode(document[field]))
    raw[len(raw) // 2] ^= 0x01
    document[field] = base64.b64encode(bytes(raw)).decode()
    store.path.write_text(json.dumps(document))
    with pytest.raises(InvalidCiphertext) as caught:
        store.load(key)
    assert str(caught.value) == "invalid ciphertext"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(format="other"),
        lambda d: d.update(ciphertext="***"),
        lambda d: d["protection"].update(kdf="pbkdf2"),
        lambda d: d["protection"].update(memoryKiB=1 << 30),
        lambda d: d.pop("nonce"),
    ],
)
def test_a_malformed_store_is_the_one_opaque_error(tmp_path: Path, edit: object) -> None:
    store = CredentialStore(tmp_path / "access")
    store.save([token_credential()], _pass())
    document = json.loads(store.path.read_text())
    edit(document)  # type: ignore[operator]
    store.path.write_text(json.dumps(document))
    with pytest.raises(InvalidCiphertext):
        store.load(_pass())


def test_a_changed_salt_reads_as_a_wrong_passphrase(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "access")
    store.save([token_credential()], _pass())
    document = json.loads(store.path.read_text())
    document["protection"]["salt"] = base64.b64encode(os.urandom(16)).decode()
    store.path.write_text(json.dumps(document))
    with pytest.raises(WrongPassphrase):
        store.load(_pass())


def test_upsert_replaces_by_context_and_remove_drops(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "access")
    assert store.upsert([token_credential("a"), token_credential("b")], _pass()) == ["a", "b"]
    newer = token_credential("a", token="newer-token")
    assert sorted(store.upsert([newer], _pass())) == ["a", "b"]
    assert {c.context: c.token for c in store.load(_pass())}["a"] == "newer-token"
    assert store.remove(["b"], _pass()) == ["a"]


def test_a_store_directory_others_can_enter_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "access"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(ConfigError, match="must be 0700"):
        CredentialStore(directory).save([token_credential()], _pass())
    assert not (directory / STORE_FILE).exists()


def test_a_readable_store_file_is_refused(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "access")
    store.save([token_credential()], _pass())
    store.path.chmod(0o644)
    with pytest.raises(ConfigError, match="must be 0600"):
        store.load(_pass())


def test_a_missing_store_says_to_import(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kubeshield access import"):
        CredentialStore(tmp_path / "none").load(_pass())


def test_the_key_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError):
        StoreKey()
    with pytest.raises(ValueError):
        StoreKey(passphrase=b"x", backend=InMemoryBackend())
    assert "x" not in repr(StoreKey(passphrase=b"x"))


def test_default_directory_follows_xdg() -> None:
    assert default_store_dir({"XDG_DATA_HOME": "/d"}) == Path("/d/kubeshield/access")
    assert default_store_dir({"HOME": "/h"}) == Path("/h/.local/share/kubeshield/access")
