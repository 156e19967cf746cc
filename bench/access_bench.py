"""kubectl's traffic through the local proxy vs straight to the same apiserver, in one run.

The Kubernetes API stand-in (real HTTPS with client certificates) and a ``LocalProxy`` in front of it
each run in a process of their own (bench/_access_servers.py); the clients run here, with keep-alive
TLS connections, the same code for both paths (direct: the client certificate; proxy: the bearer
secret). Measured:

* latency at concurrency 1, p50/p99: GET of a small ConfigMap, a list of 1,000 ConfigMaps, and a
  watch delivering 10,000 events (time from the request to the 10,000th event);
* throughput: GETs/s and lists/s with ``--clients`` concurrent connections, watch events/s.

Both paths are measured in turns (latency: one request each in alternation; throughput: alternating
slices; watch: alternating runs), so that a busy machine's load hits both alike.

Goal (issue 11): added p50 latency under 1 ms at concurrency 1, throughput at least 0.7 of direct.
The direct path is the floor, measured in the same run. Also printed: the proxy process's CPU time
per request (from /proc), which does not depend on how busy the machine is; with the stand-in, the
clients and the proxy sharing few CPUs, the throughput ratio is roughly the stand-in's CPU per request
over the stand-in's plus the proxy's.

    .venv/bin/python bench/access_bench.py [--seconds 3] [--clients 4] [--watch-runs 5]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SERVERS = str(Path(__file__).resolve().parent / "_access_servers.py")
GET = "/api/v1/namespaces/small/configmaps/one"
LIST = "/api/v1/namespaces/list/configmaps"
WATCH = "/api/v1/namespaces/watch/configmaps?watch=true&timeoutSeconds=600"
WATCH_EVENTS = 10_000
_SLICES = 3  # throughput is measured in this many alternating slices per path (each >= 1 s)


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    ctx: ssl.SSLContext
    headers: dict[str, str]

    def connect(self) -> http.client.HTTPSConnection:
        parts = urlsplit(self.url)
        return http.client.HTTPSConnection(parts.hostname or "", parts.port, context=self.ctx, timeout=120)


def spawn(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, SERVERS, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{args[0]} did not start")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def fetch(conn: http.client.HTTPSConnection, target: Target, path: str) -> int:
    conn.request("GET", path, headers=target.headers)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{target.name}: GET {path} answered {resp.status}")
    return len(body)


def latencies(targets: list[Target], path: str, seconds: float, at_least: int) -> dict[str, list[float]]:
    """Concurrency-1 latencies, one request to each target in turn (the order alternating), so that
    a busy machine's ups and downs hit both paths alike."""
    conns = [t.connect() for t in targets]
    try:
        for conn, target in zip(conns, targets, strict=True):
            fetch(conn, target, path)  # connect and warm up
        out: dict[str, list[float]] = {t.name: [] for t in targets}
        pairs = list(zip(conns, targets, strict=True))
        end = time.perf_counter() + 2 * seconds
        while time.perf_counter() < end or len(out[targets[0].name]) < at_least:
            for conn, target in pairs:
                t0 = time.perf_counter()
                fetch(conn, target, path)
                out[target.name].append(time.perf_counter() - t0)
            pairs.reverse()
        return out
    finally:
        for conn in conns:
            conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc: load-independent, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PROXY: dict[str, int] = {}  # the proxy's pid
PROXY_CPU: dict[str, list[float]] = {}  # path -> [CPU seconds, requests] spent by the proxy under load


def throughput(target: Target, path: str, seconds: float, clients: int) -> float:
    cpu0 = cpu_seconds(PROXY["pid"]) if target.name == "proxy" else 0.0
    counts = [0] * clients
    start_at = threading.Barrier(clients + 1)
    end_box: list[float] = []

    def worker(i: int) -> None:
        conn = target.connect()
        try:
            fetch(conn, target, path)
            start_at.wait()
            while time.perf_counter() < end_box[0]:
                fetch(conn, target, path)
                counts[i] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    end_box.append(time.perf_counter() + seconds + 0.05)
    t0 = time.perf_counter()
    start_at.wait()
    for t in threads:
        t.join()
    if target.name == "proxy":
        spent = PROXY_CPU.setdefault(path, [0.0, 0.0])
        spent[0] += cpu_seconds(PROXY["pid"]) - cpu0
        spent[1] += sum(counts) + clients  # with each connection's first request
    return sum(counts) / (time.perf_counter() - t0)


def watch_once(target: Target) -> float:
    """Seconds from the request to the 10,000th event of a fresh watch."""
    conn = target.connect()
    try:
        conn.connect()
        t0 = time.perf_counter()
        conn.request("GET", WATCH, headers=target.headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"{target.name}: watch answered {resp.status}")
        seen = 0
        while seen < WATCH_EVENTS:
            data = resp.read1(262144)
            if not data:
                raise SystemExit(f"{target.name}: the watch ended after {seen} events")
            seen += data.count(b"\n")
        elapsed = time.perf_counter() - t0
        return elapsed
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement and path")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections for throughput")
    parser.add_argument("--watch-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        standin, where = spawn("standin", tmp)
        spec = Path(tmp) / "proxy.json"
        spec.write_text(json.dumps(where))
        proxied = None
        try:
            proxied, via = spawn("proxy", str(spec))
            PROXY["pid"] = proxied.pid
            direct_ctx = ssl.create_default_context(cafile=where["ca"])
            direct_ctx.load_cert_chain(where["cert"], where["key"])
            proxy_ctx = ssl.create_default_context(cadata=base64.b64decode(via["ca_pem"]).decode())
            targets = [
                Target("direct", where["url"], direct_ctx, {"Accept": "application/json"}),
                Target(
                    "proxy",
                    via["url"],
                    proxy_ctx,
                    {"Accept": "application/json", "Authorization": f"Bearer {via['bearer']}"},
                ),
            ]
            results = run(targets, args.seconds, args.clients, args.watch_runs)
        finally:
            if proxied is not None:
                stop(proxied)
            stop(standin)
    report(results, args.clients)
    return 0


@dataclass
class Row:
    lat: dict[str, list[float]]
    rate: dict[str, float]
    unit: str


def run(targets: list[Target], seconds: float, clients: int, watch_runs: int) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    plans: list[
        tuple[str, Callable[[list[Target]], dict[str, list[float]]], Callable[[Target], float], str]
    ] = [
        (
            "GET small object",
            lambda ts: latencies(ts, GET, seconds, 200),
            lambda t: throughput(t, GET, max(1.0, seconds / _SLICES), clients),
            "req/s",
        ),
        (
            "list of 1,000 objects",
            lambda ts: latencies(ts, LIST, seconds, 20),
            lambda t: throughput(t, LIST, max(1.0, seconds / _SLICES), clients),
            "lists/s",
        ),
    ]
    for name, lat, rate, unit in plans:
        row = Row(lat(targets), {}, unit)
        # throughput in alternating slices, so that drift on a busy machine hits both paths alike
        done = {t.name: 0.0 for t in targets}
        for _ in range(_SLICES):
            for target in targets:
                done[target.name] += rate(target)
        row.rate = {n: total / _SLICES for n, total in done.items()}
        rows[name] = row
    watch = Row({t.name: [] for t in targets}, {}, "events/s")
    for _ in range(watch_runs):
        for target in targets:
            watch.lat[target.name].append(watch_once(target))
    for target in targets:
        watch.rate[target.name] = WATCH_EVENTS / statistics.median(watch.lat[target.name])
    rows["watch, 10,000 events"] = watch
    return rows


def report(rows: dict[str, Row], clients: int) -> None:
    print(
        f"{'':24}{'direct p50':>11}{'proxy p50':>11}{'added p50':>11}{'direct p99':>11}{'proxy p99':>11}"
        f"{'direct rate':>13}{'proxy rate':>12}{'ratio':>7}  unit"
    )
    met = True
    for name, row in rows.items():
        d, p = row.lat["direct"], row.lat["proxy"]
        added = statistics.median(p) - statistics.median(d)
        ratio = row.rate["proxy"] / row.rate["direct"]
        print(
            f"{name:24}{statistics.median(d) * 1e3:9.3f}ms{statistics.median(p) * 1e3:9.3f}ms"
            f"{added * 1e3:9.3f}ms{pct(d, 0.99) * 1e3:9.3f}ms{pct(p, 0.99) * 1e3:9.3f}ms"
            f"{row.rate['direct']:13,.1f}{row.rate['proxy']:12,.1f}{ratio:7.2f}  {row.unit}"
        )
        if name.startswith("GET") and added >= 1e-3:
            met = False
        if ratio < 0.7:
            met = False
    per_get = PROXY_CPU[GET][0] / max(PROXY_CPU[GET][1], 1)
    per_list = PROXY_CPU[LIST][0] / max(PROXY_CPU[LIST][1], 1)
    print(
        f"proxy CPU (user+system, incl. TLS handshakes): {per_get * 1e6:.0f} us per GET, "
        f"{per_list * 1e3:.2f} ms per list of 1,000; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"(latency at concurrency 1; GET and list rates with {clients} connections; watch rate from the "
        f"median run)\ngoal: added p50 of a GET < 1 ms and every rate ratio >= 0.70: "
        f"{'met' if met else 'MISSED'}"
    )


if __name__ == "__main__":
    sys.exit(main())
