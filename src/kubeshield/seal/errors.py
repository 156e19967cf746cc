"""Errors of the sealed-secrets feature. Messages name the object and the field, never a value.

InvalidRequest
└── SealError                 input we refuse (a malformed Secret/SealedSecret, a bad certificate)
    ├── TemplateError          ``spec.template.data`` uses Go-template syntax or a function outside
    │                          the supported subset, or references a key that is not there
    └── UnsealFailed           some values did not decrypt; ``problems`` maps field -> reason
"""

from __future__ import annotations

from collections.abc import Mapping

from kubeshield.errors import InvalidRequest

__all__ = ["SealError", "TemplateError", "UnsealFailed"]


class SealError(InvalidRequest):
    """A Secret, SealedSecret, certificate or key we refuse. The message names the object and field."""


class TemplateError(SealError):
    """A ``spec.template.data`` entry cannot be rendered."""


class UnsealFailed(SealError):
    """One or more values of a SealedSecret did not unseal. Says which fields, never what they hold."""

    def __init__(self, obj: str, problems: Mapping[str, str]) -> None:
        self.object = obj
        self.problems = dict(sorted(problems.items()))
        detail = "; ".join(f"{field}: {why}" for field, why in self.problems.items())
        super().__init__(f"{obj}: {detail}")
