"""Import a real kubeconfig, remove the plaintext, and run the real kubectl v1.35 through the agent's proxy
(and through the exec-credential plugin straight to the apiserver) against the Kubernetes API stand-in."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.access_agent import KUBESHIELD, AgentProcess, start_agent_process
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi import fixtures as _kubeapi_fixtures
from tests.support.kubeapi.fixtures import Kubectl

# the stand-in's fixtures, for this module (tests/integration/access/conftest.py is another helper's)
kube_api = _kubeapi_fixtures.kube_api
kube_ns = _kubeapi_fixtures.kube_ns
kubectl = _kubeapi_fixtures.kubectl

PASS = {"KUBESHIELD_ACCESS_PASSPHRASE": "a passphrase for the test store"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    (d / "run").mkdir(parents=True, mode=0o700)
    return d


@pytest.fixture
def agent(home: Path) -> Iterator[AgentProcess]:
    proc = start_agent_process(home / "run" / "agent.sock", "--store", str(home / "store"))
    try:
        yield proc
    finally:
        proc.stop()


def _ks(
    home: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None, socket: bool = True
) -> subprocess.CompletedProcess[str]:
    extra = ["--socket", str(home / "run" / "agent.sock")] if socket else []
    return subprocess.run(
        [KUBESHIELD, "access", *args, *extra],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        input=input,
    )


def _secret(api: KubeAPI, ns: str, name: str, value: bytes) -> None:
    rtype = api.store.type_of("", "v1", "secrets")
    api.store.create(
        rtype, ns, {"metadata": {"name": name}, "data": {"password": base64.b64encode(value).decode()}}
    )


def _user_kubeconfig(api: KubeAPI, path: Path, user: str) -> Path:
    cred = api.mint_client_cert(user, ("system:masters",), stem=f"user-{path.parent.name}")
    return api.kubeconfig(path, credential=cred)


def test_import_remove_then_kubectl_through_the_proxy(
    kube_api: KubeAPI,
    kube_ns: str,
    kubectl: Kubectl,
    agent: AgentProcess,
    home: Path,
    tmp_path: Path,
) -> None:
    kc = _user_kubeconfig(kube_api, tmp_path / "plain" / "config", "alice")
    entry = yaml.safe_load(kc.read_text())["users"][0]["user"]
    key_file, cert_file = Path(entry["client-key"]), Path(entry["client-certificate"])
    key_pem = key_file.read_bytes()
    _secret(kube_api, kube_ns, "db", b"s3cr3t-value")

    done = _ks(
        home, "import", "--kubeconfig", str(kc), "--store", str(home / "store"), "--remove", "--yes", env=PASS
    )
    assert done.returncode == 0, done.stderr
    assert not kc.exists() and not key_file.exists() and cert_file.exists()  # the certificate is public
    assert [c["context"] for c in agent.client().contexts()] == ["standin"]
    assert key_pem not in (home / "store" / "credentials.sealed").read_bytes()

    printed = _ks(home, "kubeconfig", "--context", "standin")
    assert printed.returncode == 0, printed.stderr
    assert b"PRIVATE KEY" not in printed.stdout.encode() and key_pem.decode() not in printed.stdout
    proxy_kc = tmp_path / "via-proxy.yaml"
    proxy_kc.write_text(printed.stdout)
    server = yaml.safe_load(printed.stdout)["clusters"][0]["cluster"]["server"]
    assert server.startswith("https://127.0.0.1:")

    got = kubectl.run("get", "secret", "db", "-n", kube_ns, "-o", "json", kubeconfig=proxy_kc)
    assert base64.b64decode(json.loads(got.stdout)["data"]["password"]) == b"s3cr3t-value"
    listed = kubectl.run("get", "secrets", "-n", kube_ns, "-o", "name", kubeconfig=proxy_kc)
    assert "secret/db" in listed.stdout.split()
    seen = [r for r in kube_api.requests if r.path.endswith(f"/namespaces/{kube_ns}/secrets/db")]
    assert seen and seen[-1].user == "alice"  # the apiserver saw the imported identity, via the proxy

    # locked: kubectl fails with the plugin's one line, not an x509 error
    assert _ks(home, "lock").returncode == 0
    refused = kubectl.run("get", "secret", "db", "-n", kube_ns, kubeconfig=proxy_kc, check=False)
    assert refused.returncode != 0
    assert "kubeshield access unlock" in refused.stderr, refused.stderr
    assert key_pem.decode() not in refused.stderr

    # unlock (the agent opens the store with the passphrase): the same kubeconfig works again
    unlocked = _ks(home, "unlock", "--store", str(home / "store"), env=PASS)
    assert unlocked.returncode == 0 and "standin" in unlocked.stdout, unlocked.stderr
    again = kubectl.run("get", "secret", "db", "-n", kube_ns, "-o", "json", kubeconfig=proxy_kc)
    assert json.loads(again.stdout)["metadata"]["name"] == "db"


def test_exec_credential_plugin_straight_to_the_apiserver(
    kube_api: KubeAPI,
    kube_ns: str,
    kubectl: Kubectl,
    agent: AgentProcess,
    home: Path,
    tmp_path: Path,
) -> None:
    kc = _user_kubeconfig(kube_api, tmp_path / "plain2" / "config", "bob")
    done = _ks(home, "import", "--kubeconfig", str(kc), "--store", str(home / "store"), env=PASS)
    assert done.returncode == 0 and kc.exists(), done.stderr  # no --remove: the file stays
    _secret(kube_api, kube_ns, "api-key", b"k")
    direct = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": kube_api.url, "certificate-authority": str(kube_api.ca_path)}}
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": KUBESHIELD,
                        "interactiveMode": "IfAvailable",
                        "args": [
                            "access",
                            "exec-credential",
                            "--context",
                            "standin",
                            "--socket",
                            str(home / "run" / "agent.sock"),
                        ],
                    }
                },
            }
        ],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "direct.yaml"
    path.write_text(yaml.safe_dump(direct))
    got = kubectl.run("get", "secret", "api-key", "-n", kube_ns, "-o", "name", kubeconfig=path)
    assert got.stdout.strip() == "secret/api-key"
    seen = [r for r in kube_api.requests if r.path.endswith(f"/namespaces/{kube_ns}/secrets/api-key")]
    assert seen and seen[-1].user == "bob"


def test_exec_credential_prints_the_shapes_client_go_reads(agent: AgentProcess, home: Path) -> None:
    import datetime as dt

    from tests.support.access_agent import cert_credential, token_credential

    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    agent.client().add(cert_credential("prod", expires_at=expires))
    agent.client().add(token_credential("dev", token="shape-token-0123456789"))
    info = {
        "KUBERNETES_EXEC_INFO": json.dumps(
            {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "kind": "ExecCredential",
                "spec": {"interactive": False},
            }
        )
    }
    cert = json.loads(_ks(home, "exec-credential", "--context", "prod", env=info).stdout)
    assert cert["apiVersion"] == "client.authentication.k8s.io/v1beta1" and cert["kind"] == "ExecCredential"
    assert set(cert["status"]) == {"clientCertificateData", "clientKeyData", "expirationTimestamp"}
    assert cert["status"]["expirationTimestamp"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    served_key = serialization.load_pem_private_key(cert["status"]["clientKeyData"].encode(), password=None)
    served_cert = x509.load_pem_x509_certificate(cert["status"]["clientCertificateData"].encode())
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    # the agent serves the pair it holds: the key is the certificate's
    assert served_key.public_key().public_bytes(*spki) == served_cert.public_key().public_bytes(*spki)
    token = json.loads(_ks(home, "exec-credential", "--context", "dev").stdout)
    assert token == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "shape-token-0123456789"},
    }
    missing = _ks(home, "exec-credential", "--context", "nope", "--store", str(home / "store"))
    assert missing.returncode == 1 and "kubeshield access import" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_remove_asks_and_a_no_deletes_nothing(
    kube_api: KubeAPI,
    agent: AgentProcess,
    home: Path,
    tmp_path: Path,
) -> None:
    kc = _user_kubeconfig(kube_api, tmp_path / "plain3" / "config", "carol")
    key_file = Path(yaml.safe_load(kc.read_text())["users"][0]["user"]["client-key"])
    done = _ks(
        home,
        "import",
        "--kubeconfig",
        str(kc),
        "--store",
        str(home / "store"),
        "--remove",
        env=PASS,
        input="n\n",
    )
    assert done.returncode == 0, done.stderr
    assert "Delete these plaintext files?" in done.stderr and "nothing deleted" in done.stderr
    assert kc.exists() and key_file.exists()
    yes = _ks(
        home,
        "import",
        "--kubeconfig",
        str(kc),
        "--store",
        str(home / "store"),
        "--remove",
        env=PASS,
        input="y\n",
    )
    assert yes.returncode == 0, yes.stderr
    assert not kc.exists() and not key_file.exists()


def test_import_refuses_an_exec_user_and_a_wrong_passphrase(
    kube_api: KubeAPI,
    agent: AgentProcess,
    home: Path,
    tmp_path: Path,
) -> None:
    kc = tmp_path / "exec.yaml"
    kc.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": kube_api.url}}],
                "users": [
                    {
                        "name": "u",
                        "user": {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}},
                    }
                ],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    refused = _ks(
        home, "import", "--kubeconfig", str(kc), "--store", str(home / "store"), "--remove", "--yes", env=PASS
    )
    assert refused.returncode == 1 and "exec plugin" in refused.stderr and kc.exists()
    good = _user_kubeconfig(kube_api, tmp_path / "plain4" / "config", "dave")
    assert (
        _ks(home, "import", "--kubeconfig", str(good), "--store", str(home / "store"), env=PASS).returncode
        == 0
    )
    wrong = _ks(
        home,
        "import",
        "--kubeconfig",
        str(good),
        "--store",
        str(home / "store"),
        "--remove",
        "--yes",
        env={"KUBESHIELD_ACCESS_PASSPHRASE": "not it"},
    )
    assert wrong.returncode == 1 and "passphrase does not open" in wrong.stderr
    assert good.exists()
