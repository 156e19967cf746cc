"""The REST protocol without I/O: requests built, Status objects mapped to errors without bodies."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import (
    KubeAlreadyExists,
    KubeBadRequest,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeInvalid,
    KubeNotFound,
    KubeUnauthorized,
    KubeUnavailable,
)
from kubeshield.kube import _wire, resources
from kubeshield.kube._wire import PatchType, Target

TARGET = Target(resources.SECRETS, "db", "app")


def _status(code: int, reason: str, message: str = "m", **details) -> bytes:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        body["details"] = details
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (400, "BadRequest", KubeBadRequest),
        (401, "Unauthorized", KubeUnauthorized),
        (403, "Forbidden", KubeForbidden),
        (404, "NotFound", KubeNotFound),
        (409, "Conflict", KubeConflict),
        (409, "AlreadyExists", KubeAlreadyExists),
        (410, "Expired", KubeGone),
        (422, "Invalid", KubeInvalid),
        (429, "TooManyRequests", KubeUnavailable),
        (500, "InternalError", KubeUnavailable),
        (503, "ServiceUnavailable", KubeUnavailable),
        (418, "Teapot", KubeError),
    ],
)
def test_status_codes_map_to_the_error_family(code, reason, cls):
    with pytest.raises(KubeError) as err:
        _wire.decode(code, _status(code, reason), TARGET)
    assert type(err.value) is cls
    assert err.value.code == code and err.value.reason == reason
    assert err.value.name == "db" and err.value.namespace == "app" and err.value.kind == "secrets"


def test_status_messages_never_reach_the_error():
    leaked = 'Secret "db" is invalid: data[pw]: Invalid value: "hunter2-plaintext"'
    body = _status(
        422,
        "Invalid",
        leaked,
        name="db",
        kind="Secret",
        causes=[{"field": "data[pw]", "message": leaked, "reason": "FieldValueInvalid"}],
    )
    with pytest.raises(KubeInvalid) as err:
        _wire.decode(422, body, TARGET)
    assert "hunter2" not in str(err.value) and "hunter2" not in repr(err.value.__dict__)
    assert err.value.fields == ("data[pw]",)


@given(st.binary(max_size=200), st.integers(min_value=300, max_value=599))
def test_any_error_body_becomes_a_kube_error_without_its_bytes(body, code):
    marker = b"S3CRET-MARKER"
    with pytest.raises(KubeError) as err:
        _wire.decode(code, marker + body, TARGET)
    assert "S3CRET" not in str(err.value)


def test_non_json_success_is_unavailable_not_a_crash():
    with pytest.raises(KubeUnavailable):
        _wire.decode(200, b"<html>", TARGET)
    with pytest.raises(KubeUnavailable):
        _wire.decode(200, b"[1, 2]", TARGET)


def test_retry_after_is_kept_for_throttling():
    with pytest.raises(KubeUnavailable) as err:
        _wire.decode(429, _status(429, "TooManyRequests"), TARGET, retry_after="3")
    assert err.value.retry_after == 3.0


def test_label_and_field_selectors():
    assert (
        _wire.label_selector({"app": "web", "tier": None, "env": ["a", "b"]}) == "app=web,tier,env in (a,b)"
    )
    assert _wire.label_selector("a!=b") == "a!=b"
    assert _wire.label_selector({}) is None and _wire.label_selector(None) is None
    assert _wire.field_selector({"metadata.name": "x", "type": "Opaque"}) == "metadata.name=x,type=Opaque"


def test_request_building():
    req = _wire.list_(
        resources.PODS, "ns", labels={"a": "b"}, limit=10, continue_token="tok", resource_version="5"
    )
    assert req.path == "/api/v1/namespaces/ns/pods"
    params = dict(req.params)
    assert params == {"labelSelector": "a=b", "limit": "10", "continue": "tok"}  # no rv with continue
    watch = _wire.watch(resources.DEPLOYMENTS, None, resource_version="7", timeout_seconds=60)
    assert watch.path == "/apis/apps/v1/deployments" and watch.stream
    assert dict(watch.params) == {
        "watch": "true",
        "allowWatchBookmarks": "true",
        "resourceVersion": "7",
        "timeoutSeconds": "60",
    }
    apply = _wire.patch(
        resources.SECRETS,
        "s",
        "ns",
        {},
        patch_type=PatchType.APPLY,
        field_manager="me",
        force=True,
        dry_run=True,
    )
    assert dict(apply.headers)["Content-Type"] == "application/apply-patch+yaml"
    assert dict(apply.params) == {"fieldManager": "me", "force": "true", "dryRun": "All"}
    with pytest.raises(ValueError, match="field_manager"):
        _wire.patch(
            resources.SECRETS,
            "s",
            "ns",
            {},
            patch_type=PatchType.APPLY,
            field_manager=None,
            force=False,
            dry_run=False,
        )
    with pytest.raises(TypeError):
        _wire.patch(
            resources.SECRETS,
            "s",
            "ns",
            {},
            patch_type=PatchType.JSON,
            field_manager=None,
            force=False,
            dry_run=False,
        )
    delete = _wire.delete(
        resources.SECRETS,
        "s",
        "ns",
        propagation="Foreground",
        grace_period=0,
        uid="u",
        resource_version=None,
        dry_run=False,
    )
    assert json.loads(delete.body or b"") == {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "propagationPolicy": "Foreground",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": "u"},
    }
    with pytest.raises(ValueError):
        _wire.delete(
            resources.SECRETS,
            "s",
            "ns",
            propagation="Later",
            grace_period=None,
            uid=None,
            resource_version=None,
            dry_run=False,
        )


def test_watch_lines():
    assert _wire.watch_line(b'{"type":"ADDED","object":{"a":1}}', TARGET) == ("ADDED", {"a": 1})
    gone = json.dumps({"type": "ERROR", "object": json.loads(_status(410, "Expired"))})
    with pytest.raises(KubeGone):
        _wire.watch_line(gone, TARGET)
    for bad in (b"not json", b'{"type":"ADDED"}', b'{"type":"WHAT","object":{}}'):
        with pytest.raises(KubeUnavailable):
            _wire.watch_line(bad, TARGET)
