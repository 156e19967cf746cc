"""Which requests touch Secrets (audited, redacted) and how Secret values are redacted."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.access.redact import (
    DATA_MARKER,
    MARKER,
    RedactingLineStream,
    SecretAccess,
    redact_document,
    redact_json,
    secret_access,
)


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/app/secrets/db", "", SecretAccess("get", "app", "db", False)),
        ("GET", "/api/v1/namespaces/app/secrets", "limit=500", SecretAccess("list", "app", "", False)),
        ("GET", "/api/v1/secrets", "", SecretAccess("list", "", "", False)),
        ("GET", "/api/v1/namespaces/app/secrets", "watch=true&rv=1", SecretAccess("watch", "app", "", True)),
        ("GET", "/api/v1/namespaces/app/secrets", "watch=1", SecretAccess("watch", "app", "", True)),
        ("GET", "/api/v1/watch/namespaces/app/secrets", "", SecretAccess("watch", "app", "", True)),
        ("GET", "/api/v1/watch/secrets", "", SecretAccess("watch", "", "", True)),
        ("POST", "/api/v1/namespaces/app/secrets", "", SecretAccess("create", "app", "", False)),
        ("PUT", "/api/v1/namespaces/app/secrets/db", "", SecretAccess("update", "app", "db", False)),
        (
            "PATCH",
            "/api/v1/namespaces/app/secrets/db",
            "fieldManager=k",
            SecretAccess("patch", "app", "db", False),
        ),
        ("DELETE", "/api/v1/namespaces/app/secrets/db", "", SecretAccess("delete", "app", "db", False)),
        ("DELETE", "/api/v1/namespaces/app/secrets", "", SecretAccess("deletecollection", "app", "", False)),
        (
            "GET",
            "/api/v1/namespaces/secrets/secrets/secrets",
            "",
            SecretAccess("get", "secrets", "secrets", False),
        ),
        ("GET", "/api/v1/namespaces/app/configmaps/db", "", None),
        ("GET", "/api/v1/namespaces/secrets", "", None),  # the namespace called "secrets"
        ("GET", "/apis/apps/v1/namespaces/app/secrets", "", None),
        ("GET", "/api/v1/namespaces/app/secrets/db/extra/more", "", None),
        ("GET", "/version", "", None),
    ],
)
def test_secret_access(method: str, path: str, query: str, expected: SecretAccess | None) -> None:
    assert secret_access(method, path, query) == expected


def _secret(**data: str) -> dict[str, object]:
    return {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "s"},
        "data": dict(data),
        "type": "Opaque",
    }


def test_a_secret_keeps_its_keys_and_loses_its_values() -> None:
    doc = _secret(password="aHVudGVyMg==", user="YWxpY2U=")
    doc["stringData"] = {"token": "plain"}
    out = redact_document(doc)
    assert out["data"] == {"password": DATA_MARKER, "user": DATA_MARKER}
    assert out["stringData"] == {"token": MARKER}
    assert out["metadata"] == {"name": "s"} and out["type"] == "Opaque"


def test_lists_tables_and_watch_events() -> None:
    listing = {"kind": "SecretList", "items": [{"metadata": {"name": "a"}, "data": {"k": "dg=="}}]}
    assert redact_document(listing)["items"][0]["data"] == {"k": DATA_MARKER}
    table = {"kind": "Table", "rows": [{"cells": ["a"], "object": _secret(k="dg==")}]}
    assert redact_document(table)["rows"][0]["object"]["data"] == {"k": DATA_MARKER}
    event = {"type": "ADDED", "object": _secret(k="dg==")}
    assert redact_document(event)["object"]["data"] == {"k": DATA_MARKER}
    table_event = {"type": "MODIFIED", "object": table}
    assert redact_document(table_event)["object"]["rows"][0]["object"]["data"] == {"k": DATA_MARKER}


def test_objects_that_are_not_secrets_are_left_alone() -> None:
    status = {"kind": "Status", "status": "Failure", "message": 'secrets "x" not found', "code": 404}
    assert redact_document(json.loads(json.dumps(status))) == status
    configmap = {"kind": "ConfigMap", "data": {"k": "v"}}
    assert redact_document(configmap)["data"] == {"k": "v"}


def test_redact_json_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        redact_json(b"\x0a\x0bk8s\x00protobuf")


_VALUE = st.text(alphabet="0123456789", min_size=6, max_size=20)  # appears nowhere else in a document


@given(
    data=st.dictionaries(st.text(min_size=1, max_size=10), _VALUE, max_size=6),
    cuts=st.lists(st.integers(1, 50), max_size=30),
    events=st.integers(1, 5),
)
def test_a_watch_stream_is_redacted_across_any_chunk_boundaries(
    data: dict[str, str], cuts: list[int], events: int
) -> None:
    stream = b"".join(
        json.dumps({"type": "ADDED", "object": {**_secret(), "data": data}}).encode() + b"\n"
        for _ in range(events)
    )
    redactor = RedactingLineStream()
    out = b""
    pos = 0
    for cut in cuts:
        out += redactor.feed(stream[pos : pos + cut])
        pos += cut
    out += redactor.feed(stream[pos:]) + redactor.finish()
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == events
    for doc in docs:
        assert doc["object"]["data"] == dict.fromkeys(data, DATA_MARKER)
    for value in data.values():
        assert value.encode() not in out


def test_the_data_marker_is_base64_of_the_marker() -> None:
    import base64

    # typed clients (kubectl create secret) decode data values: the marker must decode
    assert base64.b64decode(DATA_MARKER, validate=True).decode() == MARKER


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/app/%73ecrets/db",
        "/api/v1/namespaces/app/secrets%2Fdb",
        "//api/v1//namespaces/app/secrets/db/",
        "/api/v1/namespaces/app/configmaps/../secrets/db",
        "/api/v1/./namespaces/app/secrets/./db",
        "/api/%76%31/namespaces/app/secrets/db",
    ],
)
def test_every_spelling_of_a_secrets_path_is_a_secret_access(path: str) -> None:
    assert secret_access("GET", path, "") == SecretAccess("get", "app", "db", False)


_SEGMENT = st.sampled_from(["api", "v1", "namespaces", "app", "secrets", "db", "watch", "configmaps", "x"])


@given(
    segments=st.lists(_SEGMENT, min_size=1, max_size=7),
    encode=st.lists(st.booleans(), max_size=60),
    extra_slashes=st.lists(st.booleans(), max_size=8),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    query=st.sampled_from(["", "watch=true", "watch=1", "limit=5"]),
)
def test_encoding_or_slashes_never_change_the_reading(
    segments: list[str], encode: list[bool], extra_slashes: list[bool], method: str, query: str
) -> None:
    canonical = "/" + "/".join(segments)
    flags = iter(encode)
    spelled = "".join(f"%{ord(c):02X}" if c != "/" and next(flags, False) else c for c in canonical)
    slashes = iter(extra_slashes)
    spelled = "".join(c + ("/" if c == "/" and next(slashes, False) else "") for c in spelled)
    assert secret_access(method, spelled, query) == secret_access(method, canonical, query)
