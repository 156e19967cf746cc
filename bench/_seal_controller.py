"""Controller cold start: N SealedSecrets already in the API, a fresh controller, time until all synced.

Run through bench/seal_bench.py. The API is the project's Kubernetes API stand-in (tests/support/kubeapi,
real HTTPS on 127.0.0.1); no kube-apiserver can run here. The floor, measured in the same run, is the
API work alone: the same client writing N Secrets and N status updates directly, with no unsealing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml

from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kube import KubeClient, resources
from kubeshield.seal.controller import Controller
from kubeshield.seal.objects import Document, parse_secret
from kubeshield.seal.registry import Registry
from kubeshield.seal.sealing import seal_secret
from kubeshield.seal.service import SealService
from tests.support.kubeapi._server import KubeAPI

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "deploy" / "helm" / "kubeshield-seal" / "crds" / "sealedsecrets.bitnami.com.yaml"


def _namespace(api: KubeAPI, name: str) -> None:
    rtype = api.store.type_of("", "v1", "namespaces")
    api.store.create(rtype, None, {"metadata": {"name": name}})


def run(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="seal-bench-kube-"))
    api = KubeAPI(root / "api").start()
    try:
        _namespace(api, "bench")
        _namespace(api, "floor")
        config = api.kubeconfig(root / "kc", credential=api.admin, namespace="bench")
        registry = Registry(root / "seal-keys.json", backend=InMemoryBackend(), key_size=4096)
        registry.init()
        public = registry.keyset(unseal=False).latest.public_key
        with KubeClient.from_kubeconfig(config) as kube:
            kube.create(yaml.safe_load(CRD.read_text()))
            print(f"creating {n} SealedSecrets (1 KiB value each) ...", flush=True)
            for i in range(n):
                doc = Document(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": f"s{i}", "namespace": "bench"},
                        "stringData": {"value": "x" * 1024},
                    },
                    "bench",
                )
                kube.create(
                    seal_secret(public, parse_secret(doc)),
                    resource=resources.SEALED_SECRETS,
                    namespace="bench",
                )
            # floor: the API writes alone (create the Secret, write a status), no unsealing
            start = time.perf_counter()
            for i in range(n):
                kube.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": f"f{i}", "namespace": "floor"},
                        "data": {"value": "eA=="},
                    }
                )
                obj = kube.get(resources.SEALED_SECRETS, f"s{i}", namespace="bench")
                kube.replace_status(
                    {**obj, "status": {"observedGeneration": 1}},
                    resource=resources.SEALED_SECRETS,
                    namespace="bench",
                )
            floor = time.perf_counter() - start
            for i in range(n):  # undo the floor's status writes so the controller starts from nothing
                obj = kube.get(resources.SEALED_SECRETS, f"s{i}", namespace="bench")
                kube.replace_status(
                    {**obj, "status": {}}, resource=resources.SEALED_SECRETS, namespace="bench"
                )
        with KubeClient.from_kubeconfig(config) as kube:
            start = time.perf_counter()
            service = SealService(registry)  # cold: keys unwrapped from the backend now
            controller = Controller(kube=kube, service=service, namespaces=["bench"], workers=2).start()
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                if controller.synced.is_set() and controller.idle():
                    if len(kube.list(resources.SECRETS, namespace="bench").items) >= n:
                        break
                time.sleep(0.05)
            elapsed = time.perf_counter() - start
            controller.stop()
            statuses = kube.list(resources.SEALED_SECRETS, namespace="bench").items
            synced = sum(
                1
                for o in statuses
                if ((o.get("status") or {}).get("conditions") or [{}])[0].get("status") == "True"
            )
        print()
        print(
            f"controller cold start against the Kubernetes API stand-in "
            f"({n} SealedSecrets, RSA-4096, 2 workers)"
        )
        print(
            f"{'synced':>7}  {'total s':>8}  {'per object ms':>13}  {'objects/s':>9}  {'API floor s':>11}"
            f"  {'controller/floor':>16}"
        )
        print(
            f"{synced:>7}  {elapsed:>8.2f}  {1000 * elapsed / n:>13.2f}  {n / elapsed:>9.1f}  {floor:>11.2f}"
            f"  {elapsed / floor:>15.2f}x"
        )
        if synced != n:
            raise SystemExit(f"only {synced} of {n} SealedSecrets synced")
    finally:
        api.stop()
        shutil.rmtree(root, ignore_errors=True)
