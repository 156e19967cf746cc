"""Start during an outage: time to the socket while the key service is down, and time to healthy after it
returns, for Transit (OpenBao), AWS KMS (moto) and PKCS#11 (SoftHSM2).

Run: .venv/bin/python bench/outage_bench.py [--repeat 2]

Each run is one scenario of ``tests/support/outage.py`` (the same flows the integration tests check):
the real ``kubeshield kms serve`` console script is started while its key service is down, must bind
its socket and answer UNAVAILABLE, then the service comes back and Status must turn ok without a
restart. ``to socket`` is from starting the process to its socket existing; ``to healthy`` is from the
key service being back (OpenBao unsealed and active; moto answering and the key created by ``kubeshield
keys init``; the token and its key created) to the first Status ``ok``. The floor is ``to socket`` of
the same command over a local keyring (nothing to wait for) measured in the same run; the ratio is each
backend's median over it. ``to healthy`` is bounded by the reconnection backoff (0.5 s doubling to 5 s)
plus the health loop's 1 s while unhealthy, so it depends on how long the outage lasted.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.kms_process import ServeProcess, clean_env, wait_until_healthy  # noqa: E402
from tests.support.openbao import free_port  # noqa: E402
from tests.support.outage import SCENARIOS, OutageRun  # noqa: E402


def _floor(tmp: Path) -> float:
    """Time to the socket of ``kms serve`` over a local keyring that it creates (no outage)."""
    tmp.mkdir()
    socket = tmp / "kms.sock"
    serve = ServeProcess.kms_serve(
        "--keyring", str(tmp / "keyring"), "--create-keyring", "--socket", str(socket),
        "--health-addr", f"127.0.0.1:{free_port()}",
        socket=socket, env=clean_env(), log_dir=tmp,
    )  # fmt: skip
    try:
        to_socket = serve.wait_for_socket()
        wait_until_healthy(socket)
        return to_socket
    finally:
        serve.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per backend (the median is shown)")
    args = parser.parse_args(argv)
    floors: list[float] = []
    runs: dict[str, list[OutageRun]] = {name: [] for name in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="ks-outage-bench-") as tmp:
        for i in range(args.repeat):
            floors.append(_floor(Path(tmp) / f"floor-{i}-{secrets.token_hex(2)}"))
            for name, scenario in SCENARIOS.items():
                work = Path(tmp) / f"{name}-{i}"
                work.mkdir()
                runs[name].append(scenario(work))
    floor = statistics.median(floors)
    print(f"kms serve started while its key service is down ({args.repeat} runs each, medians, seconds)")
    header = f"{'backend':<10} {'to socket':>10} {'/ floor':>8} {'to healthy':>11} {'all to healthy':>22}"
    print(header)
    print("-" * len(header))
    print(f"{'local':<10} {floor:>10.2f} {1.0:>7.1f}x {'-':>11} {'(floor: no outage)':>22}")
    for name, results in runs.items():
        sock = statistics.median(r.to_socket for r in results)
        healthy = statistics.median(r.to_healthy for r in results)
        every = ", ".join(f"{r.to_healthy:.2f}" for r in results)
        print(f"{name:<10} {sock:>10.2f} {sock / floor:>7.1f}x {healthy:>11.2f} {every:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
