"""What the agent holds for one kubeconfig context: where the apiserver is and how to authenticate to it.

A ``ClusterCredential`` lives only in memory. Its ``repr`` names the context and the kind of credential,
never a key, a certificate or a token, so it can be logged safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["ClusterCredential", "ClusterEndpoint"]


@dataclass(frozen=True)
class ClusterEndpoint:
    """Where one cluster's apiserver is and which CA signs its serving certificate (no secret here).

    The relay serves these so that one login serves many clusters and nobody copies a kubeconfig.
    """

    name: str
    server: str
    ca_pem: bytes | None = None
    tls_server_name: str | None = None


@dataclass(frozen=True, repr=False)
class ClusterCredential:
    """One context's apiserver endpoint and credential.

    ``server`` is the apiserver's https URL; ``ca_pem`` the CA bundle that must have signed its
    certificate (None: the system store); ``tls_server_name`` overrides the name checked in it.
    Exactly one of (``client_cert_pem`` + ``client_key_pem``) or ``token`` authenticates the caller.
    ``expires_at`` (UTC) is when the credential stops working, None when unknown; ``subject`` is the
    person it belongs to (for audit records), never a secret.
    """

    context: str
    server: str
    ca_pem: bytes | None = None
    tls_server_name: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = field(default=None, compare=False)
    token: str | None = field(default=None, compare=False)
    expires_at: datetime | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        if not self.server.startswith("https://"):
            raise ValueError(f"context {self.context!r}: the apiserver URL must be https://")
        has_cert = self.client_cert_pem is not None or self.client_key_pem is not None
        if has_cert and (self.client_cert_pem is None or self.client_key_pem is None):
            raise ValueError(f"context {self.context!r}: a client certificate needs both cert and key")
        if has_cert == (self.token is not None):
            raise ValueError(f"context {self.context!r}: give a client certificate or a token, exactly one")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError(f"context {self.context!r}: expires_at must be timezone-aware")

    @property
    def kind(self) -> str:
        return "token" if self.token is not None else "client-certificate"

    def expired(self, now: datetime | None = None, *, margin_seconds: float = 0.0) -> bool:
        if self.expires_at is None:
            return False
        now = now or datetime.now(UTC)
        return (self.expires_at - now).total_seconds() <= margin_seconds

    def __repr__(self) -> str:
        until = self.expires_at.isoformat() if self.expires_at else "unknown"
        return (
            f"ClusterCredential(context={self.context!r}, server={self.server!r}, kind={self.kind}, "
            f"expires={until})"
        )
