"""Key custody: the ``KeyBackend`` contract, the keyring of KEK versions, and the backends.

Import what you need from its module (``kubeshield.keys.local``, ``kubeshield.keys.keyring``, ...);
this package re-exports only the contract and the registry, so importing it never loads an SDK.
"""

from __future__ import annotations

from kubeshield.keys.base import (
    Exportable,
    Health,
    KeyBackend,
    KeyVersionInfo,
    Refreshable,
    Rotatable,
    Wrapped,
)
from kubeshield.keys.registry import known_backends, load_backend_class, open_backend

__all__ = [
    "Exportable",
    "Health",
    "KeyBackend",
    "KeyVersionInfo",
    "Refreshable",
    "Rotatable",
    "Wrapped",
    "known_backends",
    "load_backend_class",
    "open_backend",
]
