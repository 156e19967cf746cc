"""Helpers for key-custody tests: cheap Argon2 parameters and a keyring factory."""

from __future__ import annotations

from pathlib import Path

from kubeshield.keys.keyring import Argon2Params, Keyring, KeyringFile

__all__ = ["CHEAP_ARGON2", "PASSPHRASE", "make_keyring"]

#: the cheapest parameters Argon2id accepts: tests exercise the format, not the cost
CHEAP_ARGON2 = Argon2Params(iterations=1, lanes=1, memory_cost=8)
PASSPHRASE = b"correct horse battery staple"


def make_keyring(path: Path, *, passphrase: bytes | None = PASSPHRASE, rotations: int = 0) -> Keyring:
    """Create a keyring at ``path`` (cheap KDF) and rotate it ``rotations`` times."""
    keyring_file = KeyringFile(path, argon2=CHEAP_ARGON2)
    keyring = keyring_file.create(passphrase=passphrase)
    for _ in range(rotations):
        keyring = keyring_file.rotate(passphrase=passphrase)
    return keyring
