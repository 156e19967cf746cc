"""Load generators for ``kms_bench.py``: h2load (native, preferred) and a grpc.aio client process.

Both keep exactly ``concurrency`` unary calls in flight on ONE HTTP/2 connection (as kube-apiserver
does towards its plugin), send pre-serialized request bytes, run a warm-up that is not measured, then
measure for a bounded duration. Neither runs in the benchmark's own process.

* ``h2load`` (Debian ``nghttp2-client``) speaks h2c over a unix socket (``-B unix:PATH``); we send a
  gRPC-framed body (``0x00 || u32 big-endian length || message``) with ``content-type:
  application/grpc`` and ``te: trailers``, ``-c 1 -m N``, and read per-request latency from its
  ``--log-file``. h2load only checks the HTTP status, not the ``grpc-status`` trailer, so every cell is
  preceded by :func:`preflight`, which sends the same bytes through grpc and requires status OK.
* the aio client (``python bench/_kms_load.py ...``, its own process): ``N`` coroutines on one
  ``grpc.aio`` channel with a generic ``unary_unary(path, request_serializer=None,
  response_deserializer=None)`` callable, so the client does no protobuf work; per-call latency from
  ``time.perf_counter_ns``. It prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["Cell", "frame", "h2load_path", "preflight", "run_aio_client", "run_h2load"]

SERVICE = "v2.KeyManagementService"


@dataclass(frozen=True, slots=True)
class Cell:
    """One measured cell: throughput and latency percentiles (ms) over ``n`` calls."""

    rps: float
    p50: float
    p99: float
    n: int
    #: server CPU time (user + system, all its threads) per measured call, microseconds; nan if unknown
    cpu_us: float = float("nan")
    #: calls that did not complete with HTTP 200 (h2load only; e.g. streams refused over a limit)
    errors: int = 0


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: compressed flag 0, 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def _cell(latencies_us: list[float], seconds: float, cpu_seconds: float | None = None) -> Cell:
    if not latencies_us:
        return Cell(0.0, float("nan"), float("nan"), 0)
    ordered = sorted(latencies_us)
    n = len(ordered)
    cpu = cpu_seconds * 1e6 / n if cpu_seconds is not None else float("nan")
    return Cell(n / seconds, ordered[n // 2] / 1e3, ordered[min(n - 1, int(n * 0.99))] / 1e3, n, cpu)


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of process ``pid`` (all threads), from /proc; None when unavailable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _window_cpu(pid: int | None, warmup: float, duration: float) -> float | None:
    """Server CPU seconds spent during a load run's measured window (by the clock: approximate)."""
    time.sleep(warmup)
    before = _cpu_seconds(pid)
    time.sleep(duration)
    after = _cpu_seconds(pid)
    if before is None or after is None:
        return None
    return after - before


def preflight(socket: str, op: str, body: bytes) -> bytes:
    """Send ``body`` once through grpc; return the reply bytes (raises grpc.RpcError when not OK)."""
    with grpc.insecure_channel("unix:" + socket) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{op}", request_serializer=None, response_deserializer=None)
        reply: bytes = call(body, timeout=10)
        return reply


def h2load_path() -> str | None:
    """The h2load binary, if installed (Debian package ``nghttp2-client``)."""
    return shutil.which("h2load")


def h2load_command(
    binary: str,
    socket: str,
    op: str,
    data: Path,
    log: Path,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    rps: int | None = None,
) -> list[str]:
    """h2load over one h2c connection on the unix socket; ``rps`` makes it an open loop (``--rps``)."""
    rate = [f"--rps={rps}"] if rps is not None else []
    return [
        binary,
        "-B", f"unix:{socket}",
        "-c", "1", "-t", "1", "-m", str(concurrency), *rate,
        "-D", f"{int(duration * 1000)}ms", f"--warm-up-time={int(warmup * 1000)}ms",
        "-d", str(data),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        f"--log-file={log}",
        f"http://localhost/{SERVICE}/{op}",
    ]  # fmt: skip


def read_h2load_log(log: Path) -> tuple[list[float], int]:
    """(latencies in microseconds of the HTTP-200 answers, count of the others) from an h2load log."""
    latencies: list[float] = []
    errors = 0
    for line in log.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        if status == "200":
            latencies.append(float(micros))
        else:
            errors += 1
    return latencies, errors


def run_h2load(
    socket: str,
    op: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    server_pid: int | None = None,
) -> Cell:
    """``concurrency`` streams on one h2c connection over the unix socket, for ``duration`` seconds."""
    binary = h2load_path()
    if binary is None:
        raise RuntimeError("h2load is not installed (apt-get install nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="kms-h2load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(frame(body))
        log = Path(tmp) / "log.tsv"
        cmd = h2load_command(
            binary, socket, op, data, log, concurrency=concurrency, duration=duration, warmup=warmup
        )
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cpu = _window_cpu(server_pid, warmup, duration)
        _, err = load.communicate(timeout=duration + warmup + 30)
        if load.returncode != 0:
            raise RuntimeError(f"h2load failed ({load.returncode}): {err.strip()[-300:]}")
        latencies, errors = read_h2load_log(log)
    cell = _cell(latencies, duration, cpu)
    return Cell(cell.rps, cell.p50, cell.p99, cell.n, cell.cpu_us, errors)


def run_aio_client(
    socket: str,
    op: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    server_pid: int | None = None,
) -> Cell:
    """Run the grpc.aio client in its own process and read its JSON result."""
    cmd = [
        sys.executable, __file__,
        "--socket", socket, "--op", op, "--body", body.hex(),
        "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup),
    ]  # fmt: skip
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert load.stdout is not None
    marks: list[float | None] = []
    for _ in ("measuring", "done"):  # the client prints a line as its measured window opens and closes
        if not load.stdout.readline():
            break
        marks.append(_cpu_seconds(server_pid))
    out, err = load.communicate(timeout=duration + warmup + 30)
    if load.returncode != 0:
        raise RuntimeError(f"aio client failed: {err.strip()[-300:]}")
    result = json.loads(out)
    cpu = None
    if len(marks) == 2 and marks[0] is not None and marks[1] is not None and result["n"]:
        cpu = marks[1] - marks[0]
    cpu_us = cpu * 1e6 / (result["rps"] * duration) if cpu is not None else float("nan")
    return Cell(result["rps"], result["p50"], result["p99"], result["n"], cpu_us)


async def _aio_load(
    socket: str, op: str, body: bytes, concurrency: int, duration: float, warmup: float
) -> dict[str, float]:
    async with grpc.aio.insecure_channel("unix:" + socket) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{op}", request_serializer=None, response_deserializer=None)
        await call(body, timeout=10)
        clock = time.perf_counter_ns
        begin = clock()
        measure_from = begin + int(warmup * 1e9)
        end = measure_from + int(duration * 1e9)
        samples: list[list[int]] = [[] for _ in range(concurrency)]
        last = [0] * concurrency

        async def worker(i: int) -> None:
            out = samples[i]
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                await call(body, timeout=10)
                t1 = clock()
                if t0 >= measure_from:
                    out.append(t1 - t0)
                    last[i] = t1

        async def mark(at_ns: int, text: str) -> None:
            await asyncio.sleep(max(0, at_ns - clock()) / 1e9)
            print(text, flush=True)

        await asyncio.gather(
            mark(measure_from, "measuring"), mark(end, "done"), *(worker(i) for i in range(concurrency))
        )
    latencies = [ns / 1e3 for lst in samples for ns in lst]
    seconds = (max(last) - measure_from) / 1e9 if latencies else duration
    cell = _cell(latencies, seconds)
    return {"rps": cell.rps, "p50": cell.p50, "p99": cell.p99, "n": cell.n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grpc.aio load client (one process, one channel)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--op", required=True)
    parser.add_argument("--body", required=True, help="the serialized request, hex")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.25)
    args = parser.parse_args(argv)
    result = asyncio.run(
        _aio_load(
            args.socket, args.op, bytes.fromhex(args.body), args.concurrency, args.duration, args.warmup
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
