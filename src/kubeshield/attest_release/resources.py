"""What the release server can hand out, from kubeshield's key backends and files.

* ``keyring``: every KEK version of a local keyring (:mod:`kubeshield.keys.keyring`, opened with its
  passphrase file, or TPM-sealed on the server's own TPM), as the JSON
  ``{"kind": "KubeshieldReleasedKeys", "versions": [{"version", "keyId", "created", "state", "key": B64}]}``
  that :class:`kubeshield.attest_release.keysource.ReleasedKeyBackend` opens. The key_ids are the
  keyring's, so data wrapped by either side unwraps on the other.
* ``file``: the bytes of a key file (a sealing key, a passphrase), which must be a regular file of
  mode 0600 or stricter.

The material is read at each release (so a rotation on the keyring is served at once) and never logged.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kubeshield.errors import ConfigError, KeyringError
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.passphrase import read_passphrase

__all__ = ["RELEASED_KEYS_KIND", "FileResource", "KeyringResource", "Resource"]

RELEASED_KEYS_KIND = "KubeshieldReleasedKeys"
_MAX_FILE = 64 << 10


@dataclass(frozen=True, slots=True)
class KeyringResource:
    path: Path
    passphrase_file: Path | None = None

    def material(self) -> bytes:
        passphrase = (
            read_passphrase(passphrase_file=self.passphrase_file, environ={})
            if self.passphrase_file
            else None
        )
        keyring = KeyringFile(self.path).load(passphrase)
        versions = [
            {
                "version": v.version,
                "keyId": v.key_id,
                "created": v.created,
                "state": v.state,
                "key": base64.b64encode(keyring.keys[v.version]).decode(),
            }
            for v in keyring.info.versions
        ]
        return json.dumps({"kind": RELEASED_KEYS_KIND, "versions": versions}, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class FileResource:
    path: Path

    def material(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyringError(f"{self.path}: cannot open the key file: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                raise ConfigError(f"{self.path}: a released key file must be a regular file of mode 0600")
            data = fh.read(_MAX_FILE + 1)
        if not data or len(data) > _MAX_FILE:
            raise ConfigError(f"{self.path}: a released key file must hold 1..{_MAX_FILE} bytes")
        return data


Resource = KeyringResource | FileResource
