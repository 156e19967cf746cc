"""Reading and writing Secret and SealedSecret objects (YAML or JSON, one or many documents).

Every check names the document and the field: ``-f secret.yaml document 2 (Secret default/db):
data.password: not standard base64``. Values are never quoted in a message.

Rules taken from kubeseal and the controller:

* base64 is Go's ``StdEncoding``: the ``+/`` alphabet with ``=`` padding; line breaks are skipped (Go's
  decoder skips ``\\r`` and ``\\n``), anything else (URL-safe letters, missing padding) is refused.
* A Secret to seal needs ``metadata.name`` and some ``data``/``stringData`` (unless empty data is
  allowed); ``stringData`` entries win over ``data`` entries of the same key, as in the apiserver.
* Server-side fields are stripped (``uid``, ``resourceVersion``, ``generation``, ``creationTimestamp``,
  ``deletionTimestamp``, ``deletionGracePeriodSeconds``, ``selfLink``, ``managedFields``), so are
  ``ownerReferences`` and the ``last-applied-configuration`` annotations of kubectl and kubecfg (they
  hold the whole Secret in clear).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubeshield.seal.errors import SealError

__all__ = [
    "API_VERSION",
    "KIND",
    "LAST_APPLIED_ANNOTATIONS",
    "SERVER_FIELDS",
    "Document",
    "InputSecret",
    "SealedSecret",
    "b64decode_std",
    "b64encode_std",
    "dump_objects",
    "load_documents",
    "parse_sealed_secret",
    "parse_secret",
    "strip_metadata",
]

API_VERSION = "bitnami.com/v1alpha1"
KIND = "SealedSecret"
LAST_APPLIED_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "kubecfg.ksonnet.io/last-applied-configuration",
)
SERVER_FIELDS = (
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
)
_MAX_INPUT = 16 << 20
_STD_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def b64decode_std(text: str) -> bytes:
    """Go ``base64.StdEncoding.DecodeString``; raises ``ValueError`` on anything it refuses."""
    cleaned = text.replace("\r", "").replace("\n", "")
    if len(cleaned) % 4 or not _STD_B64.match(cleaned):
        raise ValueError("not standard base64")
    try:
        return base64.b64decode(cleaned, validate=True)
    except binascii.Error:  # pragma: no cover - the regex already refuses it
        raise ValueError("not standard base64") from None


def b64encode_std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings (Kubernetes objects carry RFC 3339 text)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed object and where it came from (``<source> document N``)."""

    obj: dict[str, Any]
    where: str


def load_documents(data: bytes, *, source: str) -> list[Document]:
    """Parse YAML (``---`` separated) or JSON (one value or several concatenated). ``v1 List`` items count
    as documents. Empty documents are skipped."""
    if len(data) > _MAX_INPUT:
        raise SealError(f"{source}: input is larger than {_MAX_INPUT} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SealError(f"{source}: input is not UTF-8 text") from None
    raw: list[Any]
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        raw = list(_json_values(stripped, source))
    else:
        try:
            raw = list(yaml.load_all(text, Loader=_Loader))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"
            raise SealError(f"{source}: invalid YAML at {where}: {exc.problem}") from None
        except yaml.YAMLError:
            raise SealError(f"{source}: invalid YAML") from None
    out: list[Document] = []
    for i, obj in enumerate(raw, start=1):
        if obj is None:
            continue
        where = f"{source} document {i}" if len(raw) > 1 else source
        if not isinstance(obj, dict):
            raise SealError(f"{where}: expected an object (a mapping), got {type(obj).__name__}")
        if obj.get("kind") == "List" or (isinstance(obj.get("kind"), str) and obj["kind"].endswith("List")):
            items = obj.get("items")
            if not isinstance(items, list):
                raise SealError(f"{where}: items: expected a list")
            for j, item in enumerate(items):
                if not isinstance(item, dict):
                    raise SealError(f"{where}: items[{j}]: expected an object")
                out.append(Document(obj=item, where=f"{where} items[{j}]"))
            continue
        out.append(Document(obj=obj, where=where))
    return out


def _json_values(text: str, source: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SealError(
                f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        if isinstance(value, list):
            yield from value
        else:
            yield value


def dump_objects(objs: list[dict[str, Any]], *, fmt: str) -> str:
    """``yaml`` (documents separated by ``---``, keys sorted as Go's YAML encoder does) or ``json``
    (indented, one object per value, newline-terminated)."""
    if fmt == "json":
        return "".join(json.dumps(o, indent=2, ensure_ascii=False) + "\n" for o in objs)
    if fmt == "yaml":
        return "---\n".join(
            yaml.safe_dump(o, sort_keys=True, default_flow_style=False, width=1 << 30) for o in objs
        )
    raise ValueError(f"unsupported output format {fmt!r} (use yaml or json)")


def _str_map(value: object, where: str, field_name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SealError(f"{where}: {field_name}: expected a map of strings")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SealError(
                f"{where}: {field_name}: every key and value must be a string (see key {str(k)!r})"
            )
        out[k] = v
    return out


def strip_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``metadata`` without server-side fields, ownerReferences and last-applied annotations."""
    out = {k: v for k, v in metadata.items() if k not in SERVER_FIELDS and k != "ownerReferences"}
    annotations = out.get("annotations")
    if isinstance(annotations, dict):
        kept = {k: v for k, v in annotations.items() if k not in LAST_APPLIED_ANNOTATIONS}
        if kept:
            out["annotations"] = kept
        else:
            out.pop("annotations")
    return out


def _object_name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return "?"
    name = meta.get("name") if isinstance(meta.get("name"), str) else "?"
    ns = meta.get("namespace")
    return f"{ns}/{name}" if isinstance(ns, str) and ns else str(name)


@dataclass(frozen=True, slots=True)
class InputSecret:
    """A Secret to be sealed: its stripped metadata and its values (bytes)."""

    metadata: dict[str, Any]
    type: str | None
    immutable: bool | None
    values: dict[str, bytes] = field(repr=False)
    where: str

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def annotations(self) -> dict[str, str]:
        value = self.metadata.get("annotations")
        return dict(value) if isinstance(value, dict) else {}


def parse_secret(doc: Document, *, allow_empty: bool = False) -> InputSecret:
    """Check a ``v1 Secret`` document and return what sealing needs."""
    obj = doc.obj
    where = f"{doc.where} (Secret {_object_name(obj)})"
    if obj.get("kind") != "Secret" or obj.get("apiVersion", "v1") != "v1":
        raise SealError(
            f"{doc.where}: expected apiVersion v1, kind Secret; got "
            f"{obj.get('apiVersion')!r}, {obj.get('kind')!r}"
        )
    meta = obj.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SealError(f"{where}: metadata: expected an object")
    for name in ("name", "namespace"):
        if name in meta and meta[name] is not None and not isinstance(meta[name], str):
            raise SealError(f"{where}: metadata.{name}: expected a string")
    _str_map(meta.get("annotations"), where, "metadata.annotations")
    _str_map(meta.get("labels"), where, "metadata.labels")
    values: dict[str, bytes] = {}
    data = obj.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise SealError(f"{where}: data: expected a map of base64 strings")
        for key, value in data.items():
            if not isinstance(key, str):
                raise SealError(f"{where}: data: keys must be strings")
            if value is None:
                values[key] = b""
                continue
            if not isinstance(value, str):
                raise SealError(f"{where}: data.{key}: expected a base64 string")
            try:
                values[key] = b64decode_std(value)
            except ValueError:
                raise SealError(
                    f"{where}: data.{key}: not standard base64 (alphabet +/ with = padding)"
                ) from None
    string_data = obj.get("stringData")
    if string_data is not None:
        if not isinstance(string_data, dict):
            raise SealError(f"{where}: stringData: expected a map of strings")
        for key, value in string_data.items():
            if not isinstance(key, str) or not isinstance(value, str | None):
                raise SealError(f"{where}: stringData.{key}: expected a string")
            values[key] = (value or "").encode("utf-8")
    if not values and not allow_empty:
        raise SealError(f"{where}: the Secret has no data or stringData; refusing to seal an empty Secret")
    type_ = obj.get("type")
    if type_ is not None and not isinstance(type_, str):
        raise SealError(f"{where}: type: expected a string")
    immutable = obj.get("immutable")
    if immutable is not None and not isinstance(immutable, bool):
        raise SealError(f"{where}: immutable: expected true or false")
    return InputSecret(
        metadata=strip_metadata(meta), type=type_ or None, immutable=immutable, values=values, where=where
    )


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A checked ``bitnami.com/v1alpha1 SealedSecret``; ``raw`` keeps the object as given."""

    raw: dict[str, Any]
    where: str
    name: str
    namespace: str
    annotations: dict[str, str]
    uid: str | None
    generation: int
    encrypted_data: dict[str, str]
    template_metadata: dict[str, Any]
    template_type: str | None
    template_immutable: bool | None
    template_data: dict[str, str | None]
    legacy_data: str | None

    @property
    def ref(self) -> str:
        """``SealedSecret <ns>/<name>``, how messages name it."""
        return f"SealedSecret {self.namespace}/{self.name}"


def parse_sealed_secret(doc: Document, *, default_namespace: str | None = None) -> SealedSecret:
    """Check a SealedSecret document. ``default_namespace`` fills a missing ``metadata.namespace``."""
    obj = doc.obj
    where = doc.where
    kind, api = obj.get("kind"), obj.get("apiVersion")
    if kind != KIND or api != API_VERSION:
        raise SealError(f"{where}: expected apiVersion {API_VERSION}, kind {KIND}; got {api!r}, {kind!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise SealError(f"{where}: metadata: required (an object with name and namespace)")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SealError(f"{where}: metadata.name: required")
    namespace = meta.get("namespace") or default_namespace or ""
    if not isinstance(namespace, str):
        raise SealError(f"{where}: metadata.namespace: expected a string")
    where = f"{where} (SealedSecret {namespace}/{name})"
    annotations = _str_map(meta.get("annotations"), where, "metadata.annotations")
    uid = meta.get("uid") if isinstance(meta.get("uid"), str) else None
    generation = meta.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise SealError(f"{where}: metadata.generation: expected an integer")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise SealError(f"{where}: spec: required (an object with encryptedData)")
    enc = spec.get("encryptedData")
    legacy = spec.get("data")
    if enc is None and legacy is None:
        raise SealError(f"{where}: spec.encryptedData: required")
    encrypted = _str_map(enc, where, "spec.encryptedData")
    if legacy is not None and not isinstance(legacy, str):
        raise SealError(f"{where}: spec.data: expected a base64 string")
    template = spec.get("template") or {}
    if not isinstance(template, dict):
        raise SealError(f"{where}: spec.template: expected an object")
    tmeta = template.get("metadata") or {}
    if not isinstance(tmeta, dict):
        raise SealError(f"{where}: spec.template.metadata: expected an object")
    _str_map(tmeta.get("annotations"), where, "spec.template.metadata.annotations")
    _str_map(tmeta.get("labels"), where, "spec.template.metadata.labels")
    ttype = template.get("type")
    if ttype is not None and not isinstance(ttype, str):
        raise SealError(f"{where}: spec.template.type: expected a string")
    immutable = template.get("immutable")
    if immutable is not None and not isinstance(immutable, bool):
        raise SealError(f"{where}: spec.template.immutable: expected true or false")
    tdata_raw = template.get("data") or {}
    if not isinstance(tdata_raw, dict):
        raise SealError(f"{where}: spec.template.data: expected a map of template strings")
    tdata: dict[str, str | None] = {}
    for k, v in tdata_raw.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, str)):
            raise SealError(f"{where}: spec.template.data.{k}: expected a template string or null")
        tdata[k] = v
    return SealedSecret(
        raw=obj,
        where=where,
        name=name,
        namespace=namespace,
        annotations=annotations,
        uid=uid,
        generation=generation,
        encrypted_data=encrypted,
        template_metadata=dict(tmeta),
        template_type=ttype or None,
        template_immutable=immutable,
        template_data=tdata,
        legacy_data=legacy,
    )
