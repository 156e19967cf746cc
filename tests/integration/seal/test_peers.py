"""Round trips with every independent sealed-secrets implementation we can run here.

Peers seal -> kubeshield unseals: kubesealpy 1.0.1 and aes-gcm-rsa-oaep 0.1.0 (PyPI), and
@socialgouv/aes-gcm-rsa-oaep 1.1.4 and @linode/kubeseal-encrypt 1.0.1 (npm, run by node), for every
scope each supports, with empty, binary (where the peer takes bytes) and non-ASCII values.
kubeshield seals -> kubesealpy and aes-gcm-rsa-oaep unseal. Wrong scope, name or namespace fail.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubesealpy import Sealer, Unsealer
from kubesealpy.models import SealedSecret as KsSealedSecret
from kubesealpy.scopes import SealingScope

from kubeshield.seal.errors import UnsealFailed
from kubeshield.seal.objects import Document, parse_sealed_secret, parse_secret
from kubeshield.seal.scope import Scope, label_for
from kubeshield.seal.sealing import seal_secret, seal_value
from kubeshield.seal.unsealing import unseal
from tests.support.sealpeers import aes_gcm_python, run_node

VALUES: dict[str, bytes] = {
    "empty": b"",
    "text": "pässwörd ✓".encode(),
    "binary": bytes(range(256)),
    "big": b"x" * 1024,
}
STRING_VALUES = {k: v.decode() for k, v in VALUES.items() if k != "binary"}

KS_SCOPES = {
    Scope.STRICT: SealingScope.STRICT,
    Scope.NAMESPACE_WIDE: SealingScope.NAMESPACE_WIDE,
    Scope.CLUSTER_WIDE: SealingScope.CLUSTER_WIDE,
}


def _ss(encrypted: dict[str, str], *, name: str, namespace: str, scope: Scope) -> Any:
    annotations = {}
    if scope is Scope.NAMESPACE_WIDE:
        annotations["sealedsecrets.bitnami.com/namespace-wide"] = "true"
    if scope is Scope.CLUSTER_WIDE:
        annotations["sealedsecrets.bitnami.com/cluster-wide"] = "true"
    obj = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "encryptedData": encrypted,
            "template": {"metadata": {"name": name, "namespace": namespace}},
        },
    }
    return parse_sealed_secret(Document(obj, "peer"))


def _moved(obj: dict[str, Any], *, name: str | None = None, namespace: str | None = None) -> Any:
    moved = {**obj, "metadata": {**obj["metadata"]}}
    if name:
        moved["metadata"]["name"] = name
    if namespace:
        moved["metadata"]["namespace"] = namespace
    return parse_sealed_secret(Document(moved, "moved"))


@pytest.mark.parametrize("scope", list(Scope))
def test_kubesealpy_seals_kubeshield_unseals(key4096, scope: Scope) -> None:
    sealed = Sealer.from_certificate_pem(key4096.cert_pem).seal(
        name="db", namespace="prod", data=dict(VALUES), scope=KS_SCOPES[scope]
    )
    obj = sealed.model_dump(by_alias=True, exclude_none=True)
    result = unseal(parse_sealed_secret(Document(obj, "kubesealpy")), key4096.keyset())
    assert result.values == VALUES
    assert result.secret["metadata"]["name"] == "db" and result.secret["metadata"]["namespace"] == "prod"
    if scope is not Scope.CLUSTER_WIDE:
        with pytest.raises(UnsealFailed):
            unseal(_moved(obj, namespace="dev"), key4096.keyset())
    if scope is Scope.STRICT:
        with pytest.raises(UnsealFailed) as info:
            unseal(_moved(obj, name="other"), key4096.keyset())
        assert set(info.value.problems) == {f"spec.encryptedData.{k}" for k in VALUES}
    else:
        assert unseal(_moved(obj, name="other"), key4096.keyset()).values == VALUES


@pytest.mark.parametrize("scope", list(Scope))
def test_kubeshield_seals_kubesealpy_unseals(key4096, scope: Scope) -> None:
    doc = Document(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "prod"},
            "data": {k: base64.b64encode(v).decode() for k, v in VALUES.items()},
        },
        "input",
    )
    obj = seal_secret(key4096.private_key.public_key(), parse_secret(doc), scope=scope)
    ks = KsSealedSecret.model_validate(obj)
    secret = Unsealer([key4096.private_key]).unseal(ks)
    assert {k: base64.b64decode(v) for k, v in secret.data.items()} == VALUES
    # kubesealpy reads the scope from the SealedSecret's metadata, like the Go controller
    wrong = {**obj, "metadata": {**obj["metadata"], "annotations": {}}}
    if scope is not Scope.STRICT:
        with pytest.raises(Exception):  # noqa: B017 - kubesealpy raises its own DecryptionError
            Unsealer([key4096.private_key]).unseal(KsSealedSecret.model_validate(wrong))


_AES_GCM = """
import base64, json, sys
from cryptography.hazmat.primitives import serialization
from aes_gcm_rsa_oaep import encrypt, decrypt
req = json.load(sys.stdin)
if req["op"] == "encrypt":
    pub = serialization.load_pem_public_key(req["key"].encode())
    out = {k: base64.b64encode(encrypt(base64.b64decode(v), pub, req["label"].encode())).decode()
           for k, v in req["values"].items()}
else:
    priv = serialization.load_pem_private_key(req["key"].encode(), password=None)
    out = {k: base64.b64encode(decrypt(base64.b64decode(v), priv, req["label"].encode())).decode()
           for k, v in req["values"].items()}
print(json.dumps(out))
"""


@pytest.mark.parametrize("scope", list(Scope))
def test_aes_gcm_rsa_oaep_both_ways(key4096, scope: Scope) -> None:
    label = label_for(namespace="prod", name="db", scope=scope).decode()
    b64 = {k: base64.b64encode(v).decode() for k, v in VALUES.items()}
    encrypted = aes_gcm_python(
        _AES_GCM, {"op": "encrypt", "key": key4096.spki_pem, "label": label, "values": b64}
    )
    result = unseal(_ss(encrypted, name="db", namespace="prod", scope=scope), key4096.keyset())
    assert result.values == VALUES
    ours = {
        k: seal_value(key4096.private_key.public_key(), v, namespace="prod", name="db", scope=scope)
        for k, v in VALUES.items()
    }
    opened = aes_gcm_python(
        _AES_GCM, {"op": "decrypt", "key": key4096.private_pem, "label": label, "values": ours}
    )
    assert {k: base64.b64decode(v) for k, v in opened.items()} == VALUES


_SOCIALGOUV = """
const { getSealedSecret } = require("@socialgouv/aes-gcm-rsa-oaep");
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", async () => {
  const req = JSON.parse(input);
  const out = await getSealedSecret({ pemKey: req.cert, scope: req.scope, namespace: "prod", name: "db",
                                      values: req.values });
  process.stdout.write(JSON.stringify(out));
});
"""

_SOCIALGOUV_SCOPES = {
    Scope.STRICT: "strict",
    Scope.NAMESPACE_WIDE: "namespace",
    Scope.CLUSTER_WIDE: "cluster",
}


@pytest.mark.parametrize("scope", list(Scope))
def test_socialgouv_seals_kubeshield_unseals(key4096, scope: Scope) -> None:
    obj = run_node(
        _SOCIALGOUV, {"cert": key4096.cert_pem, "scope": _SOCIALGOUV_SCOPES[scope], "values": STRING_VALUES}
    )
    ss = parse_sealed_secret(Document(obj, "socialgouv"))
    assert ss.annotations.get("sealedsecrets.bitnami.com/cluster-wide") == (
        "true" if scope is Scope.CLUSTER_WIDE else None
    )
    result = unseal(ss, key4096.keyset())
    assert result.values == {k: v.encode() for k, v in STRING_VALUES.items()}
    if scope is not Scope.CLUSTER_WIDE:
        with pytest.raises(UnsealFailed):
            unseal(_moved(obj, namespace="other"), key4096.keyset())


_LINODE = """
import { encryptSecretItem } from "@linode/kubeseal-encrypt";
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", async () => {
  const req = JSON.parse(input);
  const out = {};
  for (const [k, v] of Object.entries(req.values)) {
    out[k] = await encryptSecretItem(req.spki, req.namespace, v);
  }
  let refused = null;
  try { await encryptSecretItem(req.cert, req.namespace, "x"); }
  catch (e) { refused = String(e.message || e); }
  process.stdout.write(JSON.stringify({ values: out, certRefused: refused }));
});
"""


def test_linode_kubeseal_encrypt_namespace_wide(key4096, other_key) -> None:
    reply = run_node(
        _LINODE,
        {"spki": key4096.spki_pem, "cert": key4096.cert_pem, "namespace": "prod", "values": STRING_VALUES},
        module=True,
    )
    assert reply["certRefused"], "the peer takes SPKI keys only; a certificate PEM should be refused"
    ss = _ss(reply["values"], name="anything", namespace="prod", scope=Scope.NAMESPACE_WIDE)
    assert unseal(ss, key4096.keyset()).values == {k: v.encode() for k, v in STRING_VALUES.items()}
    for wrong in (
        _ss(reply["values"], name="anything", namespace="dev", scope=Scope.NAMESPACE_WIDE),
        _ss(reply["values"], name="anything", namespace="prod", scope=Scope.STRICT),
        _ss(reply["values"], name="anything", namespace="prod", scope=Scope.CLUSTER_WIDE),
    ):
        with pytest.raises(UnsealFailed):
            unseal(wrong, key4096.keyset())
    with pytest.raises(UnsealFailed):  # another key cannot open them
        unseal(ss, other_key.keyset())
