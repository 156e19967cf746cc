"""Decoding what kube-apiserver stores once the encryption is removed: ``k8s\\x00`` protobuf or JSON.

Protobuf form (built-in kinds)::

    6b 38 73 00                       "k8s\\x00": magic, then runtime.Unknown (proto2):
      1 typeMeta        { 1 apiVersion string, 2 kind string }
      2 raw             bytes: the object's own message, e.g. k8s.io.api.core.v1.Secret
      3 contentEncoding string (written empty)
      4 contentType     string (written empty)

    Secret    { 1 metadata ObjectMeta, 2 data map<string,bytes>, 3 type string,
                4 stringData map<string,string>, 5 immutable bool }
    ConfigMap { 1 metadata ObjectMeta, 2 data map<string,string>, 3 binaryData map<string,bytes>,
                4 immutable bool }
    ObjectMeta { 1 name, 2 generateName, 3 namespace, 4 selfLink, 5 uid, 6 resourceVersion,
                 7 generation int64, 8 creationTimestamp Time{1 seconds int64, 2 nanos int32},
                 9 deletionTimestamp, 10 deletionGracePeriodSeconds, 11 labels map<string,string>,
                 12 annotations map<string,string>, 13 ownerReferences, 14 finalizers, 17 managedFields }

Map entries are ``{1 key, 2 value}`` messages. Fields not listed (and old ones such as ObjectMeta 15
``clusterName``) are skipped. For kinds other than Secret and ConfigMap only the type and field 1
(ObjectMeta) are read. JSON objects (custom resources, or ``--storage-media-type=application/json``)
are read from their ``apiVersion``/``kind``/``metadata``/``data`` members.

Malformed input raises :class:`ObjectDecodeError`, which names what is malformed and never holds the
object's bytes or values.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from kubeshield.envelope import _wire
from kubeshield.errors import KubeshieldError

__all__ = [
    "KubeObject",
    "ObjectDecodeError",
    "decode_object",
    "encode_secret",
    "to_manifest",
]

_MAGIC = b"k8s\x00"
_EMPTY_STR_MAP: Mapping[str, str] = MappingProxyType({})
# Go's RFC 3339 timestamps cover years 0001..9999
_MIN_SECONDS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_MAX_SECONDS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ObjectDecodeError(KubeshieldError, ValueError):
    """A decrypted value is not a Kubernetes object we can read. The message names the problem only."""


@dataclass(frozen=True)
class KubeObject:
    """The parts of a stored object that kubeshield's tools show or check.

    ``data`` holds Secret.data as raw bytes; for a ConfigMap it holds ``data`` (UTF-8 encoded) and
    ``binaryData`` together, and ``binary_data_keys`` says which keys came from ``binaryData``.
    ``type`` is the Secret type (``None`` for other kinds or when absent).
    """

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str
    type: str | None
    data: Mapping[str, bytes]
    string_data: Mapping[str, str]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    creation_timestamp: int | None
    immutable: bool | None
    encoding: str
    binary_data_keys: frozenset[str] = field(default=frozenset())

    def __repr__(self) -> str:  # never show secret values
        return (
            f"KubeObject(api_version={self.api_version!r}, kind={self.kind!r}, "
            f"namespace={self.namespace!r}, name={self.name!r}, encoding={self.encoding!r}, "
            f"data_keys={sorted(self.data)!r})"
        )


# -- protobuf -------------------------------------------------------------------------------------


def _fields(buf: bytes, where: str) -> Iterator[tuple[int, int, int | bytes]]:
    try:
        fields = list(_wire.iter_fields(buf))
    except _wire.WireError as exc:
        raise ObjectDecodeError(f"malformed {where}: {exc}") from None
    return iter(fields)


def _as_bytes(wire_type: int, value: int | bytes, where: str) -> bytes:
    if wire_type != _wire.LEN or not isinstance(value, bytes):
        raise ObjectDecodeError(f"malformed {where}: expected a length-delimited field")
    return value


def _as_int(wire_type: int, value: int | bytes, where: str) -> int:
    if wire_type != _wire.VARINT or not isinstance(value, int):
        raise ObjectDecodeError(f"malformed {where}: expected a varint field")
    return value


def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ObjectDecodeError(f"{where} is not valid UTF-8") from None


def _map_entry(wire_type: int, value: int | bytes, where: str) -> tuple[str, bytes]:
    key = b""
    item = b""
    for number, entry_type, entry_value in _fields(_as_bytes(wire_type, value, where), where):
        if number == 1:
            key = _as_bytes(entry_type, entry_value, f"{where} key")
        elif number == 2:
            item = _as_bytes(entry_type, entry_value, f"{where} value")
    return _text(key, f"{where} key"), item


def _check_seconds(seconds: int, where: str) -> int:
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ObjectDecodeError(f"{where} is outside years 0001..9999")
    return seconds


def _decode_time(raw: bytes, where: str) -> int | None:
    if not raw:  # Go writes the zero time as an empty message
        return None
    seconds = 0
    for number, wire_type, value in _fields(raw, where):
        if number == 1:
            seconds = _wire.to_int64(_as_int(wire_type, value, f"{where}.seconds"))
    return _check_seconds(seconds, where)


@dataclass
class _Meta:
    name: str = ""
    namespace: str = ""
    uid: str = ""
    creation_timestamp: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def _decode_meta(raw: bytes, where: str) -> _Meta:
    meta = _Meta()
    for number, wire_type, value in _fields(raw, where):
        if number == 1:
            meta.name = _text(_as_bytes(wire_type, value, f"{where}.name"), f"{where}.name")
        elif number == 3:
            meta.namespace = _text(_as_bytes(wire_type, value, f"{where}.namespace"), f"{where}.namespace")
        elif number == 5:
            meta.uid = _text(_as_bytes(wire_type, value, f"{where}.uid"), f"{where}.uid")
        elif number == 8:
            stamp = f"{where}.creationTimestamp"
            meta.creation_timestamp = _decode_time(_as_bytes(wire_type, value, stamp), stamp)
        elif number in (11, 12):
            what = f"{where}.labels" if number == 11 else f"{where}.annotations"
            key, item = _map_entry(wire_type, value, what)
            target = meta.labels if number == 11 else meta.annotations
            target[key] = _text(item, f"{what} value")
    return meta


def _build(
    api_version: str,
    kind: str,
    meta: _Meta,
    encoding: str,
    *,
    type_: str | None = None,
    data: Mapping[str, bytes] | None = None,
    string_data: Mapping[str, str] | None = None,
    immutable: bool | None = None,
    binary_data_keys: frozenset[str] = frozenset(),
) -> KubeObject:
    return KubeObject(
        api_version=api_version,
        kind=kind,
        name=meta.name,
        namespace=meta.namespace,
        uid=meta.uid,
        type=type_,
        data=MappingProxyType(dict(data or {})),
        string_data=MappingProxyType(dict(string_data or {})),
        labels=MappingProxyType(meta.labels),
        annotations=MappingProxyType(meta.annotations),
        creation_timestamp=meta.creation_timestamp,
        immutable=immutable,
        encoding=encoding,
        binary_data_keys=binary_data_keys,
    )


def _decode_secret_proto(api_version: str, kind: str, raw: bytes) -> KubeObject:
    meta = _Meta()
    data: dict[str, bytes] = {}
    string_data: dict[str, str] = {}
    type_: str | None = None
    immutable: bool | None = None
    for number, wire_type, value in _fields(raw, "Secret"):
        if number == 1:
            meta = _decode_meta(_as_bytes(wire_type, value, "Secret.metadata"), "Secret.metadata")
        elif number == 2:
            key, item = _map_entry(wire_type, value, "Secret.data")
            data[key] = item
        elif number == 3:
            type_ = _text(_as_bytes(wire_type, value, "Secret.type"), "Secret.type")
        elif number == 4:
            key, item = _map_entry(wire_type, value, "Secret.stringData")
            string_data[key] = _text(item, "Secret.stringData value")
        elif number == 5:
            immutable = _as_int(wire_type, value, "Secret.immutable") != 0
    return _build(
        api_version,
        kind,
        meta,
        "protobuf",
        type_=type_,
        data=data,
        string_data=string_data,
        immutable=immutable,
    )


def _merge_configmap(text: Mapping[str, bytes], binary: Mapping[str, bytes]) -> dict[str, bytes]:
    if text.keys() & binary.keys():
        raise ObjectDecodeError("a ConfigMap key appears in both data and binaryData")
    return {**text, **binary}


def _decode_configmap_proto(api_version: str, kind: str, raw: bytes) -> KubeObject:
    meta = _Meta()
    text: dict[str, bytes] = {}
    binary: dict[str, bytes] = {}
    immutable: bool | None = None
    for number, wire_type, value in _fields(raw, "ConfigMap"):
        if number == 1:
            meta = _decode_meta(_as_bytes(wire_type, value, "ConfigMap.metadata"), "ConfigMap.metadata")
        elif number == 2:
            key, item = _map_entry(wire_type, value, "ConfigMap.data")
            _text(item, "ConfigMap.data value")
            text[key] = item
        elif number == 3:
            key, item = _map_entry(wire_type, value, "ConfigMap.binaryData")
            binary[key] = item
        elif number == 4:
            immutable = _as_int(wire_type, value, "ConfigMap.immutable") != 0
    return _build(
        api_version,
        kind,
        meta,
        "protobuf",
        data=_merge_configmap(text, binary),
        immutable=immutable,
        binary_data_keys=frozenset(binary),
    )


def _decode_other_proto(api_version: str, kind: str, raw: bytes) -> KubeObject:
    meta = _Meta()
    for number, wire_type, value in _fields(raw, "object"):
        if number == 1:
            meta = _decode_meta(_as_bytes(wire_type, value, "object metadata"), "object metadata")
    return _build(api_version, kind, meta, "protobuf")


def _decode_protobuf(body: bytes) -> KubeObject:
    type_meta = b""
    raw: bytes | None = None
    content_encoding = b""
    for number, wire_type, value in _fields(body, "runtime.Unknown"):
        if number == 1:
            type_meta = _as_bytes(wire_type, value, "runtime.Unknown.typeMeta")
        elif number == 2:
            raw = _as_bytes(wire_type, value, "runtime.Unknown.raw")
        elif number == 3:
            content_encoding = _as_bytes(wire_type, value, "runtime.Unknown.contentEncoding")
    api_version = ""
    kind = ""
    for number, wire_type, value in _fields(type_meta, "TypeMeta"):
        if number == 1:
            api_version = _text(_as_bytes(wire_type, value, "TypeMeta.apiVersion"), "TypeMeta.apiVersion")
        elif number == 2:
            kind = _text(_as_bytes(wire_type, value, "TypeMeta.kind"), "TypeMeta.kind")
    if content_encoding:
        raise ObjectDecodeError("runtime.Unknown has a contentEncoding, which is not supported")
    if raw is None:
        raise ObjectDecodeError("runtime.Unknown holds no raw object")
    if api_version == "v1" and kind == "Secret":
        return _decode_secret_proto(api_version, kind, raw)
    if api_version == "v1" and kind == "ConfigMap":
        return _decode_configmap_proto(api_version, kind, raw)
    return _decode_other_proto(api_version, kind, raw)


# -- JSON -----------------------------------------------------------------------------------------


def _json_str(doc: Mapping[str, object], key: str, where: str, *, default: str = "") -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise ObjectDecodeError(f"{where}.{key} is not a string")
    return value


def _json_str_map(doc: Mapping[str, object], key: str, where: str) -> dict[str, str]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ObjectDecodeError(f"{where}.{key} is not a map of strings")
    return dict(value)


def _json_b64_map(doc: Mapping[str, object], key: str, where: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, text in _json_str_map(doc, key, where).items():
        try:
            out[name] = base64.b64decode(text.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise ObjectDecodeError(f"{where}.{key} holds a value that is not valid base64") from None
    return out


def _json_optional_bool(doc: Mapping[str, object], key: str, where: str) -> bool | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, bool):
        raise ObjectDecodeError(f"{where}.{key} is not a boolean")
    return value


def _json_timestamp(meta: Mapping[str, object]) -> int | None:
    value = meta.get("creationTimestamp")
    if value is None:
        return None
    where = "metadata.creationTimestamp"
    if not isinstance(value, str):
        raise ObjectDecodeError(f"{where} is not a string")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ObjectDecodeError(f"{where} is not an RFC 3339 time") from None
    if stamp.tzinfo is None:
        raise ObjectDecodeError(f"{where} has no time zone")
    return _check_seconds(int(stamp.timestamp() // 1), where)


def _decode_json(plaintext: bytes) -> KubeObject:
    try:
        doc = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ObjectDecodeError("the object is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ObjectDecodeError("the JSON object is not a mapping")
    api_version = _json_str(doc, "apiVersion", "object")
    kind = _json_str(doc, "kind", "object")
    raw_meta = doc.get("metadata", {})
    if not isinstance(raw_meta, dict):
        raise ObjectDecodeError("object.metadata is not a mapping")
    meta = _Meta(
        name=_json_str(raw_meta, "name", "metadata"),
        namespace=_json_str(raw_meta, "namespace", "metadata"),
        uid=_json_str(raw_meta, "uid", "metadata"),
        creation_timestamp=_json_timestamp(raw_meta),
        labels=_json_str_map(raw_meta, "labels", "metadata"),
        annotations=_json_str_map(raw_meta, "annotations", "metadata"),
    )
    if api_version == "v1" and kind == "Secret":
        type_value = doc.get("type")
        if type_value is not None and not isinstance(type_value, str):
            raise ObjectDecodeError("Secret.type is not a string")
        return _build(
            api_version,
            kind,
            meta,
            "json",
            type_=type_value,
            data=_json_b64_map(doc, "data", "Secret"),
            string_data=_json_str_map(doc, "stringData", "Secret"),
            immutable=_json_optional_bool(doc, "immutable", "Secret"),
        )
    if api_version == "v1" and kind == "ConfigMap":
        text = {
            k: v.encode("utf-8", "surrogatepass") for k, v in _json_str_map(doc, "data", "ConfigMap").items()
        }
        binary = _json_b64_map(doc, "binaryData", "ConfigMap")
        return _build(
            api_version,
            kind,
            meta,
            "json",
            data=_merge_configmap(text, binary),
            immutable=_json_optional_bool(doc, "immutable", "ConfigMap"),
            binary_data_keys=frozenset(binary),
        )
    return _build(api_version, kind, meta, "json")


# -- public ---------------------------------------------------------------------------------------


def decode_object(plaintext: bytes) -> KubeObject:
    """Decode a stored object (``k8s\\x00`` protobuf or JSON). Raises ``ObjectDecodeError``."""
    if not isinstance(plaintext, bytes):
        raise TypeError(f"plaintext must be bytes, not {type(plaintext).__name__}")
    if plaintext.startswith(_MAGIC):
        return _decode_protobuf(plaintext[len(_MAGIC) :])
    if plaintext.startswith(b"{"):
        return _decode_json(plaintext)
    if plaintext.startswith(b"\xd9\xd9\xf7"):
        raise ObjectDecodeError("the object is CBOR-encoded, which is not supported")
    raise ObjectDecodeError("not a Kubernetes object: no k8s\\x00 protobuf magic and not JSON")


def _check_str_map(name: str, value: object) -> Mapping[str, str]:
    if value is None:
        return _EMPTY_STR_MAP
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{name} must map str to str")
    return value


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    return value


def _string_map_entries(number: int, mapping: Mapping[str, bytes]) -> bytes:
    out = bytearray()
    for key in sorted(mapping):
        entry = _wire.encode_len_field(1, key.encode("utf-8")) + _wire.encode_len_field(2, mapping[key])
        out += _wire.encode_len_field(number, entry)
    return bytes(out)


def encode_secret(
    *,
    name: str,
    namespace: str,
    data: Mapping[str, bytes],
    uid: str = "",
    type: str = "Opaque",
    creation_timestamp: int | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """Serialize a v1 Secret exactly as the apiserver stores it (``k8s\\x00`` + runtime.Unknown).

    Go field order; empty strings are written (``12 00``), generation is written as 0, a missing
    creationTimestamp is written as an empty Time message, map entries are sorted by key, and empty
    maps are left out. For seeding tests and fixtures.
    """
    for param, value in (("name", name), ("namespace", namespace), ("uid", uid), ("type", type)):
        _check_str(param, value)
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in data.items()
    ):
        raise TypeError("data must map str to bytes")
    label_map = _check_str_map("labels", labels)
    annotation_map = _check_str_map("annotations", annotations)
    if creation_timestamp is not None:
        if isinstance(creation_timestamp, bool) or not isinstance(creation_timestamp, int):
            raise TypeError("creation_timestamp must be int seconds or None")
        if not _MIN_SECONDS <= creation_timestamp <= _MAX_SECONDS:
            raise ValueError("creation_timestamp must fall in years 0001..9999")

    time = b""
    if creation_timestamp is not None:
        time = _wire.encode_varint_field(1, creation_timestamp) + _wire.encode_varint_field(2, 0)
    meta = (
        _wire.encode_len_field(1, name.encode("utf-8"))
        + _wire.encode_len_field(2, b"")  # generateName
        + _wire.encode_len_field(3, namespace.encode("utf-8"))
        + _wire.encode_len_field(4, b"")  # selfLink
        + _wire.encode_len_field(5, uid.encode("utf-8"))
        + _wire.encode_len_field(6, b"")  # resourceVersion
        + _wire.encode_varint_field(7, 0)  # generation
        + _wire.encode_len_field(8, time)
        + _string_map_entries(11, {k: v.encode("utf-8") for k, v in label_map.items()})
        + _string_map_entries(12, {k: v.encode("utf-8") for k, v in annotation_map.items()})
    )
    secret = (
        _wire.encode_len_field(1, meta)
        + _string_map_entries(2, dict(data))
        + _wire.encode_len_field(3, type.encode("utf-8"))
    )
    type_meta = _wire.encode_len_field(1, b"v1") + _wire.encode_len_field(2, b"Secret")
    unknown = (
        _wire.encode_len_field(1, type_meta)
        + _wire.encode_len_field(2, secret)
        + _wire.encode_len_field(3, b"")  # contentEncoding
        + _wire.encode_len_field(4, b"")  # contentType
    )
    return _MAGIC + unknown


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _rfc3339(seconds: int) -> str:
    """UTC RFC 3339 with a four-digit year, as Go's ``time.RFC3339`` prints a Kubernetes timestamp."""
    t = _EPOCH + timedelta(seconds=seconds)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def to_manifest(obj: KubeObject) -> dict[str, object]:
    """The object as ``kubectl get -o yaml`` shows it (data base64-encoded, empty fields left out)."""
    if not isinstance(obj, KubeObject):
        raise TypeError(f"obj must be a KubeObject, not {type(obj).__name__}")
    metadata: dict[str, object] = {}
    if obj.name:
        metadata["name"] = obj.name
    if obj.namespace:
        metadata["namespace"] = obj.namespace
    if obj.uid:
        metadata["uid"] = obj.uid
    if obj.creation_timestamp is not None:
        metadata["creationTimestamp"] = _rfc3339(obj.creation_timestamp)
    if obj.labels:
        metadata["labels"] = dict(sorted(obj.labels.items()))
    if obj.annotations:
        metadata["annotations"] = dict(sorted(obj.annotations.items()))
    manifest: dict[str, object] = {"apiVersion": obj.api_version, "kind": obj.kind, "metadata": metadata}
    if obj.immutable is not None:
        manifest["immutable"] = obj.immutable
    if obj.api_version == "v1" and obj.kind == "Secret":
        if obj.data:
            manifest["data"] = {k: _b64(v) for k, v in sorted(obj.data.items())}
        if obj.string_data:
            manifest["stringData"] = dict(sorted(obj.string_data.items()))
        if obj.type is not None:
            manifest["type"] = obj.type
    elif obj.api_version == "v1" and obj.kind == "ConfigMap":
        text = {k: v for k, v in obj.data.items() if k not in obj.binary_data_keys}
        binary = {k: v for k, v in obj.data.items() if k in obj.binary_data_keys}
        if text:
            manifest["data"] = {k: v.decode("utf-8", "replace") for k, v in sorted(text.items())}
        if binary:
            manifest["binaryData"] = {k: _b64(v) for k, v in sorted(binary.items())}
    return manifest
