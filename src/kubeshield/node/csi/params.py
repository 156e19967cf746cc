"""What a Mount request asks for: the SecretProviderClass parameters and the kubelet's attributes.

``attributes`` is a JSON object of strings (formats.md §4.3): the SPC's ``spec.parameters`` plus
``secretProviderClass`` and the ``csi.storage.k8s.io/*`` pod attributes. Parameters read here::

    objects: |                          # required: a YAML list
      - objectName: db-password         # required, unique; the ObjectVersion id
        sealed: kubeshield:node:v1:...  # exactly one source: sealed | sealedFrom | openbao | aws
        fileName: db/password           # default objectName; relative, no '..' element
        mode: "0400"                    # octal string, 0..0777; default the request's permission
      - objectName: cert-key
        sealedFrom: {configMap: sealed-values, key: cert-key}   # the pod's namespace only
      - objectName: api-key
        openbao: {store: bao, path: secret/data/app, key: api-key}
      - objectName: token
        aws: {store: aws, secretId: prod/token, jsonKey: token}
    audience: kubeshield                # key of serviceAccount.tokens used for sealed objects
    openbaoRole: app                    # default role for openbao objects
    awsRoleArn: arn:aws:iam::1:role/x   # default role for aws objects

Any other parameter, any unknown object field, a path the driver's atomic writer would refuse
(absolute, a ``..`` element, a name starting with ``..`` (reserved for ``..data``), longer than 4096 or
an element longer than 255, not in clean form), a duplicate name or file, or a mode outside 0..0777 is
a :class:`ParamError` naming the object and the field. The tokens come from
``csi.storage.k8s.io/serviceAccount.tokens`` in the attributes or, when kubelet puts them there
(``serviceAccountTokenInSecrets``), in the request's ``secrets``; they are never logged.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from kubeshield.errors import InvalidRequest

__all__ = ["MountObject", "MountParams", "ParamError", "check_file_path", "parse_mount"]

TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
POD_SA = "csi.storage.k8s.io/serviceAccount.name"
_KNOWN = {"objects", "audience", "openbaoRole", "awsRoleArn", "secretProviderClass"}
_OBJECT_FIELDS = {"objectName", "sealed", "sealedFrom", "openbao", "aws", "fileName", "mode"}
_SOURCE_FIELDS = {
    "openbao": ({"store", "path"}, {"key", "encoding", "role"}),
    "aws": ({"store", "secretId"}, {"versionStage", "versionId", "jsonKey", "roleArn"}),
}
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")
_MAX_OBJECTS = 256
#: libyaml's safe loader when PyYAML has it (about 20x faster: parsing was 90% of a Mount), else PyYAML's
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_ATTRIBUTES = 24 << 20  # below the gRPC server's 32 MiB receive limit


class ParamError(InvalidRequest):
    """The SecretProviderClass or the request is wrong; the message names the object and field."""


@dataclass(frozen=True, slots=True)
class MountObject:
    name: str
    file_name: str
    mode: int | None
    kind: Literal["sealed", "openbao", "aws"]
    sealed: str = ""
    ref: Mapping[str, Any] = field(default_factory=dict)

    def config_bytes(self) -> bytes:
        """Canonical JSON of the object's configuration (the HMAC of its version covers it)."""
        doc = {"objectName": self.name, "fileName": self.file_name, "mode": self.mode, "kind": self.kind,
               "sealed": self.sealed, "ref": dict(self.ref)}  # fmt: skip
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class MountParams:
    objects: tuple[MountObject, ...]
    audience: str
    default_mode: int
    pod_name: str
    pod_namespace: str
    pod_uid: str
    service_account: str
    tokens: Mapping[str, str] = field(repr=False)

    def token_for(self, audience: str) -> str:
        token = self.tokens.get(audience)
        if not token:
            raise ParamError(
                f"no ServiceAccount token for audience {audience!r}: add it to the CSIDriver's tokenRequests "
                f"(secrets-store.csi.k8s.io tokenRequests: [{{audience: {audience}}}])"
            )
        return token


def check_file_path(path: str, where: str) -> str:
    """The driver's rules for a File.path (AtomicWriter validatePath + a clean form)."""
    if not isinstance(path, str) or not path:
        raise ParamError(f"{where}: must be a non-empty relative path")
    if "\x00" in path:
        raise ParamError(f"{where}: must not contain NUL")
    if path.startswith("/"):
        raise ParamError(f"{where}: {path!r} must be a relative path")
    if len(path) > 4096:
        raise ParamError(f"{where}: at most 4096 characters")
    items = path.split("/")
    for item in items:
        if item == "..":
            raise ParamError(f"{where}: {path!r} must not contain '..'")
        if len(item) > 255:
            raise ParamError(f"{where}: file names are at most 255 characters")
    if items[0].startswith(".."):
        raise ParamError(f"{where}: {path!r} must not start with '..' (reserved for the driver's ..data)")
    if posixpath.normpath(path) != path:
        raise ParamError(f"{where}: {path!r} is not in clean form (no '.', '//' or trailing '/')")
    return path


def _mode(value: object, where: str) -> int:
    if not isinstance(value, str):
        raise ParamError(f'{where}: write the mode as an octal string, e.g. "0400"')
    text = value.strip()
    if not re.fullmatch(r"0?[0-7]{1,3}|0o[0-7]{1,3}", text):
        raise ParamError(f"{where}: {value!r} is not an octal mode in 0..0777")
    return int(text.removeprefix("0o"), 8)


def _source(kind: str, value: object, where: str, defaults: Mapping[str, str]) -> dict[str, Any]:
    required, optional = _SOURCE_FIELDS[kind]
    if not isinstance(value, dict):
        raise ParamError(f"{where}.{kind}: must be a mapping")
    unknown = set(value) - required - optional
    if unknown:
        raise ParamError(f"{where}.{kind}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    for name in sorted(required - set(value)):
        raise ParamError(f"{where}.{kind}.{name}: required")
    for k, v in value.items():
        if not isinstance(v, str) or not v:
            raise ParamError(f"{where}.{kind}.{k}: must be a non-empty string")
    out = dict(value)
    role_key = "role" if kind == "openbao" else "roleArn"
    if role_key not in out and defaults.get(kind):
        out[role_key] = defaults[kind]
    return out


def _json_map(text: str, what: str) -> dict[str, str]:
    if not text:
        return {}
    if len(text) > _MAX_ATTRIBUTES:
        raise ParamError(f"{what}: larger than {_MAX_ATTRIBUTES} bytes")
    try:
        doc = json.loads(text)
    except ValueError:
        raise ParamError(f"{what}: not JSON") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ParamError(f"{what}: must be a JSON object of strings")
    return {str(k): v for k, v in doc.items()}


def _tokens(text: str) -> dict[str, str]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise ParamError(f"{TOKENS}: not JSON") from None
    if not isinstance(doc, dict):
        raise ParamError(f"{TOKENS}: must be an object of audience -> token")
    out: dict[str, str] = {}
    for aud, entry in doc.items():
        token = entry.get("token") if isinstance(entry, dict) else None
        if isinstance(token, str) and token:
            out[str(aud)] = token
    return out


def parse_mount(attributes: str, secrets: str, permission: str) -> MountParams:
    """Parse one Mount request's strings. Raises :class:`ParamError` naming the problem."""
    attrs = _json_map(attributes, "attributes")
    secret_map = _json_map(secrets, "secrets")
    unknown = [k for k in attrs if k not in _KNOWN and not k.startswith("csi.storage.k8s.io/")]
    if unknown:
        raise ParamError(
            f"unknown SecretProviderClass parameter(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_KNOWN - {'secretProviderClass'}))})"
        )
    try:
        default_mode = int(json.loads(permission)) if permission else 0o644
    except (ValueError, TypeError):
        raise ParamError("permission: not a JSON number") from None
    if not 0 <= default_mode <= 0o777:
        raise ParamError("permission: outside 0..0777")
    text = attrs.get("objects")
    if not text:
        raise ParamError("objects: required (a YAML list of objects)")
    try:
        items = yaml.load(text, Loader=_LOADER)  # a safe loader (libyaml's when PyYAML has it)
    except yaml.YAMLError:
        raise ParamError("objects: not valid YAML") from None
    if not isinstance(items, list) or not items:
        raise ParamError("objects: must be a non-empty YAML list")
    if len(items) > _MAX_OBJECTS:
        raise ParamError(f"objects: at most {_MAX_OBJECTS}")
    defaults = {"openbao": attrs.get("openbaoRole", ""), "aws": attrs.get("awsRoleArn", "")}
    objects: list[MountObject] = []
    names: set[str] = set()
    files: set[str] = set()
    for i, item in enumerate(items):
        where = f"objects[{i}]"
        if not isinstance(item, dict):
            raise ParamError(f"{where}: must be a mapping")
        name = item.get("objectName")
        if not isinstance(name, str) or not _OBJECT_NAME.match(name):
            raise ParamError(f"{where}.objectName: required; letters, digits, '-', '_' and '.' (1..253)")
        where = f"objects[{i}] ({name})"
        unknown_fields = set(item) - _OBJECT_FIELDS
        if unknown_fields:
            raise ParamError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown_fields)))}")
        if name in names:
            raise ParamError(f"{where}.objectName: {name!r} appears twice")
        names.add(name)
        kinds = [k for k in ("sealed", "sealedFrom", "openbao", "aws") if k in item]
        if len(kinds) != 1:
            raise ParamError(f"{where}: give exactly one of sealed, sealedFrom, openbao or aws")
        kind = kinds[0]
        file_name = check_file_path(item.get("fileName", name), f"{where}.fileName")
        if file_name in files or any(
            f.startswith(file_name + "/") or file_name.startswith(f + "/") for f in files
        ):
            raise ParamError(f"{where}.fileName: {file_name!r} collides with another object's file")
        files.add(file_name)
        mode = _mode(item["mode"], f"{where}.mode") if "mode" in item else None
        if kind == "sealedFrom":
            ref = item["sealedFrom"]
            if not isinstance(ref, dict) or set(ref) != {"configMap", "key"}:
                raise ParamError(
                    f"{where}.sealedFrom: {{configMap: <name>, key: <key>}} (in the pod's namespace)"
                )
            if not all(isinstance(v, str) and v for v in ref.values()):
                raise ParamError(f"{where}.sealedFrom: configMap and key are non-empty strings")
            objects.append(MountObject(name, file_name, mode, "sealed", ref=dict(ref)))
        elif kind == "sealed":
            sealed = item["sealed"]
            if not isinstance(sealed, str) or not sealed.strip():
                raise ParamError(f"{where}.sealed: the text from `kubeshield node seal`")
            objects.append(MountObject(name, file_name, mode, "sealed", sealed=sealed.strip()))
        else:
            ref = _source(kind, item[kind], where, defaults)
            objects.append(MountObject(name, file_name, mode, kind, ref=ref))  # type: ignore[arg-type]
    tokens_text = attrs.get(TOKENS) or secret_map.get(TOKENS) or ""
    return MountParams(
        objects=tuple(objects),
        audience=attrs.get("audience") or "kubeshield",
        default_mode=default_mode,
        pod_name=attrs.get(POD_NAME, ""),
        pod_namespace=attrs.get(POD_NAMESPACE, ""),
        pod_uid=attrs.get(POD_UID, ""),
        service_account=attrs.get(POD_SA, ""),
        tokens=_tokens(tokens_text) if tokens_text else {},
    )
