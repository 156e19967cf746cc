"""``kubeshield keys init`` for the backends whose KEK lives in a key service or a token.

Each such backend class offers ``initialize(section, *, exist_ok) -> InitReport``, taking its own
settings section, as it offers ``from_settings``; :func:`init_backend` finds it through the registry,
so the CLI never dispatches on the backend's name. What each one does:

* ``pkcs11``: generates KEK version 1 *inside* the token (AES-256, sensitive, never extractable, only
  encrypt/decrypt, labelled ``keyLabel``). A key with that label already there is refused unless
  ``exist_ok`` (then it is checked, never replaced: kubeshield never destroys key objects).
* ``transit``: creates the Transit key (``aes256-gcm96``) when it is missing and the token may create
  it, else says which ``bao``/``vault`` command to run; an existing key is checked.
* ``awskms``: an alias that points nowhere gets a new symmetric key and the alias when the credentials
  may create them, else the ``aws kms`` commands to run; an existing key is checked.

Every report ends with checks made with the plugin's own credential (a real encrypt/decrypt round trip,
and what the credential may do besides), so the operator learns at set-up time, not at the first
Secret write, that a permission is missing.
"""

from __future__ import annotations

from kubeshield.config.settings import KeysSettings
from kubeshield.errors import ConfigError
from kubeshield.keys.base import InitCheck, InitReport
from kubeshield.keys.registry import backend_section, load_backend_class

__all__ = ["InitCheck", "InitReport", "init_backend"]


def init_backend(settings: KeysSettings, *, exist_ok: bool = False) -> InitReport:
    """Create (or check) the KEK of ``settings.backend`` in its key service or token."""
    name = settings.backend
    cls = load_backend_class(name)
    initialize = getattr(cls, "initialize", None)
    if initialize is None:
        raise ConfigError(f"keys.backend: kubeshield cannot create the keys of the {name!r} backend")
    report: InitReport = initialize(backend_section(settings), exist_ok=exist_ok)
    return report
