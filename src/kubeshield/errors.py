"""The one exception tree of kubeshield.

Every error that leaves a kubeshield API is one of these. Boundaries (the gRPC servicer, the CLI, the
HTTP health server) translate them; nothing else is allowed to escape except programming errors
(``TypeError``/``ValueError`` on wrong argument types or values, as in pyca/cryptography).

    KubeshieldError
    ├── ConfigError                  a setting or file is wrong; the message names the field or line
    ├── InvalidRequest               a caller sent something we refuse (empty plaintext, too large...)
    ├── InvalidCiphertext            ANY failure to decrypt or parse ciphertext. Opaque by design: it
    │                                carries no reason, so it cannot become an oracle or leak bytes.
    ├── KeyringError                 a keyring file is missing, unreadable, corrupt or not ours
    │   └── WrongPassphrase          the keyring's passphrase does not open it
    ├── BackendError                 key custody failed
    │   ├── BackendUnavailable       the key service cannot be reached (retry later)
    │   ├── BackendTimeout           the key service did not answer in time (retry later)
    │   ├── BackendAuthError         our credential was refused (revoked token, wrong PIN)
    │   └── KeyNotFound              the key_id or key version is unknown to this backend
    ├── ContractViolation            our own reply would break the KMS contract (a bug; fail closed)
    ├── EtcdError                    talking to etcd failed
    │   └── SnapshotError            an etcd snapshot file is corrupt, truncated or not a snapshot
    └── PolicyDenied                 a caller or request is not allowed by policy

Rules: messages never hold plaintext, key material, tokens, ciphertext or a remote response body.
``InvalidCiphertext`` never holds anything at all.
"""

from __future__ import annotations

__all__ = [
    "BackendAuthError",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "ConfigError",
    "ContractViolation",
    "EtcdError",
    "InvalidCiphertext",
    "InvalidRequest",
    "KeyNotFound",
    "KeyringError",
    "KubeshieldError",
    "PolicyDenied",
    "SnapshotError",
    "WrongPassphrase",
]


class KubeshieldError(Exception):
    """Base of every error kubeshield raises on purpose."""


class ConfigError(KubeshieldError):
    """A setting, flag or configuration file is invalid. The message names the field."""


class InvalidRequest(KubeshieldError):
    """A request was refused because of what it contains (not because of a failure on our side)."""


class InvalidCiphertext(KubeshieldError):
    """Decryption failed. Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__("invalid ciphertext")


class KeyringError(KubeshieldError):
    """A keyring file cannot be used."""


class WrongPassphrase(KeyringError):
    """The passphrase does not open the keyring."""

    def __init__(self) -> None:
        super().__init__("the passphrase does not open this keyring")


class BackendError(KubeshieldError):
    """Key custody failed."""


class BackendUnavailable(BackendError):
    """The key backend cannot be reached now; retry later."""


class BackendTimeout(BackendError):
    """The key backend did not answer in time."""


class BackendAuthError(BackendError):
    """The key backend refused our credential."""


class KeyNotFound(BackendError):
    """The key or key version is not known to this backend."""


class ContractViolation(KubeshieldError):
    """A reply we were about to send would break the KMS contract. Fail closed."""


class EtcdError(KubeshieldError):
    """Talking to etcd failed."""


class SnapshotError(EtcdError):
    """An etcd snapshot file is corrupt, truncated, or not a snapshot."""


class PolicyDenied(KubeshieldError):
    """A caller or request is not allowed by policy."""
