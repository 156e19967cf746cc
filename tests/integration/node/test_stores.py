"""The CSI provider reading OpenBao KV and AWS Secrets Manager as the pod, as the big providers do.

OpenBao is the real ``bao`` dev server with its Kubernetes auth method configured against the API stand-in:
on login OpenBao itself sends a TokenReview of the pod's token (audience ``vault``) to the stand-in, so the
role's ServiceAccount/namespace binding is enforced by OpenBao. AWS is moto's server: the provider exchanges
the pod's ``sts.amazonaws.com`` token with ``AssumeRoleWithWebIdentity`` and reads with those credentials
(moto does not check the web identity or the role's trust policy; real AWS does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import grpc
import pytest
import yaml

from kubeshield.node.csi.provider import CsiProvider
from kubeshield.node.csi.server import CsiProviderServer
from kubeshield.node.settings import StoreSettings
from kubeshield.node.stores import open_store
from tests.integration.node.conftest import NodeWorld
from tests.integration.node.driver import Driver, details
from tests.support.moto import MotoServer, dummy_aws_env
from tests.support.openbao import BaoServer, start_dev_server

ROLE_ARN = "arn:aws:iam::123456789012:role/shop-web"


@pytest.fixture(scope="module")
def bao(node_world: NodeWorld, tmp_path_factory: pytest.TempPathFactory):
    server = start_dev_server(tmp_path_factory.mktemp("bao"))
    try:
        reviewer = node_world.api.add_token("openbao-token-reviewer")
        server.api("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        server.api(
            "POST",
            "auth/kubernetes/config",
            {
                "kubernetes_host": node_world.api.url,
                "kubernetes_ca_cert": node_world.api.ca_path.read_text(),
                "token_reviewer_jwt": reviewer,
            },
        )
        server.api("POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
        server.api(
            "PUT",
            "sys/policies/acl/app-read",
            {
                "policy": (
                    'path "secret/data/app" { capabilities = ["read"] }\n'
                    'path "kv1/app" { capabilities = ["read"] }\n'
                    'path "secret/data/allowed-but-empty" { capabilities = ["read"] }\n'
                )
            },
        )
        server.api(
            "POST",
            "auth/kubernetes/role/app",
            {
                "bound_service_account_names": ["app"],
                "bound_service_account_namespaces": ["ns-a"],
                "policies": ["app-read"],
                "audience": "vault",
                "ttl": "10m",
            },
        )
        server.api(
            "POST", "secret/data/app", {"data": {"password": "bao-kv2-pass", "blob": "aGk=", "n": {"a": 1}}}
        )
        server.api("POST", "kv1/app", {"password": "bao-kv1-pass"})
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    server = MotoServer(log_dir=Path(tmp_path_factory.mktemp("moto"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(node_world: NodeWorld, bao: BaoServer, moto: MotoServer, tmp_path: Path, monkeypatch):
    for key, value in dummy_aws_env().items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto.endpoint)
    for name, value in (
        ("prod/token", json.dumps({"token": "aws-token-value"})),
        ("prod/plain", "aws-plain"),
    ):
        try:
            sm.create_secret(Name=name, SecretString=value)
        except sm.exceptions.ResourceExistsException:
            pass
    sm.close()
    stores = {
        "bao": open_store("bao", StoreSettings(type="openbao", address=bao.address)),
        "aws": open_store("aws", StoreSettings(type="aws", region="us-east-1", endpoint_url=moto.endpoint)),
        "down": open_store(
            "down",
            StoreSettings(type="aws", region="us-east-1", endpoint_url="http://127.0.0.1:9", timeout=1.0),
        ),
    }
    sockets = tmp_path / "sock"
    sockets.mkdir()
    server = CsiProviderServer(
        CsiProvider(sealed=None, stores=stores, hmac_key=bytes(32)), sockets / "kubeshield.sock"
    )
    try:
        yield Driver(node_world.admin, [sockets], token_audiences=("vault", "sts.amazonaws.com"))
    finally:
        server.stop()


def _spc(world: NodeWorld, name: str, objects: list[dict], **params: str) -> None:
    world.spc("ns-a", name, {"objects": yaml.safe_dump(objects), **params})


def test_openbao_kv_v2_and_v1_as_the_pod(node_world: NodeWorld, provider: Driver, tmp_path: Path) -> None:
    _spc(
        node_world,
        "bao",
        [
            {"objectName": "kv2", "openbao": {"store": "bao", "path": "secret/data/app", "key": "password"}},
            {"objectName": "kv1", "openbao": {"store": "bao", "path": "kv1/app", "key": "password"}},
            {
                "objectName": "decoded",
                "openbao": {"store": "bao", "path": "secret/data/app", "key": "blob", "encoding": "base64"},
            },
            {"objectName": "nested", "openbao": {"store": "bao", "path": "secret/data/app", "key": "n"}},
        ],
        openbaoRole="app",
    )
    target = tmp_path / "bao"
    target.mkdir()
    provider.mount(node_world.pod("ns-a", "app"), "bao", target)
    assert (target / "kv2").read_bytes() == b"bao-kv2-pass" and (
        target / "kv1"
    ).read_bytes() == b"bao-kv1-pass"
    assert (target / "decoded").read_bytes() == b"hi" and json.loads((target / "nested").read_bytes()) == {
        "a": 1
    }
    # OpenBao's own role binding refuses another ServiceAccount (it reviewed the token with the stand-in)
    other = tmp_path / "other"
    other.mkdir()
    node_world.spc(
        "ns-a",
        "bao-other",
        {
            "objects": yaml.safe_dump(
                [
                    {
                        "objectName": "kv2",
                        "openbao": {"store": "bao", "path": "secret/data/app", "key": "password"},
                    }
                ]
            ),
            "openbaoRole": "app",
        },
    )
    with pytest.raises(grpc.RpcError) as err:
        provider.mount(node_world.pod("ns-a", "other"), "bao-other", other)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "login with role 'app' refused" in (
        details(err.value)
    )
    bad = {"store": "bao", "path": "secret/data/app", "key": "nope"}
    for objects, code, message in (
        ([{"objectName": "x", "openbao": bad}], "INVALID_ARGUMENT", "no key 'nope'"),
        (
            [{"objectName": "x", "openbao": {"store": "bao", "path": "secret/data/allowed-but-empty"}}],
            "INVALID_ARGUMENT",
            "no secret at",
        ),
        (
            [{"objectName": "x", "openbao": {"store": "bao", "path": "secret/data/other-team"}}],
            "PERMISSION_DENIED",
            "role 'app' may not read secret/data/other-team",
        ),
        (
            [{"objectName": "x", "openbao": {"store": "nowhere", "path": "p"}}],
            "INVALID_ARGUMENT",
            "no store named",
        ),
    ):
        _spc(node_world, "bao-bad", objects, openbaoRole="app")
        with pytest.raises(grpc.RpcError) as err:
            provider.mount(node_world.pod("ns-a", "app"), "bao-bad", other)
        assert err.value.code() == getattr(grpc.StatusCode, code) and message in details(err.value)


def test_aws_secrets_manager_as_the_pod(node_world: NodeWorld, provider: Driver, tmp_path: Path) -> None:
    _spc(
        node_world,
        "aws",
        [
            {"objectName": "token", "aws": {"store": "aws", "secretId": "prod/token", "jsonKey": "token"}},
            {
                "objectName": "plain",
                "aws": {"store": "aws", "secretId": "prod/plain", "versionStage": "AWSCURRENT"},
            },
        ],
        awsRoleArn=ROLE_ARN,
    )
    target = tmp_path / "aws"
    target.mkdir()
    provider.mount(node_world.pod("ns-a", "app"), "aws", target)
    assert (target / "token").read_bytes() == b"aws-token-value" and (
        target / "plain"
    ).read_bytes() == b"aws-plain"
    for objects, code, message in (
        (
            [{"objectName": "x", "aws": {"store": "aws", "secretId": "prod/none"}}],
            "INVALID_ARGUMENT",
            "no such secret",
        ),
        (
            [{"objectName": "x", "aws": {"store": "aws", "secretId": "prod/plain", "jsonKey": "k"}}],
            "INVALID_ARGUMENT",
            "not JSON with key",
        ),
        ([{"objectName": "x", "aws": {"store": "down", "secretId": "prod/plain"}}], "UNAVAILABLE", "failed"),
    ):
        _spc(node_world, "aws-bad", objects, awsRoleArn=ROLE_ARN)
        with pytest.raises(grpc.RpcError) as err:
            provider.mount(node_world.pod("ns-a", "app"), "aws-bad", target)
        assert err.value.code() == getattr(grpc.StatusCode, code) and message in details(err.value)
    _spc(node_world, "aws-norole", [{"objectName": "x", "aws": {"store": "aws", "secretId": "prod/plain"}}])
    with pytest.raises(grpc.RpcError) as err:
        provider.mount(node_world.pod("ns-a", "app"), "aws-norole", target)
    assert "aws objects need a role" in details(err.value)
