"""SOPS encrypt/decrypt: kubeshield against the real sops 3.11 binary, in the same run.

Two inputs, both generated here: a ~1 MiB YAML file with 10,000 leaves (100 sections x 100 keys) and a
200-leaf Kubernetes Secret manifest. For each: whole-process wall time (``kubeshield sops encrypt|decrypt``
and ``sops -e|-d`` as subprocesses) and kubeshield's in-process throughput (the library, no interpreter
start-up). The floor is the sops binary measured in this run; the goal is a ratio <= 1.0 (no slower than
sops) on the large file. An age key is used (no network).

The machine is shared and noisy, so the two tools run alternately (sops, kubeshield, sops, ... in each
round, after one warm-up run of each), and the table shows the median and the spread (min-max) of
``--runs`` rounds, and the CPU time (user+sys) of each process next to its wall time. ``ratio`` is the
median of the per-round ratios kubeshield/sops (each round's two runs see nearly the same load);
``ratio range`` is their min-max.

    .venv/bin/python bench/sops_bench.py [--runs 11]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyrage

from kubeshield.sops import ops
from kubeshield.sops.masterkeys.base import KeyEnv
from kubeshield.sops.selection import Selection
from tests.support.sops import sops_binary


def _large_yaml(rng: random.Random) -> str:
    lines = []
    for i in range(100):
        lines.append(f"section{i}:")
        for j in range(100):
            value = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(90))
            lines.append(f"  key{j}: {value}")
    return "\n".join(lines) + "\n"


def _secret(rng: random.Random) -> str:
    lines = ["apiVersion: v1", "kind: Secret", "metadata:", "  name: bench", "type: Opaque", "stringData:"]
    lines += [f"  key{i}: {rng.getrandbits(128):032x}" for i in range(200)]
    return "\n".join(lines) + "\n"


class _Timed:
    """Wall and CPU (user+sys) seconds of each run of one command."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, *, record: bool = True) -> bytes:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        result = subprocess.run(self.argv, env=self.env, capture_output=True, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(f"{self.argv[0]} failed: {result.stderr.decode()[:300]}")
        if record:
            self.wall.append(wall)
            self.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return result.stdout


def _alternate(pairs: list[tuple[_Timed, _Timed]], runs: int) -> None:
    """One warm-up run of each command, then ``runs`` rounds running each pair once, in turn; which of
    the two goes first alternates from round to round (neither always gets the warmer cache)."""
    for floor, ours in pairs:
        floor.run(record=False)
        ours.run(record=False)
    for round_ in range(runs):
        for floor, ours in pairs:
            first, second = (floor, ours) if round_ % 2 == 0 else (ours, floor)
            first.run()
            second.run()


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(7)
    sops = sops_binary()
    kubeshield = str(Path(sys.executable).parent / "kubeshield")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        identity = pyrage.x25519.Identity.generate()
        (work / "keys.txt").write_text(f"{identity}\n")
        recipient = str(identity.to_public())
        env = {
            "HOME": tmp,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SOPS_AGE_KEY_FILE": str(work / "keys.txt"),
        }
        key_env = KeyEnv(environ=env, home=work)
        for name, text in (("large.yaml", _large_yaml(rng)), ("secret.yaml", _secret(rng))):
            plain = work / name
            plain.write_text(text)
            leaves = text.count("\n") - (100 if name == "large.yaml" else 6)
            enc = work / f"enc.{name}"
            enc.write_bytes(
                subprocess.run(
                    [sops, "-e", "--age", recipient, str(plain)], env=env, capture_output=True, check=True
                ).stdout
            )
            sops_enc = _Timed([sops, "-e", "--age", recipient, str(plain)], env)
            ks_enc = _Timed([kubeshield, "sops", "encrypt", "--age", recipient, str(plain)], env)
            sops_dec = _Timed([sops, "-d", str(enc)], env)
            ks_dec = _Timed([kubeshield, "sops", "decrypt", str(enc)], env)
            # the race is only fair if both print the same plaintext, and sops reads what kubeshield writes
            if ks_dec.run(record=False) != sops_dec.run(record=False):
                raise SystemExit(f"{name}: kubeshield and sops decrypt to different output")
            (work / f"ks.{name}").write_bytes(ks_enc.run(record=False))
            check = subprocess.run(
                [sops, "-d", str(work / f"ks.{name}")], env=env, capture_output=True, check=True
            )
            if check.stdout != sops_dec.run(record=False):
                raise SystemExit(f"{name}: sops does not decrypt kubeshield's file to the same plaintext")
            _alternate([(sops_enc, ks_enc), (sops_dec, ks_dec)], args.runs)
            creation = ops.Creation(
                key_groups=[ops.KeyFlags(age=[recipient]).keys()],
                shamir_threshold=0,
                selection=Selection.default(),
                selection_explicit=False,
                mac_only_encrypted=False,
            )
            data, data_enc = plain.read_bytes(), enc.read_bytes()
            t0 = time.perf_counter()
            for _ in range(args.runs):
                ops.encrypt_bytes(
                    data, where=name, in_format="yaml", out_format="yaml", creation=creation, env=key_env
                )
            lib_enc = (time.perf_counter() - t0) / args.runs
            t0 = time.perf_counter()
            for _ in range(args.runs):
                ops.decrypt_bytes(data_enc, where=name, in_format="yaml", out_format="yaml", env=key_env)
            lib_dec = (time.perf_counter() - t0) / args.runs
            size = len(data)
            for op, floor, ours, lib in (
                ("encrypt", sops_enc, ks_enc, lib_enc),
                ("decrypt", sops_dec, ks_dec, lib_dec),
            ):
                rows.append((name, size, leaves, op, floor, ours, lib))
    print(
        f"{'file':<12} {'bytes':>8} {'leaves':>6} {'op':<7} {'sops wall s':>19} {'kubeshield wall s':>19} "
        f"{'ratio':>5} {'ratio range':>11} {'sops cpu s':>10} {'ks cpu s':>8} {'in-proc s':>9} "
        f"{'leaves/s':>8}"
    )
    for name, size, leaves, op, floor, ours, lib in rows:
        ratios = [o / f for o, f in zip(ours.wall, floor.wall, strict=True)]
        print(
            f"{name:<12} {size:>8} {leaves:>6} {op:<7} {_spread(floor.wall):>19} {_spread(ours.wall):>19} "
            f"{statistics.median(ratios):>5.2f} {min(ratios):>5.2f}-{max(ratios):<5.2f} "
            f"{statistics.median(floor.cpu):>10.3f} {statistics.median(ours.cpu):>8.3f} {lib:>9.3f} "
            f"{leaves / lib:>8.0f}"
        )
    print(
        f"ratio = median over {args.runs} alternated rounds of kubeshield wall time / sops wall time in the "
        "same round (goal: <= 1.0 on large.yaml); wall columns: median (min-max); cpu: median user+sys"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
