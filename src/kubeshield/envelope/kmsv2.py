"""KMS v2 storage: the ``EncryptedObject`` after ``k8s:enc:kms:v2:NAME:`` and the data it carries.

``EncryptedObject`` (proto3, package ``v2`` in kubernetes/apiserver
``pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto``), as written on the wire::

    1  encryptedData           bytes   data encrypted under the DEK or a key derived from the seed
    2  keyID                   string  key_id from the plugin's EncryptResponse (1..1024 bytes)
    3  encryptedDEKSource      bytes   EncryptResponse.ciphertext, the wrapped DEK or seed (1..1024)
    4  annotations             map<string, bytes>   entry = {1 key, 2 value}; FQDN keys, <= 32 KiB
    5  encryptedDEKSourceType  enum    0 AES_GCM_KEY (omitted when 0), 1 HKDF_SHA256_XNONCE_AES_GCM_SEED

``encryptedData`` layouts:

    type 0 (AES_GCM_KEY)                     nonce(12) || AES-GCM ciphertext || tag(16)
                                             key = the 32-byte DEK the plugin unwraps
    type 1 (HKDF_SHA256_XNONCE_AES_GCM_SEED) info(32) || nonce(12) || AES-256-GCM ciphertext || tag(16)
                                             key = HKDF-Expand(SHA-256, PRK = seed, info, 32);
                                             NO extract step, no salt

AAD is always the full etcd key (for example ``/registry/secrets/ns/name``). Every decryption or
parse failure raises the opaque :class:`~kubeshield.errors.InvalidCiphertext`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

from kubeshield.envelope import _aead, _wire, limits
from kubeshield.envelope._aead import Rng
from kubeshield.errors import ContractViolation, InvalidCiphertext

__all__ = [
    "HKDF_INFO_SIZE",
    "MIN_SEED_SIZE",
    "DEKSourceType",
    "EncryptedObject",
    "decode_encrypted_object",
    "encode_encrypted_object",
    "generate_dek",
    "generate_seed",
    "open_encrypted_object",
    "open_with_dek",
    "open_with_seed",
    "seal_with_dek",
    "seal_with_seed",
]

HKDF_INFO_SIZE = 32
MIN_SEED_SIZE = 32
_DERIVED_KEY_SIZE = 32
_DEK_SIZE = 32


class DEKSourceType(IntEnum):
    """``EncryptedObject.encryptedDEKSourceType``: what the wrapped DEK source is."""

    AES_GCM_KEY = 0
    HKDF_SHA256_XNONCE_AES_GCM_SEED = 1


@dataclass(frozen=True)
class EncryptedObject:
    """One stored KMS v2 value (after the prefix). ``annotations`` is copied into a read-only mapping."""

    encrypted_data: bytes
    key_id: str
    encrypted_dek_source: bytes
    annotations: Mapping[str, bytes]
    dek_source_type: DEKSourceType

    def __post_init__(self) -> None:
        _aead.require_bytes("encrypted_data", self.encrypted_data)
        if not isinstance(self.key_id, str):
            raise TypeError(f"key_id must be str, not {type(self.key_id).__name__}")
        _aead.require_bytes("encrypted_dek_source", self.encrypted_dek_source)
        if not isinstance(self.annotations, Mapping):
            raise TypeError(f"annotations must be a mapping, not {type(self.annotations).__name__}")
        for key, value in self.annotations.items():
            if not isinstance(key, str) or not isinstance(value, bytes):
                raise TypeError("annotations must map str to bytes")
        object.__setattr__(self, "annotations", MappingProxyType(dict(self.annotations)))
        if isinstance(self.dek_source_type, bool) or not isinstance(self.dek_source_type, int):
            raise TypeError(
                f"dek_source_type must be a DEKSourceType, not {type(self.dek_source_type).__name__}"
            )
        object.__setattr__(self, "dek_source_type", DEKSourceType(self.dek_source_type))

    def __repr__(self) -> str:  # never show ciphertext
        return (
            f"EncryptedObject(key_id={self.key_id!r}, dek_source_type={self.dek_source_type.name}, "
            f"encrypted_data=<{len(self.encrypted_data)} bytes>, "
            f"encrypted_dek_source=<{len(self.encrypted_dek_source)} bytes>, "
            f"annotations={sorted(self.annotations)!r})"
        )


def _validate(obj: EncryptedObject) -> None:
    """``ValidateEncryptedObject``: raises ``ContractViolation`` naming the broken rule."""
    if not obj.encrypted_data:
        raise ContractViolation("encrypted data is empty")
    limits.validate_encrypted_dek_source(obj.encrypted_dek_source)
    limits.validate_key_id(obj.key_id)
    limits.validate_annotations(obj.annotations)


def encode_encrypted_object(obj: EncryptedObject) -> bytes:
    """Serialize byte-identically to Go's ``proto.Marshal`` of the apiserver's ``EncryptedObject``.

    Fields in number order 1..5; map entries sorted by key, each written as ``{1 key, 2 value}`` even
    when empty; field 5 omitted for type 0 (proto3 default). Raises ``ContractViolation`` if the object
    breaks the apiserver's validation (it would refuse to store or read it).
    """
    if not isinstance(obj, EncryptedObject):
        raise TypeError(f"obj must be an EncryptedObject, not {type(obj).__name__}")
    _validate(obj)
    out = bytearray()
    out += _wire.encode_len_field(1, obj.encrypted_data)
    out += _wire.encode_len_field(2, obj.key_id.encode("utf-8"))
    out += _wire.encode_len_field(3, obj.encrypted_dek_source)
    for key in sorted(obj.annotations):
        entry = _wire.encode_len_field(1, key.encode("utf-8")) + _wire.encode_len_field(
            2, obj.annotations[key]
        )
        out += _wire.encode_len_field(4, entry)
    if obj.dek_source_type != DEKSourceType.AES_GCM_KEY:
        out += _wire.encode_varint_field(5, int(obj.dek_source_type))
    return bytes(out)


def _len_value(wire_type: int, value: int | bytes) -> bytes:
    if wire_type != _wire.LEN or not isinstance(value, bytes):
        raise _wire.WireError("wrong wire type for a length-delimited field")
    return value


def _decode_annotation_entry(entry: bytes) -> tuple[bytes, bytes]:
    key = b""
    value = b""
    for number, wire_type, field_value in _wire.iter_fields(entry):
        if number == 1:
            key = _len_value(wire_type, field_value)
        elif number == 2:
            value = _len_value(wire_type, field_value)
    return key, value


def decode_encrypted_object(payload: bytes) -> EncryptedObject:
    """Parse and validate a stored ``EncryptedObject`` the way the apiserver does on read.

    Requires non-empty encrypted data, key_id 1..1024 bytes of UTF-8, encrypted DEK source 1..1024
    bytes, valid annotations and a known source type. Unknown fields are skipped; a repeated field
    keeps its last value (as Go does). Any failure raises ``InvalidCiphertext``.
    """
    payload = _aead.require_bytes("payload", payload)
    data = b""
    key_id = b""
    dek_source = b""
    annotations: dict[str, bytes] = {}
    source_type = 0
    try:
        for number, wire_type, value in _wire.iter_fields(payload):
            if number == 1:
                data = _len_value(wire_type, value)
            elif number == 2:
                key_id = _len_value(wire_type, value)
            elif number == 3:
                dek_source = _len_value(wire_type, value)
            elif number == 4:
                raw_key, raw_value = _decode_annotation_entry(_len_value(wire_type, value))
                annotations[raw_key.decode("utf-8")] = raw_value
            elif number == 5:
                if wire_type != _wire.VARINT or not isinstance(value, int):
                    raise _wire.WireError("wrong wire type for an enum field")
                source_type = value
        obj = EncryptedObject(
            encrypted_data=data,
            key_id=key_id.decode("utf-8"),
            encrypted_dek_source=dek_source,
            annotations=annotations,
            dek_source_type=DEKSourceType(source_type),
        )
        _validate(obj)
    except (_wire.WireError, UnicodeDecodeError, ValueError, ContractViolation):
        raise InvalidCiphertext() from None
    return obj


def generate_seed(*, rng: Rng = os.urandom) -> bytes:
    """A fresh 32-byte seed for type 1 (what the apiserver wraps once per process and key_id)."""
    return _aead.random_bytes(rng, MIN_SEED_SIZE)


def generate_dek(*, rng: Rng = os.urandom) -> bytes:
    """A fresh 32-byte AES-256 DEK (KMS v2 type 0, KMS v1)."""
    return _aead.random_bytes(rng, _DEK_SIZE)


def seal_with_seed(seed: bytes, plaintext: bytes, *, aad: bytes, rng: Rng = os.urandom) -> bytes:
    """Type 1: ``info(32) || nonce(12) || ciphertext || tag(16)`` under HKDF-Expand(seed, info).

    ``rng`` is called twice: first for the 32-byte info, then for the 12-byte nonce. Replace it only
    in tests. ``seed`` must be at least 32 bytes (``ValueError`` otherwise).
    """
    seed = _aead.require_bytes("seed", seed)
    if len(seed) < MIN_SEED_SIZE:
        raise ValueError(f"seed must be at least {MIN_SEED_SIZE} bytes long, not {len(seed)}")
    plaintext = _aead.require_bytes("plaintext", plaintext)
    aad = _aead.require_bytes("aad", aad)
    info = _aead.random_bytes(rng, HKDF_INFO_SIZE)
    nonce = _aead.random_bytes(rng, _aead.GCM_NONCE_SIZE)
    key = _aead.hkdf_expand_sha256(seed, info, _DERIVED_KEY_SIZE)
    return info + _aead.gcm_seal(key, nonce, plaintext, aad)


def open_with_seed(seed: bytes, encrypted_data: bytes, *, aad: bytes) -> bytes:
    """Open type-1 ``encryptedData``. A seed shorter than 32 bytes (the plugin unwrapped something
    that is not a seed) or any other failure raises ``InvalidCiphertext``."""
    seed = _aead.require_bytes("seed", seed)
    encrypted_data = _aead.require_bytes("encrypted_data", encrypted_data)
    aad = _aead.require_bytes("aad", aad)
    if len(seed) < MIN_SEED_SIZE or len(encrypted_data) < HKDF_INFO_SIZE:
        raise InvalidCiphertext()
    key = _aead.hkdf_expand_sha256(seed, encrypted_data[:HKDF_INFO_SIZE], _DERIVED_KEY_SIZE)
    return _aead.gcm_open(key, encrypted_data[HKDF_INFO_SIZE:], aad)


def seal_with_dek(dek: bytes, plaintext: bytes, *, aad: bytes, rng: Rng = os.urandom) -> bytes:
    """Type 0: ``nonce(12) || ciphertext || tag(16)`` under the DEK itself (16, 24 or 32 bytes).

    ``rng`` is called once, for the nonce. Replace it only in tests. (The apiserver used a
    4-random-byte + counter nonce; readers treat the nonce as opaque.)
    """
    dek = _aead.check_key("dek", dek, _aead.AES_KEY_SIZES)
    plaintext = _aead.require_bytes("plaintext", plaintext)
    aad = _aead.require_bytes("aad", aad)
    return _aead.gcm_seal(dek, _aead.random_bytes(rng, _aead.GCM_NONCE_SIZE), plaintext, aad)


def open_with_dek(dek: bytes, encrypted_data: bytes, *, aad: bytes) -> bytes:
    """Open type-0 ``encryptedData``. A DEK of a non-AES length or any other failure raises
    ``InvalidCiphertext``."""
    dek = _aead.require_bytes("dek", dek)
    encrypted_data = _aead.require_bytes("encrypted_data", encrypted_data)
    aad = _aead.require_bytes("aad", aad)
    if len(dek) not in _aead.AES_KEY_SIZES:
        raise InvalidCiphertext()
    return _aead.gcm_open(dek, encrypted_data, aad)


def open_encrypted_object(obj: EncryptedObject, dek_source: bytes, *, aad: bytes) -> bytes:
    """Decrypt ``obj.encrypted_data`` with the unwrapped DEK source, dispatching on its type."""
    if not isinstance(obj, EncryptedObject):
        raise TypeError(f"obj must be an EncryptedObject, not {type(obj).__name__}")
    if obj.dek_source_type == DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED:
        return open_with_seed(dek_source, obj.encrypted_data, aad=aad)
    return open_with_dek(dek_source, obj.encrypted_data, aad=aad)
