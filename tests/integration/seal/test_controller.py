"""The controller, driven only through the Kubernetes API (the project's stand-in over HTTPS; real kubectl
applies the SealedSecrets). There is no kube-apiserver binary on this machine: the stand-in is what we
have, with real HTTPS, watches, CRDs, status subresources and optimistic concurrency.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshield.errors import KubeAlreadyExists, KubeNotFound
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kube import KubeClient, resources
from kubeshield.seal.controller import Controller
from kubeshield.seal.http import SealMetrics
from kubeshield.seal.objects import Document, parse_secret
from kubeshield.seal.registry import Registry
from kubeshield.seal.scope import Scope
from kubeshield.seal.sealing import seal_secret
from kubeshield.seal.service import SealService

CRD = Path(__file__).resolve().parents[3] / "deploy/helm/kubeshield-seal/crds/sealedsecrets.bitnami.com.yaml"


def _wait(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except KubeNotFound:
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def crd(kube: KubeClient) -> None:
    try:
        kube.create(yaml.safe_load(CRD.read_text()))
    except KubeAlreadyExists:
        pass


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "seal-keys.json", backend=InMemoryBackend(), key_size=2048)
    reg.init()
    return reg


@pytest.fixture
def controller(kube: KubeClient, kube_ns: str, crd: None, registry: Registry) -> Iterator[Controller]:
    c = Controller(kube=kube, service=SealService(registry), metrics=SealMetrics(), namespaces=[kube_ns])
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _sealed(registry: Registry, namespace: str, name: str, scope: Scope | None = None, **values: str) -> dict:
    keys = registry.keyset(unseal=False)
    doc = Document(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "stringData": values or {"password": "hunter2"},
        },
        "t",
    )
    return seal_secret(keys.latest.public_key, parse_secret(doc), scope=scope)


def _synced(kube: KubeClient, ns: str, name: str, status: str) -> Callable[[], Any]:
    def check() -> Any:
        obj = kube.get(resources.SEALED_SECRETS, name, namespace=ns)
        conds = (obj.get("status") or {}).get("conditions") or []
        return obj if conds and conds[0]["status"] == status else None

    return check


def _events(kube: KubeClient, ns: str, name: str) -> list[dict]:
    return [e for e in kube.list(resources.EVENTS, namespace=ns) if e["involvedObject"]["name"] == name]


def test_sealed_secret_applied_with_kubectl_becomes_a_secret(
    kube: KubeClient,
    kube_api,
    kube_ns: str,
    kubectl,
    controller: Controller,
    registry: Registry,
    tmp_path: Path,
) -> None:
    obj = _sealed(registry, kube_ns, "db", password="hunter2", user="admin")
    obj["spec"]["template"]["data"] = {"dsn": "postgres://{{ .user }}:{{ .password }}@db"}
    config = kube_api.kubeconfig(tmp_path / "kc", credential=kube_api.admin, namespace=kube_ns)
    kubectl.run("apply", "-f", "-", kubeconfig=config, input=json.dumps(obj))
    secret = _wait("the Secret", lambda: kube.get(resources.SECRETS, "db", namespace=kube_ns))
    values = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert values == {"password": b"hunter2", "user": b"admin", "dsn": b"postgres://admin:hunter2@db"}
    ss = _wait("Synced=True", _synced(kube, kube_ns, "db", "True"))
    (ref,) = secret["metadata"]["ownerReferences"]
    assert ref["uid"] == ss["metadata"]["uid"] and ref["controller"] is True and ref["kind"] == "SealedSecret"
    assert secret["metadata"]["labels"] == {"app": "db"}
    assert ss["status"]["observedGeneration"] == ss["metadata"]["generation"]
    listing = kubectl.run("get", "sealedsecrets", "-o", "json", kubeconfig=config).stdout
    assert json.loads(listing)["items"][0]["status"]["conditions"][0]["type"] == "Synced"
    # a new value: the Secret follows, observedGeneration moves on
    newer = _sealed(registry, kube_ns, "db", password="rotated", user="admin")
    kubectl.run("apply", "-f", "-", kubeconfig=config, input=json.dumps(newer))
    _wait(
        "the new value",
        lambda: (
            base64.b64decode(kube.get(resources.SECRETS, "db", namespace=kube_ns)["data"]["password"])
            == b"rotated"
        ),
    )

    def observed() -> Any:
        o = kube.get(resources.SEALED_SECRETS, "db", namespace=kube_ns)
        gen = o["metadata"]["generation"]
        return o if gen > 1 and o["status"]["observedGeneration"] == gen else None

    fresh = _wait("observedGeneration", observed)
    assert "dsn" not in kube.get(resources.SECRETS, "db", namespace=kube_ns)["data"]  # template went away
    assert any(e["reason"] == "Unsealed" and e["type"] == "Normal" for e in _events(kube, kube_ns, "db"))
    assert fresh["status"]["conditions"][0]["status"] == "True"


def test_failures_set_synced_false_with_events_and_keep_serving_the_rest(
    kube: KubeClient,
    kube_ns: str,
    controller: Controller,
    registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    moved = _sealed(registry, "elsewhere", "moved", password="topsecret-1")
    moved["metadata"]["namespace"] = kube_ns
    kube.create(moved, resource=resources.SEALED_SECRETS, namespace=kube_ns)
    bad_template = _sealed(registry, kube_ns, "tmpl", password="topsecret-2")
    bad_template["spec"]["template"]["data"] = {"x": "{{ .missing }}"}
    kube.create(bad_template, resource=resources.SEALED_SECRETS, namespace=kube_ns)
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "taken", "namespace": kube_ns},
            "data": {"mine": base64.b64encode(b"keep me").decode()},
        }
    )
    kube.create(
        _sealed(registry, kube_ns, "taken", password="topsecret-3"),
        resource=resources.SEALED_SECRETS,
        namespace=kube_ns,
    )
    kube.create(
        _sealed(registry, kube_ns, "fine", password="ok"),
        resource=resources.SEALED_SECRETS,
        namespace=kube_ns,
    )
    _wait("the good one", lambda: kube.get(resources.SECRETS, "fine", namespace=kube_ns))
    for name, reason, text in (
        ("moved", "ErrUnsealFailed", "spec.encryptedData.password: no key could decrypt it"),
        ("tmpl", "ErrUnsealFailed", "spec.template.data.x: missing key 'x'".replace("'x'", "'missing'")),
        ("taken", "ErrUpdateFailed", 'Resource "taken" already exists and is not managed by SealedSecret'),
    ):
        ss = _wait(f"{name} Synced=False", _synced(kube, kube_ns, name, "False"))
        cond = ss["status"]["conditions"][0]
        assert cond["reason"] == reason and text in cond["message"], cond

        def warned(n: str = name, r: str = reason) -> list[dict]:
            return [e for e in _events(kube, kube_ns, n) if e["type"] == "Warning" and e["reason"] == r]

        _wait(f"a Warning Event for {name}", warned)
    with pytest.raises(KubeNotFound):
        kube.get(resources.SECRETS, "moved", namespace=kube_ns)
    taken = kube.get(resources.SECRETS, "taken", namespace=kube_ns)
    assert (
        taken["data"] == {"mine": base64.b64encode(b"keep me").decode()}
        and "ownerReferences" not in taken["metadata"]
    )
    # nothing secret in status, events or logs
    everything = (
        json.dumps(
            [
                kube.list(resources.SEALED_SECRETS, namespace=kube_ns).items,
                kube.list(resources.EVENTS, namespace=kube_ns).items,
            ]
        )
        + caplog.text
    )
    for value in ("topsecret-1", "topsecret-2", "topsecret-3"):
        assert value not in everything
        assert base64.b64encode(value.encode()).decode() not in everything


def test_managed_and_patch_annotations(
    kube: KubeClient, kube_ns: str, controller: Controller, registry: Registry
) -> None:
    for name, marks in (
        ("managed", {"sealedsecrets.bitnami.com/managed": "true"}),
        ("patched", {"sealedsecrets.bitnami.com/patch": "true"}),
    ):
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": kube_ns, "annotations": marks},
                "data": {"other": base64.b64encode(b"old").decode()},
            }
        )
        kube.create(
            _sealed(registry, kube_ns, name, password="new"),
            resource=resources.SEALED_SECRETS,
            namespace=kube_ns,
        )
    managed = _wait(
        "the take-over",
        lambda: (lambda s: s if s["metadata"].get("ownerReferences") else None)(
            kube.get(resources.SECRETS, "managed", namespace=kube_ns)
        ),
    )
    assert set(managed["data"]) == {"password"}
    patched = _wait(
        "the patch",
        lambda: (lambda s: s if "password" in s["data"] else None)(
            kube.get(resources.SECRETS, "patched", namespace=kube_ns)
        ),
    )
    assert set(patched["data"]) == {"password", "other"} and "ownerReferences" not in patched["metadata"]
    _wait("patched Synced=True", _synced(kube, kube_ns, "patched", "True"))


def test_imported_key_heals_a_failed_object(
    kube: KubeClient, kube_ns: str, crd: None, registry: Registry, tmp_path: Path
) -> None:
    other = Registry(tmp_path / "other.json", backend=InMemoryBackend(), key_size=2048)
    other.init()
    kube.create(
        _sealed(other, kube_ns, "later", password="p"), resource=resources.SEALED_SECRETS, namespace=kube_ns
    )
    service = SealService(registry)
    c = Controller(kube=kube, service=service, namespaces=[kube_ns]).start()
    try:
        _wait("Synced=False", _synced(kube, kube_ns, "later", "False"))
        key = other.private_key(other.load()[0])
        registry.add_private_key(key, other.load()[0].certificate)
        assert service.reload()
        c._enqueue((kube_ns, "later"))
        _wait("the Secret after the import", lambda: kube.get(resources.SECRETS, "later", namespace=kube_ns))
        _wait("Synced=True", _synced(kube, kube_ns, "later", "True"))
    finally:
        c.stop()


def test_no_sealing_private_key_in_secrets_files_or_logs(
    kube: KubeClient, kube_ns: str, crd: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.integration.seal.test_cli import _private_blobs

    caplog.set_level(logging.DEBUG)
    registry = Registry(tmp_path / "keys" / "seal-keys.json", backend=InMemoryBackend(), key_size=2048)
    (tmp_path / "keys").mkdir()
    registry.init()
    registry.rotate()
    service = SealService(registry)
    c = Controller(kube=kube, service=service, namespaces=[kube_ns]).start()
    try:
        for i in range(3):
            kube.create(
                _sealed(registry, kube_ns, f"s{i}", password=f"v{i}"),
                resource=resources.SEALED_SECRETS,
                namespace=kube_ns,
            )
        for i in range(3):
            _wait(f"s{i}", _synced(kube, kube_ns, f"s{i}", "True"))
        service.renew_if_due()
    finally:
        c.stop()
    blobs = [b for r in registry.load() for b in _private_blobs(registry.private_key(r))]
    secrets = json.dumps(kube.list(resources.SECRETS, all_namespaces=True).items).encode()
    events = json.dumps(kube.list(resources.EVENTS, all_namespaces=True).items).encode()
    files = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert len(secrets) > 100 and files
    logs = caplog.text.encode()
    for where, data in (("Secrets", secrets), ("Events", events), ("files", files), ("logs", logs)):
        for blob in blobs:
            assert blob not in data, f"private key material found in the {where}"


def test_controller_process_serves_the_api_and_stops_on_sigterm(
    kube: KubeClient, kube_api, kube_ns: str, crd: None, tmp_path: Path
) -> None:
    """`kubeshield seal controller` as a real process: creates its registry, serves /healthz and
    /v1/cert.pem, syncs a SealedSecret, and stops cleanly on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    api_port, metrics_port = free_port(), free_port()
    (tmp_path / "kubeshield.yaml").write_text(yaml.safe_dump({
        "keys": {"backend": "local", "local": {"keyring": str(tmp_path / "keyring")}},
        "seal": {"registry": str(tmp_path / "seal-keys.json"), "keySize": 2048},
    }))  # fmt: skip
    env = {**os.environ, "KUBESHIELD_KEYRING_PASSPHRASE": "pw"}
    kubeshield = str(Path(sys.executable).with_name("kubeshield"))
    subprocess.run([kubeshield, "keys", "init", "--keyring", str(tmp_path / "keyring")], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    config = kube_api.kubeconfig(tmp_path / "kc", credential=kube_api.admin, namespace=kube_ns)
    proc = subprocess.Popen(
        [kubeshield, "seal", "controller", "--config", str(tmp_path / "kubeshield.yaml"), "--kubeconfig",
         str(config), "--listen", f"127.0.0.1:{api_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
         "--namespaces", kube_ns],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{api_port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
                    return r.read() == b"ok\n"
            except OSError:
                return False

        _wait("/healthz", healthy, timeout=120)
        with urllib.request.urlopen(base + "/v1/cert.pem", timeout=5) as r:
            cert = r.read()
        from kubeshield.seal.certs import sealing_key_from_pem

        public = sealing_key_from_pem(cert, where="controller")
        meta = {"name": "proc", "namespace": kube_ns}
        doc = Document({"apiVersion": "v1", "kind": "Secret", "metadata": meta,
                        "stringData": {"k": "process-secret-value"}}, "t")  # fmt: skip
        kube.create(
            seal_secret(public, parse_secret(doc)), resource=resources.SEALED_SECRETS, namespace=kube_ns
        )
        _wait("the Secret", lambda: kube.get(resources.SECRETS, "proc", namespace=kube_ns))
        _wait("Synced=True", _synced(kube, kube_ns, "proc", "True"))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'kubeshield_seal_unseal_total{outcome="ok"}' in metrics and "proc" not in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopping" in out and "process-secret-value" not in out
    assert (tmp_path / "seal-keys.json").stat().st_mode & 0o777 == 0o600


def test_resync_puts_back_a_deleted_or_edited_secret(
    kube: KubeClient, kube_ns: str, crd: None, registry: Registry
) -> None:
    c = Controller(kube=kube, service=SealService(registry), namespaces=[kube_ns], resync=0.5,
                   housekeeping_interval=0.2).start()  # fmt: skip
    try:
        kube.create(_sealed(registry, kube_ns, "kept", password="orig"), resource=resources.SEALED_SECRETS,
                    namespace=kube_ns)  # fmt: skip
        _wait("the Secret", lambda: kube.get(resources.SECRETS, "kept", namespace=kube_ns))
        kube.delete(resources.SECRETS, "kept", namespace=kube_ns)
        _wait("the Secret again", lambda: kube.get(resources.SECRETS, "kept", namespace=kube_ns))
        kube.patch(resources.SECRETS, "kept", {"data": {"password": base64.b64encode(b"edited").decode()}},
                   namespace=kube_ns)  # fmt: skip

        def restored() -> bool:
            data = kube.get(resources.SECRETS, "kept", namespace=kube_ns)["data"]
            return base64.b64decode(data["password"]) == b"orig"

        _wait("the original value", restored)
    finally:
        c.stop()
