"""Which class implements each key backend, loaded only when selected.

Built-in backends are an explicit table of ``"module:Class"`` strings, so importing this module never
imports an SDK. Third-party backends register in the entry-point group ``kubeshield.backends``
(``name = "package.module:Class"``); a built-in name always wins over an entry point of the same name.

A backend class offers ``from_settings(section) -> KeyBackend`` taking its own settings section
(``LocalSettings`` for ``local``, ``Pkcs11Settings`` for ``pkcs11``, ...), so :func:`open_primary`
never dispatches on the backend's name.

What the plugin serves is a *stack* built around that primary backend (:func:`open_backends`)::

    v2:  [HierarchicalBackend]( [BreakGlassBackend]( primary, emergency, escrow ) )
    v1:                         [BreakGlassBackend]( primary, emergency, escrow=False )

* The local-KEK hierarchy (``keys.hierarchy.enabled``) is ``on``, ``off``, or ``auto``: on for the
  network key services in :data:`NETWORK_BACKENDS` (``transit``, ``awskms``), where every decrypt would
  otherwise be a remote round trip; off for ``local`` (already in memory), ``pkcs11`` and ``tpm``
  (on-host devices; their keys must not be copied into process memory unless the operator says
  ``on``) and ``custody`` (the point of the custody process is that keys stay there), and off for
  third-party backends. The hierarchy needs annotations, so it exists in the v2 stack only: KMS v1
  keeps no annotations, and a v1 ciphertext made under a local KEK could not be decrypted after a
  restart. The KMS layer must serve v1 from :attr:`BackendStack.v1`.
* Break-glass (``keys.emergency``) wraps the primary in :class:`~kubeshield.keys.breakglass.BreakGlassBackend`
  *under* the hierarchy, so the hierarchy's remote unwraps (one per local KEK) are what fall back. For a
  ``local`` primary the emergency keyring is a restored backup holding the same key_ids (no escrow);
  for every other primary the v2 stack escrows each wrap (so each local KEK, when the hierarchy is on)
  under the emergency keyring in the ``emergency.kubeshield.io`` annotation. v1 gets no escrow (no
  annotations), so for a non-local primary break-glass cannot help v1 data.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from kubeshield.config.settings import EmergencySettings, KeysSettings
from kubeshield.errors import ConfigError
from kubeshield.keys.base import KeyBackend
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.passphrase import read_passphrase

__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "EXTRAS",
    "NETWORK_BACKENDS",
    "BackendStack",
    "backend_section",
    "hierarchy_enabled",
    "known_backends",
    "load_backend_class",
    "open_backend",
    "open_backends",
    "open_emergency",
    "open_primary",
]

ENTRY_POINT_GROUP = "kubeshield.backends"

BUILTIN_BACKENDS: dict[str, str] = {
    "local": "kubeshield.keys.local:LocalKeyBackend",
    "pkcs11": "kubeshield.keys.pkcs11:Pkcs11KeyBackend",
    "transit": "kubeshield.keys.transit:TransitKeyBackend",
    "awskms": "kubeshield.keys.awskms:AwsKmsKeyBackend",
    "tpm": "kubeshield.keys.tpm:TpmKeyBackend",
    "custody": "kubeshield.keys.enclave:EnclaveKeyBackend",
}

#: backend name -> the pip extra that installs its SDK
EXTRAS: dict[str, str] = {"pkcs11": "pkcs11", "transit": "transit", "awskms": "awskms", "tpm": "tpm"}

#: backends reached over the network: ``keys.hierarchy.enabled: auto`` turns the local-KEK cache on for them
NETWORK_BACKENDS: frozenset[str] = frozenset({"transit", "awskms"})


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_backends() -> list[str]:
    """Every backend name this installation knows (built-in and entry points), sorted."""
    return sorted(set(BUILTIN_BACKENDS) | set(_entry_point_targets()))


def load_backend_class(
    name: str, *, table: Mapping[str, str] | None = None, extras: Mapping[str, str] | None = None
) -> type[Any]:
    """Import and return the class for backend ``name``. Raises ``ConfigError`` with a fix to apply.

    ``table``/``extras`` replace :data:`BUILTIN_BACKENDS`/:data:`EXTRAS` (a seam for tests).
    """
    builtins = BUILTIN_BACKENDS if table is None else table
    extras = EXTRAS if extras is None else extras
    target = builtins.get(name) or _entry_point_targets().get(name)
    if target is None:
        known = sorted(set(builtins) | set(_entry_point_targets()))
        raise ConfigError(f"unknown key backend {name!r}; known backends: {', '.join(known)}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or missing.startswith("kubeshield."):
            raise ConfigError(f"key backend {name!r} is not available in this build") from None
        extra = extras.get(name)
        fix = (
            f"pip install 'kubeshield[{extra}]'"
            if extra
            else f"install the package that provides {missing!r}"
        )
        raise ConfigError(f"key backend {name!r} needs the {missing!r} package: {fix}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"key backend {name!r} is not available in this build ({target} not found)")
    return cls


def backend_section(settings: KeysSettings) -> Any:
    """The settings section of the selected backend (``keys.<backend>``), defaults filled in.

    A section left out of the file gets its defaults when it has them (``tpm``, ``custody``); else
    ``ConfigError`` naming it.
    """
    name = settings.backend
    section = getattr(settings, name, None)
    if section is None:
        section_type = typing.get_args(typing.get_type_hints(KeysSettings)[name])[0]
        try:
            section = section_type()
        except TypeError:
            raise ConfigError(f"keys.{name}: required when keys.backend is {name}") from None
    return section


def open_primary(settings: KeysSettings, *, during_outage: bool = False) -> KeyBackend:
    """Build the bare backend that ``settings.backend`` selects from its own section (``keys.<backend>``).

    This is what ``kubeshield keys rotate|list`` use: no hierarchy, no break-glass. With
    ``during_outage`` (``kms serve``) a key service that cannot be reached now gives a
    :class:`~kubeshield.keys.lazy.LazyBackend` that connects when it comes back, instead of an error.
    """
    from kubeshield.keys.lazy import open_during_outage

    name = settings.backend
    cls = load_backend_class(name)
    factory = getattr(cls, "from_settings", None)
    if factory is None:
        raise ConfigError(f"key backend {name!r} is not available in this build (no from_settings)")
    section = backend_section(settings)

    def opener() -> KeyBackend:
        backend: KeyBackend = factory(section)
        return backend

    return open_during_outage(opener, name=name) if during_outage else opener()


def hierarchy_enabled(settings: KeysSettings) -> bool:
    """Whether the v2 stack gets the local-KEK hierarchy (``auto``: on for :data:`NETWORK_BACKENDS`)."""
    enabled = settings.hierarchy.enabled
    if enabled == "auto":
        return settings.backend in NETWORK_BACKENDS
    return enabled == "on"


def open_emergency(settings: EmergencySettings) -> LocalKeyBackend:
    """Open the break-glass keyring. Its passphrase comes only from ``keys.emergency.passphraseFile``.

    ``KUBESHIELD_KEYRING_PASSPHRASE`` (the primary keyring's) is deliberately not used: the emergency
    keyring should have its own secret. Errors name the keyring's path (``KeyringError``).
    """
    passphrase = read_passphrase(passphrase_file=settings.passphrase_file, environ={})
    return LocalKeyBackend(path=settings.keyring, passphrase=passphrase)


@dataclass(frozen=True, slots=True)
class BackendStack:
    """What ``kms serve`` uses: the v2 stack, the v1 stack (no hierarchy), and the bare primary."""

    v2: KeyBackend
    v1: KeyBackend
    primary: KeyBackend

    def close(self) -> None:
        """Close everything once (the v2 stack owns the primary and the emergency keyring)."""
        self.v2.close()


def open_backends(
    settings: KeysSettings,
    *,
    on_emergency: Callable[[str], None] | None = None,
    primary: KeyBackend | None = None,
) -> BackendStack:
    """Build the primary backend and the v2/v1 stacks around it (see the module docstring).

    ``on_emergency(key_id)`` is called after every decrypt served by the emergency keyring (the KMS
    layer counts it in a metric). ``primary`` replaces :func:`open_primary` (a seam for tests).
    """
    from kubeshield.keys.breakglass import BreakGlassBackend
    from kubeshield.keys.hierarchy import HierarchicalBackend

    base = primary if primary is not None else open_primary(settings)
    try:
        v2: KeyBackend = base
        v1: KeyBackend = base
        if settings.emergency is not None:
            emergency = open_emergency(settings.emergency)
            hook: dict[str, Any] = {} if on_emergency is None else {"on_emergency": on_emergency}
            escrow = settings.backend != "local"
            v2 = BreakGlassBackend(base, emergency, escrow=escrow, **hook)
            v1 = BreakGlassBackend(base, emergency, escrow=False, **hook)
        if hierarchy_enabled(settings):
            v2 = HierarchicalBackend(
                v2, max_age=settings.hierarchy.max_age, max_uses=settings.hierarchy.max_uses
            )
    except BaseException:
        base.close()
        raise
    return BackendStack(v2=v2, v1=v1, primary=base)


def open_backend(settings: KeysSettings, *, on_emergency: Callable[[str], None] | None = None) -> KeyBackend:
    """The KMS v2 stack (:attr:`BackendStack.v2`): primary, break-glass and hierarchy as configured."""
    return open_backends(settings, on_emergency=on_emergency).v2
