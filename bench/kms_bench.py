"""KMS v2 plugin throughput and latency over a unix socket, against bare gRPC floors, in one run.

Run: .venv/bin/python bench/kms_bench.py [--duration 1] [--warmup 0.25] [--repeat 1] [--client auto]
                                         [--ops Status,Encrypt,Decrypt] [--no-tuning]

What runs where (nothing is measured in this process):

* every server is its own process (``bench/_kms_servers.py``) on a unix socket in a temp dir, all of
  them up at once so that each cell runs on every server back to back (other load on the machine then
  hits them alike):
  the plugin as production builds it (``KMSServer``, grpc sync, 32 threads), an experimental grpc.aio
  servicer around the same ``KMSService`` (backend call inline on the loop, and via
  ``asyncio.to_thread``), and the floors: sync and aio servers that answer fixed bytes and do no work.
  The plugin uses the real ``LocalKeyBackend`` with a keyring created at start in a temp dir.
* the load is ``h2load`` (Debian ``nghttp2-client``; C, one h2c connection over the unix socket, N
  streams in flight) when installed, else a grpc.aio client process (``bench/_kms_load.py``). Both send
  pre-serialized requests; the warm-up is not measured; every cell is bounded by ``--duration``.
* before any load, each request is sent once through grpc and must answer OK (h2load does not read the
  grpc-status trailer); the plugin's Decrypt must give back the plaintext its Encrypt wrapped.

Each cell (op x concurrency 1/16/64): req/s, p50 and p99 latency, the server's CPU time per call
(user + system of all its threads over the measured window: the figure least disturbed by other load on
the machine), and throughput ratios to the floor of the same kind and to the best floor. Then a
sync-server tuning sweep (Decrypt at 16 in flight) and a check of the Python client against h2load on
the same floor. ``--repeat N`` measures each cell N times per server, interleaved, and shows each metric's
median (use it, e.g. ``--ops Decrypt --repeat 5``, when the machine is shared: check the load average
the bench prints).

Targets (issue, 2-core machine): Decrypt throughput >= 0.7 of the floor; p99 Decrypt < 2 ms at 16 in
flight. Not a test: nothing is asserted. The default run takes about 80 s.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench._kms_load import Cell, h2load_path, preflight, run_aio_client, run_h2load  # noqa: E402
from kubeshield.kms.api.v2 import api_pb2 as pb  # noqa: E402

OPS = ("Status", "Encrypt", "Decrypt")
CONCURRENCY = (1, 16, 64)
TARGET_RATIO = 0.7
TARGET_P99_MS = 2.0
TARGET_P99_CONCURRENCY = 16


@dataclass(frozen=True)
class Server:
    """One server process to measure: its label, family (sync/aio), role and how to start it."""

    label: str
    family: str
    role: str  # "plugin" | "floor"
    kind: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


MAIN = (
    Server("sync KMSServer", "sync", "plugin", "plugin-sync"),
    Server("aio inline", "aio", "plugin", "plugin-aio-inline"),
    Server("aio to_thread", "aio", "plugin", "plugin-aio-thread"),
    Server("floor sync", "sync", "floor", "floor-sync"),
    Server("floor aio", "aio", "floor", "floor-aio"),
)
TUNING = (
    Server("workers=32 (as KMSServer)", "sync", "plugin", "plugin-sync-tuned", ("--workers", "32")),
    Server("workers=32 again (control)", "sync", "plugin", "plugin-sync-tuned", ("--workers", "32")),
    Server("workers=4", "sync", "plugin", "plugin-sync-tuned", ("--workers", "4")),
    Server("workers=8", "sync", "plugin", "plugin-sync-tuned", ("--workers", "8")),
    Server("workers=128", "sync", "plugin", "plugin-sync-tuned", ("--workers", "128")),
    Server("so_reuseport unset", "sync", "plugin", "plugin-sync-tuned", ("--reuseport", "-1")),
    Server("max_concurrent_streams=16", "sync", "plugin", "plugin-sync-tuned", ("--streams", "16")),
    Server(
        "GRPC_POLL_STRATEGY=poll", "sync", "plugin", "plugin-sync-tuned", (), {"GRPC_POLL_STRATEGY": "poll"}
    ),
)
CLIENT_CHECK = Server("floor sync", "sync", "floor", "floor-sync")

Runner = Callable[..., Cell]


@dataclass(frozen=True)
class Live:
    """A running server: its socket, pid and checked request bodies."""

    server: Server
    socket: str
    pid: int
    bodies: dict[str, bytes]


@contextmanager
def _fleet(servers: tuple[Server, ...]) -> Iterator[list[Live]]:
    """Start every server in its own process at once; stop them all (by closing stdin) on exit.

    They stay up together so each cell can be measured on every server back to back: an idle grpc
    server costs next to nothing, and interleaving spreads other load on the machine evenly.
    """
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            sockets = []
            for i, server in enumerate(servers):
                socket = os.path.join(tmp, f"{i}.sock")
                env = dict(os.environ, GRPC_VERBOSITY="ERROR", **server.env)
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(ROOT / "bench" / "_kms_servers.py"),
                            "--kind",
                            server.kind,
                            "--socket",
                            socket,
                            *server.args,
                        ],
                        stdin=subprocess.PIPE,
                        env=env,
                    )
                )
                sockets.append(socket)
            deadline = time.monotonic() + 60
            for server, socket, proc in zip(servers, sockets, procs, strict=True):
                while not os.path.exists(socket):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"server {server.label!r} did not start")
                    time.sleep(0.02)
            yield [
                Live(server, socket, proc.pid, _requests(socket, server.role))
                for server, socket, proc in zip(servers, sockets, procs, strict=True)
            ]
        finally:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _requests(socket: str, role: str) -> dict[str, bytes]:
    """Serialized requests for each op, each checked once through grpc (status OK, right plaintext)."""
    seed = os.urandom(32)
    status = pb.StatusRequest().SerializeToString()
    encrypt = pb.EncryptRequest(plaintext=seed, uid="bench").SerializeToString()
    preflight(socket, "Status", status)
    reply = pb.EncryptResponse.FromString(preflight(socket, "Encrypt", encrypt))
    decrypt = pb.DecryptRequest(
        ciphertext=reply.ciphertext, key_id=reply.key_id, annotations=dict(reply.annotations), uid="bench"
    ).SerializeToString()
    plain = pb.DecryptResponse.FromString(preflight(socket, "Decrypt", decrypt)).plaintext
    if role == "plugin" and plain != seed:
        raise RuntimeError("the plugin's Decrypt did not return the plaintext: the benchmark found a bug")
    return {"Status": status, "Encrypt": encrypt, "Decrypt": decrypt}


def _measure(
    fleet: list[Live], cells: list[tuple[str, int]], run: Runner, args: argparse.Namespace
) -> dict[str, dict[tuple[str, int], Cell]]:
    """Each cell on every server back to back (in a shuffled order each round), ``args.repeat`` rounds;
    each metric's median."""
    got: dict[str, dict[tuple[str, int], list[Cell]]] = {
        live.server.label: {key: [] for key in cells} for live in fleet
    }
    order = list(fleet)
    shuffle = random.Random(0).shuffle
    for op, c in cells:
        for _ in range(args.repeat):
            shuffle(order)
            for live in order:
                got[live.server.label][(op, c)].append(
                    run(
                        live.socket,
                        op,
                        live.bodies[op],
                        concurrency=c,
                        duration=args.duration,
                        warmup=args.warmup,
                        server_pid=live.pid,
                    )
                )
    return {label: {key: _median(runs) for key, runs in per.items()} for label, per in got.items()}


def _in_process_cost(seconds: float = 0.3) -> dict[str, float]:
    """Microseconds per call of the plugin's own work, no gRPC: parse, servicer method, serialize.

    Uses the production ``KMSv2Servicer`` on a started ``KMSService`` over a fresh local keyring; the
    success path never touches the gRPC context, so ``None`` stands in for it.
    """
    from kubeshield.keys.local import LocalKeyBackend
    from kubeshield.kms.server import KMSv2Servicer
    from kubeshield.kms.service import KMSService

    with tempfile.TemporaryDirectory(prefix="kms-bench-keys-") as tmp:
        service = KMSService(LocalKeyBackend.create(path=Path(tmp) / "keyring"))
        service.start()
        try:
            servicer = KMSv2Servicer(service)
            seed = os.urandom(32)
            sealed = service.encrypt(seed, uid="bench")
            work: dict[str, tuple[Any, bytes]] = {
                "Status": (pb.StatusRequest, pb.StatusRequest().SerializeToString()),
                "Encrypt": (
                    pb.EncryptRequest,
                    pb.EncryptRequest(plaintext=seed, uid="b").SerializeToString(),
                ),
                "Decrypt": (
                    pb.DecryptRequest,
                    pb.DecryptRequest(
                        ciphertext=sealed.ciphertext, key_id=sealed.key_id, uid="b"
                    ).SerializeToString(),
                ),
            }
            costs = {}
            for op, (message, body) in work.items():
                method = getattr(servicer, op)
                n, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds:
                    for _ in range(100):
                        method(message.FromString(body), None).SerializeToString()
                    n += 100
                costs[op] = elapsed * 1e6 / n
            return costs
        finally:
            service.close()


def _median(runs: list[Cell]) -> Cell:
    """Each metric's median over the rounds (counts summed)."""

    def med(values: list[float]) -> float:
        kept = [v for v in values if not math.isnan(v)]
        return statistics.median(kept) if kept else float("nan")

    return Cell(
        med([r.rps for r in runs]), med([r.p50 for r in runs]), med([r.p99 for r in runs]),
        sum(r.n for r in runs), med([r.cpu_us for r in runs]), sum(r.errors for r in runs),
    )  # fmt: skip


def _fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=0.25, help="unmeasured seconds before each cell")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per cell; each metric's median")
    parser.add_argument(
        "--ops", default=",".join(OPS), help="comma-separated subset of Status,Encrypt,Decrypt"
    )
    parser.add_argument("--client", choices=("auto", "h2load", "aio"), default="auto")
    parser.add_argument("--no-tuning", action="store_true", help="skip the sync tuning sweep")
    args = parser.parse_args(argv)
    if not 0.2 <= args.duration <= 30 or not 0 <= args.warmup <= 10 or not 1 <= args.repeat <= 10:
        parser.error("--duration must be 0.2..30 s, --warmup 0..10 s, --repeat 1..10")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    client = args.client
    if client == "auto":
        client = "h2load" if h2load_path() else "aio"
        if client == "aio":
            console.print(
                "[yellow]h2load not found (Debian nghttp2-client): using the grpc.aio client process, "
                "which shares the CPU with the servers[/]"
            )
    if client == "h2load" and h2load_path() is None:
        parser.error("h2load is not installed (apt-get install nghttp2-client)")
    run: Runner = run_h2load if client == "h2load" else run_aio_client
    load_before = os.getloadavg()[0]
    started = time.monotonic()

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    if not ops or set(ops) - set(OPS):
        parser.error(f"--ops takes a comma-separated subset of {','.join(OPS)}")
    grid = [(op, c) for op in ops for c in CONCURRENCY]
    tune_cell = ("Decrypt", TARGET_P99_CONCURRENCY)
    check_cells = [("Decrypt", c) for c in CONCURRENCY]

    with _fleet(MAIN) as fleet:
        main_results = _measure(fleet, grid, run, args)
    tune_results: dict[str, Cell] = {}
    if not args.no_tuning:
        with _fleet(TUNING) as fleet:
            tune_results = {k: v[tune_cell] for k, v in _measure(fleet, [tune_cell], run, args).items()}
    check: dict[str, dict[tuple[str, int], Cell]] = {}
    if client == "h2load":
        with _fleet((CLIENT_CHECK,)) as fleet:
            check = {
                name: _measure(fleet, check_cells, runner, args)[CLIENT_CHECK.label]
                for name, runner in (("h2load", run_h2load), ("aio", run_aio_client))
            }

    own_work = _in_process_cost()
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    floors = {s.family: main_results[s.label] for s in MAIN if s.role == "floor"}

    def best_floor(key: tuple[str, int]) -> Cell:
        return max((f[key] for f in floors.values()), key=lambda c: c.rps)

    table = Table(
        title=f"KMS v2 over a unix socket: {cores} cores, client {client}, {args.duration:g} s per cell "
        f"after {args.warmup:g} s warm-up, median of {args.repeat}"
    )
    for col in (
        "server",
        "op",
        "in flight",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/call",
        "x floor",
        "x best floor",
    ):
        table.add_column(col, justify="right")
    for server in MAIN:
        for op, c in grid:
            cell = main_results[server.label][(op, c)]
            own = floors[server.family][(op, c)]
            table.add_row(
                server.label, op, str(c), f"{cell.rps:,.0f}", _fmt(cell.p50, ".2f"), _fmt(cell.p99, ".2f"),
                _fmt(cell.cpu_us, ".0f"), _ratio(cell.rps, own.rps),
                _ratio(cell.rps, best_floor((op, c)).rps),
            )  # fmt: skip
        table.add_section()
    console.print(table)

    if tune_results:
        tune = Table(title=f"sync server tuning: Decrypt, {TARGET_P99_CONCURRENCY} in flight")
        for col in ("variant", "req/s", "p50 ms", "p99 ms", "CPU µs/call", "refused"):
            tune.add_column(col, justify="right")
        for label, cell in tune_results.items():
            tune.add_row(
                label, f"{cell.rps:,.0f}", _fmt(cell.p50, ".2f"), _fmt(cell.p99, ".2f"),
                _fmt(cell.cpu_us, ".0f"), str(cell.errors),
            )  # fmt: skip
        console.print(tune)
        base, control = (tune_results[s.label].rps for s in TUNING[:2])
        console.print(
            f"noise band: two identical servers differ by {abs(control - base) / max(base, control):.0%} "
            "in throughput in this run; a variant is better only if it beats both by more than that"
        )

    if check:
        cc = Table(title="load generator check: floor sync, Decrypt, h2load vs the grpc.aio client process")
        for col in ("in flight", "h2load req/s", "h2load p99 ms", "aio client req/s", "aio client p99 ms"):
            cc.add_column(col, justify="right")
        for key in check_cells:
            h, a = check["h2load"][key], check["aio"][key]
            cc.add_row(str(key[1]), f"{h.rps:,.0f}", _fmt(h.p99, ".2f"), f"{a.rps:,.0f}", _fmt(a.p99, ".2f"))
        console.print(cc)

    console.print(
        "plugin's own work per call, in process, no gRPC (parse + KMSv2Servicer + serialize): "
        + ", ".join(f"{op} {us:.0f} µs" for op, us in own_work.items())
    )

    # --- verdicts ---------------------------------------------------------------------------------
    console.print(
        f"load average {load_before:.1f} before, {load_after:.1f} after, on {cores} cores; run took "
        f"{elapsed:.0f} s" + ("  [yellow](other processes share the CPU: numbers are noisy)[/]"
                              if max(load_before, load_after) > cores * 0.75 else "")
    )  # fmt: skip
    if "Decrypt" not in ops:
        console.print("no verdicts: the targets are about Decrypt, which --ops left out")
        return 0
    key16 = ("Decrypt", TARGET_P99_CONCURRENCY)
    top = best_floor(key16)
    for server in MAIN:
        if server.role != "plugin":
            continue
        res = main_results[server.label]
        ratios = [res[("Decrypt", c)].rps / floors[server.family][("Decrypt", c)].rps for c in CONCURRENCY]
        vs_best = [res[("Decrypt", c)].rps / best_floor(("Decrypt", c)).rps for c in CONCURRENCY]
        ok_ratio = min(ratios) >= TARGET_RATIO
        p99 = res[key16].p99
        console.print(
            f"[bold]{server.label}[/]: Decrypt throughput/floor {min(ratios):.2f}..{max(ratios):.2f} "
            f"(best floor {min(vs_best):.2f}..{max(vs_best):.2f}) "
            f"{'[green]MEETS' if ok_ratio else '[red]MISSES'}[/] >= {TARGET_RATIO}; "
            f"p99 Decrypt @{TARGET_P99_CONCURRENCY} = {p99:.2f} ms "
            f"{'[green]MEETS' if p99 < TARGET_P99_MS else '[red]MISSES'}[/] < {TARGET_P99_MS:g} ms"
        )
    needed = TARGET_P99_CONCURRENCY / (TARGET_P99_MS / 1e3)
    console.print(
        f"floor check: the best bare server did {top.rps:,.0f} req/s with p99 {top.p99:.2f} ms at "
        f"{TARGET_P99_CONCURRENCY} in flight; p99 < {TARGET_P99_MS:g} ms there needs a mean under "
        f"{TARGET_P99_MS:g} ms, i.e. well over {needed:,.0f} req/s (Little's law) — "
        + (
            "[red]no Python gRPC server reached that here: the latency target is below the floor[/]"
            if top.p99 >= TARGET_P99_MS
            else "[green]the floor allows it[/]"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
