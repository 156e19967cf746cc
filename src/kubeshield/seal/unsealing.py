"""SealedSecret -> Secret, as the sealed-secrets controller's ``Unseal`` builds it.

* The OAEP label is built from the **SealedSecret's own** name, namespace and scope annotations.
* The Secret starts from ``spec.template.metadata`` (server-side fields and last-applied annotations
  dropped), gets ``spec.template.type``/``immutable``, and **always** the SealedSecret's name and
  namespace, whatever the template says.
* ``data`` holds every decrypted value; then each ``spec.template.data`` entry is rendered over the
  decrypted values (:mod:`kubeshield.seal.template`) and replaces or adds that key; a ``null`` entry
  removes the key.
* An ownerReference to the SealedSecret (``controller: true``) is set unless the template carries
  ``sealedsecrets.bitnami.com/skip-set-owner-references: "true"``.
* The deprecated ``spec.data`` (the whole Secret JSON sealed as one value) is accepted only when
  ``accept_v1_data`` and there is no ``encryptedData``.

Every failing field is collected: the result is either a whole Secret or one
:class:`~kubeshield.seal.errors.UnsealFailed` naming each failing field (never a value).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeshield.errors import InvalidCiphertext
from kubeshield.seal.errors import SealError, TemplateError, UnsealFailed
from kubeshield.seal.keyset import HINT_ANNOTATION, KeySet
from kubeshield.seal.objects import (
    API_VERSION,
    KIND,
    SealedSecret,
    b64decode_std,
    b64encode_std,
    strip_metadata,
)
from kubeshield.seal.scope import ANNOTATION_PREFIX, label_for, scope_of
from kubeshield.seal.template import render

__all__ = ["SKIP_OWNER_REFERENCES_ANNOTATION", "Unsealed", "decrypt_values", "owner_reference", "unseal"]

SKIP_OWNER_REFERENCES_ANNOTATION = ANNOTATION_PREFIX + "skip-set-owner-references"

_NO_KEY = "no key could decrypt it (sealed for another key, or the name, namespace or scope changed)"


@dataclass(frozen=True, slots=True)
class Unsealed:
    """The Secret object (``data`` in base64, as the apiserver stores it) and the keys that opened it."""

    secret: dict[str, Any] = field(repr=False)
    fingerprints: frozenset[str]

    @property
    def values(self) -> dict[str, bytes]:
        return {k: b64decode_std(v) for k, v in (self.secret.get("data") or {}).items()}


def owner_reference(ss: SealedSecret) -> dict[str, Any]:
    ref: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "name": ss.name, "controller": True}
    if ss.uid:
        ref["uid"] = ss.uid
    return ref


def unseal(ss: SealedSecret, keys: KeySet, *, accept_v1_data: bool = True) -> Unsealed:
    """Decrypt every value of ``ss`` with ``keys`` and build the Secret. Raises ``UnsealFailed``."""
    label = label_for(namespace=ss.namespace, name=ss.name, scope=scope_of(ss.annotations))
    hint = ss.annotations.get(HINT_ANNOTATION)
    prefer: list[str] = [hint] if hint else []
    problems: dict[str, str] = {}
    values: dict[str, bytes] = {}
    used: set[str] = set()
    metadata = strip_metadata(ss.template_metadata)
    secret_type = ss.template_type
    immutable = ss.template_immutable
    if ss.legacy_data is not None and not ss.encrypted_data:
        if not accept_v1_data:
            raise SealError(f"{ss.where}: spec.data: the deprecated single-blob format is turned off")
        legacy = _unseal_v1(ss, keys, label=label, prefer=prefer)
        values, used = legacy.values, {legacy.fingerprint}
        metadata = {**legacy.metadata, **metadata}
        secret_type = secret_type or legacy.type
    elif ss.legacy_data is not None:
        raise SealError(f"{ss.where}: spec: cannot use encryptedData and the deprecated data field together")
    opened_values, opened_by = decrypt_values(ss, keys, label=label, prefer=prefer + sorted(used))
    values.update(opened_values)
    used |= opened_by
    data = dict(values)
    for key, template in sorted(ss.template_data.items()):
        if template is None:
            data.pop(key, None)
            continue
        try:
            data[key] = render(template, values, where=f"spec.template.data.{key}")
        except TemplateError as exc:
            problems[f"spec.template.data.{key}"] = str(exc).split(": ", 1)[1]
    if problems:
        raise UnsealFailed(ss.ref, problems)
    metadata["name"] = ss.name
    metadata["namespace"] = ss.namespace
    tannotations = ss.template_metadata.get("annotations") or {}
    if tannotations.get(SKIP_OWNER_REFERENCES_ANNOTATION) != "true":
        metadata["ownerReferences"] = [owner_reference(ss)]
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata}
    if secret_type:
        secret["type"] = secret_type
    if immutable is not None:
        secret["immutable"] = immutable
    secret["data"] = {k: b64encode_std(v) for k, v in sorted(data.items())}
    return Unsealed(secret=secret, fingerprints=frozenset(used))


def decrypt_values(
    ss: SealedSecret, keys: KeySet, *, label: bytes | None = None, prefer: Sequence[str] | None = None
) -> tuple[dict[str, bytes], set[str]]:
    """Decrypt ``spec.encryptedData`` only (no template). Raises ``UnsealFailed`` naming each bad field."""
    if label is None:
        label = label_for(namespace=ss.namespace, name=ss.name, scope=scope_of(ss.annotations))
    if prefer is None:
        hint = ss.annotations.get(HINT_ANNOTATION)
        prefer = [hint] if hint else []
    problems: dict[str, str] = {}
    values: dict[str, bytes] = {}
    used: set[str] = set()
    for key, text in sorted(ss.encrypted_data.items()):
        where = f"spec.encryptedData.{key}"
        try:
            blob = b64decode_std(text)
        except ValueError:
            problems[where] = "not standard base64 (alphabet +/ with = padding)"
            continue
        try:
            opened = keys.open(blob, label=label, prefer=_merge(prefer, used))
        except InvalidCiphertext:
            problems[where] = "truncated or malformed" if _too_short(blob) else _NO_KEY
            continue
        values[key] = opened.plaintext
        used.add(opened.fingerprint)
    if problems:
        raise UnsealFailed(ss.ref, problems)
    if problems:
        raise UnsealFailed(ss.ref, problems)
    return values, used


def _merge(first: Sequence[str], then: set[str]) -> list[str]:
    return list(first) + sorted(then - set(first))


def _too_short(blob: bytes) -> bool:
    return len(blob) < 2 or len(blob) < 2 + int.from_bytes(blob[:2], "big") + 16


@dataclass(frozen=True, slots=True)
class _Legacy:
    values: dict[str, bytes]
    metadata: dict[str, Any]
    type: str | None
    fingerprint: str


def _unseal_v1(ss: SealedSecret, keys: KeySet, *, label: bytes, prefer: list[str]) -> _Legacy:
    assert ss.legacy_data is not None
    try:
        blob = b64decode_std(ss.legacy_data)
    except ValueError:
        raise UnsealFailed(ss.ref, {"spec.data": "not standard base64"}) from None
    try:
        opened = keys.open(blob, label=label, prefer=prefer)
    except InvalidCiphertext:
        raise UnsealFailed(ss.ref, {"spec.data": _NO_KEY}) from None
    try:
        inner = json.loads(opened.plaintext)
        if not isinstance(inner, dict):
            raise ValueError
        values = {k: b64decode_std(v) for k, v in (inner.get("data") or {}).items()}
        meta = inner.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, TypeError, AttributeError):
        raise UnsealFailed(ss.ref, {"spec.data": "the decrypted blob is not a v1 Secret"}) from None
    type_ = inner.get("type") if isinstance(inner.get("type"), str) else None
    return _Legacy(values=values, metadata=strip_metadata(meta), type=type_, fingerprint=opened.fingerprint)
