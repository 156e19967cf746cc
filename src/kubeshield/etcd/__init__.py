"""The etcd toolkit: prove encryption at rest, recover Secrets, migrate keys.

* :mod:`~kubeshield.etcd.client` - etcd v3 over gRPC (our generated stubs in ``etcd/api``)
* :mod:`~kubeshield.etcd.snapshot` - read an ``etcdctl snapshot save`` file without etcd
* :mod:`~kubeshield.etcd.paths` - where kube-apiserver stores each resource, and back
* :mod:`~kubeshield.etcd.kms_check` - every KMS endpoint a run needs, checked before the walk
* :mod:`~kubeshield.etcd.transformers` - read/write values exactly like kube-apiserver
* :mod:`~kubeshield.etcd.audit`, :mod:`~kubeshield.etcd.decrypt`, :mod:`~kubeshield.etcd.rewrite` - the
  library halves of ``kubeshield etcd audit|decrypt|rewrite``
"""

from __future__ import annotations

from kubeshield.etcd.audit import Auditor, AuditRecord, AuditSummary, audit
from kubeshield.etcd.client import EtcdClient
from kubeshield.etcd.decrypt import DecryptedItem, decrypt
from kubeshield.etcd.keys import KeyPath, normalize_prefix, parse_key
from kubeshield.etcd.kms_check import KMSUnreachable, check_kms_providers, kms_providers_for
from kubeshield.etcd.paths import StoragePath, storage_paths
from kubeshield.etcd.rewrite import RewriteRecord, rewrite
from kubeshield.etcd.snapshot import SnapshotReader
from kubeshield.etcd.store import KeyValue, KVSource, prefix_range_end
from kubeshield.etcd.transformers import (
    ChainSet,
    DecryptError,
    KMSPlugins,
    NoProviderError,
    ReadResult,
    TransformerChain,
    UnknownResourceError,
    Writer,
)
from kubeshield.etcd.walk import WalkTarget, iter_resources, resource_key_prefix, walk_targets

__all__ = [
    "AuditRecord",
    "AuditSummary",
    "Auditor",
    "ChainSet",
    "DecryptError",
    "DecryptedItem",
    "EtcdClient",
    "KMSPlugins",
    "KMSUnreachable",
    "KVSource",
    "KeyPath",
    "KeyValue",
    "NoProviderError",
    "ReadResult",
    "RewriteRecord",
    "SnapshotReader",
    "StoragePath",
    "TransformerChain",
    "UnknownResourceError",
    "WalkTarget",
    "Writer",
    "audit",
    "check_kms_providers",
    "decrypt",
    "iter_resources",
    "kms_providers_for",
    "normalize_prefix",
    "parse_key",
    "prefix_range_end",
    "resource_key_prefix",
    "rewrite",
    "storage_paths",
    "walk_targets",
]
