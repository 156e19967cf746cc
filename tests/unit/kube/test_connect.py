"""Kubeconfig and in-cluster settings: contexts, inline keys kept off disk, token files, exec plugins."""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

import httpx2
import pytest
import yaml

from kubeshield.errors import ConfigError, KubeUnauthorized
from kubeshield.kube import _connect
from tests.support.kubeapi._pki import Authority


def _write(path: Path, users: list[dict], contexts: list[dict] | None = None, current: str = "c1") -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": users,
        "contexts": contexts
        or [{"name": "c1", "context": {"cluster": "k", "user": users[0]["name"], "namespace": "ns1"}}],
        "current-context": current,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _auth_header(auth: httpx2.Auth | None) -> str:
    assert auth is not None
    request = httpx2.Request("GET", "https://example")
    flow = auth.sync_auth_flow(request)
    return next(flow).headers["Authorization"]


def test_context_selection_and_namespace(tmp_path: Path):
    config = _write(
        tmp_path / "kc",
        [{"name": "u", "user": {"token": "t1"}}, {"name": "v", "user": {"token": "t2"}}],
        contexts=[
            {"name": "c1", "context": {"cluster": "k", "user": "u", "namespace": "ns1"}},
            {"name": "c2", "context": {"cluster": "k", "user": "v"}},
        ],
    )
    one = _connect.from_kubeconfig(config)
    assert (one.context, one.namespace, one.base_url) == ("c1", "ns1", "https://127.0.0.1:6443")
    assert _auth_header(one.auth) == "Bearer t1"
    two = _connect.from_kubeconfig(config, "c2")
    assert two.namespace == "default" and _auth_header(two.auth) == "Bearer t2"
    with pytest.raises(ConfigError, match="c3"):
        _connect.from_kubeconfig(config, "c3")


def test_kubeconfig_env_list_is_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    first = _write(tmp_path / "a", [{"name": "u", "user": {"token": "first"}}])
    second = _write(
        tmp_path / "b",
        [{"name": "u", "user": {"token": "second"}}, {"name": "w", "user": {"token": "w"}}],
        contexts=[{"name": "other", "context": {"cluster": "k", "user": "w"}}],
        current="other",
    )
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    merged = _connect.from_kubeconfig()
    assert merged.context == "c1" and _auth_header(merged.auth) == "Bearer first"  # first file wins
    assert _auth_header(_connect.from_kubeconfig(context="other").auth) == "Bearer w"


def test_inline_client_key_never_touches_the_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ca = Authority(tmp_path / "pki")
    cred = ca.issue("me", "me")
    config = _write(
        tmp_path / "kc",
        [
            {
                "name": "u",
                "user": {
                    "client-certificate-data": base64.b64encode(cred.cert.read_bytes()).decode(),
                    "client-key-data": base64.b64encode(cred.key.read_bytes()).decode(),
                },
            }
        ],
    )
    doc = yaml.safe_load(config.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        ca.path.read_bytes()
    ).decode()
    config.write_text(yaml.safe_dump(doc))
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where a temp key file would go
    conn = _connect.from_kubeconfig(config)
    assert os.listdir(private_tmp) == []
    assert conn.verify is not False and conn.auth is None


def test_mismatched_key_is_a_config_error(tmp_path: Path):
    ca = Authority(tmp_path / "pki")
    a, b = ca.issue("a", "a"), ca.issue("b", "b")
    config = _write(
        tmp_path / "kc",
        [{"name": "u", "user": {"client-certificate": str(a.cert), "client-key": str(b.key)}}],
    )
    with pytest.raises(ConfigError, match="do not load"):
        _connect.from_kubeconfig(config)
    bad = _write(
        tmp_path / "kd", [{"name": "u", "user": {"client-certificate-data": "%%%", "client-key-data": "x"}}]
    )
    with pytest.raises(ConfigError, match="base64"):
        _connect.from_kubeconfig(bad)


def test_auth_providers_are_refused_by_name(tmp_path: Path):
    config = _write(tmp_path / "kc", [{"name": "u", "user": {"auth-provider": {"name": "gcp"}}}])
    with pytest.raises(ConfigError, match="auth-provider"):
        _connect.from_kubeconfig(config)


def test_token_file_is_reread_when_rotated(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("one\n")
    now = [0.0]
    auth = _connect._TokenFileAuth(token, recheck=60, clock=lambda: now[0])
    assert _auth_header(auth) == "Bearer one"
    token.write_text("two")
    assert _auth_header(auth) == "Bearer one"  # cached within the recheck interval
    now[0] = 61
    assert _auth_header(auth) == "Bearer two"
    # a 401 forces a re-read at once
    token.write_text("three")
    flow = auth.sync_auth_flow(httpx2.Request("GET", "https://x"))
    next(flow)
    retried = flow.send(httpx2.Response(401))
    assert retried.headers["Authorization"] == "Bearer three"


PLUGIN = """\
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
count = int(open(sys.argv[1]).read() or 0) + 1
open(sys.argv[1], "w").write(str(count))
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {"token": f"tok-{count}-{os.environ['EXTRA']}-{info['spec']['interactive']}",
                             "expirationTimestamp": "2030-01-01T00:00:00Z"}}))
"""


@pytest.mark.parametrize(
    "api_version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
)
def test_exec_plugin_tokens_are_cached_until_expiry(tmp_path: Path, api_version: str):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "count"
    counter.write_text("")
    exec_conf = {
        "apiVersion": api_version,
        "command": sys.executable,
        "args": [str(tmp_path / "plugin.py"), str(counter)],
        "env": [{"name": "EXTRA", "value": "x"}],
        "interactiveMode": "Never",
    }
    config = _write(tmp_path / "kc", [{"name": "u", "user": {"exec": exec_conf}}])
    conn = _connect.from_kubeconfig(config)
    assert _auth_header(conn.auth) == "Bearer tok-1-x-False"
    assert _auth_header(conn.auth) == "Bearer tok-1-x-False"  # cached: expiry in 2030
    assert counter.read_text() == "1"
    late = _connect._ExecAuth(exec_conf, context="c1", clock=lambda: 1_900_000_000.0)  # after 2030-01-01
    assert _auth_header(late) == "Bearer tok-2-x-False"
    assert _auth_header(late) == "Bearer tok-3-x-False"  # expired: asks again every time


def test_exec_plugin_failures(tmp_path: Path):
    with pytest.raises(ConfigError, match="v1alpha1"):
        _connect._ExecAuth(
            {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}, context="c"
        )
    failing = _connect._ExecAuth(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": ["-c", "import sys; sys.exit(3)"],
        },
        context="c",
    )
    with pytest.raises(KubeUnauthorized, match="status 3"):
        _auth_header(failing)
    garbage = _connect._ExecAuth(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": ["-c", "print('secret-ish output')"],
        },
        context="c",
    )
    with pytest.raises(KubeUnauthorized) as err:
        _auth_header(garbage)
    assert "secret-ish" not in str(err.value)


def test_in_cluster(tmp_path: Path):
    ca = Authority(tmp_path / "pki")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("pod-token")
    (sa / "ca.crt").write_bytes(ca.path.read_bytes())
    (sa / "namespace").write_text("team-a\n")
    conn = _connect.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert conn.base_url == "https://10.0.0.1:443" and conn.namespace == "team-a"
    assert _auth_header(conn.auth) == "Bearer pod-token"
    v6 = _connect.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert v6.base_url == "https://[fd00::1]:443"
    with pytest.raises(ConfigError, match="not in a cluster"):
        _connect.in_cluster(sa, {})
    (sa / "token").unlink()
    with pytest.raises(ConfigError, match="token"):
        _connect.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"})
