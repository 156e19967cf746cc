"""The node sealing-key file: created 0600, wrapped by a key backend, rotated, reloaded, checked on load."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kubeshield.errors import ConfigError, InvalidCiphertext, InvalidRequest, KeyNotFound, KeyringError
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.node.identity import Binding, Identity
from kubeshield.node.sealed import parse_sealed
from kubeshield.node.sealing_keys import PublicSealingKey, SealingKeyFile

APP = Binding(Identity("ns-a", "app"))


@pytest.fixture
def backend(tmp_path: Path) -> LocalKeyBackend:
    return LocalKeyBackend.create(path=tmp_path / "keyring", passphrase=b"correct horse")


def test_create_open_seal_and_the_file_holds_no_root(tmp_path: Path, backend: LocalKeyBackend) -> None:
    path = tmp_path / "sealing.json"
    info = SealingKeyFile(path).create(backend)
    assert info.version == 1 and info.state == "primary" and info.key_id == backend.key_id()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = SealingKeyFile(path).open(backend)
    text = keys.seal(b"hunter2", binding=APP)
    assert keys.open(parse_sealed(text)) == b"hunter2"
    doc = json.loads(path.read_text())
    assert doc["kind"] == "KubeshieldNodeSealingKeys" and len(doc["keys"]) == 1
    # without the key backend the file opens nothing: another keyring cannot unwrap the root
    other = LocalKeyBackend.create(path=tmp_path / "other", passphrase=b"x")
    with pytest.raises((InvalidCiphertext, KeyNotFound)):
        SealingKeyFile(path).open(other)


def test_create_refuses_to_replace_and_needs_a_directory(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    path = tmp_path / "k.json"
    SealingKeyFile(path).create(backend)
    with pytest.raises(InvalidRequest, match="would no longer"):
        SealingKeyFile(path).create(backend)
    assert SealingKeyFile(path).create(backend, force=True).version == 1
    with pytest.raises(ConfigError, match="does not exist"):
        SealingKeyFile(tmp_path / "missing" / "k.json").create(backend)


def test_rotation_keeps_old_versions_opening_and_reload_follows_the_file(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    path = tmp_path / "k.json"
    SealingKeyFile(path).create(backend)
    keys = SealingKeyFile(path).open(backend)
    old = keys.seal(b"v1", binding=APP)
    offline = SealingKeyFile(path).public_key().seal(b"offline", binding=APP)
    assert keys.refresh() is False
    assert SealingKeyFile(path).rotate(backend).version == 2
    assert keys.refresh() is True and keys.primary_version == 2
    new = keys.seal(b"v2", binding=APP)
    assert parse_sealed(new).key_version == 2 and parse_sealed(old).key_version == 1
    assert keys.open(parse_sealed(old)) == b"v1" and keys.open(parse_sealed(offline)) == b"offline"
    assert [i.state for i in SealingKeyFile(path).info()] == ["active", "primary"]
    closed = SealingKeyFile(path).open(backend)
    closed.close()
    with pytest.raises(KeyNotFound):  # close() drops the roots
        closed.open(parse_sealed(new))


def test_unknown_version_is_named(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    SealingKeyFile(a).create(backend)
    SealingKeyFile(b).create(backend)
    SealingKeyFile(b).rotate(backend)
    newer = SealingKeyFile(b).open(backend).seal(b"x", binding=APP)
    with pytest.raises(KeyNotFound, match="version 2"):
        SealingKeyFile(a).open(backend).open(parse_sealed(newer))


def test_a_swapped_public_key_or_root_is_caught_on_load(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    path = tmp_path / "k.json"
    SealingKeyFile(path).create(backend)
    SealingKeyFile(path).rotate(backend)
    doc = json.loads(path.read_text())
    doc["keys"][0]["publicKey"], doc["keys"][1]["publicKey"] = (
        doc["keys"][1]["publicKey"],
        doc["keys"][0]["publicKey"],
    )
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="does not match its public key"):
        SealingKeyFile(path).open(backend)
    doc = json.loads(path.read_text())
    doc["keys"][0]["wrapped"], doc["keys"][1]["wrapped"] = (
        doc["keys"][1]["wrapped"],
        doc["keys"][0]["wrapped"],
    )
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidCiphertext):  # a root wrapped for version 2 does not unwrap as version 1
        SealingKeyFile(path).open(backend)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"kind": "Other"}', "not a node sealing-key file"),
        ('{"kind": "KubeshieldNodeSealingKeys", "formatVersion": 1, "keys": []}', "at least one"),
        (
            '{"kind": "KubeshieldNodeSealingKeys", "formatVersion": 1, "keys": [{"version": 1}]}',
            "keys\\[0\\]",
        ),
    ],
)
def test_corrupt_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(KeyringError, match=message):
        SealingKeyFile(path).info()
    with pytest.raises(KeyringError, match="node keys init"):
        SealingKeyFile(tmp_path / "none.json").info()


def test_public_key_json_round_trip_and_refusals() -> None:
    key = PublicSealingKey(3, bytes(range(32)))
    assert PublicSealingKey.from_json(key.to_json()) == key
    for bad in (
        "{}",
        '{"kind": "KubeshieldNodeSealingPublicKey", "keyVersion": 0, "x25519": "AA"}',
        "[]",
        "x",
    ):
        with pytest.raises(ConfigError, match="not a kubeshield node sealing public key"):
            PublicSealingKey.from_json(bad)
