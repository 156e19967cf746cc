"""The apiserver-like read/write chain with in-memory plugin doubles (real vectors included)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from bench.seed_etcd import value_for
from kubeshield.config.encryption import parse_encryption_config
from kubeshield.envelope.aes import seal_aescbc
from kubeshield.envelope.kmsv1 import encode_kmsv1_payload
from kubeshield.envelope.objects import decode_object, encode_secret
from kubeshield.errors import BackendUnavailable
from kubeshield.etcd.transformers import ChainSet, DecryptError, KMSPlugins, NoProviderError
from tests.support.etcd import real_etcd_vectors


@dataclass
class Status:
    key_id: str


@dataclass
class Reply:
    ciphertext: bytes
    key_id: str
    annotations: Mapping[str, bytes] = field(default_factory=dict)


class Base64V2:
    """In-memory double of the apiserver's base64 test plugin."""

    def __init__(self, key_id: str = "1") -> None:
        self.key_id, self.decrypts, self.encrypts, self.down = key_id, 0, 0, False

    def status(self) -> Status:
        if self.down:
            raise BackendUnavailable("plugin down")
        return Status(self.key_id)

    def encrypt(self, plaintext: bytes, *, uid: str | None = None) -> Reply:
        self.encrypts += 1
        return Reply(
            base64.b64encode(plaintext), self.key_id, {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}
        )

    def decrypt(self, ciphertext: bytes, *, key_id: str, annotations=None, uid=None) -> bytes:
        if self.down:
            raise BackendUnavailable("plugin down")
        self.decrypts += 1
        return base64.b64decode(ciphertext)

    def close(self) -> None:
        pass


class Base64V1:
    def encrypt(self, plain: bytes) -> bytes:
        return base64.b64encode(plain)

    def decrypt(self, cipher: bytes) -> bytes:
        return base64.b64decode(cipher)

    def close(self) -> None:
        pass


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _config(first: str = "kms"):
    providers = {
        "kms": {"kms": {"apiVersion": "v2", "name": "kms-provider", "endpoint": "unix:///x.sock"}},
        "aesgcm": {
            "aesgcm": {"keys": [{"name": "key1", "secret": _key()}, {"name": "key2", "secret": _key()}]}
        },
        "aescbc": {"aescbc": {"keys": [{"name": "key1", "secret": _key()}]}},
        "v1": {"kms": {"name": "v1prov", "endpoint": "unix:///y.sock"}},
        "identity": {"identity": {}},
    }
    order = [first] + [k for k in providers if k != first]
    return parse_encryption_config(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [{"resources": ["secrets"], "providers": [providers[k] for k in order]}],
        }
    )


@pytest.fixture
def plugin() -> Base64V2:
    return Base64V2()


def _chains(config, plugin: Base64V2) -> ChainSet:
    return ChainSet(
        config, plugins=KMSPlugins(v2_factory=lambda e, t: plugin, v1_factory=lambda e, t: Base64V1())
    )


SECRET = encode_secret(name="s", namespace="ns", data={"k": b"v"})
KEY = b"/registry/secrets/ns/s"


def test_real_apiserver_vectors_read_and_staleness(plugin: Base64V2) -> None:
    chain = _chains(_config(), plugin).chain("secrets")
    results = {}
    for v in real_etcd_vectors():
        result = chain.read(bytes.fromhex(v["etcd_value_hex"]), key=v["etcd_key"].encode())
        obj = decode_object(result.plaintext)
        assert (obj.name, obj.namespace) == (v["expected"]["name"], v["expected"]["namespace"])
        assert {k: x.decode() for k, x in obj.data.items()} == v["expected"]["data"]
        results[v["dek_source_type"]] = result.stale
    assert results == {0: True, 1: False}  # type 0 is stale, type 1 under the current key_id is not
    plugin.key_id = "2"
    fresh = _chains(_config(), plugin).chain("secrets")
    assert fresh.read(
        bytes.fromhex(real_etcd_vectors()[1]["etcd_value_hex"]),
        key=real_etcd_vectors()[1]["etcd_key"].encode(),
    ).stale


def test_every_slot_reads_and_only_the_first_is_fresh(plugin: Base64V2) -> None:
    config = _config()
    chain = _chains(config, plugin).chain("secrets")
    for entry, stale in [
        ("kms-v2:kms-provider@1", False),
        ("kms-v2:kms-provider@7", True),
        ("kms-v2-type0:kms-provider@1", True),
        ("aesgcm:key1", True),
        ("aesgcm:key2", True),
        ("aescbc:key1", True),
        ("kms-v1:v1prov", True),
        ("identity", True),
    ]:
        result = chain.read(value_for(entry, KEY, SECRET, config=config), key=KEY)
        assert result.plaintext == SECRET, entry
        assert result.stale is stale, entry


def test_first_key_of_first_provider_is_fresh_second_key_stale(plugin: Base64V2) -> None:
    config = _config("aesgcm")
    chain = _chains(config, plugin).chain("secrets")
    assert not chain.read(value_for("aesgcm:key1", KEY, SECRET, config=config), key=KEY).stale
    assert chain.read(value_for("aesgcm:key2", KEY, SECRET, config=config), key=KEY).stale


def test_gcm_is_bound_to_the_etcd_key(plugin: Base64V2) -> None:
    config = _config()
    chain = _chains(config, plugin).chain("secrets")
    for entry in ("aesgcm:key1", "kms-v2:kms-provider@1", "kms-v1:v1prov"):
        value = value_for(entry, KEY, SECRET, config=config)
        with pytest.raises(DecryptError, match="did not decrypt"):
            chain.read(value, key=b"/registry/secrets/ns/other")


def test_identity_refuses_encrypted_prefixes_and_unknown_names_match_nothing(plugin: Base64V2) -> None:
    chain = _chains(_config(), plugin).chain("secrets")
    with pytest.raises(NoProviderError, match="matches no configured provider"):
        chain.read(b"k8s:enc:aesgcm:v1:key9:" + bytes(40), key=KEY)
    with pytest.raises(NoProviderError):
        chain.locate(b"k8s:enc:secretbox:v1:key1:" + bytes(40))
    assert chain.read(b"k8s\x00anything", key=KEY).provider == "identity"


def test_kms_v1_legacy_cbc_is_stale(plugin: Base64V2) -> None:
    config = _config("v1")
    chain = _chains(config, plugin).chain("secrets")
    dek = os.urandom(32)
    value = b"k8s:enc:kms:v1:v1prov:" + encode_kmsv1_payload(base64.b64encode(dek), seal_aescbc(dek, SECRET))
    result = chain.read(value, key=KEY)
    assert result.plaintext == SECRET and result.stale
    assert not chain.read(value_for("kms-v1:v1prov", KEY, SECRET, config=config), key=KEY).stale


def test_dek_cache_one_decrypt_per_wrapped_seed(plugin: Base64V2) -> None:
    config = _config()
    chain = _chains(config, plugin).chain("secrets")
    from bench.seed_etcd import seed_values

    for key, value in seed_values(40, mix=("kms-v2:kms-provider@1", "kms-v2:kms-provider@2"), config=config):
        chain.read(value, key=key)
    assert plugin.decrypts == 2


def test_writer_kms_v2_one_encrypt_per_run_and_round_trip(plugin: Base64V2) -> None:
    chains = _chains(_config(), plugin)
    writer = chains.writer("secrets", "kms-provider")
    values = [writer.write(SECRET + bytes([i]), key=KEY) for i in range(5)]
    assert chains.writer("secrets", "kms-provider") is writer
    assert plugin.encrypts == 1
    assert all(writer.is_current(v) for v in values)
    assert [chains.chain("secrets").read(v, key=KEY).plaintext for v in values] == [
        SECRET + bytes([i]) for i in range(5)
    ]
    assert plugin.decrypts == 0  # our own seed was primed into the cache


def test_writer_refuses_encrypt_key_id_mismatch(plugin: Base64V2) -> None:
    class Liar(Base64V2):
        def encrypt(self, plaintext: bytes, *, uid: str | None = None) -> Reply:
            return Reply(base64.b64encode(plaintext), "other")

    chains = _chains(_config(), Liar())
    from kubeshield.errors import ContractViolation

    with pytest.raises(ContractViolation, match="differs from Status"):
        chains.writer("secrets", "kms-provider")


def test_plugin_down_is_raised_not_hidden(plugin: Base64V2) -> None:
    config = _config()
    chain = _chains(config, plugin).chain("secrets")
    value = value_for("kms-v2:kms-provider@1", KEY, SECRET, config=config)
    plugin.down = True
    with pytest.raises(BackendUnavailable):
        chain.read(value, key=KEY)


def test_unknown_writer_name_lists_the_choices(plugin: Base64V2) -> None:
    from kubeshield.errors import ConfigError

    with pytest.raises(ConfigError, match="have: kms-provider, aesgcm, aescbc, v1prov, identity"):
        _chains(_config(), plugin).writer("secrets", "nope")
