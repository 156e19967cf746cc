"""Sealed secrets for GitOps, byte-compatible with bitnami-labs/sealed-secrets (kubeseal).

The pieces, each in its own module:

* :mod:`~kubeshield.seal.scope`, :mod:`~kubeshield.seal._hybrid`: the OAEP label by scope and the hybrid
  RSA-OAEP + AES-GCM byte format;
* :mod:`~kubeshield.seal.objects`: Secret and SealedSecret documents (YAML/JSON), strict base64;
* :mod:`~kubeshield.seal.sealing` / :mod:`~kubeshield.seal.unsealing`: kubeseal's and the controller's
  object rules; :mod:`~kubeshield.seal.template`: the Go-template subset of ``spec.template.data``;
* :mod:`~kubeshield.seal.certs`, :mod:`~kubeshield.seal.keyset`, :mod:`~kubeshield.seal.registry`: the
  sealing keys, their certificates, and the registry whose private halves are stored only wrapped by a
  kubeshield key backend (or kept on a PKCS#11 token, :mod:`~kubeshield.seal.token`);
* :mod:`~kubeshield.seal.migrate`: importing and exporting sealed-secrets controller key Secrets;
* :mod:`~kubeshield.seal.reconcile` (pure) and :mod:`~kubeshield.seal.controller` (API I/O), and
  :mod:`~kubeshield.seal.http` (the controller's HTTP API).
"""

from __future__ import annotations

from kubeshield.seal.errors import SealError, TemplateError, UnsealFailed
from kubeshield.seal.keyset import HINT_ANNOTATION, KeySet, SealingKey
from kubeshield.seal.scope import Scope

__all__ = ["HINT_ANNOTATION", "KeySet", "Scope", "SealError", "SealingKey", "TemplateError", "UnsealFailed"]
