"""What every SOPS master key offers, and the environment master keys read (as sops reads it).

A master key encrypts the file's 32-byte data key (or, with several key groups, one Shamir share of
it) and stores the result in its ``enc`` field. Keys are plain objects built from a metadata entry
(:meth:`MasterKey.from_fields`) or from a flag / ``.sops.yaml`` rule, and written back with
:meth:`MasterKey.fields` in sops' field order.

:class:`KeyEnv` carries the process environment, the home directory, a clock and randomness, so tests
inject them instead of patching globals. Master keys read the same variables sops reads
(``SOPS_AGE_KEY_FILE``, ``VAULT_ADDR``/``VAULT_TOKEN``, ``AWS_*`` ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeshield.sops.errors import ExitCode, SopsError

__all__ = ["KeyEnv", "MasterKey", "OpaqueKey", "format_created_at"]


def format_created_at(epoch: float) -> str:
    """RFC 3339 in UTC to the second, as sops writes ``created_at`` and ``lastmodified``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class KeyEnv:
    """The environment master keys read. ``from_os()`` for the real process."""

    environ: Mapping[str, str] = field(default_factory=dict)
    home: Path = field(default_factory=Path.home)
    clock: Callable[[], float] = time.time
    rng: Callable[[int], bytes] = os.urandom
    #: per-run state shared by master keys (loaded identities, opened kubeshield backends)
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_os(cls) -> KeyEnv:
        return cls(environ=dict(os.environ), home=Path(os.environ.get("HOME") or Path.home()))

    def close(self) -> None:
        """Release what master keys opened (kubeshield backends)."""
        pool = self.cache.pop("kubeshield-pool", None)
        if pool is not None:
            pool.close()

    def get(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value if value else None

    def config_dir(self) -> Path:
        """Go's ``os.UserConfigDir`` on Linux: ``$XDG_CONFIG_HOME`` or ``~/.config``."""
        xdg = self.get("XDG_CONFIG_HOME")
        return Path(xdg) if xdg else self.home / ".config"


class MasterKey:
    """Base class of the master keys. Subclasses set ``kind`` (the metadata list name)."""

    kind: str = ""
    enc: str = ""

    def fields(self) -> list[tuple[str, Any]]:
        """The metadata entry, in sops' field order."""
        raise NotImplementedError

    def describe(self) -> str:
        """sops' ``ToString`` (a recipient, an ARN, a key URI, a fingerprint): public, no secret."""
        raise NotImplementedError

    def encrypt(self, data_key: bytes, *, env: KeyEnv) -> None:
        """Encrypt ``data_key`` and keep the result in ``enc``. ``SopsError`` on failure."""
        raise NotImplementedError

    def decrypt(self, *, env: KeyEnv) -> bytes:
        """The data key (or share) from ``enc``. ``SopsError`` with a reason that holds no secret."""
        raise NotImplementedError

    def can_encrypt(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class OpaqueKey(MasterKey):
    """A key type kubeshield does not implement (``gcp_kms``, ``azure_kv``, ``hckms``...).

    Kept exactly as read so rewriting a file never drops it; it can neither encrypt nor decrypt.
    """

    def __init__(self, kind: str, raw: list[tuple[str, Any]]) -> None:
        self._kind = kind
        self.kind = kind
        self.raw = raw
        self.enc = str(dict(raw).get("enc", ""))

    def fields(self) -> list[tuple[str, Any]]:
        return [(k, self.enc if k == "enc" else v) for k, v in self.raw]

    def describe(self) -> str:
        values = dict(self.raw)
        for name in ("resource_id", "key_id", "vault_url", "arn"):
            if name in values:
                return f"{self._kind}:{values[name]}"
        return self._kind

    def can_encrypt(self) -> bool:
        return False

    def encrypt(self, data_key: bytes, *, env: KeyEnv) -> None:
        raise SopsError(
            f"cannot encrypt to a {self._kind} key ({self.describe()}): kubeshield does not implement "
            "that key type; use the sops binary for this file or remove the key",
            code=ExitCode.COULD_NOT_RETRIEVE_KEY,
        )

    def decrypt(self, *, env: KeyEnv) -> bytes:
        raise SopsError(
            f"{self._kind}: key type not supported by kubeshield", code=ExitCode.COULD_NOT_RETRIEVE_KEY
        )
