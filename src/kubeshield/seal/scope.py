"""Sealing scopes and the OAEP label each one binds (``sealedsecret_expansion.go`` ``EncryptionLabel``).

==================  ==============================  ===========================================
scope               label bytes                     the value unseals only as
==================  ==============================  ===========================================
``strict``          ``"<namespace>/<name>"``        that name in that namespace (the default)
``namespace-wide``  ``"<namespace>"``               any name in that namespace
``cluster-wide``    ``""``                          any name in any namespace
==================  ==============================  ===========================================

The scope of an object is read from its annotations: ``sealedsecrets.bitnami.com/cluster-wide: "true"``
wins over ``sealedsecrets.bitnami.com/namespace-wide: "true"``; only the exact string ``"true"`` counts.
When unsealing, the label comes from the **SealedSecret's own metadata** (never from the template), so a
renamed or moved object fails to unseal.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "ANNOTATION_CLUSTER_WIDE",
    "ANNOTATION_NAMESPACE_WIDE",
    "ANNOTATION_PREFIX",
    "Scope",
    "label_for",
    "scope_of",
    "with_scope",
]

ANNOTATION_PREFIX = "sealedsecrets.bitnami.com/"
ANNOTATION_NAMESPACE_WIDE = ANNOTATION_PREFIX + "namespace-wide"
ANNOTATION_CLUSTER_WIDE = ANNOTATION_PREFIX + "cluster-wide"


class Scope(enum.Enum):
    """Where a sealed value may be unsealed. The value is the name kubeseal's ``--scope`` takes."""

    STRICT = "strict"
    NAMESPACE_WIDE = "namespace-wide"
    CLUSTER_WIDE = "cluster-wide"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``"strict"`` / ``"namespace-wide"`` / ``"cluster-wide"``; ``""`` is the default (strict)."""
        if text == "":
            return cls.STRICT
        try:
            return cls(text)
        except ValueError:
            raise ValueError(
                f"scope must be one of: strict, namespace-wide, cluster-wide; got {text!r}"
            ) from None


def label_for(*, namespace: str, name: str, scope: Scope) -> bytes:
    """The OAEP label for ``scope``."""
    if scope is Scope.CLUSTER_WIDE:
        return b""
    if scope is Scope.NAMESPACE_WIDE:
        return namespace.encode("utf-8")
    return f"{namespace}/{name}".encode()


def scope_of(annotations: Mapping[str, str] | None) -> Scope:
    """The scope an object's annotations declare."""
    annotations = annotations or {}
    if annotations.get(ANNOTATION_CLUSTER_WIDE) == "true":
        return Scope.CLUSTER_WIDE
    if annotations.get(ANNOTATION_NAMESPACE_WIDE) == "true":
        return Scope.NAMESPACE_WIDE
    return Scope.STRICT


def with_scope(annotations: Mapping[str, str] | None, scope: Scope) -> dict[str, str]:
    """A copy of ``annotations`` that declares exactly ``scope`` (``UpdateScopeAnnotations``)."""
    out = {
        k: v
        for k, v in (annotations or {}).items()
        if k not in (ANNOTATION_NAMESPACE_WIDE, ANNOTATION_CLUSTER_WIDE)
    }
    if scope is Scope.NAMESPACE_WIDE:
        out[ANNOTATION_NAMESPACE_WIDE] = "true"
    elif scope is Scope.CLUSTER_WIDE:
        out[ANNOTATION_CLUSTER_WIDE] = "true"
    return out
