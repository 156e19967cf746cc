"""Load ``kubeshield.yaml`` into :class:`~kubeshield.config.settings.Settings`, naming every error's field.

The decoder walks the settings dataclasses: each mapping key must be a known field (camelCase), each
value must have the field's type. Errors are :class:`~kubeshield.errors.ConfigError` with the full dotted
path first, e.g. ``keys.local.passphraseFlie: unknown field`` or ``kms.healthAddr: expected a string,
got int``. YAML syntax errors name the file, line and column. After decoding, cross-field rules are
checked (the selected backend's section exists, TLS is set when ``kms.listen`` is, ...).

A field whose name looks like a secret (``passphrase``, ``pin``, ``token``, ...) gets a hint: secrets
are only ever read from files or environment variables, never from this file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from kubeshield.config.duration import parse_duration
from kubeshield.config.node_settings import validate_node_settings
from kubeshield.config.settings import HEALTH_ADDR_NONE, Settings
from kubeshield.errors import ConfigError

__all__ = ["load_config", "settings_from_mapping"]

T = TypeVar("T")

_MAX_CONFIG_BYTES = 1 << 20
_SECRET_NAMES = {"passphrase", "pin", "token", "secretid", "password", "secret", "jwt", "key material"}
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]*):(?P<port>\d{1,5})$")


def load_config(path: str | Path) -> Settings:
    """Read and validate a config file. Raises ``ConfigError`` naming the file and the field."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"
        raise ConfigError(f"{path}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: invalid YAML") from None
    if data is None:
        data = {}
    try:
        return settings_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def settings_from_mapping(data: object) -> Settings:
    """Build ``Settings`` from already-parsed data (a mapping with string keys)."""
    settings = _decode_dataclass(Settings, data, "")
    _validate(settings)
    return settings


# --- decoding --------------------------------------------------------------------------------------


def _yaml_name(f: dataclasses.Field[Any]) -> str:
    override = f.metadata.get("yaml")
    if isinstance(override, str):
        return override
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _where(path: str) -> str:
    return path or "<top level>"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "bool", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


def _decode_dataclass(cls: type[T], data: object, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {_yaml_name(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_where(path)}: field names must be strings, got {_type_name(key)}")
        f = fields.get(key)
        if f is None:
            hint = ""
            if key.lower().removesuffix("s") in _SECRET_NAMES or key.lower() in _SECRET_NAMES:
                hint = " (secrets are never read from the config file: give a *File path instead)"
            raise ConfigError(f"{_join(path, key)}: unknown field{hint}")
        kwargs[f.name] = _decode_value(hints[f.name], value, _join(path, key), f)
    for key, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in kwargs and required:
            raise ConfigError(f"{_join(path, key)}: required")
    return cls(**kwargs)


def _decode_value(tp: Any, value: object, path: str, f: dataclasses.Field[Any] | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) != 1:  # pragma: no cover - the settings only use Optional[X]
            raise TypeError(f"unsupported union in settings: {tp}")
        return _decode_value(args[0], value, path, f)
    if value is None:
        raise ConfigError(f"{path}: must not be null")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and "on" in choices and "off" in choices:
            return "on" if value else "off"
        if value not in choices or not isinstance(value, str):
            raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(tp, value, path)
    if origin in (Mapping, dict):
        (_key_type, item_type) = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_type_name(value)}")
        return {str(k): _decode_value(item_type, v, f"{path}.{k}", None) for k, v in value.items()}
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_type_name(value)}")
        return tuple(_decode_value(item_type, item, f"{path}[{i}]", None) for i, item in enumerate(value))
    if f is not None and f.metadata.get("duration"):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a duration such as 3s or 24h, got {_type_name(value)}")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_type_name(value)}")
        if not value:
            raise ConfigError(f"{path}: must not be empty")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a file path (string), got {_type_name(value)}")
        if not value or "\x00" in value:
            raise ConfigError(f"{path}: must be a non-empty file path")
        return Path(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_type_name(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_type_name(value)}")
        return value
    raise TypeError(f"unsupported settings type {tp!r} at {path}")  # pragma: no cover - a bug in settings


# --- cross-field validation -------------------------------------------------------------------------


def _check_host_port(value: str, path: str) -> None:
    match = _HOST_PORT.match(value)
    if match is None or not 0 < int(match.group("port")) < 65536:
        raise ConfigError(f"{path}: expected HOST:PORT with a port in 1..65535, got {value!r}")


def _validate(settings: Settings) -> None:
    validate_node_settings(settings.node)
    kms = settings.kms
    if kms.health_addr not in HEALTH_ADDR_NONE:
        _check_host_port(kms.health_addr, "kms.healthAddr")
    if kms.listen is not None:
        if not kms.listen.startswith("tcp://"):
            raise ConfigError(f"kms.listen: expected tcp://HOST:PORT, got {kms.listen!r}")
        _check_host_port(kms.listen.removeprefix("tcp://"), "kms.listen")
        if kms.tls is None:
            raise ConfigError("kms.tls: required when kms.listen is set (service mode always uses TLS)")
    keys = settings.keys
    if keys.backend in ("pkcs11", "transit", "awskms") and getattr(keys, keys.backend) is None:
        raise ConfigError(f"keys.{keys.backend}: required when keys.backend is {keys.backend}")
    if keys.transit is not None:
        auth = keys.transit.auth
        if not keys.transit.address.startswith(("https://", "http://")):
            address = keys.transit.address
            raise ConfigError(f"keys.transit.address: expected an http(s):// URL, got {address!r}")
        needed = {
            "token": (("tokenFile", auth.token_file),),
            "approle": (("roleId", auth.role_id), ("secretIdFile", auth.secret_id_file)),
            "kubernetes": (("role", auth.role),),
        }[auth.method]
        for name, value in needed:
            if value is None:
                raise ConfigError(f"keys.transit.auth.{name}: required when auth.method is {auth.method}")
    if keys.tpm is not None:
        for i, pcr in enumerate(keys.tpm.pcrs):
            if not 0 <= pcr <= 23:
                raise ConfigError(f"keys.tpm.pcrs[{i}]: PCR index must be in 0..23, got {pcr}")
    if keys.hierarchy.max_age <= 0:
        raise ConfigError("keys.hierarchy.maxAge: must be greater than 0")
    if keys.hierarchy.max_uses <= 0:
        raise ConfigError("keys.hierarchy.maxUses: must be greater than 0")
    seal = settings.seal
    if seal.key_size not in (2048, 3072, 4096):
        raise ConfigError(f"seal.keySize: must be 2048, 3072 or 4096, got {seal.key_size}")
    if seal.key_ttl <= 0:
        raise ConfigError("seal.keyTtl: must be greater than 0")
    if seal.private_keys == "token" and keys.backend != "pkcs11":
        raise ConfigError(
            "seal.privateKeys: token needs keys.backend: pkcs11 (the token that holds the keys)"
        )
