"""``kubeshield etcd decrypt``: read values exactly as kube-apiserver would and turn them into manifests.

This is the disaster-recovery path: it works on a live etcd or on a snapshot file, with only the
EncryptionConfiguration, its aes/secretbox keys and (for KMS providers) the plugin's socket. A key that
fails yields an item with ``error`` set and the run continues.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeshield.envelope.objects import decode_object, to_manifest
from kubeshield.errors import KubeshieldError
from kubeshield.etcd.keys import KeyPath, parse_key
from kubeshield.etcd.store import KeyValue, KVSource
from kubeshield.etcd.transformers import ChainSet
from kubeshield.etcd.walk import iter_resources, walk_targets

__all__ = ["DecryptedItem", "decrypt"]


@dataclass(frozen=True, slots=True)
class DecryptedItem:
    """One key's result: the manifest (``kubectl get -o yaml`` shape) or an error naming the problem."""

    key: str
    path: KeyPath
    manifest: dict[str, Any] | None = field(default=None, repr=False)
    provider: str | None = None
    stale: bool | None = None
    error: str | None = None


def decrypt(
    source: KVSource,
    *,
    chains: ChainSet,
    prefix: str = "/registry",
    resources: Sequence[str] | None = ("secrets",),
    keys: Sequence[str] = (),
    namespace: str | None = None,
    page_size: int = 500,
) -> Iterator[DecryptedItem]:
    """Decrypt the chosen keys: ``keys`` (exact etcd keys), else a ``namespace``, else everything."""
    kvs: Iterable[KeyValue | tuple[bytes, None]]
    if keys:
        kvs = _exact(source, keys)
    elif namespace is not None:
        kvs = _namespace(source, prefix=prefix, resources=resources, namespace=namespace, page_size=page_size)
    else:
        kvs = iter_resources(source, prefix=prefix, resources=resources, page_size=page_size)
    for kv in kvs:
        if isinstance(kv, tuple):
            key = kv[0]
            path = parse_key(key, prefix=prefix) or KeyPath(resource="", namespace=None, name="")
            yield DecryptedItem(key=_text(key), path=path, error="no such key")
            continue
        path = parse_key(kv.key, prefix=prefix) or KeyPath(resource="", namespace=None, name="")
        yield _one(kv, path=path, chains=chains)


def _text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _one(kv: KeyValue, *, path: KeyPath, chains: ChainSet) -> DecryptedItem:
    key = _text(kv.key)
    try:
        result = chains.chain(path.encryption_resource).read(kv.value, key=kv.key)
    except KubeshieldError as exc:
        return DecryptedItem(key=key, path=path, error=f"{type(exc).__name__}: {exc}")
    try:
        manifest = to_manifest(decode_object(result.plaintext))
    except KubeshieldError as exc:
        return DecryptedItem(
            key=key,
            path=path,
            provider=result.provider,
            stale=result.stale,
            error=f"{type(exc).__name__}: {exc}",
        )
    return DecryptedItem(key=key, path=path, manifest=manifest, provider=result.provider, stale=result.stale)


def _exact(source: KVSource, keys: Sequence[str]) -> Iterator[KeyValue | tuple[bytes, None]]:
    for key in keys:
        raw = key.encode("utf-8", "surrogateescape")
        kv = source.get(raw)
        yield kv if kv is not None else (raw, None)


def _namespace(
    source: KVSource, *, prefix: str, resources: Sequence[str] | None, namespace: str, page_size: int
) -> Iterator[KeyValue]:
    if resources is None:
        raise ValueError("--namespace needs explicit --resources")
    for resource in dict.fromkeys(resources):
        for target in walk_targets(prefix, resource):
            if not target.exact:  # a range allocation is cluster-wide: no namespace
                yield from source.iter_prefix(target.key + namespace.encode() + b"/", page_size=page_size)
