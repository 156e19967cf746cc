"""Load runs for ``service_bench.py``, with the servers' CPU time sampled over the measured window.

* :func:`run_h2load_sampled` drives ``bench/_kms_load.run_h2load`` (h2load over a unix socket, one h2c
  connection, N streams) in a thread while this process reads ``/proc/<pid>/stat`` of every server
  process and ``/proc/stat`` at the start and end of the measured window (by the clock, as
  ``_kms_load`` does for one pid). :func:`run_h2load_rate_sampled` is the same at a fixed offered rate
  (open loop, ``h2load --rps``).
* :func:`run_aio_sampled` runs the grpc.aio client below in its own process. It is
  ``_kms_load``'s aio client (N coroutines on one channel, pre-serialized bytes, no protobuf work) that
  can also reach a replica directly over mTLS (``--target 127.0.0.1:P --ca --cert --key``), which
  h2load cannot (no client certificates). It prints a line as the measured window opens and closes,
  and the CPU is sampled exactly then.

CPU figures are microseconds of server CPU (user + system, all threads) per completed call, per process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench._kms_load import (  # noqa: E402
    SERVICE,
    Cell,
    frame,
    h2load_command,
    h2load_path,
    read_h2load_log,
    run_h2load,
)
from bench._service_fleet import cpu_seconds, machine_busy  # noqa: E402

__all__ = ["Sampled", "TLSFiles", "run_aio_sampled", "run_h2load_rate_sampled", "run_h2load_sampled"]


@dataclass(frozen=True)
class TLSFiles:
    """Client side of mTLS to a replica: CA, client certificate and key, the name to verify."""

    ca: Path
    cert: Path
    key: Path
    server_name: str = "localhost"


@dataclass(frozen=True)
class Sampled:
    """A measured cell, the CPU seconds each named process spent in its window, and the machine's load."""

    cell: Cell
    cpu: dict[str, float]  # role -> CPU seconds in the window
    busy: float  # fraction of all cores busy in the window (everything on the machine)

    def us_per_call(self, roles: tuple[str, ...] | None = None) -> float:
        """Server CPU microseconds per completed call, summed over ``roles`` (default: all sampled)."""
        if not self.cell.n:
            return float("nan")
        picked = [v for k, v in self.cpu.items() if roles is None or k in roles]
        return sum(picked) * 1e6 / self.cell.n


class _Snapshot:
    def __init__(self, pids: Mapping[str, int]) -> None:
        self.cpu = {role: cpu_seconds(pid) for role, pid in pids.items()}
        self.busy, self.total = machine_busy()

    def delta(self, later: _Snapshot) -> tuple[dict[str, float], float]:
        cpu = {role: later.cpu[role] - self.cpu[role] for role in self.cpu}
        total = later.total - self.total
        return cpu, (later.busy - self.busy) / total if total else float("nan")


def run_h2load_sampled(
    socket: str,
    op: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    pids: Mapping[str, int],
) -> Sampled:
    """``run_h2load`` in a thread; CPU of ``pids`` and of the machine over the measured window."""
    result: list[Cell] = []
    failure: list[BaseException] = []

    def load() -> None:
        try:
            result.append(
                run_h2load(socket, op, body, concurrency=concurrency, duration=duration, warmup=warmup)
            )
        except BaseException as exc:  # re-raised below, in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=load, name="h2load")
    thread.start()
    time.sleep(warmup)
    before = _Snapshot(pids)
    time.sleep(duration)
    after = _Snapshot(pids)
    thread.join()
    if failure:
        raise failure[0]
    cpu, busy = before.delta(after)
    return Sampled(result[0], cpu, busy)


def run_h2load_rate_sampled(
    socket: str,
    op: str,
    body: bytes,
    *,
    rate: int,
    concurrency: int,
    duration: float,
    warmup: float,
    pids: Mapping[str, int],
) -> Sampled:
    """Open loop: h2load sends ``rate`` requests per second (``--rps``), at most ``concurrency`` in flight
    (``_kms_load.h2load_command`` with ``rps``). Latency of a hop when it is not
    saturated, which a closed loop at N in flight cannot show."""
    binary = h2load_path()
    if binary is None:
        raise RuntimeError("h2load is not installed (apt-get install nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="svc-h2load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(frame(body))
        log = Path(tmp) / "log.tsv"
        cmd = h2load_command(
            binary, socket, op, data, log, concurrency=concurrency, duration=duration, warmup=warmup, rps=rate
        )
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(warmup)
        before = _Snapshot(pids)
        time.sleep(duration)
        after = _Snapshot(pids)
        _, err = load.communicate(timeout=duration + warmup + 30)
        if load.returncode != 0:
            raise RuntimeError(f"h2load failed ({load.returncode}): {err.strip()[-300:]}")
        micros, errors = read_h2load_log(log)
        ok = [us / 1e3 for us in micros]
    ok.sort()
    n = len(ok)
    cell = (
        Cell(n / duration, ok[n // 2], ok[min(n - 1, int(n * 0.99))], n, errors=errors)
        if n
        else Cell(0.0, float("nan"), float("nan"), 0, errors=errors)
    )
    cpu, busy = before.delta(after)
    return Sampled(cell, cpu, busy)


def run_aio_sampled(
    target: str,
    op: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    pids: Mapping[str, int],
    tls: TLSFiles | None = None,
) -> Sampled:
    """The aio client process below against ``target`` (``unix:PATH`` or ``HOST:PORT`` with ``tls``)."""
    cmd = [
        sys.executable, __file__, "--target", target, "--op", op, "--body", body.hex(),
        "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup),
    ]  # fmt: skip
    if tls is not None:
        cmd += ["--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]
        cmd += ["--server-name", tls.server_name]
    env = dict(os.environ, GRPC_VERBOSITY="ERROR")
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert load.stdout is not None
    marks: list[_Snapshot] = []
    for _ in ("measuring", "done"):
        if not load.stdout.readline():
            break
        marks.append(_Snapshot(pids))
    out, err = load.communicate(timeout=duration + warmup + 30)
    if load.returncode != 0 or len(marks) != 2:
        raise RuntimeError(f"aio client failed ({load.returncode}): {err.strip()[-300:]}")
    r = json.loads(out)
    cpu, busy = marks[0].delta(marks[1])
    return Sampled(Cell(r["rps"], r["p50"], r["p99"], r["n"]), cpu, busy)


# --- the client process ---------------------------------------------------------------------------


async def _load(args: argparse.Namespace) -> dict[str, float]:
    import grpc

    body = bytes.fromhex(args.body)
    if args.ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes(),
            certificate_chain=Path(args.cert).read_bytes(),
        )
        options = [("grpc.ssl_target_name_override", args.server_name)]
        channel = grpc.aio.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.aio.insecure_channel(args.target)
    async with channel:
        call = channel.unary_unary(
            f"/{SERVICE}/{args.op}", request_serializer=None, response_deserializer=None
        )
        await call(body, timeout=10)
        clock = time.perf_counter_ns
        measure_from = clock() + int(args.warmup * 1e9)
        end = measure_from + int(args.duration * 1e9)
        samples: list[list[int]] = [[] for _ in range(args.concurrency)]
        last = [0] * args.concurrency

        async def worker(i: int) -> None:
            while (t0 := clock()) < end:
                await call(body, timeout=10)
                t1 = clock()
                if t0 >= measure_from:
                    samples[i].append(t1 - t0)
                    last[i] = t1

        async def mark(at_ns: int, text: str) -> None:
            await asyncio.sleep(max(0, at_ns - clock()) / 1e9)
            print(text, flush=True)

        await asyncio.gather(
            mark(measure_from, "measuring"), mark(end, "done"), *(worker(i) for i in range(args.concurrency))
        )
    lat = sorted(ns / 1e6 for lst in samples for ns in lst)
    n = len(lat)
    seconds = (max(last) - measure_from) / 1e9 if n else args.duration
    if not n:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "n": 0, "seconds": seconds}
    return {"rps": n / seconds, "p50": lat[n // 2], "p99": lat[min(n - 1, int(n * 0.99))], "n": n,
            "seconds": seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="grpc.aio load client (one process, one channel, mTLS or unix)"
    )
    parser.add_argument("--target", required=True, help="unix:PATH, or HOST:PORT with --ca/--cert/--key")
    parser.add_argument("--op", required=True)
    parser.add_argument("--body", required=True, help="the serialized request, hex")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.25)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--server-name", default="localhost")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_load(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
