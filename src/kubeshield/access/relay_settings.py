"""``relay.yaml``: the login relay's settings, camelCase, every error naming its field.

    listen: 0.0.0.0:8443                 # HOST:PORT of the https service (port 0: any free one)
    tls: {cert: /etc/kubeshield/relay.crt, key: /etc/kubeshield/relay.key}
    oidc:
      issuer: https://login.example.com  # exactly the provider's "iss"
      clientId: kubeshield               # a public client (no secret): device_code + authorization_code
      scopes: [openid, email, groups]
      usernameClaim: email               # the certificate's CN: <usernamePrefix><claim>
      usernamePrefix: "oidc:"
      groupsClaim: groups                # each O: <groupsPrefix><group>; absent claim = no groups
      groupsPrefix: "oidc:"
      allowedAlgs: [RS256, ES256]
      caFile: /etc/ssl/provider-ca.pem   # optional: the CA of the provider's https certificate
      leeway: 60s
    ca:
      file: /var/lib/kubeshield/relay-ca.json   # written by `access relay init-ca` (key wrapped by keys:)
      commonName: kubeshield relay CA
      validity: 87600h
    certificates: {lifetime: 15m, maxLifetime: 1h}
    clusters:
      - {name: prod, server: "https://prod.example.com:6443", caFile: /etc/kubeshield/prod-ca.pem}
    keys: {backend: local, local: {keyring: /var/lib/kubeshield/keyring}}   # as in kubeshield.yaml
    attestation:                         # optional, see kubeshield.access.relay_attest
      policy: /etc/kubeshield/login-policy.yaml   # the login side must present a TPM quote passing it
      tcti: device:/dev/tpmrm0                    # the relay's own TPM quotes for --expect-relay-attestation
      pcrs: [0, 1, 2, 3, 4, 5, 6, 7]

``keys:`` is the ``keys:`` section of kubeshield.yaml, decoded by :mod:`kubeshield.config` (so its
errors read ``keys.local.passphraseFlie: unknown field`` too). Secrets never live in this file: the
TLS key and every cluster CA are file paths. An unknown field anywhere is an error naming it.

``endpoint_to_json``/``endpoint_from_json`` are the JSON form of a cluster the relay serves and the
login reads back (here, so the login side needs neither the relay nor joserfc).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union
from urllib.parse import urlsplit

import yaml

from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.oidc import ASYMMETRIC_ALGS, DEFAULT_ALGS
from kubeshield.config import KeysSettings, parse_duration, settings_from_mapping
from kubeshield.errors import ConfigError, InvalidRequest

__all__ = [
    "AttestationSettings",
    "CaSettings",
    "CertificateSettings",
    "ClusterSettings",
    "OidcSettings",
    "RelaySettings",
    "RelayTLS",
    "endpoint_from_json",
    "endpoint_to_json",
    "load_relay_settings",
    "relay_settings_from_mapping",
]

T = TypeVar("T")
_MAX_FILE = 1 << 20
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True, slots=True)
class RelayTLS:
    """``tls``: the relay's serving certificate and key (files)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """``oidc``: the provider, the public client, and how claims map to the Kubernetes user."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...] = ("openid", "email", "groups")
    username_claim: str = "email"
    username_prefix: str | None = None
    groups_claim: str | None = "groups"
    groups_prefix: str | None = None
    allowed_algs: tuple[str, ...] = DEFAULT_ALGS
    ca_file: Path | None = None
    leeway: float = field(default=60.0, metadata={"duration": True})


@dataclass(frozen=True, slots=True)
class CaSettings:
    """``ca``: the client-certificate CA (its key is stored wrapped by ``keys:``)."""

    file: Path
    common_name: str = "kubeshield relay CA"
    validity: float = field(default=10 * 365 * 24 * 3600.0, metadata={"duration": True})
    key_type: Literal["ecdsa-p256", "ecdsa-p384"] = "ecdsa-p256"


@dataclass(frozen=True, slots=True)
class CertificateSettings:
    """``certificates``: the issued certificates' lifetime (default 15 minutes) and its ceiling."""

    lifetime: float = field(default=15 * 60.0, metadata={"duration": True})
    max_lifetime: float = field(default=3600.0, metadata={"duration": True})


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """One ``clusters[]`` entry: a cluster the relay's CA is trusted by."""

    name: str
    server: str
    ca_file: Path | None = None
    tls_server_name: str | None = None


@dataclass(frozen=True, slots=True)
class AttestationSettings:
    """``attestation``: login evidence the relay requires, and the relay's own evidence (optional).

    ``policy`` is a kubeshield attestation policy file the login side's TPM quote must satisfy;
    ``tcti`` is the relay's own TPM, which quotes ``pcrs`` at ``/v1/attestation`` (see relay_attest).
    """

    policy: Path | None = None
    tcti: str | None = None
    pcrs: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    challenge_ttl: float = field(default=300.0, metadata={"duration": True})


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The whole ``relay.yaml``."""

    tls: RelayTLS
    oidc: OidcSettings
    ca: CaSettings
    listen: str = "127.0.0.1:8443"
    certificates: CertificateSettings = field(default_factory=CertificateSettings)
    clusters: tuple[ClusterSettings, ...] = ()
    keys: KeysSettings = field(default_factory=KeysSettings)
    attestation: AttestationSettings | None = None

    def endpoints(self) -> list[ClusterEndpoint]:
        """The clusters as :class:`ClusterEndpoint` (CA files read now; ``ConfigError`` names one)."""
        out: list[ClusterEndpoint] = []
        for i, c in enumerate(self.clusters):
            ca_pem: bytes | None = None
            if c.ca_file is not None:
                try:
                    ca_pem = c.ca_file.read_bytes()
                except OSError as exc:
                    raise ConfigError(
                        f"clusters[{i}].caFile: cannot read {c.ca_file}: {exc.strerror}"
                    ) from None
                if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
                    raise ConfigError(f"clusters[{i}].caFile: {c.ca_file} holds no PEM certificate")
            out.append(
                ClusterEndpoint(
                    name=c.name, server=c.server, ca_pem=ca_pem, tls_server_name=c.tls_server_name
                )
            )
        return out


# --- the wire form of a cluster, as /v1/clusters serves it (the login parses it back) ---------------


def endpoint_to_json(endpoint: ClusterEndpoint) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "server": endpoint.server,
        "caData": endpoint.ca_pem.decode("ascii") if endpoint.ca_pem is not None else None,
        "tlsServerName": endpoint.tls_server_name,
    }


def endpoint_from_json(doc: object, where: str) -> ClusterEndpoint:
    """The inverse of :func:`endpoint_to_json`; ``InvalidRequest`` names the bad field."""
    if not isinstance(doc, dict):
        raise InvalidRequest(f"{where}: expected an object")
    name, server, ca, sni = doc.get("name"), doc.get("server"), doc.get("caData"), doc.get("tlsServerName")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}.name: expected a non-empty string")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise InvalidRequest(f"{where}.server: expected an https:// URL")
    if ca is not None and (not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca):
        raise InvalidRequest(f"{where}.caData: expected a PEM certificate bundle")
    if sni is not None and not isinstance(sni, str):
        raise InvalidRequest(f"{where}.tlsServerName: expected a string")
    return ClusterEndpoint(
        name=name, server=server, ca_pem=ca.encode("ascii") if ca else None, tls_server_name=sni
    )


def load_relay_settings(path: str | Path) -> RelaySettings:
    """Read and check ``relay.yaml``. ``ConfigError`` names the file, the field, or the YAML line."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: relay config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the relay config file: {exc.strerror}") from None
    if len(raw) > _MAX_FILE:
        raise ConfigError(f"{path}: larger than {_MAX_FILE} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"
        raise ConfigError(f"{path}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: invalid YAML") from None
    try:
        settings = relay_settings_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return _relative_to(settings, path.parent)


def relay_settings_from_mapping(data: object) -> RelaySettings:
    """Build and check :class:`RelaySettings` from parsed YAML."""
    if not isinstance(data, Mapping):
        raise ConfigError("<top level>: expected a mapping")
    rest = {k: v for k, v in data.items() if k != "keys"}
    settings = _decode(RelaySettings, rest, "")
    if "keys" in data:
        keys = settings_from_mapping({"keys": data["keys"]}).keys
        settings = dataclasses.replace(settings, keys=keys)
    _validate(settings)
    return settings


def _relative_to(settings: RelaySettings, base: Path) -> RelaySettings:
    """Relative file paths in the file are relative to the file's directory, not to the cwd."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    def swap(obj: T, **names: Path | None) -> T:
        changes = {k: fix(v) for k, v in names.items() if fix(v) is not None}
        return dataclasses.replace(obj, **changes) if changes else obj  # type: ignore[type-var]

    att = settings.attestation
    return dataclasses.replace(
        settings,
        tls=swap(settings.tls, cert=settings.tls.cert, key=settings.tls.key),
        oidc=swap(settings.oidc, ca_file=settings.oidc.ca_file),
        ca=swap(settings.ca, file=settings.ca.file),
        clusters=tuple(swap(c, ca_file=c.ca_file) for c in settings.clusters),
        attestation=None if att is None else swap(att, policy=att.policy),
    )


# --- decoding -------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "bool", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


def _decode(cls: type[T], data: object, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<top level>'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {_camel(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path or '<top level>'}: field names must be strings")
        f = fields.get(key)
        if f is None:
            hint = ""
            if any(word in key.lower() for word in ("secret", "password", "token", "passphrase")):
                hint = " (secrets are never read from the config file: give a *File path instead)"
            raise ConfigError(f"{_join(path, key)}: unknown field{hint}")
        kwargs[f.name] = _value(hints[f.name], value, _join(path, key), f)
    for key, f in fields.items():
        if (
            f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{_join(path, key)}: required")
    return cls(**kwargs)


def _value(tp: Any, value: object, path: str, f: dataclasses.Field[Any] | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _value(inner, value, path, f)
    if value is None:
        raise ConfigError(f"{path}: must not be null")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(choices)}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode(tp, value, path)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        return tuple(_value(item, v, f"{path}[{i}]", None) for i, v in enumerate(value))
    if f is not None and f.metadata.get("duration"):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a duration such as 15m or 1h, got {_kind(value)}")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: expected a non-empty string, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigError(f"{path}: expected a file path")
        return Path(value)
    raise TypeError(f"unsupported relay settings type {tp!r} at {path}")  # pragma: no cover


def _check_url(value: str, path: str, *, allow_loopback_http: bool) -> None:
    parts = urlsplit(value)
    if parts.scheme == "http" and allow_loopback_http and parts.hostname in _LOOPBACK:
        return
    if parts.scheme != "https" or not parts.hostname:
        extra = " (http only on 127.0.0.1/localhost)" if allow_loopback_http else ""
        raise ConfigError(f"{path}: expected an https:// URL{extra}, got {value!r}")


def _validate(s: RelaySettings) -> None:
    host, _, port = s.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: a free port, printed at start
        raise ConfigError(f"listen: expected HOST:PORT with a port in 0..65535, got {s.listen!r}")
    _check_url(s.oidc.issuer, "oidc.issuer", allow_loopback_http=True)
    if "openid" not in s.oidc.scopes:
        raise ConfigError("oidc.scopes: must include openid")
    for i, alg in enumerate(s.oidc.allowed_algs):
        if alg not in ASYMMETRIC_ALGS:
            raise ConfigError(
                f"oidc.allowedAlgs[{i}]: {alg!r} not allowed (public-key algorithms only: "
                f"{', '.join(sorted(ASYMMETRIC_ALGS))})"
            )
    if not s.oidc.allowed_algs:
        raise ConfigError("oidc.allowedAlgs: must not be empty")
    if s.oidc.leeway > 300:
        raise ConfigError("oidc.leeway: at most 5m")
    c = s.certificates
    if c.lifetime < 60:
        raise ConfigError("certificates.lifetime: at least 1m")
    if c.max_lifetime < c.lifetime:
        raise ConfigError("certificates.maxLifetime: must not be shorter than certificates.lifetime")
    if c.max_lifetime > 24 * 3600:
        raise ConfigError("certificates.maxLifetime: at most 24h (these are short-lived credentials)")
    if s.ca.validity <= c.max_lifetime:
        raise ConfigError("ca.validity: must be longer than certificates.maxLifetime")
    names: set[str] = set()
    for i, cluster in enumerate(s.clusters):
        if cluster.name in names:
            raise ConfigError(f"clusters[{i}].name: {cluster.name!r} appears twice")
        names.add(cluster.name)
        _check_url(cluster.server, f"clusters[{i}].server", allow_loopback_http=False)
    att = s.attestation
    if att is not None:
        if att.policy is None and att.tcti is None:
            raise ConfigError(
                "attestation: give policy (login evidence required), tcti (the relay's own TPM), or both"
            )
        if not att.pcrs or any(not 0 <= p <= 23 for p in att.pcrs) or len(set(att.pcrs)) != len(att.pcrs):
            raise ConfigError("attestation.pcrs: distinct PCR indexes in 0..23")
