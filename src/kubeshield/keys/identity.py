"""Which keys a plugin serves, in words that can be compared between nodes (no secret in them).

Every node of a cluster must serve the *same* keys, or each apiserver reads only its own writes. What
names "the same keys" depends on the backend:

=============  =====================================================================================
backend        keyring id
=============  =====================================================================================
local, tpm     the keyring's ``keyringId`` (a UUID drawn at ``keys init``, kept by rotate, retire,
               backup and restore), plus ``versions_digest`` over its key_ids and states
pkcs11         ``pkcs11:token=<token>;object=<keyLabel>`` (an RFC 7512 URI of the key)
transit        ``<address>/v1/<mount>/keys/<key>`` (the key's API path at the key service)
awskms         the configured ``keyId`` (key ARN, key id or alias)
custody        ``custody:<socket>`` (the custody process holds the keys; compare its key_ids)
other          ``<backend name>``
=============  =====================================================================================

``kms serve`` sends it on every Status as gRPC metadata (``kubeshield-keyring-id``, and
``kubeshield-keyring-versions`` for keyrings), ``kms status`` prints it, ``/metrics`` exposes it as
``kubeshield_keyring_info``, and ``keys list`` shows the same value for the same configuration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from kubeshield.config.settings import KeysSettings

__all__ = [
    "METADATA_KEYRING_ID",
    "METADATA_VERSIONS_DIGEST",
    "KeyringIdentity",
    "KeyringNamed",
    "configured_identity",
    "identity_hash",
    "identity_source",
]

#: gRPC metadata keys that carry the identity on every KMS Status reply (trailing metadata)
METADATA_KEYRING_ID = "kubeshield-keyring-id"
METADATA_VERSIONS_DIGEST = "kubeshield-keyring-versions"


def identity_hash(keyring_id: str) -> str:
    """First 16 hex digits of ``sha256(keyring_id)``: the ``keyring_id_hash`` metric label."""
    return hashlib.sha256(keyring_id.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyringIdentity:
    """The backend's name, its keyring id (table above) and, for keyrings, the versions digest."""

    backend: str
    keyring_id: str
    versions_digest: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata pairs (printable ASCII values, as gRPC requires)."""
        pairs = [(METADATA_KEYRING_ID, _printable(self.keyring_id))]
        if self.versions_digest:
            pairs.append((METADATA_VERSIONS_DIGEST, self.versions_digest))
        return tuple(pairs)


def _printable(text: str) -> str:
    return quote(text, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%"))


@runtime_checkable
class KeyringNamed(Protocol):
    """A backend serving a keyring file (:class:`~kubeshield.keys.local.LocalKeyBackend`)."""

    def keyring_id(self) -> str: ...

    def versions_digest(self) -> str: ...


def _part(text: str) -> str:
    return quote(text, safe="")


def configured_identity(keys: KeysSettings) -> str:
    """The keyring id of a backend that is not a keyring file, from its settings (table above)."""
    if keys.backend == "pkcs11" and keys.pkcs11 is not None:
        return f"pkcs11:token={_part(keys.pkcs11.token)};object={_part(keys.pkcs11.key_label)}"
    if keys.backend == "transit" and keys.transit is not None:
        t = keys.transit
        return f"{t.address.rstrip('/')}/v1/{quote(t.mount.strip('/'))}/keys/{_part(t.key)}"
    if keys.backend == "awskms" and keys.awskms is not None:
        return keys.awskms.key_id
    if keys.backend == "custody" and keys.custody is not None:
        return f"custody:{keys.custody.socket}"
    return keys.backend


def identity_source(keys: KeysSettings, backend: object) -> Callable[[], KeyringIdentity]:
    """A cheap callable (no I/O) giving the identity of what ``backend`` serves right now.

    For a keyring backend it follows reloads (a keyring restored in place shows its new id at once).
    """
    name = keys.backend
    if isinstance(backend, KeyringNamed):
        named = backend
        return lambda: KeyringIdentity(name, named.keyring_id(), named.versions_digest())
    fixed = KeyringIdentity(name, configured_identity(keys))
    return lambda: fixed
