"""Fill a real etcd with N Secrets in kube-apiserver's storage formats (for tests and benchmarks).

Each Secret ``<prefix>/secrets/ns-<i % namespaces>/secret-<i>`` is a real ``k8s\\x00`` protobuf Secret,
stored with the i-th entry of ``mix`` (round robin). Mix entries:

    identity                     plaintext
    aesgcm:<key> | aescbc:<key> | secretbox:<key>   that key of the config's provider
    kms-v2:<name>@<key_id>       type 1 (HKDF seed), one seed per (name, key_id) per run
    kms-v2-type0:<name>@<key_id> type 0 (AES-GCM DEK, as written by 1.27/1.28)
    kms-v1:<name>                one DEK per value, as the apiserver does

KMS values are wrapped the way kube-apiserver's **base64 test plugin** wraps them (encryptedDEKSource =
base64(seed), annotation ``local-kek.kms.kubernetes.io``), so the test plugin in tests/support/etcd.py,
or any plugin that behaves like it, can read them back. Writes go in batched Txns (128 puts each).

Usage: python bench/seed_etcd.py --endpoints http://127.0.0.1:2379 --config enc.yaml -n 100000 --mix ...
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from kubeshield.config.encryption import EncryptionConfiguration, ProviderConfig, load_encryption_config
from kubeshield.envelope.aes import seal_aescbc, seal_aesgcm
from kubeshield.envelope.kmsv1 import encode_kmsv1_payload, seal_kmsv1_data
from kubeshield.envelope.kmsv2 import (
    DEKSourceType,
    EncryptedObject,
    encode_encrypted_object,
    seal_with_dek,
    seal_with_seed,
)
from kubeshield.envelope.objects import encode_secret
from kubeshield.envelope.prefixes import value_prefix
from kubeshield.envelope.secretbox import seal_secretbox
from kubeshield.etcd.client import EtcdClient

__all__ = ["BASE64_ANNOTATIONS", "secret_key", "seed_etcd", "seed_values", "value_for"]

BASE64_ANNOTATIONS = {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}
Rng = Callable[[int], bytes]


def secret_key(i: int, *, prefix: str = "/registry", namespaces: int = 10) -> bytes:
    """The etcd key of the i-th seeded Secret."""
    return f"{prefix.rstrip('/')}/secrets/ns-{i % namespaces}/secret-{i:07d}".encode()


def secret_plaintext(i: int, *, namespaces: int = 10, size: int = 64) -> bytes:
    """The i-th Secret, serialized as the apiserver stores it (deterministic content)."""
    payload = (f"value-{i}-".encode() * (size // 8 + 1))[:size]
    return encode_secret(
        name=f"secret-{i:07d}",
        namespace=f"ns-{i % namespaces}",
        uid=f"00000000-0000-4000-8000-{i:012d}",
        data={"password": payload, "username": f"user-{i}".encode()},
        creation_timestamp=1_700_000_000 + i,
    )


def _provider(config: EncryptionConfiguration | None, kind: str, name: str) -> ProviderConfig:
    if config is None:
        raise ValueError(f"mix entry {kind}:{name} needs an EncryptionConfiguration")
    for rule in config.rules:
        for p in rule.providers:
            if p.kind == "kms" and kind.startswith("kms") and p.name == name:
                return p
            if p.kind == kind and any(k.name == name for k in p.keys):
                return p
    raise ValueError(f"mix entry {kind}:{name}: no such provider/key in the config")


class _Sealer:
    """Turns (mix entry, key, plaintext) into a stored value; one seed/DEK per KMS v2 (name, key_id)."""

    def __init__(self, config: EncryptionConfiguration | None, rng: Rng) -> None:
        self._config, self._rng = config, rng
        self._seeds: dict[tuple[str, str, str], bytes] = {}

    def __call__(self, entry: str, key: bytes, plaintext: bytes) -> bytes:
        if entry == "identity":
            return plaintext
        kind, _, rest = entry.partition(":")
        if kind in ("aesgcm", "aescbc", "secretbox"):
            p = _provider(self._config, kind, rest)
            secret = next(k.secret for k in p.keys if k.name == rest)
            prefix = value_prefix(kind, rest)
            if kind == "aesgcm":
                return prefix + seal_aesgcm(secret, plaintext, aad=key, rng=self._rng)
            if kind == "aescbc":
                return prefix + seal_aescbc(secret, plaintext, rng=self._rng)
            return prefix + seal_secretbox(secret, plaintext, rng=self._rng)
        if kind == "kms-v1":
            dek = self._rng(32)
            data = seal_kmsv1_data(dek, plaintext, aad=key, rng=self._rng)
            return value_prefix("kms-v1", rest) + encode_kmsv1_payload(base64.b64encode(dek), data)
        if kind in ("kms-v2", "kms-v2-type0"):
            name, _, key_id = rest.partition("@")
            source = self._seeds.setdefault((kind, name, key_id), self._rng(32))
            if kind == "kms-v2":
                data = seal_with_seed(source, plaintext, aad=key, rng=self._rng)
                dek_type = DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
            else:
                data = seal_with_dek(source, plaintext, aad=key, rng=self._rng)
                dek_type = DEKSourceType.AES_GCM_KEY
            obj = EncryptedObject(
                encrypted_data=data,
                key_id=key_id or "1",
                encrypted_dek_source=base64.b64encode(source),
                annotations=BASE64_ANNOTATIONS,
                dek_source_type=dek_type,
            )
            return value_prefix("kms-v2", name) + encode_encrypted_object(obj)
        raise ValueError(f"unknown mix entry {entry!r}")


def value_for(
    entry: str, key: bytes, plaintext: bytes, *, config: EncryptionConfiguration | None, rng: Rng = os.urandom
) -> bytes:
    """One stored value for one mix entry (a fresh seed each call; use ``seed_values`` for many)."""
    return _Sealer(config, rng)(entry, key, plaintext)


def seed_values(
    n: int,
    *,
    mix: Sequence[str] = ("identity",),
    config: EncryptionConfiguration | None = None,
    prefix: str = "/registry",
    namespaces: int = 10,
    size: int = 64,
    start: int = 0,
    rng: Rng = os.urandom,
) -> Iterator[tuple[bytes, bytes]]:
    """(etcd key, stored value) for Secrets ``start .. start+n-1``, formats round robin over ``mix``."""
    if not mix:
        raise ValueError("mix must not be empty")
    sealer = _Sealer(config, rng)
    for i in range(start, start + n):
        key = secret_key(i, prefix=prefix, namespaces=namespaces)
        yield key, sealer(mix[i % len(mix)], key, secret_plaintext(i, namespaces=namespaces, size=size))


def seed_etcd(client: EtcdClient, n: int, **kwargs: object) -> int:
    """Write ``n`` seeded Secrets into etcd with batched Txns; returns how many were written."""
    return client.put_many(seed_values(n, **kwargs))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--config", help="EncryptionConfiguration with the keys/providers the mix names")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--mix", default="identity", help="comma-separated mix entries (see module doc)")
    parser.add_argument("--prefix", default="/registry")
    parser.add_argument("--namespaces", type=int, default=10)
    args = parser.parse_args(argv)
    config = load_encryption_config(args.config) if args.config else None
    with EtcdClient(args.endpoints.split(",")) as client:
        written = seed_etcd(
            client,
            args.n,
            mix=args.mix.split(","),
            config=config,
            prefix=args.prefix,
            namespaces=args.namespaces,
        )
    print(f"seeded {written} Secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
