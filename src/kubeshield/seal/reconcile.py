"""What the controller should do for one SealedSecret: pure functions, no API I/O.

:func:`plan` takes the SealedSecret, the result of unsealing it, and the Secret that exists now (or
None), and returns one :class:`Action`. The rules are the sealed-secrets controller's
(``pkg/controller/controller.go``):

* no Secret yet: **create** the unsealed Secret (with its ownerReference);
* a Secret we control (its ``controller: true`` ownerReference has the SealedSecret's UID), or one
  annotated ``sealedsecrets.bitnami.com/managed: "true"``: **update** it to the unsealed Secret (data,
  annotations, labels, ownerReferences, type); a Secret annotated ``sealedsecrets.bitnami.com/patch:
  "true"``: merge the SealedSecret's keys, annotations and labels into it, keep its other keys, and
  take ownership only if it is also ``managed``;
* any other existing Secret is **never** touched: ``refuse`` with ``Resource "<name>" already exists
  and is not managed by SealedSecret``;
* an unchanged Secret needs nothing (``none``); an immutable Secret whose data would change, or a
  type change, cannot be updated in place (``fail``, with the reason).

:func:`synced_status` computes the new ``status`` (``Synced`` condition, ``observedGeneration``) and
whether it changed; :func:`backoff` is the retry delay after ``n`` consecutive failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubeshield.seal.objects import SealedSecret
from kubeshield.seal.scope import ANNOTATION_PREFIX

__all__ = [
    "MANAGED_ANNOTATION",
    "PATCH_ANNOTATION",
    "REASON_UNSEALED",
    "REASON_UNSEAL_FAILED",
    "REASON_UPDATE_FAILED",
    "Action",
    "backoff",
    "is_controlled_by",
    "plan",
    "synced_status",
]

MANAGED_ANNOTATION = ANNOTATION_PREFIX + "managed"
PATCH_ANNOTATION = ANNOTATION_PREFIX + "patch"
REASON_UNSEALED = "Unsealed"
REASON_UNSEAL_FAILED = "ErrUnsealFailed"
REASON_UPDATE_FAILED = "ErrUpdateFailed"


@dataclass(frozen=True, slots=True)
class Action:
    """``create``/``update`` carry the Secret body to write; ``refuse``/``fail`` carry the message."""

    kind: Literal["create", "update", "none", "refuse", "fail"]
    secret: dict[str, Any] | None = field(default=None, repr=False)
    message: str = ""


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    value = meta.get("annotations") or {}
    return dict(value) if isinstance(value, dict) else {}


def is_controlled_by(secret: Mapping[str, Any], sealed: SealedSecret) -> bool:
    """``metav1.IsControlledBy``: a ``controller: true`` ownerReference with the SealedSecret's UID."""
    refs = (secret.get("metadata") or {}).get("ownerReferences") or []
    for ref in refs:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return bool(sealed.uid) and ref.get("uid") == sealed.uid
    return False


def plan(*, sealed: SealedSecret, desired: Mapping[str, Any], existing: Mapping[str, Any] | None) -> Action:
    """The action that makes the cluster hold ``desired`` (the unsealed Secret) for ``sealed``."""
    if existing is None:
        return Action("create", secret=_copy(desired))
    annotations = _annotations(existing)
    managed = annotations.get(MANAGED_ANNOTATION) == "true"
    patch = annotations.get(PATCH_ANNOTATION) == "true"
    if not (is_controlled_by(existing, sealed) or managed or patch):
        name = (existing.get("metadata") or {}).get("name", sealed.name)
        return Action(
            "refuse", message=f'Resource "{name}" already exists and is not managed by SealedSecret'
        )
    updated = _copy(existing)
    meta = updated.setdefault("metadata", {})
    want_meta = desired.get("metadata") or {}
    if patch:
        updated["data"] = {**(existing.get("data") or {}), **(desired.get("data") or {})}
        meta["annotations"] = {**(meta.get("annotations") or {}), **(want_meta.get("annotations") or {})}
        meta["labels"] = {**(meta.get("labels") or {}), **(want_meta.get("labels") or {})}
        if managed:
            _set(meta, "ownerReferences", want_meta.get("ownerReferences"))
    else:
        updated["data"] = dict(desired.get("data") or {})
        _set(meta, "annotations", want_meta.get("annotations"))
        _set(meta, "labels", want_meta.get("labels"))
        _set(meta, "ownerReferences", want_meta.get("ownerReferences"))
    for key in ("annotations", "labels"):
        if meta.get(key) == {}:
            meta.pop(key)
    want_type = desired.get("type") or "Opaque"
    have_type = existing.get("type") or "Opaque"
    if want_type != have_type:
        return Action(
            "fail", message=f"the Secret's type is {have_type!r}; it cannot change to {want_type!r} in place"
        )
    if desired.get("immutable") is not None:
        updated["immutable"] = desired["immutable"]
    if _same(existing, updated):
        return Action("none")
    if existing.get("immutable") is True and (existing.get("data") or {}) != (updated.get("data") or {}):
        return Action(
            "fail", message="the Secret is immutable and its data would change; delete it to re-create"
        )
    return Action("update", secret=updated)


def _set(meta: dict[str, Any], key: str, value: Any) -> None:
    if value:
        meta[key] = _copy(value)
    else:
        meta.pop(key, None)


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def view(o: Mapping[str, Any]) -> tuple[Any, ...]:
        meta = o.get("metadata") or {}
        return (
            o.get("data") or {},
            meta.get("annotations") or {},
            meta.get("labels") or {},
            meta.get("ownerReferences") or [],
            o.get("type") or "Opaque",
            o.get("immutable"),
        )

    return view(a) == view(b)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def synced_status(
    status: Mapping[str, Any] | None, *, generation: int, ok: bool, message: str, now: str, reason: str = ""
) -> tuple[dict[str, Any], bool]:
    """The new ``status`` and whether it differs. ``lastTransitionTime`` moves only when ``status`` flips;
    ``message`` is the failure (names fields and reasons, never values), empty when synced."""
    current = _copy(dict(status or {}))
    conditions = [c for c in current.get("conditions") or [] if isinstance(c, dict)]
    cond = next((c for c in conditions if c.get("type") == "Synced"), None)
    if cond is None:
        cond = {"type": "Synced"}
        conditions.append(cond)
    before = dict(cond)
    want = "True" if ok else "False"
    if cond.get("status") != want:
        cond["status"] = want
        cond["lastTransitionTime"] = now
        cond["lastUpdateTime"] = now
    if ok:
        cond.pop("message", None)
        cond.pop("reason", None)
    else:
        if cond.get("message") != message:
            cond["lastUpdateTime"] = now
        cond["message"] = message
        cond["reason"] = reason or REASON_UNSEAL_FAILED
    current["conditions"] = conditions
    changed = before != cond or current.get("observedGeneration") != generation
    current["observedGeneration"] = generation
    return current, changed


def backoff(failures: int, *, base: float = 0.5, cap: float = 300.0) -> float:
    """Seconds to wait after ``failures`` consecutive failures: ``base * 2**(failures-1)``, capped."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * (2 ** min(failures - 1, 30))))
