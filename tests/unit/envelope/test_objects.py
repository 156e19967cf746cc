from __future__ import annotations

import base64
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kubeshield.envelope import KubeObject, ObjectDecodeError, decode_object, encode_secret, to_manifest
from kubeshield.errors import KubeshieldError
from tests.support.envelope import pb_bytes, pb_varint

MAGIC = b"k8s\x00"


def _unknown(api_version: bytes, kind: bytes, raw: bytes, encoding: bytes = b"") -> bytes:
    type_meta = pb_bytes(1, api_version) + pb_bytes(2, kind)
    return MAGIC + pb_bytes(1, type_meta) + pb_bytes(2, raw) + pb_bytes(3, encoding) + pb_bytes(4, b"")


def _entry(field: int, key: bytes, value: bytes) -> bytes:
    return pb_bytes(field, pb_bytes(1, key) + pb_bytes(2, value))


def _meta(name: bytes = b"cm", namespace: bytes = b"ns") -> bytes:
    return pb_bytes(1, name) + pb_bytes(3, namespace) + pb_bytes(5, b"uid-1") + pb_bytes(8, b"")


def test_error_class_is_both_kubeshield_and_value_error() -> None:
    assert issubclass(ObjectDecodeError, KubeshieldError)
    assert issubclass(ObjectDecodeError, ValueError)


def test_encode_secret_layout() -> None:
    blob = encode_secret(
        name="db",
        namespace="prod",
        data={"b": b"2", "a": b""},
        uid="u",
        creation_timestamp=1700000000,
        labels={"app": "x"},
        annotations={"note": "y"},
    )
    meta = (
        pb_bytes(1, b"db")
        + pb_bytes(2, b"")
        + pb_bytes(3, b"prod")
        + pb_bytes(4, b"")
        + pb_bytes(5, b"u")
        + pb_bytes(6, b"")
        + pb_varint(7, 0)
        + pb_bytes(8, pb_varint(1, 1700000000) + pb_varint(2, 0))
        + _entry(11, b"app", b"x")
        + _entry(12, b"note", b"y")
    )
    secret = pb_bytes(1, meta) + _entry(2, b"a", b"") + _entry(2, b"b", b"2") + pb_bytes(3, b"Opaque")
    assert blob == _unknown(b"v1", b"Secret", secret)


def test_secret_round_trip_with_all_fields() -> None:
    blob = encode_secret(
        name="db",
        namespace="prod",
        data={"password": b"\x00\xffhunter2"},
        uid="uid-9",
        type="kubernetes.io/tls",
        creation_timestamp=1,
        labels={"app": "db"},
        annotations={"a.io/x": "1"},
    )
    obj = decode_object(blob)
    assert (obj.api_version, obj.kind, obj.name, obj.namespace, obj.uid) == (
        "v1",
        "Secret",
        "db",
        "prod",
        "uid-9",
    )
    assert obj.type == "kubernetes.io/tls"
    assert dict(obj.data) == {"password": b"\x00\xffhunter2"}
    assert dict(obj.labels) == {"app": "db"} and dict(obj.annotations) == {"a.io/x": "1"}
    assert obj.creation_timestamp == 1 and obj.immutable is None and obj.encoding == "protobuf"
    assert decode_object(encode_secret(name="n", namespace="ns", data={})).creation_timestamp is None


def test_secret_immutable_string_data_and_unknown_fields() -> None:
    secret = (
        pb_bytes(1, _meta() + pb_bytes(15, b"") + pb_bytes(17, b"\x0a\x01m"))
        + _entry(2, b"k", b"v")
        + _entry(4, b"s", b"text")
        + pb_varint(5, 1)
        + pb_bytes(99, b"future field")
    )
    obj = decode_object(_unknown(b"v1", b"Secret", secret))
    assert obj.immutable is True and dict(obj.string_data) == {"s": "text"} and obj.type is None


def test_configmap_protobuf() -> None:
    raw = (
        pb_bytes(1, _meta()) + _entry(2, b"conf", b"a=1") + _entry(3, b"blob", b"\xff\x00") + pb_varint(4, 0)
    )
    obj = decode_object(_unknown(b"v1", b"ConfigMap", raw))
    assert dict(obj.data) == {"conf": b"a=1", "blob": b"\xff\x00"}
    assert obj.binary_data_keys == frozenset({"blob"}) and obj.immutable is False
    assert to_manifest(obj) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "ns", "uid": "uid-1"},
        "immutable": False,
        "data": {"conf": "a=1"},
        "binaryData": {"blob": base64.b64encode(b"\xff\x00").decode()},
    }


def test_other_kinds_give_type_and_metadata_only() -> None:
    raw = pb_bytes(1, _meta(b"web", b"default")) + pb_bytes(2, b"\x08\x03")  # a Deployment-like spec
    obj = decode_object(_unknown(b"apps/v1", b"Deployment", raw))
    assert (obj.api_version, obj.kind, obj.name, obj.namespace) == ("apps/v1", "Deployment", "web", "default")
    assert dict(obj.data) == {} and obj.type is None
    assert to_manifest(obj) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
    }


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a Kubernetes object"),
        (b"k8s\x01" + b"\x0a\x00", "not a Kubernetes object"),
        (b"\xd9\xd9\xf7\xa0", "CBOR"),
        (MAGIC + b"\x0a\x05ab", "runtime.Unknown"),
        (MAGIC + pb_bytes(1, pb_bytes(1, b"v1")), "no raw object"),
        (_unknown(b"v1", b"Secret", b"", encoding=b"gzip"), "contentEncoding"),
        (_unknown(b"v1", b"Secret", pb_bytes(1, b"\x0a\x09short")), "Secret.metadata"),
        (_unknown(b"v1", b"Secret", pb_varint(2, 1)), "Secret.data"),
        (_unknown(b"v1", b"Secret", pb_bytes(3, b"\xff")), "Secret.type is not valid UTF-8"),
        (_unknown(b"v1", b"Secret", pb_bytes(1, pb_varint(1, 5))), "Secret.metadata.name"),
        (_unknown(b"v1", b"Secret", pb_bytes(1, pb_bytes(8, pb_varint(1, 1 << 62)))), "creationTimestamp"),
        (_unknown(b"v1", b"ConfigMap", _entry(2, b"k", b"\xff")), "ConfigMap.data value"),
        (
            _unknown(b"v1", b"ConfigMap", _entry(2, b"k", b"") + _entry(3, b"k", b"")),
            "both data and binaryData",
        ),
        (_unknown(b"\xff", b"Secret", b""), "TypeMeta.apiVersion"),
    ],
)
def test_malformed_protobuf_names_the_problem(blob: bytes, message: str) -> None:
    with pytest.raises(ObjectDecodeError, match=message):
        decode_object(blob)


def test_errors_never_contain_secret_bytes() -> None:
    blob = encode_secret(name="n", namespace="ns", data={"k": b"SUPERSECRET-VALUE"})
    for cut in range(len(MAGIC), len(blob)):
        try:
            decode_object(blob[:cut])
        except ObjectDecodeError as exc:
            assert "SUPERSECRET" not in str(exc)


def test_json_secret() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "namespace": "ns",
            "uid": "u",
            "creationTimestamp": "2023-09-01T15:56:49Z",
            "labels": {"a": "b"},
        },
        "data": {"k": base64.b64encode(b"\x01value").decode()},
        "type": "Opaque",
        "immutable": True,
    }
    obj = decode_object(json.dumps(doc).encode())
    assert obj.encoding == "json" and obj.creation_timestamp == 1693583809
    assert dict(obj.data) == {"k": b"\x01value"} and obj.immutable is True and obj.type == "Opaque"
    manifest = to_manifest(obj)
    assert manifest["data"] == doc["data"] and manifest["metadata"] == doc["metadata"]


def test_json_configmap_and_custom_resource() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "\u00e9"}}
    obj = decode_object(json.dumps(cm).encode())
    assert dict(obj.data) == {"x": "\u00e9".encode()} and obj.binary_data_keys == frozenset()
    assert to_manifest(obj)["data"] == {"x": "\u00e9"}
    cr = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    widget = decode_object(json.dumps(cr).encode())
    assert (widget.kind, widget.name, widget.encoding) == ("Widget", "w", "json")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"{\xff}", "not valid JSON"),
        (b'{"kind": 1}', "object.kind"),
        (b'{"kind": "Secret", "apiVersion": "v1", "metadata": []}', "metadata is not a mapping"),
        (b'{"kind": "Secret", "apiVersion": "v1", "data": {"k": "!!"}}', "not valid base64"),
        (b'{"kind": "Secret", "apiVersion": "v1", "data": {"k": 1}}', "map of strings"),
        (b'{"kind": "Secret", "apiVersion": "v1", "immutable": "yes"}', "boolean"),
        (b'{"kind": "Secret", "apiVersion": "v1", "type": 5}', "Secret.type"),
        (b'{"kind": "X", "metadata": {"creationTimestamp": "yesterday"}}', "RFC 3339"),
        (b'{"kind": "X", "metadata": {"creationTimestamp": "2023-09-01T15:56:49"}}', "time zone"),
        (b'{"kind": "X", "metadata": {"name": null}}', "metadata.name"),
    ],
)
def test_malformed_json(doc: bytes, message: str) -> None:
    with pytest.raises(ObjectDecodeError, match=message):
        decode_object(doc)


def test_json_error_hides_values() -> None:
    with pytest.raises(ObjectDecodeError) as info:
        decode_object(b'{"apiVersion": "v1", "kind": "Secret", "data": {"k": "SECRET!!"}}')
    assert "SECRET" not in str(info.value)


def test_type_errors() -> None:
    with pytest.raises(TypeError, match="plaintext"):
        decode_object("k8s\x00")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data"):
        encode_secret(name="n", namespace="ns", data={"k": "text"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="name"):
        encode_secret(name=None, namespace="ns", data={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="labels"):
        encode_secret(name="n", namespace="ns", data={}, labels={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="creation_timestamp"):
        encode_secret(name="n", namespace="ns", data={}, creation_timestamp=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="years"):
        encode_secret(name="n", namespace="ns", data={}, creation_timestamp=1 << 40)
    with pytest.raises(TypeError):
        to_manifest({"kind": "Secret"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (-62135596800, "0001-01-01T00:00:00Z"),
        (253402300799, "9999-12-31T23:59:59Z"),
    ],
)
def test_manifest_timestamps_are_rfc3339(seconds: int, text: str) -> None:
    obj = decode_object(encode_secret(name="n", namespace="ns", data={}, creation_timestamp=seconds))
    assert to_manifest(obj)["metadata"] == {"name": "n", "namespace": "ns", "creationTimestamp": text}


def test_repr_hides_values() -> None:
    obj = decode_object(encode_secret(name="n", namespace="ns", data={"k": b"HIDDEN-VALUE"}))
    assert "HIDDEN" not in repr(obj) and "'k'" in repr(obj)
    assert isinstance(obj, KubeObject)


_text = st.text(max_size=20)
_str_maps = st.dictionaries(_text, _text, max_size=3)


@settings(max_examples=75)
@given(
    name=_text,
    namespace=_text,
    uid=_text,
    type_=_text,
    data=st.dictionaries(_text, st.binary(max_size=40), max_size=4),
    creation_timestamp=st.none() | st.integers(min_value=-62135596800, max_value=253402300799),
    labels=_str_maps,
    annotations=_str_maps,
)
@example(
    name="n",
    namespace="",
    uid="",
    type_="",
    data={},
    creation_timestamp=-62135596800,
    labels={},
    annotations={},
)
@example(
    name="",
    namespace="",
    uid="",
    type_="",
    data={},
    creation_timestamp=253402300799,
    labels={},
    annotations={},
)
def test_encode_decode_round_trip(
    name: str,
    namespace: str,
    uid: str,
    type_: str,
    data: dict[str, bytes],
    creation_timestamp: int | None,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> None:
    blob = encode_secret(
        name=name,
        namespace=namespace,
        uid=uid,
        type=type_,
        data=data,
        creation_timestamp=creation_timestamp,
        labels=labels,
        annotations=annotations,
    )
    obj = decode_object(blob)
    assert (obj.name, obj.namespace, obj.uid, obj.type) == (name, namespace, uid, type_)
    assert dict(obj.data) == data
    assert obj.creation_timestamp == creation_timestamp
    assert dict(obj.labels) == labels and dict(obj.annotations) == annotations
    manifest = to_manifest(obj)
    assert manifest["kind"] == "Secret"
    # and through JSON, as kubectl would show it
    again = decode_object(json.dumps(manifest).encode())
    assert dict(again.data) == data and again.creation_timestamp == creation_timestamp
