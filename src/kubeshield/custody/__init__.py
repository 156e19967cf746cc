"""The key-custody process: holds KEK versions, serves five operations to attested callers only.

Modules: ``policy`` (caller allow-list), ``measure`` (what the kernel tells us about a caller),
``harden`` (mlock, not dumpable, no core, fds, user), ``server`` (the socket server), ``daemon``
(start-up order), ``attest`` (TPM-quoted statements and their verification). The wire protocol lives
in :mod:`kubeshield.keys._custody_protocol` so the plugin side shares it.
"""

from __future__ import annotations

__all__: list[str] = []
