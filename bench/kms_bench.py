"""KMS plugin throughput and latency over a unix socket, against a bare gRPC floor.

Run: .venv/bin/python bench/kms_bench.py [--duration 2] [--modes sync,aio]

For each server kind (the plugin, and a bare gRPC server that answers fixed bytes and does no work,
each as grpc's sync thread-pool server and as grpc.aio) a *separate server process* is started on a
unix socket in a temp dir, and this process drives Status, Encrypt and Decrypt at concurrency 1, 16 and
64 (client threads sharing one channel, as kube-apiserver shares one connection) for ``--duration``
seconds each. The plugin uses the real local keyring backend. It prints p50/p99 latency, throughput and
the plugin/floor throughput ratio. Targets: Decrypt >= 0.7 of the floor; p99 Decrypt < 2 ms at c=16.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
OPS = ("Status", "Encrypt", "Decrypt")
CONCURRENCY = (1, 16, 64)


# --- servers (run in a child process) ------------------------------------------------------------


def _floor_handlers() -> grpc.GenericRpcHandler:
    from kubeshield.kms.api.v2 import api_pb2 as pb

    replies = {
        "Status": pb.StatusResponse(version="v2", healthz="ok", key_id="local:v1:0000000000000000"),
        "Encrypt": pb.EncryptResponse(ciphertext=b"c" * 69, key_id="local:v1:0000000000000000"),
        "Decrypt": pb.DecryptResponse(plaintext=b"p" * 32),
    }
    raw = {name: reply.SerializeToString() for name, reply in replies.items()}
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(lambda req, ctx, b=body: b) for name, body in raw.items()
    }
    return grpc.method_handlers_generic_handler("v2.KeyManagementService", handlers)


def _aio_floor_handlers() -> grpc.GenericRpcHandler:
    from kubeshield.kms.api.v2 import api_pb2 as pb

    bodies = {
        "Status": pb.StatusResponse(version="v2", healthz="ok", key_id="local:v1:0000000000000000"),
        "Encrypt": pb.EncryptResponse(ciphertext=b"c" * 69, key_id="local:v1:0000000000000000"),
        "Decrypt": pb.DecryptResponse(plaintext=b"p" * 32),
    }
    raw = {name: reply.SerializeToString() for name, reply in bodies.items()}

    def make(body: bytes):
        async def handler(request, context):
            return body

        return handler

    handlers = {name: grpc.unary_unary_rpc_method_handler(make(body)) for name, body in raw.items()}
    return grpc.method_handlers_generic_handler("v2.KeyManagementService", handlers)


def _make_service(tmp: str):
    from kubeshield.keys.local import LocalKeyBackend
    from kubeshield.kms.service import KMSService

    backend = LocalKeyBackend.create(path=Path(tmp) / "keyring")
    service = KMSService(backend)
    service.start()
    return service


def _serve(kind: str, socket: str) -> None:
    stop = threading.Event()
    tmp = tempfile.mkdtemp(prefix="kms-bench-")
    if kind == "plugin-sync":
        from kubeshield.kms.server import KMSServer

        server = KMSServer(_make_service(tmp), socket=socket)
        server.start()
        sys.stdin.read()  # parent closes stdin to stop us
        server.stop(None).wait(5)
        return
    if kind == "floor-sync":
        from concurrent import futures

        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        srv.add_generic_rpc_handlers((_floor_handlers(),))
        srv.add_insecure_port("unix:" + socket)
        srv.start()
        sys.stdin.read()
        srv.stop(None)
        return

    async def main() -> None:
        srv = grpc.aio.server()
        if kind == "floor-aio":
            srv.add_generic_rpc_handlers((_aio_floor_handlers(),))
        else:
            srv.add_generic_rpc_handlers((_aio_plugin_handler(_make_service(tmp)),))
        srv.add_insecure_port("unix:" + socket)
        await srv.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await srv.stop(None)

    del stop
    asyncio.run(main())


def _aio_plugin_handler(service) -> grpc.GenericRpcHandler:
    """The plugin as grpc.aio would run it: backend calls go to a thread pool (they may block)."""
    from concurrent import futures

    from kubeshield.kms.api.v2 import api_pb2 as pb
    from kubeshield.kms.server import map_error

    pool = futures.ThreadPoolExecutor(max_workers=32)

    def status(req):
        r = service.status()
        return pb.StatusResponse(version=r.version, healthz=r.healthz, key_id=r.key_id)

    def encrypt(req):
        r = service.encrypt(req.plaintext, uid=req.uid)
        return pb.EncryptResponse(ciphertext=r.ciphertext, key_id=r.key_id, annotations=dict(r.annotations))

    def decrypt(req):
        p = service.decrypt(req.ciphertext, key_id=req.key_id, annotations=dict(req.annotations), uid=req.uid)
        return pb.DecryptResponse(plaintext=p)

    def wrap(fn):
        async def handler(request, context):
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, fn, request)
            except Exception as exc:
                code, details = map_error(exc)
                await context.abort(code, details)

        return handler

    methods = {
        "Status": (status, pb.StatusRequest, pb.StatusResponse),
        "Encrypt": (encrypt, pb.EncryptRequest, pb.EncryptResponse),
        "Decrypt": (decrypt, pb.DecryptRequest, pb.DecryptResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            wrap(fn), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for name, (fn, req, resp) in methods.items()
    }
    return grpc.method_handlers_generic_handler("v2.KeyManagementService", handlers)


# --- client (this process) -----------------------------------------------------------------------


def _requests(socket: str) -> dict[str, bytes]:
    from kubeshield.kms.api.v2 import api_pb2 as pb
    from kubeshield.kms.client import KMSv2Client

    with KMSv2Client(socket, timeout=10) as client:
        try:
            reply = client.encrypt(os.urandom(32), uid="bench")
            key_id, ciphertext = reply.key_id, reply.ciphertext
        except Exception:  # the floor answers fixed bytes; any well-formed request will do
            key_id, ciphertext = "local:v1:0000000000000000", b"c" * 69
    return {
        "Status": pb.StatusRequest().SerializeToString(),
        "Encrypt": pb.EncryptRequest(plaintext=os.urandom(32), uid="bench").SerializeToString(),
        "Decrypt": pb.DecryptRequest(ciphertext=ciphertext, key_id=key_id, uid="bench").SerializeToString(),
    }


def _load(socket: str, op: str, body: bytes, concurrency: int, duration: float) -> tuple[float, float, float]:
    with grpc.insecure_channel("unix:" + socket) as channel:
        call = channel.unary_unary(f"/v2.KeyManagementService/{op}")
        for _ in range(50):  # warm up
            call(body, timeout=10)
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        start_gate = threading.Barrier(concurrency + 1)
        deadline = [0.0]

        def worker(out: list[float]) -> None:
            start_gate.wait()
            end = deadline[0]
            clock = time.perf_counter
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                call(body, timeout=10)
                out.append(clock() - t0)

        threads = [threading.Thread(target=worker, args=(latencies[i],)) for i in range(concurrency)]
        for t in threads:
            t.start()
        begin = time.perf_counter()
        deadline[0] = begin + duration
        start_gate.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - begin
    samples = sorted(x for lst in latencies for x in lst)
    if not samples:
        return 0.0, float("nan"), float("nan")
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return len(samples) / elapsed, p50, p99


def _run_kind(kind: str, duration: float) -> dict[tuple[str, int], tuple[float, float, float]]:
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        socket = os.path.join(tmp, "kms.sock")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--socket", socket], stdin=subprocess.PIPE, env=env
        )
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(socket):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{kind} server did not start")
                time.sleep(0.05)
            bodies = _requests(socket)
            return {(op, c): _load(socket, op, bodies[op], c, duration) for op in OPS for c in CONCURRENCY}
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--modes", default="sync,aio", help="server flavours to compare: sync, aio")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.socket)
        return 0

    from rich.console import Console
    from rich.table import Table

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = {}
    for mode in modes:
        for role in ("floor", "plugin"):
            results[(role, mode)] = _run_kind(f"{role}-{mode}", args.duration)

    console = Console()
    table = Table(title=f"KMS v2 over a unix socket ({os.cpu_count()} cores, {args.duration:g}s per cell)")
    for col in (
        "server",
        "op",
        "conc",
        "plugin req/s",
        "p50 ms",
        "p99 ms",
        "floor req/s",
        "floor p99",
        "ratio",
    ):
        table.add_column(col, justify="right")
    for mode in modes:
        for op in OPS:
            for c in CONCURRENCY:
                rps, p50, p99 = results[("plugin", mode)][(op, c)]
                frps, _, fp99 = results[("floor", mode)][(op, c)]
                table.add_row(
                    mode, op, str(c), f"{rps:,.0f}", f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}",
                    f"{frps:,.0f}", f"{fp99 * 1e3:.3f}", f"{rps / frps:.2f}" if frps else "-",
                )  # fmt: skip
    console.print(table)
    for mode in modes:
        dec = [
            results[("plugin", mode)][("Decrypt", c)][0] / results[("floor", mode)][("Decrypt", c)][0]
            for c in CONCURRENCY
        ]
        p99_16 = results[("plugin", mode)][("Decrypt", 16)][2] * 1e3
        console.print(
            f"[bold]{mode}[/]: Decrypt throughput/floor = {min(dec):.2f}..{max(dec):.2f} (target >= 0.70); "
            f"p99 Decrypt @16 = {p99_16:.3f} ms (target < 2 ms)"
        )
    if len(modes) > 1:
        best = max(modes, key=lambda m: sum(results[("plugin", m)][("Decrypt", c)][0] for c in CONCURRENCY))
        console.print(f"faster plugin server for Decrypt: [bold]{best}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
