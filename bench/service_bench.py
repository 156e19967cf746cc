"""The price of the network hop: Decrypt through relay + 3 mTLS replicas versus a local plugin, one run.

Run: .venv/bin/python bench/service_bench.py [--duration 1] [--warmup 0.25] [--repeat 3]
                                             [--concurrency 1,16,64] [--client auto]
                                             [--no-diagnose]

What runs where (nothing is served from this process; ``bench/_service_fleet.py``):

* the local plugin: ``kubeshield kms serve --keyring K --socket local.sock``;
* three replicas: ``kubeshield kms serve --listen tcp://127.0.0.1:0 --tls-cert --tls-key --client-ca
  --allow <relay identity>``, each on its own byte-identical copy of the same keyring;
* the relay: ``kubeshield kms relay --socket relay.sock --upstream https://127.0.0.1:P,... --tls-cert
  --tls-key --ca`` (grpc.aio on both sides, Decrypt forwarded as the received bytes).

Keyring and TLS material (ECDSA P-256 CA, server and client certificates) are generated at start in a temp
dir removed on exit; every process is stopped by PID. The load is ``h2load`` (Debian ``nghttp2-client``: C,
one h2c connection over the unix socket, N streams in flight) when installed, else a grpc.aio client
process; both send one pre-serialized Decrypt request. Before the load, that request goes once through grpc
to every path and must return the plaintext that was encrypted (a ciphertext made through the relay must
also decrypt on the local plugin: the keyrings agree); after the load it is checked again, and the relay's
log is searched for failed calls (h2load does not read the grpc-status trailer).

Cells: each concurrency, every path back to back in a shuffled order per round, ``--repeat`` rounds, each
metric's median. Per cell: req/s, p50, p99, the server-side CPU per call (user + system time of the
serving processes over the measured window, from /proc/<pid>/stat, split into relay and replicas), and
how busy the whole machine was. ``--no-diagnose`` skips the breakdown run (the grpc.aio client at 16 in
flight against the local plugin, the relay, and one replica directly over mTLS: what the hop costs
without the relay in the way) and the in-process cost of the relay's Python logic.

Targets (issue 6, loopback): relay Decrypt throughput >= 0.5 x local; relay p99 < 5 ms at 16 in flight.
Not a test: nothing is asserted. The default run takes about 75 s.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench._kms_load import h2load_path, preflight  # noqa: E402
from bench._service_fleet import Fleet, fleet  # noqa: E402
from bench._service_load import (  # noqa: E402
    Sampled,
    TLSFiles,
    run_aio_sampled,
    run_h2load_rate_sampled,
    run_h2load_sampled,
)
from kubeshield.kms.api.v2 import api_pb2 as pb  # noqa: E402

TARGET_RATIO = 0.5
TARGET_P99_MS = 5.0
TARGET_CONCURRENCY = 16
DIAGNOSE_CONCURRENCY = 16


@dataclass(frozen=True)
class Route:
    """One way to reach Decrypt: a label, its unix socket and the processes that serve it."""

    key: str
    label: str
    socket: str
    roles: tuple[str, ...]  # the first is the front process (plugin or relay)


@dataclass(frozen=True)
class Result:
    """Medians of one (path, concurrency) over the rounds."""

    rps: float
    p50: float
    p99: float
    n: int
    errors: int
    cpu_front: float  # µs/call in the front process (plugin, or relay)
    cpu_replicas: float  # µs/call summed over the replicas (nan for the local plugin)
    busy: float  # fraction of all cores busy on the machine


def _med(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else float("nan")


def _summarise(path: Route, runs: list[Sampled]) -> Result:
    reps = tuple(r for r in path.roles[1:])
    return Result(
        rps=_med([r.cell.rps for r in runs]),
        p50=_med([r.cell.p50 for r in runs]),
        p99=_med([r.cell.p99 for r in runs]),
        n=sum(r.cell.n for r in runs),
        errors=sum(r.cell.errors for r in runs),
        cpu_front=_med([r.us_per_call(path.roles[:1]) for r in runs]),
        cpu_replicas=_med([r.us_per_call(reps) for r in runs]) if reps else float("nan"),
        busy=_med([r.busy for r in runs]),
    )


def _decrypt_body(f: Fleet, paths: list[Route]) -> tuple[bytes, bytes]:
    """A Decrypt request checked on every path; raises if any path gives back other bytes."""
    seed = os.urandom(32)
    sealed = pb.EncryptResponse.FromString(
        preflight(
            f.relay_socket, "Encrypt", pb.EncryptRequest(plaintext=seed, uid="bench").SerializeToString()
        )
    )
    body = pb.DecryptRequest(
        ciphertext=sealed.ciphertext, key_id=sealed.key_id, annotations=dict(sealed.annotations), uid="bench"
    ).SerializeToString()
    _check(paths, body, seed)
    return body, seed


def _check(paths: list[Route], body: bytes, seed: bytes) -> None:
    for path in paths:
        plain = pb.DecryptResponse.FromString(preflight(path.socket, "Decrypt", body)).plaintext
        if plain != seed:
            raise RuntimeError(
                f"{path.label}: Decrypt did not return the plaintext: the benchmark found a bug"
            )


Runner = Callable[[Route, int], Sampled]


def _grid(
    paths: list[Route], concurrencies: list[int], run: Runner, repeat: int
) -> dict[tuple[str, int], Result]:
    """Every path back to back per round (shuffled order), ``repeat`` rounds per concurrency."""
    got: dict[tuple[str, int], list[Sampled]] = {(p.key, c): [] for p in paths for c in concurrencies}
    shuffle = random.Random(0).shuffle
    order = list(paths)
    for c in concurrencies:
        for _ in range(repeat):
            shuffle(order)
            for path in order:
                got[(path.key, c)].append(run(path, c))
    by_key = {p.key: p for p in paths}
    return {key: _summarise(by_key[key[0]], runs) for key, runs in got.items()}


def _relay_logic_cost(seconds: float = 0.3) -> float:
    """In-process µs per Decrypt of ``Relay.decrypt`` (the request check once, round robin, the forward
    call) on its event loop, with upstreams that answer at once (no gRPC, no network)."""
    import asyncio

    from kubeshield.kms.relay import Relay

    reply = pb.DecryptResponse(plaintext=os.urandom(32)).SerializeToString()

    class Instant:
        def __init__(self, name: str) -> None:
            self.name = name

        async def status(self, *, timeout: float) -> Any:
            from kubeshield.kms.service import StatusReply

            return StatusReply(version="v2", healthz="ok", key_id="local:v1:0")

        async def decrypt(self, request: bytes, *, timeout: float) -> bytes:
            return reply

        async def close(self) -> None:
            pass

    relay = Relay([Instant(f"r{i}") for i in range(3)])  # type: ignore[misc]  # only these are called
    body = pb.DecryptRequest(ciphertext=b"c" * 69, key_id="local:v1:0", uid="b").SerializeToString()

    async def measure() -> float:
        await relay.check_now()
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(200):
                await relay.decrypt(body)
            n += 200
        await relay.close()
        return elapsed * 1e6 / n

    return asyncio.run(measure())


def _fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "-"


def _failed_calls(log: Path) -> int:
    """Lines in a relay log that report a failed call (INFO "request failed" / ERROR "internal error")."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "request failed" in line or "internal error" in line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=0.25, help="unmeasured seconds before each cell")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per cell; each metric's median")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated calls in flight")
    parser.add_argument("--client", choices=("auto", "h2load", "aio"), default="auto")
    parser.add_argument(
        "--rate", type=int, default=400, help="open-loop cell: Decrypt/s offered by h2load --rps (0: skip)"
    )
    parser.add_argument("--no-diagnose", action="store_true", help="skip the direct-to-replica breakdown")
    args = parser.parse_args(argv)
    try:
        concurrencies = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error("--concurrency takes comma-separated integers, e.g. 1,16,64")
    if not concurrencies or not all(1 <= c <= 256 for c in concurrencies):
        parser.error("--concurrency values must be 1..256")
    if not 0 <= args.rate <= 100_000:
        parser.error("--rate must be 0..100000")
    if not 0.2 <= args.duration <= 30 or not 0 <= args.warmup <= 10 or not 1 <= args.repeat <= 10:
        parser.error("--duration must be 0.2..30 s, --warmup 0..10 s, --repeat 1..10")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(140, Console().width))
    client = args.client
    if client == "auto":
        client = "h2load" if h2load_path() else "aio"
        if client == "aio":
            console.print(
                "[yellow]h2load not found (Debian nghttp2-client): using the grpc.aio client process[/]"
            )
    if client == "h2load" and h2load_path() is None:
        parser.error("h2load is not installed (apt-get install nghttp2-client)")

    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    started = time.monotonic()
    with fleet() as f:
        up = time.monotonic() - started
        replicas = tuple(p.role for p in f.replicas)
        pids: Mapping[str, int] = {p.role: p.pid for p in (f.local, f.relay, *f.replicas)}
        paths = [
            Route("local", "local plugin", f.local_socket, ("local",)),
            Route("relay", "relay+3 replicas", f.relay_socket, ("relay", *replicas)),
        ]
        body, seed = _decrypt_body(f, paths)
        # the keyrings agree: a ciphertext the relay's replicas made decrypts on the local plugin too
        # (checked in _decrypt_body, which encrypts through the relay and decrypts on every path)

        def run(path: Route, c: int) -> Sampled:
            if client == "h2load":
                return run_h2load_sampled(
                    path.socket,
                    "Decrypt",
                    body,
                    concurrency=c,
                    duration=args.duration,
                    warmup=args.warmup,
                    pids=pids,
                )
            return run_aio_sampled(
                "unix:" + path.socket, "Decrypt", body, concurrency=c, duration=args.duration,
                warmup=args.warmup, pids=pids,
            )  # fmt: skip

        results = _grid(paths, concurrencies, run, args.repeat)

        open_loop: dict[str, Result] = {}
        if client == "h2load" and args.rate > 0:
            rate_runs: dict[str, list[Sampled]] = {p.key: [] for p in paths}
            order = list(paths)
            for _ in range(args.repeat):
                random.Random(1).shuffle(order)
                for path in order:
                    rate_runs[path.key].append(
                        run_h2load_rate_sampled(
                            path.socket, "Decrypt", body, rate=args.rate, concurrency=TARGET_CONCURRENCY,
                            duration=args.duration, warmup=args.warmup, pids=pids,
                        )
                    )  # fmt: skip
            open_loop = {p.key: _summarise(p, rate_runs[p.key]) for p in paths}

        diag: dict[str, Result] = {}
        if not args.no_diagnose:
            tls = TLSFiles(f.ca, f.relay_cert, f.relay_key)
            direct = f.replica_targets[0]
            cases: list[tuple[str, str, TLSFiles | None, tuple[str, ...]]] = [
                ("local plugin (unix socket)", "unix:" + f.local_socket, None, ("local",)),
                ("relay + 3 replicas", "unix:" + f.relay_socket, None, ("relay", *replicas)),
                (f"replica-0 directly, mTLS TCP ({direct})", direct, tls, (replicas[0],)),
            ]
            runs: dict[str, list[Sampled]] = {label: [] for label, *_ in cases}
            for _ in range(2):
                for label, target, t, _roles in cases:
                    runs[label].append(
                        run_aio_sampled(
                            target, "Decrypt", body, concurrency=DIAGNOSE_CONCURRENCY, duration=args.duration,
                            warmup=args.warmup, pids=pids, tls=t,
                        )
                    )  # fmt: skip
            diag = {
                label: _summarise(Route(label, label, "", roles), runs[label])
                for label, _t, _x, roles in cases
            }

        _check(paths, body, seed)  # still right after the load
        relay_failures = _failed_calls(f.relay.log)
        relay_threads = len(os.listdir(f"/proc/{f.relay.pid}/task"))
    logic = _relay_logic_cost() if not args.no_diagnose else None
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()

    # --- main table ---------------------------------------------------------------------------------
    table = Table(
        title=f"Decrypt through the network hop vs a local plugin: {cores} cores, client {client}, "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up, median of {args.repeat}"
    )
    table.add_column("path", justify="right", no_wrap=True)
    for col in ("in flight", "req/s", "p50 ms", "p99 ms", "µs/call front", "µs/call replicas",
                "µs/call total", "busy", "x local req/s", "x local p99"):  # fmt: skip
        table.add_column(col, justify="right")
    for path in paths:
        for c in concurrencies:
            r, local = results[(path.key, c)], results[("local", c)]
            total = r.cpu_front + (0.0 if math.isnan(r.cpu_replicas) else r.cpu_replicas)
            table.add_row(
                path.label, str(c), f"{r.rps:,.0f}", _fmt(r.p50, ".2f"), _fmt(r.p99, ".2f"),
                _fmt(r.cpu_front, ".0f"), _fmt(r.cpu_replicas, ".0f"), _fmt(total, ".0f"),
                _fmt(r.busy * 100, ".0f") + "%",
                "" if path.key == "local" else _ratio(r.rps, local.rps),
                "" if path.key == "local" else _ratio(r.p99, local.p99),
            )  # fmt: skip
        table.add_section()
    console.print(table)
    console.print(
        "µs/call: server CPU, user + system time of the serving processes over the measured window (all "
        "threads) divided by the calls completed; 'front' is the plugin or the relay, 'replicas' the three "
        f"replicas together. The load generator's own CPU is not in it; 'busy' is all {cores} cores, "
        "everything on them."
    )

    if open_loop:
        ot = Table(
            title=f"open loop: {args.rate} Decrypt/s offered (h2load --rps), at most {TARGET_CONCURRENCY} in "
            f"flight, median of {args.repeat}: the latency the hop adds when it is not saturated"
        )
        for col in ("path", "req/s done", "p50 ms", "p99 ms", "µs/call front", "µs/call replicas", "busy",
                    "x local p50", "x local p99"):  # fmt: skip
            ot.add_column(col, justify="right")
        lo = open_loop["local"]
        for path in paths:
            r = open_loop[path.key]
            ot.add_row(
                path.label, f"{r.rps:,.0f}", _fmt(r.p50, ".2f"), _fmt(r.p99, ".2f"), _fmt(r.cpu_front, ".0f"),
                _fmt(r.cpu_replicas, ".0f"), _fmt(r.busy * 100, ".0f") + "%",
                "" if path.key == "local" else _ratio(r.p50, lo.p50),
                "" if path.key == "local" else _ratio(r.p99, lo.p99),
            )  # fmt: skip
        console.print(ot)

    if diag:
        dt = Table(
            title="where the hop's time goes: grpc.aio client process, Decrypt, "
            f"{DIAGNOSE_CONCURRENCY} in flight, median of 2"
        )
        for col in ("target", "req/s", "p50 ms", "p99 ms", "µs/call front", "µs/call replicas"):
            dt.add_column(col, justify="right")
        for label, r in diag.items():
            dt.add_row(
                label, f"{r.rps:,.0f}", _fmt(r.p50, ".2f"), _fmt(r.p99, ".2f"), _fmt(r.cpu_front, ".0f"),
                _fmt(r.cpu_replicas, ".0f"),
            )  # fmt: skip
        console.print(dt)
    if logic is not None:
        console.print(
            "relay's own Python logic in process, upstreams answering at once (no gRPC): Relay.decrypt "
            f"(request check + routing + forward call) {logic:.1f} µs/call"
        )
    console.print(
        f"relay process: {relay_threads} threads at the end; failed calls in its log: {relay_failures}; "
        f"h2load non-200 answers: {sum(r.errors for r in results.values())}; Decrypt rechecked on every path "
        "after the load: right plaintext"
    )

    # --- verdicts -----------------------------------------------------------------------------------
    busy_note = (
        "  [yellow](load before the run: other processes share the CPU, numbers are noisy)[/]"
        if load_before[0] > 0.5 * cores
        else ""
    )
    console.print(
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min; the bench's own "
        f"threads count in it), on {cores} cores; the relay path runs 5 processes (client, relay, 3 "
        f"replicas) on them; fleet up in {up:.1f} s; run took {elapsed:.0f} s{busy_note}"
    )
    for path in paths[1:]:
        ratios = {c: results[(path.key, c)].rps / results[("local", c)].rps for c in concurrencies}
        line = ", ".join(f"@{c} {ratios[c]:.2f}" for c in concurrencies)
        if TARGET_CONCURRENCY in concurrencies:
            r16 = results[(path.key, TARGET_CONCURRENCY)]
            ok_t = ratios[TARGET_CONCURRENCY] >= TARGET_RATIO
            ok_p = r16.p99 < TARGET_P99_MS
            console.print(
                f"[bold]{path.label}[/]: throughput x local {line} -> "
                f"{'[green]MEETS' if ok_t else '[red]MISSES'}[/] >= {TARGET_RATIO} at {TARGET_CONCURRENCY}; "
                f"p99 @{TARGET_CONCURRENCY} = {r16.p99:.2f} ms "
                f"{'[green]MEETS' if ok_p else '[red]MISSES'}[/] < {TARGET_P99_MS:g} ms"
            )
        else:
            console.print(f"[bold]{path.label}[/]: throughput x local {line} (no verdict: 16 not measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
