"""Which etcd key ranges hold which resources, and walking them a page at a time.

Resource selections are EncryptionConfiguration names: ``secrets``, ``deployments.apps``,
``widgets.example.com``, or a wildcard: ``*.`` (every core resource this version knows), ``*.apps`` (every
known resource of a built-in group), ``*.example.com`` (the whole ``<prefix>/example.com/`` directory), and
None or ``*.*`` for everything under the prefix. The storage paths are :mod:`kubeshield.etcd.paths`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kubeshield.config.encryption import GroupResource
from kubeshield.etcd.keys import normalize_prefix
from kubeshield.etcd.paths import group_paths, storage_paths
from kubeshield.etcd.store import KeyValue, KVSource

__all__ = ["WalkTarget", "iter_resources", "resource_key_prefix", "walk_targets"]


@dataclass(frozen=True, slots=True)
class WalkTarget:
    """One etcd range to read: every key under ``key`` (a prefix ending in ``/``), or, when ``exact``,
    the single key ``key`` (a range allocation is one object at a fixed key)."""

    key: bytes
    exact: bool = False


def _base(prefix: str) -> str:
    base = normalize_prefix(prefix)
    return "" if base == "/" else base


def walk_targets(prefix: str, resource: str | None) -> tuple[WalkTarget, ...]:
    """The ranges that hold ``resource`` below ``prefix``; raises ``ConfigError`` for a core name that
    belongs to another group (``deployments`` -> use ``deployments.apps``)."""
    base = _base(prefix)
    if resource is None or resource == "*.*":
        return (WalkTarget((base + "/").encode()),)
    gr = GroupResource.parse(resource)
    if gr.resource == "*":
        found = group_paths(gr.group)
        if isinstance(found, str):
            return (WalkTarget(f"{base}/{found}/".encode()),)
        paths = found
    else:
        paths = storage_paths(gr)
    return tuple(
        WalkTarget(f"{base}/{sp.path}".encode(), exact=True)
        if sp.singleton
        else WalkTarget(f"{base}/{sp.path}/".encode())
        for sp in paths
    )


def resource_key_prefix(prefix: str, resource: str | None) -> bytes:
    """The first key prefix of ``resource``: ``/registry`` + ``secrets`` -> ``/registry/secrets/``;
    ``deployments.apps`` -> ``/registry/deployments/``; ``widgets.example.com`` ->
    ``/registry/example.com/widgets/``; ``None`` (every resource) -> ``/registry/``."""
    return walk_targets(prefix, resource)[0].key


def _iter_target(source: KVSource, target: WalkTarget, page_size: int) -> Iterator[KeyValue]:
    if target.exact:
        kv = source.get(target.key)
        if kv is not None:
            yield kv
        return
    yield from source.iter_prefix(target.key, page_size=page_size)


def iter_resources(
    source: KVSource, *, prefix: str, resources: Sequence[str] | None, page_size: int = 1000
) -> Iterator[KeyValue]:
    """Every key of ``resources`` (None = everything under ``prefix``), in key order per range.

    Overlapping selections (``secrets`` and ``*.``) are read once.
    """
    names: Sequence[str | None] = [None] if resources is None else list(dict.fromkeys(resources))
    seen: set[WalkTarget] = set()
    targets = [t for name in names for t in walk_targets(prefix, name)]
    # a directory target covers any other target below it
    dirs = [t.key for t in targets if not t.exact]
    for target in targets:
        if target in seen:
            continue
        seen.add(target)
        if any(d != target.key and target.key.startswith(d) for d in dirs):
            continue
        yield from _iter_target(source, target, page_size)
