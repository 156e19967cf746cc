"""Decrypt throughput and p99: relay + 3 mTLS service replicas versus a local plugin, in one run.

    .venv/bin/python bench/service_bench.py [--seconds 5] [--concurrency 16]

Everything runs in this process on loopback (real gRPC over unix sockets and TCP+mTLS). Prints a table
and the ratios (target: relay throughput >= 0.5 x local, relay p99 < 5 ms at concurrency 16).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.relay import Relay
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import KMSService
from tests.support.service import make_certs, start_replica, upstream_client


def run_load(socket: str, *, seconds: float, concurrency: int) -> tuple[float, float, float]:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()
    with KMSv2Client(socket, timeout=5) as setup:
        seed = os.urandom(32)
        reply = setup.encrypt(seed)

    def worker(i: int) -> None:
        with KMSv2Client(socket, timeout=5) as client:
            client.decrypt(reply.ciphertext, key_id=reply.key_id)  # connect
            out = latencies[i]
            while not stop.is_set():
                start = time.perf_counter()
                if client.decrypt(reply.ciphertext, key_id=reply.key_id) != seed:
                    raise AssertionError("wrong plaintext")
                out.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    every = sorted(x for xs in latencies for x in xs)
    p50 = every[len(every) // 2]
    p99 = every[int(len(every) * 0.99)]
    return len(every) / seconds, p50, p99


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ks-bench-", dir="/tmp"))
    try:
        keyring = tmp / "keyring"
        LocalKeyBackend.create(path=keyring).close()
        local_service = KMSService(LocalKeyBackend(path=keyring))
        local = KMSServer(local_service, socket=str(tmp / "local.sock"))
        local_service.start()
        local.start()
        certs = make_certs(tmp / "pki")
        replicas = [start_replica(keyring, certs) for _ in range(3)]
        relay = Relay([upstream_client(r.target, certs) for r in replicas])
        relay_server = KMSServer(relay, socket=str(tmp / "relay.sock"))
        relay.start()
        relay_server.start()
        rows = {
            "local plugin": run_load(
                str(tmp / "local.sock"), seconds=args.seconds, concurrency=args.concurrency
            ),
            "relay + 3 replicas": run_load(
                str(tmp / "relay.sock"), seconds=args.seconds, concurrency=args.concurrency
            ),
        }
        print(f"Decrypt, concurrency {args.concurrency}, {args.seconds:g} s each")
        print(f"{'path':22s} {'ops/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
        for name, (ops, p50, p99) in rows.items():
            print(f"{name:22s} {ops:10.0f} {p50 * 1000:8.2f} {p99 * 1000:8.2f}")
        (lops, _, lp99), (rops, _, rp99) = rows.values()
        print(f"throughput ratio relay/local: {rops / lops:.2f}  (target >= 0.5)")
        print(f"p99 ratio relay/local: {rp99 / lp99:.2f}  (relay p99 {rp99 * 1000:.2f} ms; target < 5 ms)")
        relay_server.stop(None).wait(5)
        relay.close()
        for r in replicas:
            r.stop()
        local.stop(None).wait(5)
        local_service.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
