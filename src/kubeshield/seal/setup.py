"""Open the sealing-key registry that a ``kubeshield.yaml`` describes (``seal:`` and ``keys:``).

``seal.privateKeys: wrapped`` opens the ``keys:`` backend (local, pkcs11, transit, awskms, tpm, custody)
to wrap and unwrap private halves. ``token`` opens the ``keys.pkcs11`` token that holds them instead.
The backend or token is opened lazily, only when a command needs a private half: printing the
certificate or listing keys touches neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubeshield.config import Settings
from kubeshield.keys.base import KeyBackend
from kubeshield.keys.registry import open_primary
from kubeshield.seal.registry import Registry, TokenStore

__all__ = ["OpenedRegistry", "open_registry"]


@dataclass
class OpenedRegistry:
    """A registry plus what it opened, to be closed after use."""

    registry: Registry
    backend: KeyBackend | None = None
    token: TokenStore | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()

    def __enter__(self) -> OpenedRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_registry(
    settings: Settings, *, private: bool = True, clock: Callable[[], float] = time.time
) -> OpenedRegistry:
    """The registry of ``settings.seal``; with ``private`` the backend (or token) is opened too."""
    seal = settings.seal
    backend: KeyBackend | None = None
    token: TokenStore | None = None
    closers: list[Callable[[], None]] = []
    if private:
        if seal.private_keys == "token":
            from kubeshield.seal.token import Pkcs11TokenStore

            assert settings.keys.pkcs11 is not None  # the loader checks keys.pkcs11 for backend pkcs11
            store = Pkcs11TokenStore.from_settings(settings.keys.pkcs11, mechanism=seal.pkcs11_mechanism)
            token = store
            closers.append(store.close)
        else:
            backend = open_primary(settings.keys)
            closers.append(backend.close)
    registry = Registry(
        seal.registry,
        backend=backend,
        token=token,
        private_keys=seal.private_keys,
        key_size=seal.key_size,
        key_ttl=seal.key_ttl,
        common_name=seal.common_name or "",
        clock=clock,
    )
    return OpenedRegistry(registry=registry, backend=backend, token=token, _closers=closers)
