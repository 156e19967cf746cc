"""Which etcd key ranges hold which resources, and walking them a page at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kubeshield.etcd.keys import normalize_prefix
from kubeshield.etcd.store import KeyValue, KVSource

__all__ = ["iter_resources", "resource_key_prefix"]


def resource_key_prefix(prefix: str, resource: str | None) -> bytes:
    """``/registry`` + ``secrets`` -> ``/registry/secrets/``; ``widgets.example.com`` ->
    ``/registry/example.com/widgets/``; ``None`` (every resource) -> ``/registry/``."""
    base = normalize_prefix(prefix)
    base = "" if base == "/" else base
    if resource is None:
        return (base + "/").encode()
    res, _, group = resource.partition(".")
    return (f"{base}/{group}/{res}/" if group else f"{base}/{res}/").encode()


def iter_resources(
    source: KVSource, *, prefix: str, resources: Sequence[str] | None, page_size: int = 1000
) -> Iterator[KeyValue]:
    """Every key of ``resources`` (None = everything under ``prefix``), in key order per resource."""
    if resources is None:
        yield from source.iter_prefix(resource_key_prefix(prefix, None), page_size=page_size)
        return
    for resource in dict.fromkeys(resources):
        yield from source.iter_prefix(resource_key_prefix(prefix, resource), page_size=page_size)
