"""An apiserver-emulating KMS v2 client, written from kms-contract §2.3-2.6, for driving the plugin.

It behaves like one kube-apiserver process with one KMS v2 provider:

* ``probe()`` is the health/rotation step (§2.4, §2.5): Status (validated by ``KMSv2Client``), then, if
  there is no write state, or Status's key_id differs from the state's, a fresh random 32-byte seed is
  wrapped by Encrypt with a fresh UUID uid. The new state is installed only if Encrypt's key_id equals
  Status's key_id; otherwise the old state is kept and ``RotationRefusedError`` is raised ("failed to rotate
  DEK"). A successful probe with an unchanged key_id only extends the expiry (now + 3 min).
* ``store(etcd_key, plaintext)`` writes the real storage format: ``k8s:enc:kms:v2:<name>:`` +
  ``EncryptedObject`` (type 1, HKDF seed), ``encryptedData = seal_with_seed(seed, plaintext, aad=etcd
  key)``. It refuses to write without a state or after the state expired, as the apiserver does.
* ``read(etcd_key)`` decodes the stored value and gets the seed from a Decrypt cache keyed like the
  apiserver's (source type, encryptedDEKSource, keyID, number of annotations, sorted annotations);
  a miss calls Decrypt with the stored key_id and annotations. It returns the plaintext and whether the
  value is *stale* (stored key_id != current key_id).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kubeshield.envelope.kmsv2 import (
    MIN_SEED_SIZE,
    DEKSourceType,
    EncryptedObject,
    decode_encrypted_object,
    encode_encrypted_object,
    open_encrypted_object,
    seal_with_seed,
)
from kubeshield.errors import ContractViolation, KubeshieldError
from kubeshield.kms.client import KMSv2Client

__all__ = [
    "DEK_LIFETIME",
    "EmulatedAPIServer",
    "NoTransformerError",
    "RotationRefusedError",
    "StateExpiredError",
    "WriteState",
]

DEK_LIFETIME = 180.0  # seconds: the write state's expiry after each healthy probe


class RotationRefusedError(KubeshieldError):
    """Encrypt's key_id did not match Status's: the apiserver keeps the old state."""


class NoTransformerError(KubeshieldError):
    """No successful Status+Encrypt yet: 'got unexpected nil transformer'."""


class StateExpiredError(KubeshieldError):
    """The write state expired: 'encryptedDEKSource with keyID hash ... expired'."""


@dataclass
class WriteState:
    seed: bytes = field(repr=False)
    key_id: str
    encrypted_dek_source: bytes = field(repr=False)
    annotations: dict[str, bytes]
    expiry: float
    uid: str


@dataclass
class EmulatedAPIServer:
    client: KMSv2Client
    provider_name: str = "kubeshield"
    clock: Callable[[], float] = time.monotonic
    rng: Callable[[int], bytes] = os.urandom
    state: WriteState | None = None
    etcd: dict[str, bytes] = field(default_factory=dict)
    seed_cache: dict[tuple[object, ...], bytes] = field(default_factory=dict, repr=False)
    decrypt_calls: int = 0
    encrypt_calls: int = 0
    key_ids_seen: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> bytes:
        return b"k8s:enc:kms:v2:" + self.provider_name.encode() + b":"

    def probe(self) -> WriteState:
        """One health/rotation step. Raises on an unhealthy Status or a refused rotation."""
        status = self.client.status()
        now = self.clock()
        state = self.state
        if state is not None and state.key_id == status.key_id:
            state.expiry = now + DEK_LIFETIME
            return state
        seed = self.rng(32)
        uid = str(uuid.uuid4())
        self.encrypt_calls += 1
        reply = self.client.encrypt(seed, uid=uid)
        if reply.key_id != status.key_id:
            raise RotationRefusedError("failed to rotate DEK: Encrypt key_id differs from Status key_id")
        if reply.key_id not in self.key_ids_seen:
            self.key_ids_seen.append(reply.key_id)
        self.state = WriteState(
            seed=seed,
            key_id=reply.key_id,
            encrypted_dek_source=reply.ciphertext,
            annotations=dict(reply.annotations),
            expiry=now + DEK_LIFETIME,
            uid=uid,
        )
        return self.state

    def store(self, etcd_key: str, plaintext: bytes) -> bytes:
        """Encrypt and 'write' a value; returns the stored bytes."""
        state = self.state
        if state is None:
            raise NoTransformerError("got unexpected nil transformer")
        if self.clock() > state.expiry:
            raise StateExpiredError("encryptedDEKSource expired")
        obj = EncryptedObject(
            encrypted_data=seal_with_seed(state.seed, plaintext, aad=etcd_key.encode()),
            key_id=state.key_id,
            encrypted_dek_source=state.encrypted_dek_source,
            annotations=state.annotations,
            dek_source_type=DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
        )
        value = self.prefix + encode_encrypted_object(obj)
        self.etcd[etcd_key] = value
        return value

    def read(self, etcd_key: str) -> tuple[bytes, bool]:
        """Decrypt a stored value; returns (plaintext, stale)."""
        if self.state is None:
            raise NoTransformerError("got unexpected nil transformer")
        value = self.etcd[etcd_key]
        if not value.startswith(self.prefix):
            raise ContractViolation("value does not carry this provider's prefix")
        obj = decode_encrypted_object(value[len(self.prefix) :])
        cache_key = (
            int(obj.dek_source_type),
            obj.encrypted_dek_source,
            obj.key_id,
            len(obj.annotations),
            tuple(sorted(obj.annotations.items())),
        )
        seed = self.seed_cache.get(cache_key)
        if seed is None:
            self.decrypt_calls += 1
            seed = self.client.decrypt(
                obj.encrypted_dek_source,
                key_id=obj.key_id,
                annotations=obj.annotations,
                uid=str(uuid.uuid4()),
            )
            if (
                obj.dek_source_type == DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
                and len(seed) < MIN_SEED_SIZE
            ):
                raise ContractViolation("invalid seed length")
            self.seed_cache[cache_key] = seed
        plaintext = open_encrypted_object(obj, seed, aad=etcd_key.encode())
        return plaintext, obj.key_id != self.state.key_id

    def restart(self) -> None:
        """Forget every in-memory state and cache (a new apiserver process on the same etcd)."""
        self.state = None
        self.seed_cache.clear()
