"""Read and write stored values exactly as kube-apiserver's transformer chain does.

For one resource the EncryptionConfiguration gives an ordered provider list. It is flattened into
*slots*, one per prefix, in order: an aes/secretbox provider gives one slot per key
(``k8s:enc:aesgcm:v1:<key>:``), a KMS provider one slot (``k8s:enc:kms:v2:<name>:``), identity one slot
with the empty prefix.

Read (``prefixTransformers.TransformFromStorage``): try the slots in order whose prefix the value starts
with; the first that decrypts wins; failures are collected and the next matching slot is tried. Identity
matches anything but refuses values that start with ``k8s:enc:``. The result is *stale* when it was not
read through the first slot of the first provider (first key of the first provider), or (KMS v2) when its
key_id differs from the plugin's current Status key_id or its DEK source is not the HKDF seed type, or
(KMS v1) when it was the legacy CBC layout.

KMS v2 decrypt goes through the plugin with a DEK-source cache keyed like the apiserver's (source type,
encryptedDEKSource, keyID, number of annotations, annotations sorted by key), so each distinct wrapped
seed costs one Decrypt per run. KMS v1 keeps an LRU of ``cachesize`` entries keyed by the encrypted DEK.

Write (:class:`Writer`) with a chosen provider: KMS v2 makes **one** 32-byte seed per run, wraps it with a
single Encrypt whose key_id must equal Status', and seals every value with ``seal_with_seed`` (type 1, as
the apiserver has written since 1.29); KMS v1 makes a DEK and calls Encrypt per value (as the apiserver
does); aes/secretbox use the provider's first key; identity writes the plaintext.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from kubeshield.config.encryption import EncryptionConfiguration, ProviderConfig, ProviderKey
from kubeshield.envelope.aes import open_aescbc, open_aesgcm, seal_aescbc, seal_aesgcm
from kubeshield.envelope.kmsv1 import (
    decode_kmsv1_payload,
    encode_kmsv1_payload,
    open_kmsv1_data,
    seal_kmsv1_data,
)
from kubeshield.envelope.kmsv2 import (
    DEKSourceType,
    EncryptedObject,
    decode_encrypted_object,
    encode_encrypted_object,
    generate_dek,
    generate_seed,
    open_encrypted_object,
    seal_with_seed,
)
from kubeshield.envelope.prefixes import ENCRYPTED_PREFIX, value_prefix
from kubeshield.envelope.secretbox import open_secretbox, seal_secretbox
from kubeshield.errors import (
    BackendUnavailable,
    ConfigError,
    ContractViolation,
    InvalidCiphertext,
    KubeshieldError,
)
from kubeshield.etcd.kms_check import client_endpoint, refuse_abstract_for_writes

__all__ = [
    "ChainSet",
    "DecryptError",
    "KMSPlugins",
    "Located",
    "NoProviderError",
    "ReadResult",
    "TransformerChain",
    "UnknownResourceError",
    "Writer",
]

Rng = Callable[[int], bytes]
_K = TypeVar("_K", bound=Hashable)
_DEK_CACHE_MAX = 1 << 16


class DecryptError(KubeshieldError):
    """A value matched providers of the config but none of them decrypted it. Names the providers only."""


class NoProviderError(KubeshieldError):
    """A value's prefix matches no provider of the config for its resource."""


class UnknownResourceError(KubeshieldError):
    """A key's storage path is not one this version knows, so which encryption rules apply is unknown."""


class _V2Plugin(Protocol):
    def status(self) -> _StatusLike: ...
    def encrypt(self, plaintext: bytes, *, uid: str | None = None) -> _EncryptLike: ...
    def decrypt(
        self,
        ciphertext: bytes,
        *,
        key_id: str,
        annotations: Mapping[str, bytes] | None = None,
        uid: str | None = None,
    ) -> bytes: ...
    def close(self) -> None: ...


class _V1Plugin(Protocol):
    def encrypt(self, plain: bytes) -> bytes: ...
    def decrypt(self, cipher: bytes) -> bytes: ...
    def close(self) -> None: ...


class _StatusLike(Protocol):
    @property
    def key_id(self) -> str: ...


class _EncryptLike(Protocol):
    @property
    def ciphertext(self) -> bytes: ...
    @property
    def key_id(self) -> str: ...
    @property
    def annotations(self) -> Mapping[str, bytes]: ...


def _default_v2(endpoint: str, timeout: float) -> _V2Plugin:
    from kubeshield.kms.client import KMSv2Client

    return KMSv2Client(client_endpoint(endpoint), timeout=timeout)


def _default_v1(endpoint: str, timeout: float) -> _V1Plugin:
    from kubeshield.kms.client import KMSv1Client

    return KMSv1Client(client_endpoint(endpoint), timeout=timeout)


class KMSPlugins:
    """The KMS plugin connections of one run, one per provider name, opened on first use.

    ``current_key_id`` asks Status once per provider per run (the key_id staleness is judged against).
    """

    def __init__(
        self,
        *,
        v2_factory: Callable[[str, float], _V2Plugin] = _default_v2,
        v1_factory: Callable[[str, float], _V1Plugin] = _default_v1,
        skip: Iterable[str] = (),
    ) -> None:
        """``skip`` names providers this run must not call (``--skip-kms``): their values fail at once."""
        self._v2_factory, self._v1_factory = v2_factory, v1_factory
        self._v2: dict[str, _V2Plugin] = {}
        self._v1: dict[str, _V1Plugin] = {}
        self._key_ids: dict[str, str] = {}
        self._skip = frozenset(skip)

    def _refuse_skipped(self, provider: ProviderConfig) -> None:
        if provider.name in self._skip:
            raise BackendUnavailable(f"KMS provider {provider.name!r} is left out of this run (--skip-kms)")

    def v2(self, provider: ProviderConfig) -> _V2Plugin:
        self._refuse_skipped(provider)
        if provider.name not in self._v2:
            self._v2[provider.name] = self._v2_factory(provider.endpoint, provider.timeout)
        return self._v2[provider.name]

    def v1(self, provider: ProviderConfig) -> _V1Plugin:
        self._refuse_skipped(provider)
        if provider.name not in self._v1:
            self._v1[provider.name] = self._v1_factory(provider.endpoint, provider.timeout)
        return self._v1[provider.name]

    def current_key_id(self, provider: ProviderConfig) -> str:
        if provider.name not in self._key_ids:
            self._key_ids[provider.name] = self.v2(provider).status().key_id
        return self._key_ids[provider.name]

    def close(self) -> None:
        for v2 in self._v2.values():
            v2.close()
        for v1 in self._v1.values():
            v1.close()
        self._v2.clear()
        self._v1.clear()


@dataclass(frozen=True, slots=True)
class _Slot:
    prefix: bytes
    provider: ProviderConfig
    provider_index: int
    key: ProviderKey | None
    key_index: int

    @property
    def label(self) -> str:
        if self.provider.kind == "kms":
            return f"kms-{self.provider.api_version}:{self.provider.name}"
        if self.key is not None:
            return f"{self.provider.kind}:{self.key.name}"
        return "identity"

    @property
    def first(self) -> bool:
        return self.provider_index == 0 and self.key_index == 0


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A decrypted value: the plaintext, which slot read it (``aesgcm:key1``, ``kms-v2:name``,
    ``identity``) and whether the apiserver would call it stale."""

    plaintext: bytes = field(repr=False)
    provider: str
    stale: bool


@dataclass(frozen=True, slots=True)
class Located:
    """Which slot a value belongs to, found from its prefix alone (no decryption)."""

    provider: ProviderConfig
    label: str
    first: bool


class TransformerChain:
    """The read/write chain for one resource's provider list."""

    def __init__(
        self, providers: Sequence[ProviderConfig], *, plugins: KMSPlugins, rng: Rng = os.urandom
    ) -> None:
        if not providers:
            providers = (ProviderConfig(kind="identity"),)
        self.providers = tuple(providers)
        self._plugins, self._rng = plugins, rng
        slots: list[_Slot] = []
        for i, p in enumerate(self.providers):
            if p.kind == "identity":
                slots.append(_Slot(b"", p, i, None, 0))
            elif p.kind == "kms":
                slots.append(_Slot(value_prefix(f"kms-{p.api_version}", p.name), p, i, None, 0))
            else:
                slots.extend(_Slot(value_prefix(p.kind, k.name), p, i, k, j) for j, k in enumerate(p.keys))
        self._slots = tuple(slots)
        self._v2_cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._v1_cache: OrderedDict[bytes, bytes] = OrderedDict()

    # -- reading ----------------------------------------------------------------------------------------

    def locate(self, value: bytes) -> Located:
        """The slot the apiserver would try first for ``value``; raises ``NoProviderError``."""
        for slot in self._slots:
            if slot.provider.kind == "identity":
                if value.startswith(ENCRYPTED_PREFIX):
                    continue
            elif not value.startswith(slot.prefix):
                continue
            return Located(provider=slot.provider, label=slot.label, first=slot.first)
        raise NoProviderError(self._no_match_message())

    def _no_match_message(self) -> str:
        names = ", ".join(s.label for s in self._slots)
        return f"the value's prefix matches no configured provider (configured: {names})"

    def read(self, value: bytes, *, key: bytes) -> ReadResult:
        """Decrypt ``value`` stored under etcd key ``key`` (the AAD), as the apiserver would."""
        tried: list[str] = []
        plugin_error: KubeshieldError | None = None
        for slot in self._slots:
            if slot.provider.kind == "identity":
                if value.startswith(ENCRYPTED_PREFIX):
                    continue
                return ReadResult(plaintext=value, provider=slot.label, stale=not slot.first)
            if not value.startswith(slot.prefix):
                continue
            try:
                plaintext, stale = self._open(slot, value[len(slot.prefix) :], aad=key)
            except InvalidCiphertext:
                tried.append(slot.label)
                continue
            except KubeshieldError as exc:  # the plugin failed (down, timeout, contract): report it
                tried.append(slot.label)
                plugin_error = plugin_error or exc
                continue
            return ReadResult(plaintext=plaintext, provider=slot.label, stale=stale or not slot.first)
        if plugin_error is not None:
            raise plugin_error
        if tried:
            raise DecryptError(f"did not decrypt with {', '.join(tried)} (wrong key, or corrupt value)")
        raise NoProviderError(self._no_match_message())

    def _open(self, slot: _Slot, payload: bytes, *, aad: bytes) -> tuple[bytes, bool]:
        p = slot.provider
        if p.kind == "aesgcm":
            assert slot.key is not None
            return open_aesgcm(slot.key.secret, payload, aad=aad), False
        if p.kind == "aescbc":
            assert slot.key is not None
            return open_aescbc(slot.key.secret, payload), False
        if p.kind == "secretbox":
            assert slot.key is not None
            return open_secretbox(slot.key.secret, payload), False
        if p.api_version == "v2":
            return self._open_v2(p, payload, aad=aad)
        return self._open_v1(p, payload, aad=aad)

    def _open_v2(self, p: ProviderConfig, payload: bytes, *, aad: bytes) -> tuple[bytes, bool]:
        obj = decode_encrypted_object(payload)
        cache_key = _v2_cache_key(obj)
        source = self._v2_cache.get(cache_key)
        if source is None:
            source = self._plugins.v2(p).decrypt(
                obj.encrypted_dek_source, key_id=obj.key_id, annotations=dict(obj.annotations)
            )
            self._remember(self._v2_cache, cache_key, source, _DEK_CACHE_MAX)
        plaintext = open_encrypted_object(obj, source, aad=aad)
        stale = obj.dek_source_type != DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
        if not stale:
            stale = obj.key_id != self._plugins.current_key_id(p)
        return plaintext, stale

    def _open_v1(self, p: ProviderConfig, payload: bytes, *, aad: bytes) -> tuple[bytes, bool]:
        encrypted_dek, data = decode_kmsv1_payload(payload)
        dek = self._v1_cache.get(encrypted_dek)
        if dek is None:
            dek = self._plugins.v1(p).decrypt(encrypted_dek)
            if p.cachesize is not None and p.cachesize > 0:
                self._remember(self._v1_cache, encrypted_dek, dek, p.cachesize)
        return open_kmsv1_data(dek, data, aad=aad)

    @staticmethod
    def _remember(cache: OrderedDict[_K, bytes], key: _K, value: bytes, limit: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)

    def prime_v2(self, obj: EncryptedObject, source: bytes) -> None:
        """Put a DEK source we made ourselves into the cache (so our own writes read back without a call)."""
        self._remember(self._v2_cache, _v2_cache_key(obj), source, _DEK_CACHE_MAX)

    def provider(self, name: str) -> ProviderConfig:
        """The provider ``--to NAME`` means: a KMS provider's name, or identity/aescbc/aesgcm/secretbox."""
        for p in self.providers:
            if p.display_name == name:
                return p
        names = ", ".join(p.display_name for p in self.providers)
        raise ConfigError(f"--to: no provider named {name!r} for this resource (have: {names})")


def _v2_cache_key(obj: EncryptedObject) -> tuple[object, ...]:
    """Like the apiserver's: type, encryptedDEKSource, keyID, len(annotations), sorted annotations."""
    items = tuple(sorted(obj.annotations.items()))
    return (int(obj.dek_source_type), obj.encrypted_dek_source, obj.key_id, len(items), items)


class Writer:
    """Writes values with one provider, byte-compatible with kube-apiserver."""

    def __init__(
        self, chain: TransformerChain, provider: ProviderConfig, *, plugins: KMSPlugins, rng: Rng = os.urandom
    ) -> None:
        refuse_abstract_for_writes(provider)
        self.provider, self._chain, self._plugins, self._rng = provider, chain, plugins, rng
        self._seed: bytes | None = None
        self._stamp: tuple[str, bytes, Mapping[str, bytes]] | None = None
        if provider.kind == "kms":
            self.prefix = value_prefix(f"kms-{provider.api_version}", provider.name)
        elif provider.kind == "identity":
            self.prefix = b""
        else:
            self.prefix = value_prefix(provider.kind, provider.keys[0].name)
        if provider.kind == "kms" and provider.api_version == "v2":
            self._start_v2()

    def _start_v2(self) -> None:
        plugin = self._plugins.v2(self.provider)
        current = self._plugins.current_key_id(self.provider)
        seed = generate_seed(rng=self._rng)
        reply = plugin.encrypt(seed)
        if reply.key_id != current:
            raise ContractViolation(
                f"KMS provider {self.provider.name!r}: Encrypt key_id differs from Status key_id "
                "(the apiserver would refuse to rotate; try again once the plugin is consistent)"
            )
        self._seed = seed
        self._stamp = (reply.key_id, bytes(reply.ciphertext), dict(reply.annotations))

    @property
    def key_id(self) -> str | None:
        return self._stamp[0] if self._stamp is not None else None

    def is_current(self, value: bytes) -> bool:
        """True when ``value`` is already what this writer would produce (so a rewrite skips it)."""
        kind = self.provider.kind
        if kind == "identity":
            return not value.startswith(ENCRYPTED_PREFIX)
        if not value.startswith(self.prefix):
            return False
        if kind == "kms" and self.provider.api_version == "v2":
            assert self._stamp is not None
            try:
                obj = decode_encrypted_object(value[len(self.prefix) :])
            except InvalidCiphertext:
                return False
            return (
                obj.key_id == self._stamp[0]
                and obj.dek_source_type == DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
            )
        return True

    def write(self, plaintext: bytes, *, key: bytes) -> bytes:
        """The value the apiserver would store for ``plaintext`` under etcd key ``key``.

        KMS v2 layout: ``k8s:enc:kms:v2:<name>:`` ‖ EncryptedObject{1 encryptedData = info(32) ‖
        nonce(12) ‖ GCM(plaintext, AAD=key) ‖ tag(16), 2 keyID, 3 encryptedDEKSource, 4 annotations,
        5 type=1}.
        """
        p = self.provider
        if p.kind == "identity":
            return plaintext
        if p.kind == "aesgcm":
            return self.prefix + seal_aesgcm(p.keys[0].secret, plaintext, aad=key, rng=self._rng)
        if p.kind == "aescbc":
            return self.prefix + seal_aescbc(p.keys[0].secret, plaintext, rng=self._rng)
        if p.kind == "secretbox":
            return self.prefix + seal_secretbox(p.keys[0].secret, plaintext, rng=self._rng)
        if p.api_version == "v2":
            assert self._seed is not None and self._stamp is not None
            key_id, wrapped, annotations = self._stamp
            obj = EncryptedObject(
                encrypted_data=seal_with_seed(self._seed, plaintext, aad=key, rng=self._rng),
                key_id=key_id,
                encrypted_dek_source=wrapped,
                annotations=annotations,
                dek_source_type=DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
            )
            self._chain.prime_v2(obj, self._seed)
            return self.prefix + encode_encrypted_object(obj)
        dek = generate_dek(rng=self._rng)
        encrypted_dek = self._plugins.v1(p).encrypt(dek)
        return self.prefix + encode_kmsv1_payload(
            encrypted_dek, seal_kmsv1_data(dek, plaintext, aad=key, rng=self._rng)
        )


class ChainSet:
    """Chains and writers per resource for one run, sharing one set of plugin connections.

    Writers are shared per provider, so a KMS v2 target gets one seed (one Encrypt) per run.
    """

    def __init__(
        self,
        config: EncryptionConfiguration | None,
        *,
        plugins: KMSPlugins | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        self.config = config
        self.plugins = plugins if plugins is not None else KMSPlugins()
        self._rng = rng
        self._chains: dict[tuple[ProviderConfig, ...], TransformerChain] = {}
        self._writers: dict[tuple[str, str], Writer | KubeshieldError] = {}

    def chain(self, resource: str | None) -> TransformerChain:
        """The chain for ``resource`` (an EncryptionConfiguration name, as ``KeyPath.encryption_resource``
        gives it); None (a storage path this version does not know) raises ``UnknownResourceError``
        unless there is no config (then everything is identity)."""
        if resource is None:
            if self.config is not None:
                raise UnknownResourceError(
                    "kubeshield does not know which API resource is stored here (a built-in newer than "
                    "its storage-path table?), so it cannot tell which encryption rules apply"
                )
            resource = ""
        providers = self.config.providers_for(resource) if self.config is not None else None
        providers = providers or (ProviderConfig(kind="identity"),)
        if providers not in self._chains:
            self._chains[providers] = TransformerChain(providers, plugins=self.plugins, rng=self._rng)
        return self._chains[providers]

    def writer(self, resource: str | None, name: str) -> Writer:
        chain = self.chain(resource)
        provider = chain.provider(name)
        key = (provider.kind, provider.display_name)
        if key not in self._writers:
            try:
                self._writers[key] = Writer(chain, provider, plugins=self.plugins, rng=self._rng)
            except KubeshieldError as exc:  # remembered: a plugin that is down is not asked per key
                self._writers[key] = exc
        found = self._writers[key]
        if isinstance(found, KubeshieldError):
            raise found
        return found

    def close(self) -> None:
        self.plugins.close()
