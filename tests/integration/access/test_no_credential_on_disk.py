"""After a full session (agent, import --remove, proxy, kubeconfig, kubectl get/apply/delete/exec/cp/
port-forward, exec-credential in both modes, lock, logout), no file holds a credential.

Looked for: the client key (PEM, DER, the base64 of the PEM a kubeconfig inlines, a run of its
base64 body), the static token and every proxy bearer secret (raw and base64), and any PEM
private-key marker (the agent's local CA key, the proxy's serving key, a relay-issued key all live
in memory only). Where: the person's HOME, XDG_RUNTIME_DIR (the agent's socket directory),
XDG_DATA_HOME (the sealed store), TMPDIR, the audit log; and, for the exact secret bytes, every file
under the machine's temp directory and /dev/shm written since the session began (other tests' keys
may lie there, so markers are not looked for outside the session's own directories). The scanner is
first shown to find the credentials in the person's kubeconfig before the import."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.access_kubectl import EchoServer, Lines, echo_through, forwarded_port, stop
from tests.support.access_session import UserSession
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi import fixtures as _kubeapi_fixtures

kube_api = _kubeapi_fixtures.kube_api  # the stand-in fixtures, in this module only
kube_ns = _kubeapi_fixtures.kube_ns

MARKERS = (b"PRIVATE KEY-----",)
_MAX_OWN = 64 * 1024 * 1024  # the session's own files: read whole
_MAX_SHARED = 8 * 1024 * 1024  # other tests' files in the machine's temp dir (etcd data...): bounded


def _needles(secrets: dict[str, bytes]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in secrets.items():
        out[name] = value
        out[f"{name} (base64)"] = base64.b64encode(value)
        if name == "client_key":
            key = serialization.load_pem_private_key(value, password=None)
            der = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            out[f"{name} (DER)"] = der
            body = b"".join(line for line in value.splitlines() if not line.startswith(b"-----"))
            out[f"{name} (base64 body)"] = body[48:88]  # past the ASN.1 prefix all P-256 keys share
    return out


def _files(roots: Iterable[Path], *, since: float | None = None, limit: int = _MAX_OWN) -> Iterator[Path]:
    for root in roots:
        if not root.exists():
            continue
        for directory, _, names in os.walk(root, followlinks=False):
            for name in names:
                path = Path(directory) / name
                try:
                    info = path.lstat()
                except OSError:  # gone meanwhile (another test's file)
                    continue
                if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                    continue
                if since is not None and max(info.st_mtime, info.st_ctime) < since:
                    continue
                yield path


def _scan(paths: Iterable[Path], needles: dict[str, bytes], *, markers: bool) -> list[str]:
    found: list[str] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
        if markers:
            found += [f"{path}: a PEM private key" for marker in MARKERS if marker in data]
    return found


@pytest.fixture
def session(kube_api: KubeAPI, tmp_path: Path) -> Iterator[UserSession]:
    with UserSession.begin(kube_api, tmp_path / "session") as s:
        yield s


def test_no_credential_reaches_a_disk(session: UserSession, kube_api: KubeAPI, kube_ns: str) -> None:
    began = time.time() - 1
    config = session.write_kubeconfig()
    own_dirs = [session.home, session.runtime, session.data, session.tmp]
    # the scanner finds what is there: the person's kubeconfig holds the key and the token
    before = _scan([config], _needles(session.secrets), markers=True)
    assert any("client_key (base64)" in f for f in before) and any(": token" in f for f in before)

    audit = session.data / "audit.jsonl"
    session.start_agent("--audit-log", str(audit))
    session.run(
        "access", "import", "--kubeconfig", str(config),
        "--context", "standin", "--context", "standin-token", "--remove", "--yes",
    )  # fmt: skip
    assert not config.exists()
    store = [p for p in _files([session.data]) if p.name != audit.name]
    assert store and all(p.stat().st_mode & 0o077 == 0 for p in store), store  # sealed, 0600

    session.start_proxy("standin")
    session.start_proxy("standin-token")
    kc = session.kubeconfig("standin", namespace=kube_ns)
    kt = session.kubeconfig("standin-token", namespace=kube_ns)
    session.bearer("standin")
    session.bearer("standin-token")
    direct = json.loads(session.run("access", "exec-credential", "--context", "standin").stdout)
    assert direct["status"]["clientKeyData"].encode() == session.secrets["client_key"]  # in memory only

    run = session.kubectl.run
    run("create", "secret", "generic", "db", "--from-literal=password=hunter2", kubeconfig=kc)
    run("get", "secret", "db", "-o", "yaml", kubeconfig=kc)
    run("get", "configmaps", kubeconfig=kt)
    echo_cmd = [sys.executable, "-u", "-c", "import sys\nfor l in sys.stdin: print(l, end='')\n"]
    with EchoServer() as echo:
        pod = kube_api.pods.run(kube_ns, "app", command=echo_cmd, ports={80: echo.port})
        try:
            run("exec", "app", "--", "sh", "-c", "echo hi > greeting", kubeconfig=kc)
            run("cp", "app:greeting", str(session.tmp / "greeting"), kubeconfig=kc)
            run("cp", str(session.tmp / "greeting"), "app:copy", kubeconfig=kc)
            assert (pod.directory / "copy").read_text() == "hi\n"
            forward = session.kubectl.popen("port-forward", "pod/app", ":80", kubeconfig=kc)
            lines = Lines(forward.stdout)
            try:
                assert echo_through(forwarded_port(lines), b"bytes") == b"bytes"
            finally:
                stop(forward, lines)
        finally:
            kube_api.pods.delete(kube_ns, "app")
    run("delete", "secret", "db", kubeconfig=kc)
    session.stop_proxies()
    session.run("access", "lock")
    agent, session.agent = session.agent, None
    assert agent is not None and agent.stop() is not None  # SIGTERM: the person logs out
    assert audit.exists() and "hunter2" not in audit.read_text()

    needles = _needles(session.secrets)
    assert {"client_key", "token", "bearer-standin", "bearer-standin-token"} <= set(needles)
    leaks = _scan(_files([*own_dirs, audit.parent]), needles, markers=True)
    shared = [Path(tempfile.gettempdir()), Path("/dev/shm")]
    leaks += _scan(_files(shared, since=began, limit=_MAX_SHARED), needles, markers=False)
    assert leaks == []
