"""A node config file: ``kubeshield.yaml`` with a ``node:`` section (:mod:`kubeshield.config.node_settings`).

Every ``node`` command takes it with ``--config``; the ``keys:`` section says which key backend wraps the
sealing key. The file is read by :func:`kubeshield.config.load_config`, so ``kms serve`` and ``seal`` accept
the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeshield.config import Settings, load_config, settings_from_mapping
from kubeshield.config.node_settings import (
    ClientSettings,
    CsiSettings,
    InjectorSettings,
    NodeSettings,
    ReleaseSettings,
    ServerTLS,
    StoreSettings,
)

__all__ = [
    "ClientSettings",
    "CsiSettings",
    "InjectorSettings",
    "NodeConfig",
    "NodeSettings",
    "ReleaseSettings",
    "ServerTLS",
    "StoreSettings",
    "load_node_config",
    "node_config_from_mapping",
]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A whole node config file: the ``keys:`` (and other kubeshield) settings plus ``node:``."""

    settings: Settings
    node: NodeSettings


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; ``ConfigError`` names the file and the field."""
    settings = load_config(path)
    return NodeConfig(settings=settings, node=settings.node)


def node_config_from_mapping(data: object) -> NodeConfig:
    settings = settings_from_mapping(data)
    return NodeConfig(settings=settings, node=settings.node)
