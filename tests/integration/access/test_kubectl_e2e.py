"""A person's first session, end to end, with real processes only: a `kubeshield access agent`
process, `access import --remove` of a kubeconfig holding a client key and a token, `access proxy`
in the foreground, `access kubeconfig`, then real kubectl v1.35 with that secret-free kubeconfig for
get, list, get -w, apply, delete, exec (also -it on a terminal), cp, port-forward and attach, all
through the agent's proxy to the Kubernetes API stand-in."""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeshield.access.redact import DATA_MARKER
from tests.support.access_kubectl import (
    EchoServer,
    Lines,
    echo_through,
    forwarded_port,
    on_a_terminal,
    stop,
)
from tests.support.access_session import UserSession
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi import fixtures as _kubeapi_fixtures

kube_api = _kubeapi_fixtures.kube_api  # the stand-in fixtures, in this module only
kube_ns = _kubeapi_fixtures.kube_ns


@pytest.fixture
def session(kube_api: KubeAPI, tmp_path: Path) -> Iterator[UserSession]:
    with UserSession.begin(kube_api, tmp_path / "session") as s:
        s.start_agent("--redact-secrets", "--audit-log", str(s.data / "audit.jsonl"))
        yield s


def _users(api: KubeAPI, namespace: str) -> set[str]:
    return {r.user for r in list(api.requests) if f"/namespaces/{namespace}/" in r.path}


def test_first_login_then_kubectl_through_the_proxy(
    session: UserSession, kube_api: KubeAPI, kube_ns: str, tmp_path: Path
) -> None:
    imported = session.import_kubeconfig()
    assert not (session.home / ".kube" / "config").exists()  # --remove: the plaintext is gone
    assert "deleted" in imported.stderr
    status = json.loads(session.run("access", "status", "-o", "json").stdout)
    assert {c["context"] for c in status["contexts"]} >= {"standin", "standin-token"}

    url = session.start_proxy("standin")
    config = session.kubeconfig("standin", namespace=kube_ns)
    doc = yaml.safe_load(config.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == url
    user = doc["users"][0]["user"]
    assert set(user) == {"exec"}  # no token, no key, no certificate: only the exec entry
    assert user["exec"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert os.path.isabs(user["exec"]["command"])
    assert session.secrets["token"].decode() not in config.read_text()
    run = session.kubectl.run

    # get, list, apply, get -w, delete
    assert run("get", "configmaps", "-o", "name", kubeconfig=config).stdout.strip() == ""
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {mode: blue}\n")
    assert "configmap/app created" in run("apply", "-f", str(manifest), kubeconfig=config).stdout
    watch = session.kubectl.popen("get", "configmaps", "-w", "-o", "name", kubeconfig=config)
    watched = Lines(watch.stdout)
    try:
        assert watched.next().strip() == "configmap/app"
        manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {mode: green}\n")
        assert "configmap/app configured" in run("apply", "-f", str(manifest), kubeconfig=config).stdout
        assert watched.next().strip() == "configmap/app"  # the update, streamed through the proxy
    finally:
        stop(watch, watched)
    got = json.loads(run("get", "configmap", "app", "-o", "json", kubeconfig=config).stdout)
    assert got["data"] == {"mode": "green"}
    run("create", "secret", "generic", "db", "--from-literal=password=hunter2", kubeconfig=config)
    listed = run("get", "configmaps,secrets", "-o", "name", kubeconfig=config).stdout.split()
    assert {"configmap/app", "secret/db"} <= set(listed)
    secret = json.loads(run("get", "secret", "db", "-o", "json", kubeconfig=config).stdout)
    assert secret["data"]["password"] == DATA_MARKER  # --redact-secrets: the key stays, the value not
    reveal = ["--server", url + "/kubeshield/reveal"]  # the reveal step, with plain kubectl
    shown = json.loads(run(*reveal, "get", "secret", "db", "-o", "json", kubeconfig=config).stdout)
    assert base64.b64decode(shown["data"]["password"]) == b"hunter2"
    audit = [json.loads(line) for line in (session.data / "audit.jsonl").read_text().splitlines()]
    reads = [(e["verb"], e["name"], e["revealed"]) for e in audit if e["name"] == "db"]
    assert ("get", "db", False) in reads and ("get", "db", True) in reads
    assert all(e["subject"] == session.user for e in audit)
    assert "hunter2" not in (session.data / "audit.jsonl").read_text()
    run("delete", "configmap", "app", kubeconfig=config)
    assert "configmap/app" not in run("get", "configmaps", "-o", "name", kubeconfig=config).stdout

    # exec, cp, attach, port-forward: the streaming upgrades, spliced by the proxy
    upper = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"
    with EchoServer() as echo:
        pod = kube_api.pods.run(
            kube_ns, "app", command=[sys.executable, "-u", "-c", upper], ports={80: echo.port}
        )
        try:
            (pod.directory / "index.html").write_text("<h1>hi</h1>\n")
            assert run("exec", "app", "--", "cat", "index.html", kubeconfig=config).stdout == "<h1>hi</h1>\n"
            failed = run("exec", "app", "--", "sh", "-c", "exit 4", kubeconfig=config, check=False)
            assert failed.returncode == 4
            piped = run("exec", "-i", "app", "--", "wc", "-c", kubeconfig=config, input="x" * 100_000)
            assert piped.stdout.strip() == "100000"
            spdy = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}
            assert run("exec", "app", "--", "pwd", kubeconfig=config, env=spdy).stdout.strip() == str(
                pod.directory
            )
            script = 'while [ "$(stty size)" = "0 0" ]; do sleep 0.05; done; echo "rows,cols: $(stty size)"'
            terminal = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(session.home),
                "KUBECONFIG": str(config),
            }
            argv = [str(session.kubectl.binary), "exec", "-it", "app", "--", "sh", "-c", script]
            code, out = on_a_terminal(argv, terminal, rows=30, cols=90)  # kubectl -it, as in a terminal
            assert code == 0 and "rows,cols: 30 90" in out, out
            upload = tmp_path / "upload.bin"
            upload.write_bytes(os.urandom(200_000))
            run("cp", str(upload), "app:upload.bin", kubeconfig=config)
            assert (pod.directory / "upload.bin").read_bytes() == upload.read_bytes()
            run("cp", "app:index.html", str(tmp_path / "index.html"), kubeconfig=config)
            assert (tmp_path / "index.html").read_text() == "<h1>hi</h1>\n"
            attach = session.kubectl.popen("attach", "-i", "app", kubeconfig=config, stdin=-1)
            attached = Lines(attach.stdout)
            try:
                assert attach.stdin is not None
                attach.stdin.write("through the proxy\n")
                attach.stdin.flush()
                assert attached.next().strip() == "THROUGH THE PROXY"
            finally:
                stop(attach, attached)
            for env in ({}, {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}):
                forward = session.kubectl.popen("port-forward", "pod/app", ":80", kubeconfig=config, env=env)
                lines = Lines(forward.stdout)
                try:
                    payload = os.urandom(100_000)
                    assert echo_through(forwarded_port(lines), payload) == payload
                finally:
                    stop(forward, lines)
        finally:
            kube_api.pods.delete(kube_ns, "app")

    # the apiserver saw the person (the client certificate the agent holds), never the proxy's bearer
    assert _users(kube_api, kube_ns) == {session.user}


def test_a_token_context_and_the_end_of_the_proxy(
    session: UserSession, kube_api: KubeAPI, kube_ns: str
) -> None:
    session.import_kubeconfig()
    session.start_proxy("standin-token")
    config = session.kubeconfig("standin-token", namespace=kube_ns)
    whoami = json.loads(session.kubectl.run("auth", "whoami", "-o", "json", kubeconfig=config).stdout)
    assert whoami["status"]["userInfo"]["username"] == session.user + "-token"
    session.kubectl.run("create", "configmap", "t", "--from-literal=a=b", kubeconfig=config)
    assert _users(kube_api, kube_ns) == {session.user + "-token"}
    # a wrong bearer is refused by the proxy with a clear 401 (kubectl names it)
    doc = yaml.safe_load(config.read_text())
    doc["users"][0]["user"] = {"token": uuid.uuid4().hex}
    forged = config.with_name("forged.yaml")
    forged.write_text(yaml.safe_dump(doc))
    refused = session.kubectl.run("get", "configmaps", kubeconfig=forged, check=False)
    assert refused.returncode == 1 and "You must be logged in to the server" in refused.stderr
    # Ctrl-C on `access proxy` stops it; the kubeconfig's exec entry starts it again on the same
    # address while the agent holds the credential ...
    session.stop_proxies()
    again = session.kubectl.run("get", "configmaps", "-o", "name", kubeconfig=config)
    assert again.stdout.split() == ["configmap/t"]
    # ... and after `access lock` kubectl fails at once with one line naming the command to run
    session.run("access", "lock")
    shell = {"XDG_DATA_HOME": session.env["XDG_DATA_HOME"]}  # where the person's store is
    locked = session.kubectl.run("get", "configmaps", kubeconfig=config, env=shell, check=False, timeout=120)
    assert locked.returncode == 1
    assert "kubeshield access unlock" in locked.stderr, locked.stderr
    assert "x509" not in locked.stderr
