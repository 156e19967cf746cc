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
    ├── PolicyDenied                 a caller or request is not allowed by policy
    └── KubeError                    the Kubernetes API refused or failed a request (kubeshield.kube).
        │                            Carries the HTTP code, the Status reason and which object, never
        │                            the response body (it can hold Secret data).
        ├── KubeBadRequest           400: the request is malformed (bad selector, bad patch...)
        ├── KubeUnauthorized         401: our credential was not accepted
        ├── KubeForbidden            403: authenticated, but not allowed
        ├── KubeNotFound             404: the object (or the resource type) does not exist
        ├── KubeConflict             409 Conflict: stale resourceVersion, or a server-side apply conflict
        ├── KubeAlreadyExists        409 AlreadyExists: create of a name that is taken
        ├── KubeGone                 410: the resourceVersion or continue token is too old (re-list)
        ├── KubeInvalid              422: the object fails validation; ``fields`` names the fields
        └── KubeUnavailable          the API cannot be reached, timed out, throttled us (429) or failed (5xx)

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
    "KubeAlreadyExists",
    "KubeBadRequest",
    "KubeConflict",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeInvalid",
    "KubeNotFound",
    "KubeUnauthorized",
    "KubeUnavailable",
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


class KubeError(KubeshieldError):
    """The Kubernetes API refused or failed a request.

    ``code`` is the HTTP status (0 when no response arrived), ``reason`` the Status reason
    (``NotFound``, ``Conflict``...), ``kind``/``name``/``namespace`` say which object when known. The
    message is built from those fields only: a response body never reaches an exception.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 0,
        reason: str = "",
        kind: str = "",
        name: str = "",
        namespace: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.retry_after = retry_after


class KubeBadRequest(KubeError):
    """400: the API says the request is malformed."""


class KubeUnauthorized(KubeError):
    """401: the API did not accept our credential."""


class KubeForbidden(KubeError):
    """403: authenticated, but the API's authorizer refused the request."""


class KubeNotFound(KubeError):
    """404: the object, its namespace or its resource type does not exist."""


class KubeConflict(KubeError):
    """409 Conflict: the object changed since it was read (or a server-side apply field conflict)."""


class KubeAlreadyExists(KubeError):
    """409 AlreadyExists: an object with that name exists already."""


class KubeGone(KubeError):
    """410: a resourceVersion or continue token is too old; list again."""


class KubeInvalid(KubeError):
    """422: the object fails the API's validation. ``fields`` names the offending fields."""

    def __init__(
        self,
        message: str,
        *,
        code: int = 422,
        reason: str = "Invalid",
        kind: str = "",
        name: str = "",
        namespace: str = "",
        fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, code=code, reason=reason, kind=kind, name=name, namespace=namespace)
        self.fields = fields


class KubeUnavailable(KubeError):
    """The API could not be reached, timed out, throttled us (429) or failed (5xx). Retry later."""
