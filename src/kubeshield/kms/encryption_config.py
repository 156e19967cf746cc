"""The EncryptionConfiguration kube-apiserver needs to use this plugin: render it, and validate one.

``render_encryption_config`` produces (kms-contract §2.2)::

    apiVersion: apiserver.config.k8s.io/v1
    kind: EncryptionConfiguration
    resources:
    - resources: [secrets]
      providers:
      - kms:
          apiVersion: v2            # required: omitted means v1, refused by 1.29+ without a feature gate
          name: kubeshield          # no ':'; part of every etcd value's prefix; never change it
          endpoint: unix:///abs/path/kms.sock
          timeout: 3s
      - identity: {}                # last: reads data written before encryption was enabled

``validate_encryption_config`` applies the rules of kube-apiserver's ``validation_encryption.go``
(through ``kubeshield.config.encryption``) and raises ConfigError naming the field, e.g.
``resources[0].providers[0].kms.name: 'a:b' must not contain ':' for a v2 provider``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kubeshield.config.encryption import parse_encryption_config
from kubeshield.errors import ConfigError
from kubeshield.kms._socket import refuse_abstract, socket_endpoint_url

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_RESOURCES",
    "DEFAULT_TIMEOUT",
    "encryption_config",
    "render_encryption_config",
    "validate_encryption_config",
]

DEFAULT_NAME = "kubeshield"
DEFAULT_TIMEOUT = "3s"
DEFAULT_RESOURCES = ("secrets",)


def encryption_config(
    *,
    socket: str,
    name: str = DEFAULT_NAME,
    resources: Sequence[str] = DEFAULT_RESOURCES,
    timeout: str = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """The EncryptionConfiguration document (as a dict) for a plugin on ``socket``. Validated.

    An abstract socket (``@name``) is refused: we never serve on one, so no config may point at one.
    """
    refuse_abstract(socket, what="--socket")
    doc: dict[str, Any] = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": list(resources),
                "providers": [
                    {
                        "kms": {
                            "apiVersion": "v2",
                            "name": name,
                            "endpoint": socket_endpoint_url(socket),
                            "timeout": timeout,
                        }
                    },
                    {"identity": {}},
                ],
            }
        ],
    }
    validate_encryption_config(doc)
    return doc


def render_encryption_config(
    *,
    socket: str,
    name: str = DEFAULT_NAME,
    resources: Sequence[str] = DEFAULT_RESOURCES,
    timeout: str = DEFAULT_TIMEOUT,
) -> str:
    """The EncryptionConfiguration YAML for a plugin on ``socket`` (see the module docstring)."""
    doc = encryption_config(socket=socket, name=name, resources=resources, timeout=timeout)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def validate_encryption_config(doc: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first field that kube-apiserver's validation would reject.

    The rules live in :func:`kubeshield.config.encryption.parse_encryption_config` (one implementation
    for the plugin and the etcd tools); this adds the plugin's own requirement: at least one KMS v2
    provider, because a KMS provider without ``apiVersion: v2`` is v1, refused by 1.29+ by default.
    """
    config = parse_encryption_config(doc)
    if not any(p.api_version == "v2" for p in config.kms_providers()):
        raise ConfigError("resources[*].providers: no kms provider with apiVersion v2")
