"""Typed settings for kubeshield: the config file shape, its loader and Go-style durations.

``load_config(path) -> Settings`` reads ``kubeshield.yaml``; ``Settings()`` is the default. Errors are
``ConfigError`` naming the field (``keys.local.passphraseFlie: unknown field``).
"""

from __future__ import annotations

from kubeshield.config.duration import format_duration, parse_duration
from kubeshield.config.loader import load_config, settings_from_mapping
from kubeshield.config.settings import (
    BACKEND_NAMES,
    HEALTH_ADDR_NONE,
    AwsKmsSettings,
    CustodySettings,
    EmergencySettings,
    HierarchySettings,
    KeysSettings,
    KmsSettings,
    LocalSettings,
    Pkcs11Settings,
    SealSettings,
    Settings,
    TLSSettings,
    TpmSettings,
    TransitAuthSettings,
    TransitSettings,
)

__all__ = [
    "BACKEND_NAMES",
    "HEALTH_ADDR_NONE",
    "AwsKmsSettings",
    "CustodySettings",
    "EmergencySettings",
    "HierarchySettings",
    "KeysSettings",
    "KmsSettings",
    "LocalSettings",
    "Pkcs11Settings",
    "SealSettings",
    "Settings",
    "TLSSettings",
    "TpmSettings",
    "TransitAuthSettings",
    "TransitSettings",
    "format_duration",
    "load_config",
    "parse_duration",
    "settings_from_mapping",
]
