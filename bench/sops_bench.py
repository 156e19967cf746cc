"""SOPS encrypt/decrypt: kubeshield against the real sops 3.11 binary, in the same run.

Two inputs, both generated here: a ~1 MiB YAML file with 10,000 leaves (100 sections x 100 keys) and a
200-leaf Kubernetes Secret manifest. For each: whole-process wall time (``kubeshield sops encrypt|decrypt``
and ``sops -e|-d`` as subprocesses, median of ``--runs``) and kubeshield's in-process throughput (the
library, no interpreter start-up). The floor is the sops binary measured in this run; the goal is a ratio
<= 1.0 (no slower than sops) on the large file. An age key is used (no network).

    .venv/bin/python bench/sops_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import random
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


def _median_wall(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
        if result.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {result.stderr.decode()[:300]}")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
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
            sops_enc = _median_wall([sops, "-e", "--age", recipient, str(plain)], env, args.runs)
            sops_dec = _median_wall([sops, "-d", str(enc)], env, args.runs)
            ks_enc = _median_wall(
                [kubeshield, "sops", "encrypt", "--age", recipient, str(plain)], env, args.runs
            )
            ks_dec = _median_wall([kubeshield, "sops", "decrypt", str(enc)], env, args.runs)
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
        f"{'file':<12} {'bytes':>9} {'leaves':>7} {'op':<8} {'sops s':>8} {'kubeshield s':>13} {'ratio':>6} "
        f"{'in-process s':>13} {'leaves/s':>10}"
    )
    for name, size, leaves, op, floor, ours, lib in rows:
        print(
            f"{name:<12} {size:>9} {leaves:>7} {op:<8} {floor:>8.3f} {ours:>13.3f} {ours / floor:>6.2f} "
            f"{lib:>13.3f} {leaves / lib:>10.0f}"
        )
    print(
        "ratio = kubeshield whole-process wall time / sops wall time, same run (goal: <= 1.0 on large.yaml)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
