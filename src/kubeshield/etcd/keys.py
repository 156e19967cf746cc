"""How kube-apiserver lays out etcd keys: ``<prefix>/<resource>/[<namespace>/]<name>``.

Built-in resources are stored under their plural name alone (``/registry/secrets/ns/name``,
``/registry/deployments/ns/name``); custom resources under ``<group>/<plural>`` (``/registry/
example.com/widgets/ns/name``), recognised by the dot in the group. A key with two segments after the
resource is namespaced; one segment is cluster-scoped.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeyPath", "normalize_prefix", "parse_key"]


@dataclass(frozen=True, slots=True)
class KeyPath:
    """The parts of an etcd key, as display text (undecodable bytes shown as ``\\xNN``)."""

    resource: str
    namespace: str | None
    name: str


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
    parts = key[len(head) :].split(b"/")
    if len(parts) >= 3 and b"." in parts[0]:  # <group>/<plural>/...
        resource = f"{_text(parts[1])}.{_text(parts[0])}"
        parts = parts[2:]
    else:
        resource = _text(parts[0])
        parts = parts[1:]
    if not parts:
        return KeyPath(resource=resource, namespace=None, name="")
    if len(parts) == 1:
        return KeyPath(resource=resource, namespace=None, name=_text(parts[0]))
    return KeyPath(resource=resource, namespace=_text(parts[0]), name=_text(b"/".join(parts[1:])))
