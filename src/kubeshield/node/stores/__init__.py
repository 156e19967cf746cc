"""External secret stores the CSI provider reads from, as the big providers do (a migration path).

A store is named in ``node.stores`` (its address, CA and auth mount live in the provider's config, never in
a SecretProviderClass, so a namespace's users cannot send pod tokens to an address of their choosing)
and referenced by name from an object. Each read authenticates *as the pod*: the pod's own token for the
store's audience (``csi.storage.k8s.io/serviceAccount.tokens``) is exchanged for a store credential
(OpenBao/Vault ``auth/<mount>/login`` with a role, AWS ``AssumeRoleWithWebIdentity``), so the store's own
policies decide what each ServiceAccount may read, exactly as with vault-csi-provider or the AWS provider.

* ``openbao``: KV v1 or v2 (``path`` is the API path, ``secret/data/app`` for v2), :mod:`.openbao`.
* ``aws``: Secrets Manager, :mod:`.aws` (boto3 from ``pip install 'kubeshield[awskms]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kubeshield.errors import ConfigError
from kubeshield.node.settings import StoreSettings

__all__ = ["DEFAULT_AUDIENCES", "Store", "open_store"]

#: the audience of the pod token each store type expects when the config names none
DEFAULT_AUDIENCES = {"openbao": "vault", "aws": "sts.amazonaws.com"}


class Store(Protocol):
    name: str
    audience: str

    def read(self, *, token: str, ref: Mapping[str, Any], pod: Mapping[str, str]) -> tuple[bytes, str]:
        """The value ``ref`` names, read with the pod's ``token``, and a store-side version (may be empty)."""
        ...


def open_store(name: str, settings: StoreSettings) -> Store:
    if settings.type == "openbao":
        from kubeshield.node.stores.openbao import OpenBaoStore

        return OpenBaoStore(name, settings)
    if settings.type == "aws":
        try:
            from kubeshield.node.stores.aws import AwsSecretsManagerStore
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"node.stores.{name}: the aws store needs {exc.name!r}: pip install 'kubeshield[awskms]'"
            ) from None
        return AwsSecretsManagerStore(name, settings)
    raise ConfigError(f"node.stores.{name}.type: unknown store type {settings.type!r}")  # pragma: no cover
