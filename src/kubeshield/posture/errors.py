"""Errors of the exposure audit, the Pod Security evaluator and the repository scan.

    KubeshieldError
    └── PostureError               a posture input cannot be used
        ├── InvalidObject          a Kubernetes object is malformed; the message names the object and field
        ├── InvalidRuleFile        a gitleaks-style rule file is malformed (bad TOML, an invalid RE2 regex)
        └── AdmissionRequestError  an AdmissionReview is malformed, of another kind or another version

Messages name the file, object or field, never a secret value.
"""

from __future__ import annotations

from kubeshield.errors import KubeshieldError

__all__ = ["AdmissionRequestError", "InvalidObject", "InvalidRuleFile", "PostureError"]


class PostureError(KubeshieldError):
    """A posture input cannot be used."""


class InvalidObject(PostureError):
    """A Kubernetes object is malformed. The message names the object and the field."""


class InvalidRuleFile(PostureError):
    """A rule file (gitleaks TOML) is malformed."""


class AdmissionRequestError(PostureError):
    """An AdmissionReview request is malformed or not one we handle."""
