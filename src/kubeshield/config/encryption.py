"""kube-apiserver's EncryptionConfiguration (``apiserver.config.k8s.io/v1``): parse and validate.

The rules are the apiserver's own (``validation_encryption.go`` / ``v1/defaults.go``):

* every provider element holds exactly one of ``identity``, ``aescbc``, ``aesgcm``, ``secretbox``, ``kms``;
* aescbc/aesgcm keys are standard base64 of 16, 24 or 32 bytes, secretbox keys of exactly 32 bytes, at
  least one key, every key named;
* ``kms.apiVersion`` defaults to ``v1`` when omitted (a classic pitfall); ``v2`` rejects ``cachesize`` and a
  ``name`` containing ``:``; KMS names are unique; ``endpoint`` is a ``unix`` URL; ``timeout`` is a Go
  duration > 0 (default 3s); v1 ``cachesize`` defaults to 1000 and 0 is invalid;
* one ``resources`` list holds no duplicate and no overlap (``secrets`` with ``*.``, anything with ``*.*``);
  a name that an earlier ``*.<group>`` or ``*.*`` masks is refused (``encryptionconfig/config.go``), and the
  same name in two lists gets both lists' providers, in order, as the apiserver appends them.

Which providers apply to a resource is the apiserver's ``transformerFromOverrides``: the exact
group/resource (``secrets``, ``deployments.apps``), else ``*.<group>`` (``*.`` is the core group only, so it
never covers ``deployments.apps``), else ``*.*``, else identity. Resource names parse like
``schema.ParseGroupResource``: everything after the first dot is the group.

Errors are ``ConfigError`` naming the field (``resources[0].providers[1].kms.endpoint: ...``) and never
quote a key's secret.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import yaml

from kubeshield.config.duration import parse_duration
from kubeshield.errors import ConfigError

__all__ = [
    "API_VERSION",
    "KIND",
    "EncryptionConfiguration",
    "GroupResource",
    "ProviderConfig",
    "ProviderKey",
    "ResourceRule",
    "load_encryption_config",
    "parse_encryption_config",
    "socket_path_from_endpoint",
]

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
ProviderKind = Literal["identity", "aescbc", "aesgcm", "secretbox", "kms"]
_KINDS: tuple[ProviderKind, ...] = ("identity", "aescbc", "aesgcm", "secretbox", "kms")
_KEY_SIZES: dict[str, tuple[int, ...]] = {"aescbc": (16, 24, 32), "aesgcm": (16, 24, 32), "secretbox": (32,)}
_FORBIDDEN_RESOURCES = {"apiserveripinfo", "serviceipallocations", "servicenodeportallocations"}


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """One named aescbc/aesgcm/secretbox key. ``secret`` is the decoded key; it never appears in repr."""

    name: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One element of a rule's ``providers`` list."""

    kind: ProviderKind
    keys: tuple[ProviderKey, ...] = ()
    name: str = ""  # kms only
    api_version: str = ""  # kms only: "v1" or "v2"
    endpoint: str = ""  # kms only
    timeout: float = 3.0  # kms only, seconds
    cachesize: int | None = None  # kms v1 only

    @property
    def display_name(self) -> str:
        """What ``--to`` and reports call this provider: the KMS name, else the provider type."""
        return self.name if self.kind == "kms" else self.kind

    @property
    def format(self) -> str:
        """The stored-format name this provider writes (``kms-v2``, ``aesgcm``, ``plaintext``...)."""
        if self.kind == "kms":
            return f"kms-{self.api_version}"
        return "plaintext" if self.kind == "identity" else self.kind


@dataclass(frozen=True, slots=True, order=True)
class GroupResource:
    """An API group and resource as the EncryptionConfiguration names them (``""`` is the core group).

    ``*`` stands for "every" in either part: ``*.`` is ``GroupResource("", "*")``, ``*.*`` is
    ``GroupResource("*", "*")``.
    """

    group: str
    resource: str

    @classmethod
    def parse(cls, text: str) -> GroupResource:
        """``schema.ParseGroupResource``: ``deployments.apps`` -> (apps, deployments), ``secrets`` ->
        ("", secrets); everything after the first dot is the group."""
        resource, dot, group = text.partition(".")
        return cls(group=group if dot else "", resource=resource)

    def __str__(self) -> str:
        if self.group == "" and self.resource == "*":
            return "*."
        return f"{self.resource}.{self.group}" if self.group else self.resource


_ANY = GroupResource("*", "*")


@dataclass(frozen=True, slots=True)
class ResourceRule:
    """One entry of ``resources``: which resources, and their ordered providers (first one writes)."""

    resources: tuple[str, ...]
    providers: tuple[ProviderConfig, ...]

    def matches(self, resource: str | GroupResource) -> bool:
        """Does one of this rule's names cover ``resource`` (``secrets``, ``deployments.apps``)?

        Exact group/resource, ``*.<group>`` for the same group (``*.`` = core only), or ``*.*``.
        """
        wanted = resource if isinstance(resource, GroupResource) else GroupResource.parse(resource)
        for name in self.resources:
            pattern = GroupResource.parse(name)
            if pattern in (wanted, _ANY):
                return True
            if pattern.resource == "*" and pattern.group == wanted.group:
                return True
        return False


@dataclass(frozen=True, slots=True)
class EncryptionConfiguration:
    """A validated EncryptionConfiguration."""

    rules: tuple[ResourceRule, ...]
    _table: dict[GroupResource, tuple[ProviderConfig, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", _transformer_table(self.rules))

    def providers_for(self, resource: str | GroupResource) -> tuple[ProviderConfig, ...] | None:
        """The providers the apiserver uses for ``resource``, or None (identity, refusing ``k8s:enc:``).

        The lookup of kube-apiserver's ``transformerFromOverrides``: exact group/resource, then
        ``*.<group>``, then ``*.*``.
        """
        wanted = resource if isinstance(resource, GroupResource) else GroupResource.parse(resource)
        for key in (wanted, GroupResource(wanted.group, "*"), _ANY):
            found = self._table.get(key)
            if found is not None:
                return found
        return None

    def kms_providers(self) -> tuple[ProviderConfig, ...]:
        seen: dict[str, ProviderConfig] = {}
        for rule in self.rules:
            for p in rule.providers:
                if p.kind == "kms":
                    seen.setdefault(p.name, p)
        return tuple(seen.values())

    def with_kms_endpoints(self, endpoints: Mapping[str, str]) -> EncryptionConfiguration:
        """The same configuration with the named KMS providers dialling other endpoints (recovery: the
        provider *name* is part of every stored value's prefix and must stay; only the socket moves).

        Raises ``ConfigError`` for a name no KMS provider has, or an endpoint that is not a unix URL.
        """
        if not endpoints:
            return self
        names = {p.name for p in self.kms_providers()}
        for name, endpoint in endpoints.items():
            if name not in names:
                have = ", ".join(sorted(names)) or "none"
                raise ConfigError(f"--kms-endpoint: no KMS provider named {name!r} (have: {have})")
            try:
                socket_path_from_endpoint(endpoint)
            except ConfigError as exc:
                raise ConfigError(f"--kms-endpoint {name}={endpoint}: {exc}") from None
        rules = tuple(
            ResourceRule(
                resources=rule.resources,
                providers=tuple(
                    replace(p, endpoint=endpoints[p.name]) if p.kind == "kms" and p.name in endpoints else p
                    for p in rule.providers
                ),
            )
            for rule in self.rules
        )
        return EncryptionConfiguration(rules=rules)


def _transformer_table(
    rules: tuple[ResourceRule, ...],
) -> dict[GroupResource, tuple[ProviderConfig, ...]]:
    """kube-apiserver's ``getTransformerOverridesAndKMSPluginHealthzCheckers`` loop: a name masked by an
    earlier ``*.<group>`` or ``*.*`` is an error; the same name in two lists appends the providers."""
    table: dict[GroupResource, tuple[ProviderConfig, ...]] = {}
    for i, rule in enumerate(rules):
        for j, name in enumerate(rule.resources):
            gr = GroupResource.parse(name)
            for mask in (GroupResource(gr.group, "*"), _ANY):
                if mask in table:
                    raise ConfigError(
                        f"resources[{i}].resources[{j}]: resource {str(gr)!r} is masked by earlier rule "
                        f"{str(mask)!r}"
                    )
            table[gr] = table.get(gr, ()) + rule.providers
    return table


def socket_path_from_endpoint(endpoint: str) -> str:
    """The socket path of a ``unix`` KMS endpoint, exactly as kubernetes/kms ``ParseEndpoint`` reads it.

    ``unix:///var/run/kms.sock`` and ``unix:/var/run/kms.sock`` give ``/var/run/kms.sock``;
    ``unix:///@name`` gives the abstract ``@name``; ``unix://var/run/kms.sock`` gives ``/run/kms.sock``
    (``var`` is the URL host, as in Go). Raises ``ConfigError`` for another scheme or an empty path.
    """
    if not endpoint:
        raise ConfigError("endpoint: is required")
    parts = urlsplit(endpoint)
    if parts.scheme != "unix":
        raise ConfigError(
            f"endpoint: unsupported scheme {parts.scheme!r} for KMS provider, only unix is supported"
        )
    path = parts.path
    if path.startswith("/@"):
        path = path[1:]
    if not path or path == "/":
        raise ConfigError(f"endpoint: {endpoint!r} has no socket path")
    return path


def load_encryption_config(path: str | Path) -> EncryptionConfiguration:
    """Read and validate an EncryptionConfiguration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--encryption-config: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"--encryption-config: {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--encryption-config: {path} is not valid YAML{where}") from None
    return parse_encryption_config(data)


def _mapping(value: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown field" if where else f"{key}: unknown field")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


def parse_encryption_config(data: object) -> EncryptionConfiguration:
    """Validate a parsed YAML document as an EncryptionConfiguration."""
    top = _mapping(data, "", {"apiVersion", "kind", "resources"})
    if top.get("kind") != KIND:
        raise ConfigError(f"kind: must be {KIND!r}, got {top.get('kind')!r}")
    if top.get("apiVersion") != API_VERSION:
        raise ConfigError(f"apiVersion: must be {API_VERSION!r}, got {top.get('apiVersion')!r}")
    rules: list[ResourceRule] = []
    kms_names: dict[str, str] = {}
    for i, raw_rule in enumerate(_list(top.get("resources"), "resources")):
        where = f"resources[{i}]"
        rule = _mapping(raw_rule, where, {"resources", "providers"})
        names = []
        for j, res in enumerate(_list(rule.get("resources"), f"{where}.resources")):
            res_where = f"{where}.resources[{j}]"
            name = _string(res, res_where)
            _check_resource_name(name, res_where)
            names.append(name)
        _check_overlap(names, f"{where}.resources")
        providers = []
        for j, raw in enumerate(_list(rule.get("providers"), f"{where}.providers")):
            provider = _provider(raw, f"{where}.providers[{j}]")
            if provider.kind == "kms":
                previous = kms_names.get(provider.name)
                if previous is not None and provider.api_version == "v2":
                    raise ConfigError(
                        f"{where}.providers[{j}].kms.name: {provider.name!r} is already used by {previous}"
                        " (KMS provider names must be unique)"
                    )
                kms_names.setdefault(provider.name, f"{where}.providers[{j}]")
            providers.append(provider)
        rules.append(ResourceRule(resources=tuple(names), providers=tuple(providers)))
    return EncryptionConfiguration(rules=tuple(rules))


def _check_overlap(names: list[str], where: str) -> None:
    """``validateResourceOverlap``: no name twice in one list, and no wildcard beside what it covers."""
    parsed = [GroupResource.parse(n) for n in names]
    for i, a in enumerate(parsed):
        for j, b in enumerate(parsed):
            if i == j:
                continue
            if a == b:
                raise ConfigError(f"{where}: {names[i]!r} is listed more than once")
            if a == _ANY or (a.group == b.group and "*" in (a.resource, b.resource)):
                raise ConfigError(
                    f"{where}: {names[i]!r} and {names[j]!r} overlap in one list "
                    "(the wildcard would mask the other name); split them into separate lists"
                )


def _check_resource_name(name: str, where: str) -> None:
    if name != name.lower():
        raise ConfigError(f"{where}: resource names must be lowercase, got {name!r}")
    if name == "*":
        raise ConfigError(f"{where}: '*' is not allowed; use '*.*' for every resource")
    if name in _FORBIDDEN_RESOURCES:
        raise ConfigError(f"{where}: {name!r} cannot be encrypted")
    res, _, group = name.partition(".")
    if group in ("events.k8s.io", "extensions"):
        raise ConfigError(f"{where}: group {group!r} is not allowed (use 'events' for events)")
    if group == "*" and res != "*":
        raise ConfigError(f"{where}: {name!r} is not allowed; use '*.<group>' to select a whole group")


def _provider(raw: object, where: str) -> ProviderConfig:
    element = _mapping(raw, where, set(_KINDS))
    if len(element) != 1:
        raise ConfigError(f"{where}: must hold exactly one of {', '.join(_KINDS)}, found {len(element)}")
    kind = cast(ProviderKind, next(iter(element)))
    body = element[kind]
    where = f"{where}.{kind}"
    if kind == "identity":
        if body not in (None, {}):
            raise ConfigError(f"{where}: takes no fields")
        return ProviderConfig(kind="identity")
    if kind == "kms":
        return _kms(body, where)
    fields = _mapping(body, where, {"keys"})
    keys = []
    for k, raw_key in enumerate(_list(fields.get("keys"), f"{where}.keys")):
        key_where = f"{where}.keys[{k}]"
        entry = _mapping(raw_key, key_where, {"name", "secret"})
        name = _string(entry.get("name"), f"{key_where}.name")
        secret_text = _string(entry.get("secret"), f"{key_where}.secret")
        try:
            secret = base64.b64decode(secret_text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{key_where}.secret: is not valid standard base64") from None
        sizes = _KEY_SIZES[kind]
        if len(secret) not in sizes:
            want = " or ".join(str(s) for s in sizes)
            raise ConfigError(f"{key_where}.secret: must decode to {want} bytes, got {len(secret)}")
        keys.append(ProviderKey(name=name, secret=secret))
    return ProviderConfig(kind=kind, keys=tuple(keys))


def _kms(body: object, where: str) -> ProviderConfig:
    fields = _mapping(body, where, {"apiVersion", "name", "endpoint", "timeout", "cachesize"})
    api_version = fields.get("apiVersion", "v1")
    if api_version not in ("v1", "v2"):
        raise ConfigError(f"{where}.apiVersion: must be 'v1' or 'v2', got {api_version!r}")
    name = _string(fields.get("name"), f"{where}.name")
    if api_version == "v2" and ":" in name:
        raise ConfigError(f"{where}.name: {name!r} must not contain ':' for a v2 provider")
    endpoint = _string(fields.get("endpoint"), f"{where}.endpoint")
    try:
        socket_path_from_endpoint(endpoint)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    timeout = 3.0
    if "timeout" in fields:
        raw_timeout = fields["timeout"]
        try:
            timeout = parse_duration(raw_timeout) if isinstance(raw_timeout, str) else -1.0
        except ValueError:
            timeout = -1.0
        if timeout <= 0:
            raise ConfigError(f"{where}.timeout: must be a positive duration such as 3s, got {raw_timeout!r}")
    cachesize: int | None = None
    if "cachesize" in fields:
        if api_version == "v2":
            raise ConfigError(f"{where}.cachesize: cachesize is not supported in v2")
        raw_size = fields["cachesize"]
        if not isinstance(raw_size, int) or isinstance(raw_size, bool) or raw_size == 0:
            raise ConfigError(f"{where}.cachesize: must be a non-zero integer, got {raw_size!r}")
        cachesize = raw_size
    elif api_version == "v1":
        cachesize = 1000
    return ProviderConfig(
        kind="kms",
        name=name,
        api_version=api_version,
        endpoint=endpoint,
        timeout=timeout,
        cachesize=cachesize,
    )
