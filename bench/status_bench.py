"""Status latency under Decrypt load, with a fast and with a deliberately slow key backend.

Run: .venv/bin/python bench/status_bench.py [--duration 6] [--delay 0.02] [--concurrency 64]

Issue 15 item 4: Status must answer from cached state however slow the key backend is. Each scenario
starts the production ``KMSServer`` + ``KMSService`` in its own process (``--serve``) over a
``kubeshield.keys.testing.InMemoryBackend``, primes it with one Encrypt, then keeps ``--concurrency``
Decrypts in flight on one HTTP/2 connection with h2load (Debian ``nghttp2-client``; as kube-apiserver
uses one connection) while this process calls Status every 5 ms on its own connection and records each
call's latency. Scenarios:

* ``fast``               the double as it is (a Decrypt takes microseconds): the floor;
* ``slow, reserve 8``    every wrap/unwrap holds one lock for ``--delay`` seconds (a slow device that
                         serialises its calls, as a PKCS#11 token does), default server settings:
                         at most ``max_workers - status_reserve`` = 24 Decrypts inside the backend,
                         the next answered UNAVAILABLE at once;
* ``slow, reserve 0``    the same slow backend without the reserve (what the server did before):
                         every worker can be taken by a waiting Decrypt.

The slow double's ``key_id()`` takes no lock, as the KeyBackend contract requires (the PKCS#11 backend
used to take its module lock there; tests/integration/keys/test_pkcs11_bounded.py covers that fix with
a real SoftHSM2 token). The ratio column is each scenario's Status p99 over the ``fast`` p99 measured
in the same run. h2load does not read gRPC trailers, so the Decrypt outcome counts (OK / UNAVAILABLE)
come from the server's own metrics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._kms_load import frame, h2load_path  # noqa: E402
from kubeshield.keys.base import Health, Wrapped  # noqa: E402
from kubeshield.keys.health import round_trip  # noqa: E402
from kubeshield.keys.testing import InMemoryBackend  # noqa: E402

_STATUS_EVERY = 0.005


class SlowBackend:
    """The in-memory double behind one lock held ``delay`` seconds per wrap/unwrap (a serialising device)."""

    name = "slow-memory"

    def __init__(self, inner: InMemoryBackend, *, delay: float) -> None:
        self._inner = inner
        self._delay = delay
        self._lock = threading.Lock()

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        with self._lock:
            time.sleep(self._delay)
            return self._inner.wrap(plaintext, aad=aad)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        with self._lock:
            time.sleep(self._delay)
            return self._inner.unwrap(wrapped, aad=aad)

    def key_id(self) -> str:
        return self._inner.key_id()  # from memory, no lock: the KeyBackend contract

    def check_health(self) -> Health:
        return round_trip(self)

    def close(self) -> None:
        self._inner.close()


def serve(socket: str, *, delay: float, reserve: int) -> int:
    """The server process: print ``ready`` once serving, stop when stdin closes; print the metrics."""
    from kubeshield.kms.metrics import KMSMetrics
    from kubeshield.kms.server import KMSServer
    from kubeshield.kms.service import KMSService

    inner = InMemoryBackend()
    backend = SlowBackend(inner, delay=delay) if delay > 0 else inner
    metrics = KMSMetrics()
    # a generous health timeout: the probe waits in the slow backend's queue like any Decrypt
    service = KMSService(backend, metrics=metrics, health_timeout=10.0)
    server = KMSServer(service, socket=socket, status_reserve=reserve, metrics=metrics)
    service.start()
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(0).wait(10)
    service.close()
    codes: dict[str, float] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("kubeshield_kms_operations_total{") and 'operation="v2.Decrypt"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            codes[code] = codes.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    print(" ".join(f"{code}={int(n)}" for code, n in sorted(codes.items())) or "none", flush=True)
    return 0


def _scenario(name: str, *, delay: float, reserve: int, args: argparse.Namespace) -> dict[str, object]:
    from kubeshield.kms.api.v2 import api_pb2
    from kubeshield.kms.client import KMSv2Client

    h2load = h2load_path()
    if h2load is None:
        raise SystemExit("h2load is not installed: apt-get install -y nghttp2-client")
    with tempfile.TemporaryDirectory(prefix="ks-status-bench-") as tmp:
        sock = str(Path(tmp) / "kms.sock")
        cmd = [sys.executable, __file__, "--serve", sock, "--delay", str(delay), "--reserve", str(reserve)]
        server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdin is not None and server.stdout is not None
        try:
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{name}: the server did not start")
            with KMSv2Client(sock, timeout=30) as client:
                reply = client.encrypt(os.urandom(32), uid="bench-prime")
                body = api_pb2.DecryptRequest(
                    ciphertext=reply.ciphertext,
                    uid="bench",
                    key_id=reply.key_id,
                    annotations=dict(reply.annotations),
                ).SerializeToString()
                data = Path(tmp) / "body"
                data.write_bytes(frame(body))
                load_cmd = [
                    h2load, "-B", f"unix:{sock}", "-c", "1", "-t", "1", "-m", str(args.concurrency),
                    "-D", f"{int((args.duration + 1.0) * 1000)}ms",
                    "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "http://localhost/v2.KeyManagementService/Decrypt",
                ]  # fmt: skip
                load = subprocess.Popen(
                    load_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
                time.sleep(1.0)  # let the load reach its steady state
                latencies: list[float] = []
                failures = 0
                end = time.monotonic() + args.duration
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    try:
                        client.status()
                    except Exception:
                        failures += 1
                    else:
                        latencies.append((time.perf_counter() - t0) * 1000.0)
                    time.sleep(_STATUS_EVERY)
                load.communicate(timeout=60)
        finally:
            server.stdin.close()
            outcome = server.stdout.read().strip()
            server.wait(30)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    return {
        "name": name,
        "n": len(latencies),
        "failed": failures,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": p99,
        "max": latencies[-1] if latencies else float("nan"),
        "decrypts": outcome,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per scenario")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds per call of the slow backend")
    parser.add_argument("--concurrency", type=int, default=64, help="Decrypts kept in flight")
    parser.add_argument("--serve", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--reserve", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, delay=args.delay, reserve=args.reserve)

    rows = [
        _scenario("fast", delay=0.0, reserve=8, args=args),
        _scenario("slow, reserve 8", delay=args.delay, reserve=8, args=args),
        _scenario("slow, reserve 0 (before)", delay=args.delay, reserve=0, args=args),
    ]
    floor = float(rows[0]["p99"])  # type: ignore[arg-type]
    print(
        f"Status latency (ms) while {args.concurrency} Decrypts are in flight; slow backend: "
        f"{args.delay * 1000:.0f} ms per call, serialised"
    )
    header = (
        f"{'scenario':<26} {'n':>6} {'fail':>5} {'p50':>8} {'p99':>8} {'max':>8} {'p99/fast':>9}  decrypts"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = float(row["p99"]) / floor if floor > 0 else float("nan")  # type: ignore[arg-type]
        print(
            f"{row['name']:<26} {row['n']:>6} {row['failed']:>5} {row['p50']:>8.2f} {row['p99']:>8.2f} "
            f"{row['max']:>8.2f} {ratio:>8.1f}x  {row['decrypts']}"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
