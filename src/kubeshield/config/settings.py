"""Typed, frozen settings: the shape of ``kubeshield.yaml`` (see DESIGN.md, "Config file").

Each dataclass mirrors one mapping of the file. Python names are snake_case; the file uses camelCase
(``v1_socket`` <-> ``v1Socket``); the few names that do not follow the mechanical rule carry a
``yaml`` entry in their field metadata (``client_ca`` <-> ``clientCA``). Fields whose value is a
duration carry ``duration`` in their metadata and hold seconds as a float.

Secrets (passphrases, PINs, tokens, secret ids) never live in this file: only the *paths* of files
holding them (``passphraseFile``, ``pinFile``, ``tokenFile``, ...). :mod:`kubeshield.config.loader`
turns a YAML document into these objects and names the field of every error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubeshield.config.node_settings import NodeSettings

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
    "NodeSettings",
    "Pkcs11Settings",
    "SealSettings",
    "Settings",
    "TLSSettings",
    "TpmSettings",
    "TransitAuthSettings",
    "TransitSettings",
]

BackendName = Literal["local", "pkcs11", "transit", "awskms", "tpm", "custody"]
BACKEND_NAMES: tuple[str, ...] = ("local", "pkcs11", "transit", "awskms", "tpm", "custody")

DEFAULT_SOCKET = Path("/var/run/kubeshield/kms.sock")
DEFAULT_HEALTH_ADDR = "127.0.0.1:8081"
HEALTH_ADDR_NONE = ("", "none")  # kms.healthAddr values that turn the health/metrics endpoint off
DEFAULT_KEYRING = Path("/var/lib/kubeshield/keyring")


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """Server TLS for service mode (``kms.listen``). ``clientCA`` enables mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = field(default=None, metadata={"yaml": "clientCA"})


@dataclass(frozen=True, slots=True)
class KmsSettings:
    """The ``kms:`` section: where the plugin listens."""

    socket: Path = DEFAULT_SOCKET
    v1_socket: Path | None = None
    health_addr: str = DEFAULT_HEALTH_ADDR
    listen: str | None = None
    tls: TLSSettings | None = None


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """``keys.local``: a keyring file, optionally sealed with a passphrase read from a file."""

    keyring: Path = DEFAULT_KEYRING
    passphrase_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Pkcs11Settings:
    """``keys.pkcs11``: an AES key on a PKCS#11 token. The PIN is read from ``pinFile``."""

    module: Path
    token: str
    pin_file: Path | None = None
    key_label: str = "kubeshield-kek"


@dataclass(frozen=True, slots=True)
class TransitAuthSettings:
    """``keys.transit.auth``: how to log in to OpenBao/Vault. Only file paths, never the secrets."""

    method: Literal["token", "approle", "kubernetes"] = "token"
    token_file: Path | None = None
    role_id: str | None = None
    secret_id_file: Path | None = None
    role: str | None = None
    jwt_file: Path | None = None


@dataclass(frozen=True, slots=True)
class TransitSettings:
    """``keys.transit``: an OpenBao/Vault Transit key."""

    address: str
    mount: str = "transit"
    key: str = "kubeshield"
    ca_file: Path | None = None
    auth: TransitAuthSettings = field(default_factory=TransitAuthSettings)


@dataclass(frozen=True, slots=True)
class AwsKmsSettings:
    """``keys.awskms``: an AWS KMS key (or a local AWS-compatible endpoint)."""

    key_id: str
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class TpmSettings:
    """``keys.tpm``: a keyring sealed to a TPM."""

    tcti: str = "device:/dev/tpmrm0"
    keyring: Path = Path("/var/lib/kubeshield/keyring.tpm")
    pcrs: tuple[int, ...] = (7,)


@dataclass(frozen=True, slots=True)
class CustodySettings:
    """``keys.custody``: an isolated key-custody process reached over a unix socket."""

    socket: Path = Path("/var/run/kubeshield/custody.sock")


@dataclass(frozen=True, slots=True)
class HierarchySettings:
    """``keys.hierarchy``: the local-KEK cache in front of a remote backend.

    ``enabled`` is ``"auto"`` (on for remote backends), ``"on"`` or ``"off"``; YAML ``true``/``false``
    are accepted for on/off. ``max_age`` is in seconds (``maxAge: 24h`` in the file).
    """

    enabled: Literal["auto", "on", "off"] = "auto"
    max_age: float = field(default=24 * 3600.0, metadata={"duration": True})
    max_uses: int = 100_000


@dataclass(frozen=True, slots=True)
class EmergencySettings:
    """``keys.emergency``: a break-glass local keyring kept apart from the primary backend."""

    keyring: Path
    passphrase_file: Path | None = None


@dataclass(frozen=True, slots=True)
class KeysSettings:
    """The ``keys:`` section: which backend holds the KEKs, and each backend's settings."""

    backend: BackendName = "local"
    local: LocalSettings = field(default_factory=LocalSettings)
    pkcs11: Pkcs11Settings | None = None
    transit: TransitSettings | None = None
    awskms: AwsKmsSettings | None = None
    tpm: TpmSettings | None = None
    custody: CustodySettings | None = None
    hierarchy: HierarchySettings = field(default_factory=HierarchySettings)
    emergency: EmergencySettings | None = None


@dataclass(frozen=True, slots=True)
class SealSettings:
    """``seal:``: the sealed-secrets sealing keys (RSA) whose private halves ``keys:`` protects.

    ``privateKeys`` is ``wrapped`` (each private key stored only wrapped by the ``keys:`` backend) or
    ``token`` (the RSA key is made and kept on the ``keys.pkcs11`` token; it never leaves it).
    ``keyRenewPeriod`` 0 turns automatic renewal off. ``pkcs11Mechanism`` picks how a token decrypts:
    ``oaep`` (CKM_RSA_PKCS_OAEP with SHA-256 and the label), ``rsa-x509`` (raw RSA on the token, OAEP
    decoded by kubeshield) or ``auto`` (``oaep`` when the token accepts it, else ``rsa-x509``).
    """

    registry: Path = Path("/var/lib/kubeshield/seal-keys.json")
    private_keys: Literal["wrapped", "token"] = "wrapped"
    key_size: int = 4096
    key_renew_period: float = field(default=30 * 24 * 3600.0, metadata={"duration": True})
    key_ttl: float = field(default=10 * 365 * 24 * 3600.0, metadata={"duration": True})
    common_name: str | None = None
    pkcs11_mechanism: Literal["auto", "oaep", "rsa-x509"] = "auto"


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole ``kubeshield.yaml``. ``Settings()`` is the built-in default."""

    kms: KmsSettings = field(default_factory=KmsSettings)
    keys: KeysSettings = field(default_factory=KeysSettings)
    seal: SealSettings = field(default_factory=SealSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
