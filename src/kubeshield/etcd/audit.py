"""``kubeshield etcd audit``: classify every stored value, without decrypting anything.

For each key under ``<prefix>/<resource>/`` the value's format is read from its prefix (plaintext
protobuf/JSON/CBOR, aescbc, aesgcm, secretbox, KMS v1, KMS v2 with its key_id and DEK source type).
With an EncryptionConfiguration a value is *stale* when the apiserver would call it stale on read: it
is not under the first provider's first key, or (KMS v2) its key_id is not the plugin's current Status
key_id, or its DEK source is the legacy type 0. Values that no provider can read are errors. Only
Status is asked of a KMS plugin (once per provider per run); audit never calls Decrypt and never
prints a value.

JSON record (one per key, stable schema)::

    {"key", "resource", "namespace", "name", "format", "provider", "key_id", "dek_source_type",
     "stale", "error"}

``format`` is one of plaintext, aescbc, aesgcm, secretbox, kms-v1, kms-v2, unknown; ``provider`` is the
key or KMS provider name from the prefix (``identity`` for plaintext); ``dek_source_type`` is
``AES_GCM_KEY`` or ``HKDF_SHA256_XNONCE_AES_GCM_SEED`` for kms-v2, else null; ``stale`` is null when
no config was given or it could not be decided.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubeshield.config.encryption import EncryptionConfiguration
from kubeshield.envelope.kmsv2 import DEKSourceType, decode_encrypted_object
from kubeshield.envelope.prefixes import classify
from kubeshield.errors import InvalidCiphertext, KubeshieldError
from kubeshield.etcd.keys import parse_key
from kubeshield.etcd.store import KeyValue, KVSource
from kubeshield.etcd.transformers import ChainSet, NoProviderError, UnknownResourceError
from kubeshield.etcd.walk import iter_resources

__all__ = ["FORMATS", "AuditRecord", "AuditSummary", "Auditor", "audit"]

FORMATS = ("plaintext", "aescbc", "aesgcm", "secretbox", "kms-v1", "kms-v2", "unknown")
_MAX_PROBLEMS = 1000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What audit found for one key."""

    key: str
    resource: str
    namespace: str | None
    name: str
    format: str
    provider: str | None = None
    key_id: str | None = None
    dek_source_type: str | None = None
    stale: bool | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "resource": self.resource,
            "namespace": self.namespace,
            "name": self.name,
            "format": self.format,
            "provider": self.provider,
            "key_id": self.key_id,
            "dek_source_type": self.dek_source_type,
            "stale": self.stale,
            "error": self.error,
        }


@dataclass
class AuditSummary:
    """Counts over a run, and the first problems (plaintext, stale, errors) for the table view."""

    total: int = 0
    plaintext: int = 0
    stale: int = 0
    errors: int = 0
    by_format: Counter[str] = field(default_factory=Counter)
    groups: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    #: records with a problem (plaintext, unknown, stale or error), each counted once
    problem_records: int = 0
    current_key_ids: dict[str, str] = field(default_factory=dict)

    def add(self, record: AuditRecord) -> None:
        self.total += 1
        self.by_format[record.format] += 1
        self.groups[(record.resource, record.format, record.provider or "", record.key_id or "")] += 1
        problem = None
        if record.error is not None:
            self.errors += 1
            problem = f"{record.key}: error: {record.error}"
        elif record.format == "plaintext":
            self.plaintext += 1
            problem = f"{record.key}: stored in plaintext"
        elif record.format == "unknown":
            problem = f"{record.key}: unknown storage format"
        if record.stale:
            self.stale += 1
            detail = " ".join(x for x in (record.format, record.provider, record.key_id) if x)
            problem = problem or f"{record.key}: stale ({detail})"
        if problem is not None:
            self.problem_records += 1
            if len(self.problems) < _MAX_PROBLEMS:
                self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "plaintext": self.plaintext,
            "stale": self.stale,
            "errors": self.errors,
            "by_format": {f: self.by_format.get(f, 0) for f in FORMATS},
            "groups": [
                {"resource": r, "format": f, "provider": p or None, "key_id": k or None, "count": n}
                for (r, f, p, k), n in sorted(self.groups.items())
            ],
            "current_key_ids": dict(sorted(self.current_key_ids.items())),
        }


class Auditor:
    """Classifies one key/value at a time. Reuse one per run (it caches plugin Status per provider)."""

    def __init__(
        self, *, prefix: str, config: EncryptionConfiguration | None, chains: ChainSet | None
    ) -> None:
        self.prefix, self.config = prefix, config
        self.chains = chains if chains is not None or config is None else ChainSet(config)
        self._known = _known_names(config)
        self._key_ids: dict[str, str | KubeshieldError] = {}

    def current_key_ids(self) -> dict[str, str]:
        return {k: v for k, v in self._key_ids.items() if isinstance(v, str)}

    def _current_key_id(self, provider_name: str, chain_provider: Any) -> str:
        found = self._key_ids.get(provider_name)
        if found is None:
            assert self.chains is not None
            try:
                found = self.chains.plugins.current_key_id(chain_provider)
            except KubeshieldError as exc:
                found = exc
            self._key_ids[provider_name] = found
        if isinstance(found, KubeshieldError):
            raise found
        return found

    def classify(self, kv: KeyValue) -> AuditRecord | None:
        path = parse_key(kv.key, prefix=self.prefix)
        if path is None:
            return None
        key_text = kv.key.decode("utf-8", "backslashreplace")
        base = AuditRecord(
            key=key_text, resource=path.resource, namespace=path.namespace, name=path.name, format="unknown"
        )
        stored = classify(kv.value, known_names=self._known)
        fmt = stored.format
        provider = "identity" if fmt == "plaintext" else stored.name
        key_id = dek_type = None
        if fmt == "kms-v2":
            try:
                obj = decode_encrypted_object(stored.payload)
            except InvalidCiphertext:
                return replace(
                    base,
                    format=fmt,
                    provider=provider,
                    error="KMS v2 payload is not a valid EncryptedObject",
                )
            key_id, dek_type = obj.key_id, DEKSourceType(obj.dek_source_type).name
        if fmt == "unknown":
            return replace(base, format=fmt, error="unknown storage format (not plaintext, no known prefix)")
        if self.config is None or self.chains is None:
            return replace(base, format=fmt, provider=provider, key_id=key_id, dek_source_type=dek_type)
        try:
            located = self.chains.chain(path.encryption_resource).locate(kv.value)
        except (NoProviderError, UnknownResourceError) as exc:
            return replace(
                base, format=fmt, provider=provider, key_id=key_id, dek_source_type=dek_type, error=str(exc)
            )
        stale = not located.first
        if fmt == "kms-v2" and not stale:
            if dek_type != DEKSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED.name:
                stale = True
            else:
                try:
                    stale = key_id != self._current_key_id(located.provider.name, located.provider)
                except KubeshieldError as exc:
                    return replace(
                        base,
                        format=fmt,
                        provider=provider,
                        key_id=key_id,
                        dek_source_type=dek_type,
                        error=f"cannot ask KMS plugin {located.provider.name!r} for its key_id: "
                        f"{type(exc).__name__}: {exc}",
                    )
        return replace(
            base, format=fmt, provider=provider, key_id=key_id, dek_source_type=dek_type, stale=stale
        )


def _known_names(config: EncryptionConfiguration | None) -> dict[str, list[str]] | None:
    if config is None:
        return None
    names: dict[str, list[str]] = {}
    for rule in config.rules:
        for p in rule.providers:
            if p.kind == "kms":
                names.setdefault(f"kms-{p.api_version}", []).append(p.name)
            elif p.kind != "identity":
                names.setdefault(p.kind, []).extend(k.name for k in p.keys)
    return names


def audit(
    source: KVSource,
    *,
    prefix: str = "/registry",
    resources: Sequence[str] | None = ("secrets",),
    config: EncryptionConfiguration | None = None,
    chains: ChainSet | None = None,
    summary: AuditSummary | None = None,
    page_size: int = 1000,
) -> Iterator[AuditRecord]:
    """Audit every key under ``prefix`` for ``resources`` (None = every resource), lazily.

    Pass ``summary`` to have it filled as records are produced.
    """
    auditor = Auditor(prefix=prefix, config=config, chains=chains)
    kvs: Iterable[KeyValue] = iter_resources(source, prefix=prefix, resources=resources, page_size=page_size)
    for kv in kvs:
        record = auditor.classify(kv)
        if record is None:
            continue
        if summary is not None:
            summary.add(record)
        yield record
    if summary is not None:
        summary.current_key_ids.update(auditor.current_key_ids())
