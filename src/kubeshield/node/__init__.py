"""Secrets on the node (layer 2): values sealed per ServiceAccount, released only to a pod that proves it.

Encryption at rest ends at the API server: a plain Secret is served in the clear to every node that runs
a pod using it and to anyone with ``get secrets`` in its namespace. This package keeps a value sealed
until the pod that may read it asks for it with its own ServiceAccount token:

* :mod:`.identity`, :mod:`.sealed`: the per-ServiceAccount sealed-value format (AES-256-GCM under a key
  derived per ``namespace:serviceaccount``, binding in the AAD, key versions for rotation);
* :mod:`.sealing_keys`: the node sealing key, versioned roots wrapped by a kubeshield key backend;
* :mod:`.review`: a TokenReview of the pod's token (audience, pod-bound) checked against the live pod;
* :mod:`.release`, :mod:`.release_http`, :mod:`.client`: the release service and its client (replies
  JWE-encrypted to the caller's ephemeral key, :mod:`kubeshield.keys.jwe`);
* :mod:`.csi`: the Secrets Store CSI driver provider (``v1alpha1.CSIDriverProvider``), also reading
  OpenBao/Vault KV and AWS Secrets Manager (:mod:`.stores`) as the pod;
* :mod:`.injector`: the mutating admission webhook and :mod:`.fetch`, what its init container runs;
* :mod:`.settings`: the ``node:`` section of the config file.

Like every layer-2 package it imports layers 0-1 only (``kubeshield.kube`` for the Kubernetes API).
"""

from __future__ import annotations

__all__: list[str] = []
