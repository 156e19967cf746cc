"""Which class implements each key backend, loaded only when selected.

Built-in backends are an explicit table of ``"module:Class"`` strings, so importing this module never
imports an SDK. Third-party backends register in the entry-point group ``kubeshield.backends``
(``name = "package.module:Class"``); a built-in name always wins over an entry point of the same name.

A backend class offers ``from_settings(section) -> KeyBackend`` taking its own settings section
(``LocalSettings`` for ``local``, ``Pkcs11Settings`` for ``pkcs11``, ...), so :func:`open_backend`
never dispatches on the backend's name.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from kubeshield.config.settings import KeysSettings
from kubeshield.errors import ConfigError
from kubeshield.keys.base import KeyBackend

__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "EXTRAS",
    "known_backends",
    "load_backend_class",
    "open_backend",
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


def open_backend(settings: KeysSettings) -> KeyBackend:
    """Build the backend that ``settings.backend`` selects from its own section (``keys.<backend>``).

    A section left out of the file gets its defaults when it has them (``tpm``, ``custody``).
    """
    name = settings.backend
    cls = load_backend_class(name)
    factory = getattr(cls, "from_settings", None)
    if factory is None:
        raise ConfigError(f"key backend {name!r} is not available in this build (no from_settings)")
    section = getattr(settings, name, None)
    if section is None:
        section_type = typing.get_args(typing.get_type_hints(KeysSettings)[name])[0]
        try:
            section = section_type()
        except TypeError:
            raise ConfigError(f"keys.{name}: required when keys.backend is {name}") from None
    backend: KeyBackend = factory(section)
    return backend
