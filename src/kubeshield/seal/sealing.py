"""The library half of ``kubeshield seal``: Secret -> SealedSecret, one raw value, merge-into.

What ``NewSealedSecret`` does, step by step: the scope comes from the Secret's annotations (or
``--scope``, which rewrites them); a namespace is required unless the scope is cluster-wide; each value
of ``data``/``stringData`` is sealed separately under the scope's label; ``spec.template.metadata`` is
a copy of the Secret's stripped metadata; ``spec.template.type``/``immutable`` are copied; the scope
annotation is written onto the SealedSecret's own metadata (the unsealing side reads it there).

kubeshield adds one annotation to the SealedSecret's metadata, :data:`~kubeshield.seal.keyset.HINT_ANNOTATION`
(the public fingerprint of the sealing key), which bitnami's controller ignores and kubeshield's uses to
try the right key first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from kubeshield.seal import _hybrid
from kubeshield.seal.certs import fingerprint
from kubeshield.seal.errors import SealError
from kubeshield.seal.keyset import HINT_ANNOTATION
from kubeshield.seal.objects import API_VERSION, KIND, InputSecret, b64encode_std
from kubeshield.seal.scope import Scope, label_for, scope_of, with_scope

__all__ = ["merge_into", "seal_raw", "seal_secret", "seal_value"]

Rng = Callable[[int], bytes]


def seal_value(
    public_key: rsa.RSAPublicKey,
    value: bytes,
    *,
    namespace: str,
    name: str,
    scope: Scope,
    rng: Rng = os.urandom,
) -> str:
    """One sealed value as it goes into ``spec.encryptedData`` (standard base64)."""
    label = label_for(namespace=namespace, name=name, scope=scope)
    return b64encode_std(_hybrid.encrypt(public_key, value, label=label, rng=rng))


def seal_raw(
    public_key: rsa.RSAPublicKey,
    value: bytes,
    *,
    namespace: str | None,
    name: str | None,
    scope: Scope,
    rng: Rng = os.urandom,
) -> str:
    """``kubeseal --raw``: needs ``namespace`` unless cluster-wide and ``name`` when strict."""
    if scope is not Scope.CLUSTER_WIDE and not namespace:
        raise SealError("--raw: --namespace is required unless the scope is cluster-wide")
    if scope is Scope.STRICT and not name:
        raise SealError("--raw: --name is required when the scope is strict")
    return seal_value(public_key, value, namespace=namespace or "", name=name or "", scope=scope, rng=rng)


def seal_secret(
    public_key: rsa.RSAPublicKey,
    secret: InputSecret,
    *,
    scope: Scope | None = None,
    name: str | None = None,
    namespace: str | None = None,
    default_namespace: str | None = None,
    hint: bool = True,
    rng: Rng = os.urandom,
) -> dict[str, Any]:
    """A SealedSecret object (a JSON-ready dict) for ``secret``.

    ``scope`` (``--scope``) overrides the Secret's scope annotations; ``name``/``namespace`` override the
    Secret's (``--merge-into`` uses them). A mismatch between an explicit ``namespace`` and the Secret's
    own is an error, as in kubeseal. ``default_namespace`` (kubeseal takes it from the kubeconfig's
    context) fills in a Secret that names none, unless the scope is cluster-wide.
    """
    meta = dict(secret.metadata)
    if name:
        meta["name"] = name
    if namespace:
        if secret.namespace and secret.namespace != namespace:
            raise SealError(
                f"{secret.where}: metadata.namespace {secret.namespace!r} does not match "
                f"--namespace {namespace!r}"
            )
        meta["namespace"] = namespace
    if not meta.get("name"):
        raise SealError(f"{secret.where}: metadata.name: required")
    annotations = dict(meta.get("annotations") or {})
    if scope is not None:
        annotations = with_scope(annotations, scope)
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations", None)
    effective = scope_of(annotations)
    if not meta.get("namespace") and default_namespace and effective is not Scope.CLUSTER_WIDE:
        meta["namespace"] = default_namespace
    ns = str(meta.get("namespace") or "")
    if effective is not Scope.CLUSTER_WIDE and not ns:
        raise SealError(f"{secret.where}: metadata.namespace: required unless the scope is cluster-wide")
    encrypted = {
        key: seal_value(public_key, value, namespace=ns, name=str(meta["name"]), scope=effective, rng=rng)
        for key, value in sorted(secret.values.items())
    }
    outer_annotations = with_scope({}, effective)
    if hint:
        outer_annotations[HINT_ANNOTATION] = fingerprint(public_key)
    metadata: dict[str, Any] = {"name": meta["name"]}
    if ns:
        metadata["namespace"] = ns
    if outer_annotations:
        metadata["annotations"] = outer_annotations
    template: dict[str, Any] = {"metadata": meta}
    if secret.type:
        template["type"] = secret.type
    if secret.immutable is not None:
        template["immutable"] = secret.immutable
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {"template": template, "encryptedData": encrypted},
    }


def merge_into(original: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``kubeseal --merge-into``: ``update``'s encryptedData, template labels, annotations and data are
    merged into a copy of ``original`` (a SealedSecret object). The hint follows the newest values."""
    out: dict[str, Any] = _deepcopy(original)
    spec = out.setdefault("spec", {})
    spec.setdefault("encryptedData", {}).update(update["spec"]["encryptedData"])
    template = spec.setdefault("template", {})
    tmeta = template.setdefault("metadata", {}) if isinstance(template, dict) else {}
    utemplate = update["spec"].get("template", {})
    umeta = utemplate.get("metadata", {})
    for key in ("annotations", "labels"):
        if umeta.get(key):
            tmeta.setdefault(key, {}).update(umeta[key])
    if utemplate.get("data"):
        template.setdefault("data", {}).update(utemplate["data"])
    hint = update.get("metadata", {}).get("annotations", {}).get(HINT_ANNOTATION)
    if hint:
        out.setdefault("metadata", {}).setdefault("annotations", {})[HINT_ANNOTATION] = hint
    return out


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value
