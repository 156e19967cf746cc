"""Secrets on the node, measured in one run against the Kubernetes API stand-in (real HTTPS, real JWTs).

Every server under test runs in a process of its own (the real CLI: ``kubeshield node release-server`` and
``node csi-provider``), the load and the API stand-in in this one, so no two share a GIL.

* CSI Mount latency, p50/p99, for a pod with 10 values of 1 KiB: the provider holding the key
  (``node.csi.mode: local``) and the provider asking the release server (``release``, the default), each
  against a floor measured here: an empty Mount (a servicer on the same kind of unix socket that returns
  an empty response to the same request). TokenReviews are cached (10 s), as in steady state.
* Release-server throughput (requests/s, 4 client threads with keep-alive, one value per request), with
  the TokenReview cached and uncached (every request a TokenReview and a pod read at the stand-in),
  against a floor: the same HTTPS server stack answering ``{}`` without doing any work.

    .venv/bin/python bench/node_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import yaml

from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kube import KubeClient
from kubeshield.node.client import ReleaseClient
from kubeshield.node.csi.api.v1alpha1 import service_pb2 as pb
from kubeshield.node.csi.api.v1alpha1 import service_pb2_grpc as pb_grpc
from kubeshield.node.identity import Binding, Identity
from kubeshield.node.sealing_keys import SealingKeyFile
from tests.support.kubeapi._server import KubeAPI
from tests.support.openbao import free_port
from tests.support.tls import CA

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def latencies(fn: Callable[[], object], seconds: float, at_least: int = 30) -> list[float]:
    fn()
    out: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(out) < at_least:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def throughput(make: Callable[[], Callable[[], object]], seconds: float, threads: int = 4) -> float:
    stop = threading.Event()
    counts = [0] * threads

    def worker(i: int) -> None:
        call = make()
        call()
        while not stop.is_set():
            call()
            counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join(30)
    return sum(counts) / (time.perf_counter() - start)


EMPTY_PROVIDER = """
import sys
from concurrent import futures
import grpc
from kubeshield.node.csi.api.v1alpha1 import service_pb2 as pb, service_pb2_grpc as pb_grpc
class Empty(pb_grpc.CSIDriverProviderServicer):
    def Mount(self, request, context):
        return pb.MountResponse(object_version=[])
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
pb_grpc.add_CSIDriverProviderServicer_to_server(Empty(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
print("ready socket=" + sys.argv[1], flush=True)
server.wait_for_termination()
"""

EMPTY_HTTPS = """
import sys, threading
from kubeshield.node._http import JsonServer, Reply, server_tls_context
server = JsonServer("127.0.0.1:0", {("POST", "/v1/release"): lambda r: Reply(200, {})},
                    tls=server_tls_context(sys.argv[1], sys.argv[2]))
print("ready url=" + server.url, flush=True)
server.serve_forever()
"""


def spawn(*argv: str) -> tuple[subprocess.Popen[str], str]:
    """A server in its own process (its own GIL); returns it and what it printed after 'ready '."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise RuntimeError(f"{argv[:3]} did not start")
    return proc, line.split("=", 1)[1].strip()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class World:
    """The stand-in in this process; every server under test in a process of its own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.api = KubeAPI(tmp / "kubeapi").start()
        self.admin = KubeClient.from_kubeconfig(self.api.admin_kubeconfig)
        self.admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        self.admin.create(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}, namespace="bench"
        )
        self.pod = self.admin.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app-0"},
                "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "x"}]},
            },
            namespace="bench",
        )
        self.ca = CA(tmp / "pki")
        self.cert = self.ca.issue("release", ips=("127.0.0.1",), server=True)
        (tmp / "pass").write_text("bench passphrase\n")
        (tmp / "pass").chmod(0o600)
        backend = LocalKeyBackend.create(path=tmp / "keyring", passphrase=b"bench passphrase")
        SealingKeyFile(tmp / "sealing.json").create(backend)
        self.keys = SealingKeyFile(tmp / "sealing.json").open(backend)
        self.kubeconfig = self.api.kubeconfig(tmp / "r.kubeconfig", user="kubeshield-release")

    def config(self, name: str, *, cache: str, mode: str = "release", url: str | None = None) -> Path:
        doc = {
            "keys": {
                "backend": "local",
                "local": {"keyring": str(self.tmp / "keyring"), "passphraseFile": str(self.tmp / "pass")},
            },
            "node": {
                "sealingKeys": str(self.tmp / "sealing.json"),
                "release": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "tls": {"cert": str(self.cert.cert), "key": str(self.cert.key)},
                    "tokenReviewCacheTtl": cache,
                    "ratePerClient": 1_000_000,
                    "ratePerIdentity": 1_000_000,
                    "burst": 1_000_000,
                },
                "csi": {"mode": mode, "hmacKeyFile": str(self.tmp / f"hmac-{name}.key")},
            },
        }
        if url:
            doc["node"]["client"] = {"url": url, "caFile": str(self.ca.path)}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def release_server(self, cache: str) -> tuple[subprocess.Popen[str], str]:
        config = self.config(f"release-{cache}", cache=cache)
        return spawn(
            KUBESHIELD,
            "node",
            "release-server",
            "--config",
            str(config),
            "--kubeconfig",
            str(self.kubeconfig),
        )

    def token(self) -> str:
        token, _ = self.admin.create_token(
            "app",
            namespace="bench",
            audiences=["kubeshield"],
            expiration_seconds=3600,
            bound_pod=(self.pod["metadata"]["name"], self.pod["metadata"]["uid"]),
        )
        return token

    def close(self) -> None:
        self.admin.close()
        self.api.stop()


def mount_table(world: World, seconds: float) -> None:
    binding = Binding(Identity("bench", "app"))
    objects = [
        {"objectName": f"v{i}", "sealed": world.keys.seal(os.urandom(1024), binding=binding)}
        for i in range(10)
    ]
    meta = world.pod["metadata"]
    attributes = json.dumps(
        {
            "objects": yaml.safe_dump(objects),
            "secretProviderClass": "bench",
            "csi.storage.k8s.io/pod.name": meta["name"],
            "csi.storage.k8s.io/pod.namespace": "bench",
            "csi.storage.k8s.io/pod.uid": meta["uid"],
            "csi.storage.k8s.io/serviceAccount.name": "app",
            "csi.storage.k8s.io/serviceAccount.tokens": json.dumps(
                {"kubeshield": {"token": world.token(), "expirationTimestamp": "x"}}
            ),
        }
    )
    request = pb.MountRequest(attributes=attributes, secrets="{}", target_path="/t", permission="420")
    sockets = Path(tempfile.mkdtemp(prefix="ks-bench-sock-"))
    procs = []
    try:
        release, url = world.release_server("10s")
        procs.append(release)
        procs.append(spawn(sys.executable, "-c", EMPTY_PROVIDER, str(sockets / "empty.sock"))[0])
        local = world.config("local", cache="10s", mode="local")
        procs.append(
            spawn(
                KUBESHIELD,
                "node",
                "csi-provider",
                "--config",
                str(local),
                "--socket",
                str(sockets / "local.sock"),
                "--kubeconfig",
                str(world.kubeconfig),
            )[0]
        )
        remote = world.config("remote", cache="10s", url=url)
        procs.append(
            spawn(
                KUBESHIELD,
                "node",
                "csi-provider",
                "--config",
                str(remote),
                "--socket",
                str(sockets / "remote.sock"),
            )[0]
        )
        rows = []
        for name, sock in (
            ("empty Mount (floor)", "empty"),
            ("local key", "local"),
            ("via release server", "remote"),
        ):
            with grpc.insecure_channel(f"unix:{sockets}/{sock}.sock") as channel:
                stub = pb_grpc.CSIDriverProviderStub(channel)
                if sock != "empty":
                    assert len(stub.Mount(request, timeout=30).files) == 10
                mount: Callable[[], object] = functools.partial(stub.Mount, request, timeout=30)
                rows.append((name, latencies(mount, seconds)))
    finally:
        for proc in procs:
            stop(proc)
    floor = statistics.median(rows[0][1])
    print(f"{'CSI Mount, 10 values x 1 KiB':32} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'p50/floor':>10}")
    for name, lat in rows:
        print(
            f"{name:32} {len(lat):6d} {pct(lat, 0.5) * 1e3:9.2f} {pct(lat, 0.99) * 1e3:9.2f} "
            f"{statistics.median(lat) / floor:10.1f}"
        )


def release_table(world: World, seconds: float) -> None:
    binding = Binding(Identity("bench", "app"))
    sealed = world.keys.seal(os.urandom(1024), binding=binding)
    token = world.token()
    floor, floor_url = spawn(sys.executable, "-c", EMPTY_HTTPS, str(world.cert.cert), str(world.cert.key))

    def floor_caller() -> Callable[[], object]:
        client = ReleaseClient(floor_url, ca_file=world.ca.path)
        return lambda: client._call("POST", "/v1/release", token=token, doc={"objects": []})

    try:
        rows = [("HTTPS server doing no work (floor)", throughput(floor_caller, seconds))]
    finally:
        stop(floor)
    for label, cache in (("release, TokenReview cached", "10s"), ("release, TokenReview uncached", "0s")):
        server, url = world.release_server(cache)

        def caller(url: str = url) -> Callable[[], object]:
            client = ReleaseClient(url, ca_file=world.ca.path)
            return lambda: client.release(token, [("v", sealed)])

        try:
            rows.append((label, throughput(caller, seconds)))
        finally:
            stop(server)
    print(f"{'release server, 4 threads':34} {'req/s':>9} {'ratio to floor':>15}")
    for name, rate in rows:
        print(f"{name:34} {rate:9.0f} {rate / rows[0][1]:15.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    world = World(Path(tempfile.mkdtemp(prefix="node-bench-")))
    try:
        mount_table(world, args.seconds)
        print()
        release_table(world, args.seconds)
    finally:
        world.close()
    print("\nstand-in API server in-process (Python); a real kube-apiserver's TokenReview latency differs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
