"""``kubeshield etcd rewrite --to NAME``: re-encrypt stored values with one provider of the config.

Each value is read exactly as the apiserver would (:class:`~kubeshield.etcd.transformers.TransformerChain`)
and written back with the chosen provider (:class:`~kubeshield.etcd.transformers.Writer`), byte-compatible
with what kube-apiserver writes (same prefix, EncryptedObject layout, AAD = the etcd key).

Safety:

* every write is one Txn guarded by the key's ``mod_revision``; when someone else wrote the key in
  between, nothing is overwritten: the new value is read again and the rewrite retried (and reported as
  ``conflicts``); a key deleted in between is left deleted;
* a key that fails to read (no provider, wrong key, plugin down) is reported and never written;
* values already in the target form (same prefix; for KMS v2 the current key_id and seed type) are
  skipped, so a run is resumable and a second run changes nothing;
* plaintext is written only for ``to == "identity"`` with ``allow_plaintext=True`` (``--yes``);
* without ``apply`` (the default, ``--dry-run``) nothing is written: the plan is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from kubeshield.errors import ConfigError, KubeshieldError
from kubeshield.etcd.client import EtcdClient
from kubeshield.etcd.keys import parse_key
from kubeshield.etcd.kms_check import refuse_abstract_for_writes
from kubeshield.etcd.store import KeyValue
from kubeshield.etcd.transformers import ChainSet
from kubeshield.etcd.walk import iter_resources

__all__ = ["RewriteRecord", "rewrite"]

#: actions a record can report
ACTIONS = ("rewritten", "would-rewrite", "skipped", "deleted", "error")


@dataclass(frozen=True, slots=True)
class RewriteRecord:
    """What happened to one key. ``source`` is the slot it was read with (``aesgcm:key1``...)."""

    key: str
    action: str
    source: str | None = None
    conflicts: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "action": self.action,
            "source": self.source,
            "conflicts": self.conflicts,
            "error": self.error,
        }


def rewrite(
    client: EtcdClient,
    *,
    chains: ChainSet,
    to: str,
    prefix: str = "/registry",
    resources: Sequence[str] | None = ("secrets",),
    apply: bool = False,
    allow_plaintext: bool = False,
    max_attempts: int = 5,
    page_size: int = 200,
    before_write: Callable[[KeyValue], None] | None = None,
) -> Iterator[RewriteRecord]:
    """Rewrite every key of ``resources`` with provider ``to``; yields one record per key.

    ``before_write`` is called between reading a key and its guarded write (a test seam to provoke a
    concurrent write).
    """
    if to == "identity" and apply and not allow_plaintext:
        raise ConfigError("--to identity writes Secrets in plaintext: it needs an explicit --yes")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if chains.config is not None:
        for provider in chains.config.kms_providers():
            if provider.name == to:
                refuse_abstract_for_writes(provider)  # before any key is read
    source_kvs = iter_resources(
        _Latest(client, page_size), prefix=prefix, resources=resources, page_size=page_size
    )
    for kv in source_kvs:
        path = parse_key(kv.key, prefix=prefix)
        if path is None:
            continue
        yield _rewrite_one(
            client,
            kv,
            resource=path.encryption_resource,
            chains=chains,
            to=to,
            apply=apply,
            max_attempts=max_attempts,
            before_write=before_write,
        )


class _Latest:
    """Pages that read the latest data (no pinned revision): a rewrite must see its own writes' world."""

    def __init__(self, client: EtcdClient, page_size: int) -> None:
        self._client, self._page_size = client, page_size

    def iter_prefix(self, prefix: bytes, *, page_size: int = 200) -> Iterator[KeyValue]:
        return self._client.iter_prefix(prefix, page_size=page_size, pin_revision=False)

    def get(self, key: bytes) -> KeyValue | None:
        return self._client.get(key)

    def close(self) -> None:
        pass


def _rewrite_one(
    client: EtcdClient,
    kv: KeyValue,
    *,
    resource: str | None,
    chains: ChainSet,
    to: str,
    apply: bool,
    max_attempts: int,
    before_write: Callable[[KeyValue], None] | None,
) -> RewriteRecord:
    key = kv.key.decode("utf-8", "backslashreplace")
    conflicts = 0
    current: KeyValue | None = kv
    while current is not None:
        try:
            writer = chains.writer(resource, to)
            if writer.is_current(current.value):
                return RewriteRecord(key=key, action="skipped", conflicts=conflicts)
            result = chains.chain(resource).read(current.value, key=current.key)
        except KubeshieldError as exc:
            return RewriteRecord(
                key=key, action="error", conflicts=conflicts, error=f"{type(exc).__name__}: {exc}"
            )
        if not apply:
            return RewriteRecord(key=key, action="would-rewrite", source=result.provider)
        try:
            new_value = writer.write(result.plaintext, key=current.key)
            if before_write is not None:
                before_write(current)
            written, latest = client.compare_and_put(
                current.key, new_value, mod_revision=current.mod_revision
            )
        except KubeshieldError as exc:
            return RewriteRecord(
                key=key,
                action="error",
                source=result.provider,
                conflicts=conflicts,
                error=f"{type(exc).__name__}: {exc}",
            )
        if written:
            return RewriteRecord(key=key, action="rewritten", source=result.provider, conflicts=conflicts)
        conflicts += 1
        if conflicts >= max_attempts:
            return RewriteRecord(
                key=key,
                action="error",
                source=result.provider,
                conflicts=conflicts,
                error=f"the key kept changing during rewrite ({conflicts} conflicting writes); run again",
            )
        current = latest
    return RewriteRecord(key=key, action="deleted", conflicts=conflicts)
