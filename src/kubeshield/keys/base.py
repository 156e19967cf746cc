"""The key-custody contract that every backend implements.

A backend holds key-encryption keys (KEKs) and offers exactly five calls. It never sees protobuf
messages or gRPC: the KMS layer translates. Optional abilities are separate Protocols so a backend
states what it can do (``isinstance(backend, Rotatable)``) instead of raising NotImplementedError.

key_id rules (the apiserver relies on them):
* stable while the KEK is unchanged, changes only when the KEK changes;
* never reused for a different KEK;
* holds no secret (a version name or a hash), 1..1024 bytes, printable ASCII.

``unwrap`` must keep working for every key_id it ever returned that has not been retired. A
``Wrapped`` with ``key_id == ""`` means "unknown": the caller (KMS v1, which has no key_id) relies on
the backend to find the KEK from the ciphertext itself.

Every failure to unwrap (wrong key, tampered bytes, wrong aad, unknown format) raises the one opaque
:class:`~kubeshield.errors.InvalidCiphertext`. Key service failures raise the ``BackendError`` family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Exportable",
    "Health",
    "InitCheck",
    "InitReport",
    "KeyBackend",
    "KeyVersionInfo",
    "Refreshable",
    "Rotatable",
    "Wrapped",
]


@dataclass(frozen=True, slots=True)
class Wrapped:
    """Key material wrapped by a KEK, plus what is needed to unwrap it again."""

    ciphertext: bytes
    key_id: str
    annotations: Mapping[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print ciphertext
        return f"Wrapped(key_id={self.key_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"


@dataclass(frozen=True, slots=True)
class Health:
    """Result of one health round trip. ``detail`` is safe to log and show (no secrets)."""

    ok: bool
    key_id: str | None
    detail: str
    checked_at: float
    latency_seconds: float


@dataclass(frozen=True, slots=True)
class KeyVersionInfo:
    """Public description of one KEK version (no material)."""

    version: int
    key_id: str
    created: float
    state: str  # "primary" | "active" | "decrypt-only" | "retired"


@dataclass(frozen=True, slots=True)
class InitCheck:
    """One thing ``keys init`` checked. ``ok`` is None when it could not be checked (``detail`` says why).

    A ``required`` check that failed means the plugin could not work with this set-up.
    """

    what: str
    ok: bool | None
    detail: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class InitReport:
    """What ``keys init`` did for a key service or token backend (``kubeshield.keys.provisioning``).

    No field holds a secret: ``location`` names the token, the Transit key or the AWS key.
    """

    backend: str
    created: bool
    key_id: str
    location: str
    checks: tuple[InitCheck, ...] = ()


class KeyBackend(Protocol):
    """What every key backend offers."""

    name: str

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        """Encrypt ``plaintext`` (a DEK or seed) under the current KEK, binding ``aad``."""
        ...

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        """Decrypt a ``Wrapped`` produced by ``wrap`` with the same ``aad``."""
        ...

    def key_id(self) -> str:
        """The key_id ``wrap`` uses now. Cheap: no remote call."""
        ...

    def check_health(self) -> Health:
        """A real wrap/unwrap round trip of a random value. Never raises."""
        ...

    def close(self) -> None:
        """Release connections and forget key material where possible."""
        ...


@runtime_checkable
class Rotatable(Protocol):
    """A backend that can create a new primary KEK version."""

    def rotate(self) -> str:
        """Create a new KEK version, make it primary, and return its key_id."""
        ...


@runtime_checkable
class Refreshable(Protocol):
    """A backend whose key set can change outside the process (a keyring file, a key service)."""

    def refresh(self) -> bool:
        """Reload the key set if it changed; return True when the current key_id changed."""
        ...


@runtime_checkable
class Exportable(Protocol):
    """A backend whose KEK versions can leave it (for backup)."""

    def versions(self) -> list[KeyVersionInfo]:
        """Every KEK version, oldest first."""
        ...
