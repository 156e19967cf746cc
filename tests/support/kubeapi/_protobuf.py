"""Just enough Kubernetes protobuf to read what kubectl's typed clients send for reviews and tokens.

kubectl posts SelfSubjectAccessReview (``auth can-i``), SubjectAccessReview and TokenRequest
(``create token``) as ``application/vnd.kubernetes.protobuf``: ``k8s\\x00`` + runtime.Unknown{1 typeMeta
{1 apiVersion, 2 kind}, 2 raw}. The field numbers below are those of k8s.io/api's generated.proto.
Secrets and ConfigMaps are read by kubeshield's own decoder (kubeshield.envelope.objects).
"""

from __future__ import annotations

from typing import Any

__all__ = ["KINDS", "decode"]

# field number -> (json name, kind, nested schema); kind: str, int, bool, msg, rstr (repeated string)
Schema = dict[int, tuple[str, str, Any]]

_META: Schema = {1: ("name", "str", None), 2: ("generateName", "str", None), 3: ("namespace", "str", None)}
_RESOURCE_ATTRS: Schema = {
    1: ("namespace", "str", None),
    2: ("verb", "str", None),
    3: ("group", "str", None),
    4: ("version", "str", None),
    5: ("resource", "str", None),
    6: ("subresource", "str", None),
    7: ("name", "str", None),
}
_NONRESOURCE_ATTRS: Schema = {1: ("path", "str", None), 2: ("verb", "str", None)}
_SAR_SPEC: Schema = {
    1: ("resourceAttributes", "msg", _RESOURCE_ATTRS),
    2: ("nonResourceAttributes", "msg", _NONRESOURCE_ATTRS),
    3: ("user", "str", None),
    4: ("groups", "rstr", None),
    6: ("uid", "str", None),
}
_SELF_SAR_SPEC: Schema = {
    1: ("resourceAttributes", "msg", _RESOURCE_ATTRS),
    2: ("nonResourceAttributes", "msg", _NONRESOURCE_ATTRS),
}
_BOUND_REF: Schema = {
    1: ("kind", "str", None),
    2: ("apiVersion", "str", None),
    3: ("name", "str", None),
    4: ("uid", "str", None),
}
_TOKEN_REQUEST_SPEC: Schema = {
    1: ("audiences", "rstr", None),
    3: ("boundObjectRef", "msg", _BOUND_REF),
    4: ("expirationSeconds", "int", None),
}
_TOKEN_REVIEW_SPEC: Schema = {1: ("token", "str", None), 2: ("audiences", "rstr", None)}


def _object(spec: Schema) -> Schema:
    return {1: ("metadata", "msg", _META), 2: ("spec", "msg", spec)}


KINDS: dict[tuple[str, str], Schema] = {
    ("authorization.k8s.io/v1", "SubjectAccessReview"): _object(_SAR_SPEC),
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): _object(_SAR_SPEC),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): _object(_SELF_SAR_SPEC),
    ("authentication.k8s.io/v1", "TokenRequest"): _object(_TOKEN_REQUEST_SPEC),
    ("authentication.k8s.io/v1", "TokenReview"): _object(_TOKEN_REVIEW_SPEC),
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, wire, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            out.append((number, wire, buf[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _message(buf: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, _, value in _fields(buf):
        if number not in schema:
            continue
        name, kind, nested = schema[number]
        if kind == "int" and isinstance(value, int):
            out[name] = value
        elif kind == "bool" and isinstance(value, int):
            out[name] = bool(value)
        elif isinstance(value, bytes):
            if kind == "str":
                out[name] = value.decode()
            elif kind == "rstr":
                out.setdefault(name, []).append(value.decode())
            elif kind == "msg":
                out[name] = _message(value, nested)
    return out


def type_of(body: bytes) -> tuple[str, str, bytes]:
    """``(apiVersion, kind, raw)`` of a ``k8s\\x00`` protobuf body."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf body")
    type_meta, raw = b"", b""
    for number, _, value in _fields(body[4:]):
        if number == 1 and isinstance(value, bytes):
            type_meta = value
        elif number == 2 and isinstance(value, bytes):
            raw = value
    meta = _message(type_meta, {1: ("apiVersion", "str", None), 2: ("kind", "str", None)})
    return meta.get("apiVersion", ""), meta.get("kind", ""), raw


def decode(body: bytes) -> dict[str, Any] | None:
    """The JSON form of a review or token request body, or None for other kinds."""
    api_version, kind, raw = type_of(body)
    schema = KINDS.get((api_version, kind))
    if schema is None:
        return None
    return {"apiVersion": api_version, "kind": kind, **_message(raw, schema)}
