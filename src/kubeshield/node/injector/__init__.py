"""The injector: :mod:`.mutate` (the pure Pod -> JSON Patch logic) and :mod:`.webhook` (AdmissionReview v1
over HTTPS). What the injected init container runs is :mod:`kubeshield.node.fetch`."""

from __future__ import annotations

__all__: list[str] = []
