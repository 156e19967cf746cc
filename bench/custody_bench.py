"""Unwrap latency and throughput: through the custody process vs the local key store, in one run.

Starts a real ``kubeshield custody serve`` subprocess over a real local keyring (``LocalKeyBackend``),
then unwraps the same DEK N times through the enclave backend and N times with a ``LocalKeyBackend`` on
the same keyring in this process, and prints a table and the ratio. Bounded: at most ``--seconds``
per side.

    .venv/bin/python bench/custody_bench.py [--seconds 3] [--threads 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubeshield.keys.enclave import EnclaveKeyBackend
from kubeshield.keys.local import LocalKeyBackend
from tests.integration.custody._support import allow_policy, start_custody, write_keyring


def _run(make, seconds: float, threads: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    count = [0]

    def worker() -> None:
        backend = make()
        wrapped = backend.wrap(b"d" * 32, aad=b"bench")
        local: list[float] = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            backend.unwrap(wrapped, aad=b"bench")
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)
            count[0] += len(local)
        backend.close()

    start = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return latencies, time.perf_counter() - start, count[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        write_keyring(work / "keyring")
        custody = start_custody(
            keyring=work / "keyring", socket=work / "c.sock", policy=allow_policy(work / "p.yaml")
        )
        try:
            rows = []
            for name, make, threads in [
                ("local, 1 thread", lambda: LocalKeyBackend(path=work / "keyring"), 1),
                ("custody, 1 thread", lambda: EnclaveKeyBackend(socket=str(work / "c.sock")), 1),
                (
                    f"local, {args.threads} threads",
                    lambda: LocalKeyBackend(path=work / "keyring"),
                    args.threads,
                ),
                (
                    f"custody, {args.threads} threads",
                    lambda: EnclaveKeyBackend(socket=str(work / "c.sock")),
                    args.threads,
                ),
            ]:
                lat, elapsed, n = _run(make, args.seconds, threads)
                lat.sort()
                rows.append(
                    (name, n / elapsed, statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99)] * 1e6)
                )
        finally:
            custody.stop()
    print(f"{'unwrap of a 32-byte DEK':<24} {'ops/s':>10} {'p50 us':>9} {'p99 us':>9}")
    for name, ops, p50, p99 in rows:
        print(f"{name:<24} {ops:>10.0f} {p50:>9.1f} {p99:>9.1f}")
    print(f"ratio custody/local, 1 thread: latency p50 x{rows[1][2] / rows[0][2]:.1f}, "
          f"throughput x{rows[1][1] / rows[0][1]:.3f}")  # fmt: skip
    print(f"ratio custody/local, {args.threads} threads: throughput x{rows[3][1] / rows[2][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
