"""SecretProviderClass parameters and kubelet attributes as the driver sends them (formats.md §4.3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.node.csi.params import ParamError, check_file_path, parse_mount

SEALED = (
    "kubeshield:node:v1:AQEAAAABABh7Im5zIjoibnMtYSIsInNhIjoiYXBwIn0AAQIDBAUGBwgJCgszrciz1i6lb4xlUR5Ph3MR"
    "OYTMOCCS"
)


def attrs(objects: str, **extra: str) -> str:
    doc = {
        "objects": objects,
        "secretProviderClass": "app-secrets",
        "csi.storage.k8s.io/pod.name": "web-1",
        "csi.storage.k8s.io/pod.namespace": "ns-a",
        "csi.storage.k8s.io/pod.uid": "uid-1",
        "csi.storage.k8s.io/serviceAccount.name": "app",
        "csi.storage.k8s.io/ephemeral": "false",
        "csi.storage.k8s.io/serviceAccount.tokens": json.dumps(
            {"kubeshield": {"token": "tok-a", "expirationTimestamp": "2030-01-01T00:00:00Z"}}
        ),
    }
    doc.update(extra)
    return json.dumps(doc)


def test_a_full_request() -> None:
    objects = f"""
- objectName: db-password
  sealed: {SEALED}
  fileName: db/password
  mode: "0400"
- objectName: api
  openbao: {{store: bao, path: secret/data/app, key: api}}
- objectName: tok
  aws: {{store: aws, secretId: prod/tok, jsonKey: token}}
"""
    params = parse_mount(attrs(objects, openbaoRole="app", awsRoleArn="arn:aws:iam::1:role/r"), "{}", "420")
    assert [o.name for o in params.objects] == ["db-password", "api", "tok"]
    db, api, tok = params.objects
    assert (db.kind, db.file_name, db.mode, db.sealed) == ("sealed", "db/password", 0o400, SEALED)
    assert api.ref == {"store": "bao", "path": "secret/data/app", "key": "api", "role": "app"}
    assert tok.ref["roleArn"] == "arn:aws:iam::1:role/r" and tok.mode is None and tok.file_name == "tok"
    (ref,) = parse_mount(
        attrs("- {objectName: c, sealedFrom: {configMap: sealed, key: c}}"), "{}", "420"
    ).objects
    assert (ref.kind, ref.sealed, ref.ref) == ("sealed", "", {"configMap": "sealed", "key": "c"})
    assert params.default_mode == 0o644 and params.audience == "kubeshield"
    assert (params.pod_namespace, params.pod_name, params.pod_uid, params.service_account) == (
        "ns-a",
        "web-1",
        "uid-1",
        "app",
    )
    assert params.token_for("kubeshield") == "tok-a"
    assert "tok-a" not in repr(params)
    with pytest.raises(ParamError, match="tokenRequests"):
        params.token_for("vault")


def test_tokens_may_come_in_the_secrets_field() -> None:
    doc = json.loads(attrs(f"- {{objectName: a, sealed: {SEALED}}}"))
    tokens = doc.pop("csi.storage.k8s.io/serviceAccount.tokens")
    params = parse_mount(
        json.dumps(doc), json.dumps({"csi.storage.k8s.io/serviceAccount.tokens": tokens}), "420"
    )
    assert params.token_for("kubeshield") == "tok-a"


@pytest.mark.parametrize(
    ("objects", "extra", "message"),
    [
        ("", {}, "objects: required"),
        ("[unclosed", {}, "not valid YAML"),
        ("{a: 1}", {}, "non-empty YAML list"),
        (f"- {{objectName: a, sealed: {SEALED}, colour: red}}", {}, "unknown field"),
        (f"- {{objectName: a, sealed: {SEALED}, fileName: ../x}}", {}, "must not contain '..'"),
        (f"- {{objectName: a, sealed: {SEALED}, fileName: a/../../x}}", {}, "must not contain '..'"),
        (f"- {{objectName: a, sealed: {SEALED}, fileName: ..data}}", {}, "must not start with '..'"),
        (f"- {{objectName: a, sealed: {SEALED}, fileName: /etc/passwd}}", {}, "relative path"),
        (f"- {{objectName: a, sealed: {SEALED}, fileName: a//b}}", {}, "clean form"),
        (f"- {{objectName: a, sealed: {SEALED}, fileName: ./a}}", {}, "clean form"),
        (f"- {{objectName: a, sealed: {SEALED}, mode: '1777'}}", {}, "0..0777"),
        (f"- {{objectName: a, sealed: {SEALED}, mode: '0800'}}", {}, "0..0777"),
        (f"- {{objectName: a, sealed: {SEALED}, mode: 0400}}", {}, "octal string"),
        (
            f"- {{objectName: a, sealed: {SEALED}}}\n- {{objectName: a, sealed: {SEALED}}}",
            {},
            "appears twice",
        ),
        (
            f"- {{objectName: a, sealed: {SEALED}}}\n- {{objectName: b, sealed: {SEALED}, fileName: a}}",
            {},
            "collides",
        ),
        (
            f"- {{objectName: a, sealed: {SEALED}, fileName: d}}\n"
            f"- {{objectName: b, sealed: {SEALED}, fileName: d/x}}",
            {},
            "collides",
        ),
        ("- {objectName: a}", {}, "exactly one of sealed, sealedFrom, openbao or aws"),
        (f"- {{objectName: a, sealed: {SEALED}, aws: {{store: x, secretId: y}}}}", {}, "exactly one"),
        ("- {objectName: a, openbao: {store: bao}}", {}, "openbao.path: required"),
        ("- {objectName: a, sealedFrom: {configMap: cm}}", {}, "sealedFrom: {configMap"),
        ("- {objectName: a, sealedFrom: {configMap: cm, key: ''}}", {}, "non-empty strings"),
        ("- {objectName: a, openbao: {store: bao, path: p, extra: 1}}", {}, "unknown field"),
        ("- {objectName: 'a b', sealed: x}", {}, "objectName"),
        (
            f"- {{objectName: a, sealed: {SEALED}}}",
            {"vaultAddress": "https://evil"},
            "unknown SecretProviderClass",
        ),
    ],
)
def test_bad_parameters_name_the_object_and_field(objects: str, extra: dict[str, str], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        parse_mount(attrs(objects, **extra), "{}", "420")


@pytest.mark.parametrize(
    ("attributes", "secrets", "permission", "message"),
    [
        ("not json", "{}", "420", "attributes: not JSON"),
        ('{"objects": 1}', "{}", "420", "JSON object of strings"),
        (attrs(f"- {{objectName: a, sealed: {SEALED}}}"), "[]", "420", "secrets: must be"),
        (attrs(f"- {{objectName: a, sealed: {SEALED}}}"), "{}", "x", "permission: not a JSON number"),
        (attrs(f"- {{objectName: a, sealed: {SEALED}}}"), "{}", "4096", "permission: outside"),
    ],
)
def test_bad_request_fields(attributes: str, secrets: str, permission: str, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        parse_mount(attributes, secrets, permission)


def _driver_accepts(path: str) -> bool:
    """The driver's fileutil.Validate, transcribed: validatePath, then filepath.Clean(path) == path."""
    import posixpath

    if not path or path.startswith("/") or len(path) > 4096:
        return False
    items = path.split("/")
    if any(i == ".." or len(i) > 255 for i in items):
        return False
    if items[0].startswith("..") and len(items[0]) > 2:
        return False
    return posixpath.normpath(path) == path


@given(st.text(alphabet="ab./\x00", max_size=12))
def test_every_path_we_accept_the_driver_accepts(path: str) -> None:
    try:
        check_file_path(path, "fileName")
    except ParamError:
        return
    assert _driver_accepts(path) and "\x00" not in path


def test_objects_are_parsed_with_libyaml_when_pyyaml_has_it() -> None:
    """Regression: the pure-Python YAML loader took 90% of a Mount (13 ms for 10 values)."""
    import yaml

    from kubeshield.node.csi import params

    loader: object = params._LOADER
    assert yaml.__with_libyaml__ and loader is yaml.CSafeLoader
    assert issubclass(params._LOADER, yaml.constructor.SafeConstructor)
