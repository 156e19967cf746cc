"""Exposure audit (``kubeshield posture``): who and what can read a cluster's Secrets, and where they are
in the clear; Pod Security evaluation and its admission webhook; the repository scan.

Layer 2: imports layers 0-1 and the public clients of other features only (``kubeshield.kms.client``,
``kubeshield.etcd.audit``)."""

__all__: list[str] = []
