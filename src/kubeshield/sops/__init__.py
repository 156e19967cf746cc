"""SOPS v3 files: read and written byte-compatibly with the real ``sops`` binary.

* :mod:`.tree` the ordered tree; :mod:`.stores` YAML/JSON/dotenv/INI/binary;
* :mod:`._cipher` value encryption ``ENC[AES256_GCM,...]``; :mod:`.selection` what gets encrypted;
* :mod:`.metadata` the ``sops`` block; :mod:`.shamir` key groups;
* :mod:`.masterkeys` age, pgp, hc_vault, kms and kubeshield's own backend-wrapped key;
* :mod:`.document` one file in memory; :mod:`.ops` the operations the CLI offers; :mod:`.rules`
  ``.sops.yaml``; :mod:`.edit`, :mod:`.kustomize`, :mod:`.gitops` the workflows around them.
"""

from __future__ import annotations

from kubeshield.sops.errors import ExitCode, MacMismatch, SopsError
from kubeshield.sops.metadata import SOPS_VERSION, Metadata
from kubeshield.sops.tree import Branch, Comment, Timestamp

__all__ = [
    "SOPS_VERSION",
    "Branch",
    "Comment",
    "ExitCode",
    "MacMismatch",
    "Metadata",
    "SopsError",
    "Timestamp",
]
