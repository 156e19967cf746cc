"""How kube-apiserver lays out etcd keys: ``<prefix>/<storage path>/[<namespace>/]<name>``.

The storage path of a resource is the apiserver's (:mod:`kubeshield.etcd.paths`): built-in resources
under their bare name or a special prefix (``/registry/deployments/ns/name`` is ``deployments.apps``,
``/registry/minions/n`` is ``nodes``, ``/registry/services/specs/ns/s`` is ``services``); custom resources
under ``<group>/<plural>``. A key with two segments after the storage path is namespaced; one segment is
cluster-scoped (Kubernetes names never contain ``/``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeshield.etcd.paths import resolve_path

__all__ = ["KeyPath", "normalize_prefix", "parse_key"]


@dataclass(frozen=True, slots=True)
class KeyPath:
    """The parts of an etcd key, as display text (undecodable bytes shown as ``\\xNN``).

    ``resource`` is ``<plural>`` for the core group, else ``<plural>.<group>`` (``deployments.apps``),
    as an EncryptionConfiguration names it. ``known`` is False for a bare storage path this version does
    not know (a built-in newer than its table): then which encryption rules apply cannot be told.
    ``rules_as`` names the resource whose encryption rules apply when it is not ``resource`` (the service
    IP range allocations use the ``services`` rules).
    """

    resource: str
    namespace: str | None
    name: str
    known: bool = True
    rules_as: str | None = None

    @property
    def encryption_resource(self) -> str | None:
        """The resource to look up in the EncryptionConfiguration, or None when unknown."""
        if not self.known:
            return None
        return self.rules_as or self.resource


def normalize_prefix(prefix: str) -> str:
    """``path.Join("/", prefix)`` like the apiserver: one leading slash, no trailing slash."""
    parts = [p for p in prefix.split("/") if p]
    return "/" + "/".join(parts)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def parse_key(key: bytes, *, prefix: str) -> KeyPath | None:
    """Split ``key`` below ``prefix`` (normalised); None when the key is not below it."""
    head = normalize_prefix(prefix).encode() + b"/"
    if head == b"//":
        head = b"/"
    if not key.startswith(head):
        return None
    found, resource, parts = resolve_path(key[len(head) :].split(b"/"))
    known = found is not None
    rules_as = None
    if found is not None and found.rules_as is not None:
        rules_as = str(found.rules_as)
    if found is not None and found.singleton:
        return KeyPath(
            resource=resource,
            namespace=None,
            name=found.path.rsplit("/", 1)[-1],
            known=known,
            rules_as=rules_as,
        )
    if not parts:
        return KeyPath(resource=resource, namespace=None, name="", known=known, rules_as=rules_as)
    if len(parts) == 1:
        return KeyPath(
            resource=resource, namespace=None, name=_text(parts[0]), known=known, rules_as=rules_as
        )
    return KeyPath(
        resource=resource,
        namespace=_text(parts[0]),
        name=_text(b"/".join(parts[1:])),
        known=known,
        rules_as=rules_as,
    )
