"""Re-encrypt a SealedSecret with the newest key (``kubeseal --re-encrypt``, the controller's ``/v1/rotate``).

Each ``spec.encryptedData`` value is opened and sealed again under the same label (the SealedSecret's
own name, namespace and scope) with the newest key; the template (metadata, type, ``data`` templates)
is kept as it is, so templates are not baked into values. The hint annotation names the new key.
Server-side metadata (uid, resourceVersion, ...) and ``status`` are dropped from the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kubeshield.seal import _hybrid
from kubeshield.seal.keyset import HINT_ANNOTATION, KeySet
from kubeshield.seal.objects import SealedSecret, b64encode_std, strip_metadata
from kubeshield.seal.scope import label_for, scope_of
from kubeshield.seal.unsealing import decrypt_values

__all__ = ["reencrypt"]


def reencrypt(ss: SealedSecret, keys: KeySet, *, rng: Callable[[int], bytes] = os.urandom) -> dict[str, Any]:
    """A copy of ``ss.raw`` whose values are sealed with ``keys.latest``. Raises ``UnsealFailed``."""
    label = label_for(namespace=ss.namespace, name=ss.name, scope=scope_of(ss.annotations))
    values, _used = decrypt_values(ss, keys, label=label)
    latest = keys.latest
    out = {k: v for k, v in ss.raw.items() if k != "status"}
    meta = strip_metadata(dict(out.get("metadata") or {}))
    annotations = dict(meta.get("annotations") or {})
    annotations[HINT_ANNOTATION] = latest.fingerprint
    meta["annotations"] = annotations
    out["metadata"] = meta
    spec = dict(out.get("spec") or {})
    spec["encryptedData"] = {
        k: b64encode_std(_hybrid.encrypt(latest.public_key, v, label=label, rng=rng))
        for k, v in sorted(values.items())
    }
    out["spec"] = spec
    return out
