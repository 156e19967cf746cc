"""Secret/SealedSecret parsing, sealing and unsealing rules (kubeseal's and the controller's)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.seal import _hybrid
from kubeshield.seal.certs import make_certificate
from kubeshield.seal.errors import SealError, UnsealFailed
from kubeshield.seal.keyset import HINT_ANNOTATION, KeySet, MemoryDecrypter, SealingKey
from kubeshield.seal.objects import Document, dump_objects, load_documents, parse_sealed_secret, parse_secret
from kubeshield.seal.rotate import reencrypt
from kubeshield.seal.scope import Scope, label_for
from kubeshield.seal.sealing import merge_into, seal_secret
from kubeshield.seal.unsealing import unseal

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS = KeySet([SealingKey(make_certificate(KEY, valid_for=timedelta(days=9)), MemoryDecrypter(KEY))])


def _secret(**extra) -> Document:
    obj = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "namespace": "prod",
            "uid": "1234",
            "resourceVersion": "9",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [{"kind": "X"}],
            "labels": {"app": "db"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"stringData":{"password":"hunter2"}}',
                "team": "a",
            },
        },
        "type": "kubernetes.io/basic-auth",
        "stringData": {"password": "hunter2"},
        "data": {
            "username": base64.b64encode(b"admin").decode(),
            "password": base64.b64encode(b"old").decode(),
        },
    }
    obj.update(extra)
    return Document(obj, "input")


def _sealed(**template) -> dict:
    obj = seal_secret(KEY.public_key(), parse_secret(_secret()))
    obj["spec"]["template"].update(template)
    return obj


def test_sealing_strips_server_fields_and_last_applied() -> None:
    obj = seal_secret(KEY.public_key(), parse_secret(_secret()))
    text = json.dumps(obj)
    assert "hunter2" not in text and "last-applied" not in text
    meta = obj["spec"]["template"]["metadata"]
    assert meta == {"name": "db", "namespace": "prod", "labels": {"app": "db"}, "annotations": {"team": "a"}}
    assert obj["spec"]["template"]["type"] == "kubernetes.io/basic-auth"
    assert obj["metadata"]["annotations"][HINT_ANNOTATION] == KEYS.latest.fingerprint
    assert sorted(obj["spec"]["encryptedData"]) == ["password", "username"]


def test_stringdata_wins_and_unseal_rebuilds_the_secret() -> None:
    result = unseal(parse_sealed_secret(Document(_sealed(), "x")), KEYS)
    assert result.values == {"password": b"hunter2", "username": b"admin"}
    secret = result.secret
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret", "name": "db", "controller": True}
    ]


def test_template_data_renders_adds_and_removes_keys() -> None:
    obj = _sealed(data={"dsn": "{{ .username }}:{{ .password }}@db", "username": None})
    result = unseal(parse_sealed_secret(Document(obj, "x")), KEYS)
    assert result.values == {"password": b"hunter2", "dsn": b"admin:hunter2@db"}


def test_template_errors_and_bad_values_are_all_named_together() -> None:
    obj = _sealed(data={"dsn": "{{ .nope }}"})
    obj["spec"]["encryptedData"]["broken"] = "abc_def-"
    obj["spec"]["encryptedData"]["short"] = base64.b64encode(b"\x02\x00abc").decode()
    with pytest.raises(UnsealFailed) as info:
        unseal(parse_sealed_secret(Document(obj, "x")), KEYS)
    assert set(info.value.problems) == {"spec.encryptedData.broken", "spec.encryptedData.short"}
    assert "not standard base64" in info.value.problems["spec.encryptedData.broken"]
    assert "truncated" in info.value.problems["spec.encryptedData.short"]
    del obj["spec"]["encryptedData"]["broken"], obj["spec"]["encryptedData"]["short"]
    with pytest.raises(UnsealFailed) as info:
        unseal(parse_sealed_secret(Document(obj, "x")), KEYS)
    assert info.value.problems == {"spec.template.data.dsn": "missing key 'nope'"}
    assert "hunter2" not in str(info.value)


def test_name_and_namespace_always_come_from_the_sealed_secret_and_skip_owner_refs() -> None:
    obj = _sealed()
    obj["spec"]["template"]["metadata"]["name"] = "evil"
    obj["spec"]["template"]["metadata"]["namespace"] = "kube-system"
    obj["spec"]["template"]["metadata"]["annotations"][
        "sealedsecrets.bitnami.com/skip-set-owner-references"
    ] = "true"
    secret = unseal(parse_sealed_secret(Document(obj, "x")), KEYS).secret
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("db", "prod")
    assert "ownerReferences" not in secret["metadata"]


def test_scope_comes_from_the_sealed_secret_metadata_not_the_template() -> None:
    obj = seal_secret(KEY.public_key(), parse_secret(_secret()), scope=Scope.NAMESPACE_WIDE)
    assert (
        obj["spec"]["template"]["metadata"]["annotations"]["sealedsecrets.bitnami.com/namespace-wide"]
        == "true"
    )
    renamed = {**obj, "metadata": {**obj["metadata"], "name": "renamed"}}
    assert unseal(parse_sealed_secret(Document(renamed, "x")), KEYS).secret["metadata"]["name"] == "renamed"
    stripped = {**renamed, "metadata": {**renamed["metadata"], "annotations": {}}}
    with pytest.raises(UnsealFailed):  # issue #450: dropping the annotation makes it strict again
        unseal(parse_sealed_secret(Document(stripped, "x")), KEYS)


def test_deprecated_v1_data_blob() -> None:
    inner = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"k": "dmFsdWU="}}
    blob = _hybrid.encrypt(KEY.public_key(), json.dumps(inner).encode(), label=b"prod/db")
    obj = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"data": base64.b64encode(blob).decode()},
    }
    ss = parse_sealed_secret(Document(obj, "x"))
    assert unseal(ss, KEYS).values == {"k": b"value"}
    with pytest.raises(SealError, match="turned off"):
        unseal(ss, KEYS, accept_v1_data=False)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("spec"), "spec: required"),
        (lambda o: o["spec"].pop("encryptedData"), "spec.encryptedData: required"),
        (
            lambda o: o["spec"].update(encryptedData={"k": 5}),
            "spec.encryptedData: every key and value must be a string",
        ),
        (lambda o: o["metadata"].pop("name"), "metadata.name: required"),
        (lambda o: o.update(kind="Secret"), "expected apiVersion bitnami.com/v1alpha1, kind SealedSecret"),
        (
            lambda o: o["spec"]["template"].update(data={"k": 1}),
            "spec.template.data.k: expected a template string",
        ),
        (lambda o: o["spec"]["template"].update(immutable="yes"), "spec.template.immutable"),
    ],
)
def test_malformed_sealed_secret_names_the_field(mutate, message: str) -> None:
    obj = _sealed()
    mutate(obj)
    with pytest.raises(SealError) as info:
        parse_sealed_secret(Document(obj, "in.yaml document 2"))
    assert message in str(info.value) and "in.yaml document 2" in str(info.value)


def test_documents_yaml_json_lists_and_timestamps() -> None:
    yaml_text = b"a: 1\n---\n---\nkind: List\napiVersion: v1\nitems: [{b: 2}, {c: '2024-01-01T00:00:00Z'}]\n"
    docs = load_documents(yaml_text, source="f")
    assert [d.obj for d in docs] == [{"a": 1}, {"b": 2}, {"c": "2024-01-01T00:00:00Z"}]
    assert load_documents(b'{"a":1}\n{"b":2}', source="j")[1].obj == {"b": 2}
    assert load_documents(b"c: 2024-01-01T00:00:00Z\n", source="t")[0].obj == {"c": "2024-01-01T00:00:00Z"}
    with pytest.raises(SealError, match="invalid YAML at line 2, column 1"):
        load_documents(b"a: [\n", source="bad")
    with pytest.raises(SealError, match="expected an object"):
        load_documents(b"- 1\n- 2\n", source="list")


def test_merge_into_and_reencrypt_keep_the_template() -> None:
    original = _sealed(data={"dsn": "{{ .username }}"})
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from datetime import UTC, datetime

    later = datetime.now(UTC) + timedelta(days=1)
    keys = KeySet(
        [
            *KEYS.keys,
            SealingKey(
                make_certificate(new_key, valid_for=timedelta(days=9), now=later), MemoryDecrypter(new_key)
            ),
        ]
    )
    extra = Document(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "prod"},
            "stringData": {"token": "t"},
        },
        "x",
    )
    update = seal_secret(new_key.public_key(), parse_secret(extra))
    merged = merge_into(original, update)
    assert set(merged["spec"]["encryptedData"]) == {"password", "username", "token"}
    assert merged["metadata"]["annotations"][HINT_ANNOTATION] == keys.latest.fingerprint
    assert unseal(parse_sealed_secret(Document(merged, "m")), keys).values["token"] == b"t"
    rotated = reencrypt(parse_sealed_secret(Document(merged, "m")), keys)
    assert rotated["spec"]["template"]["data"] == {"dsn": "{{ .username }}"}
    only_new = KeySet([keys.latest])
    assert unseal(parse_sealed_secret(Document(rotated, "r")), only_new).values["dsn"] == b"admin"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True), st.binary(max_size=100), max_size=5
    ),
    scope=st.sampled_from(list(Scope)),
    fmt=st.sampled_from(["yaml", "json"]),
)
def test_seal_dump_load_unseal_property(values, scope: Scope, fmt: str) -> None:
    doc = Document(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "n", "namespace": "ns"},
            "data": {k: base64.b64encode(v).decode() for k, v in values.items()},
        },
        "p",
    )
    obj = seal_secret(KEY.public_key(), parse_secret(doc, allow_empty=True), scope=scope)
    (back,) = load_documents(dump_objects([obj], fmt=fmt).encode(), source="dump")
    assert unseal(parse_sealed_secret(back), KEYS).values == values
    assert label_for(namespace="ns", name="n", scope=scope) in (b"ns/n", b"ns", b"")
