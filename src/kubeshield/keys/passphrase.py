"""Where a keyring passphrase comes from: a file, or the ``KUBESHIELD_KEYRING_PASSPHRASE`` variable.

Never from a command-line flag value (it would show in ``ps`` and shell history) and never from the
config file (which only names the *file*). A file's single trailing newline (``\\n`` or ``\\r\\n``) is
removed, so ``echo secret > file`` works. An empty passphrase is refused rather than treated as none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kubeshield.errors import ConfigError

__all__ = ["PASSPHRASE_ENV", "read_passphrase"]

PASSPHRASE_ENV = "KUBESHIELD_KEYRING_PASSPHRASE"
_MAX_PASSPHRASE_BYTES = 64 * 1024


def read_passphrase(
    *, passphrase_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """Return the passphrase from ``passphrase_file`` if given, else from the environment, else None."""
    env = os.environ if environ is None else environ
    if passphrase_file is not None:
        try:
            with open(passphrase_file, "rb") as fh:
                data = fh.read(_MAX_PASSPHRASE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{passphrase_file}: cannot read passphrase file: {exc.strerror}") from None
        if len(data) > _MAX_PASSPHRASE_BYTES:
            raise ConfigError(
                f"{passphrase_file}: passphrase file is larger than {_MAX_PASSPHRASE_BYTES} bytes"
            )
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise ConfigError(f"{passphrase_file}: passphrase file is empty")
        return data
    value = env.get(PASSPHRASE_ENV)
    if value is None:
        return None
    if not value:
        raise ConfigError(f"{PASSPHRASE_ENV} is set but empty")
    return value.encode("utf-8")
