"""Unseal throughput per core (1 KiB values) by registry size and key order, custody-held vs in-memory
keys, and the controller's cold-start reconcile of SealedSecrets against the Kubernetes API stand-in.

Run: .venv/bin/python bench/seal_bench.py [--values 40] [--objects 1000] [--skip-controller]

sealed-secrets keeps no key id in a value and tries every private key in Go's random map order; each
failed try costs a full RSA-4096 private-key operation. Scenarios (one thread = one core):

* ``bitnami order``      keys tried in a random order per value (the floor, measured in this run)
* ``newest first``       kubeshield's order without a hint
* ``hint``               the ``kubeshield.io/sealing-key`` annotation names the key: one RSA operation

Values are sealed with a key drawn at random from the registry ("random key") and with the oldest key
("oldest key", the worst case for newest-first). Ratios are throughput / the floor of the same row.

Custody: the same unseal with the RSA key in process memory (unwrapped from the key backend at start)
and held by a SoftHSM2 token (CKM_RSA_X_509 on the token + OAEP decoded by kubeshield; SoftHSM2 2.6
has no OAEP-SHA-256 with a label).

Controller: N SealedSecrets created in the stand-in first; then a controller starts cold (new process
state, keys opened) and the time until every Secret exists and every status says Synced is measured.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from kubeshield.seal import _hybrid  # noqa: E402
from kubeshield.seal.certs import fingerprint, make_certificate  # noqa: E402
from kubeshield.seal.keyset import KeySet, MemoryDecrypter, SealingKey  # noqa: E402

LABEL = b"bench/value"
VALUE = os.urandom(1024)


class _Shuffled(KeySet):
    """sealed-secrets' order: every key, in a fresh random order for each value."""

    def _order(self, prefer):  # type: ignore[no-untyped-def]
        keys = [k for k in self.keys if k.decrypter is not None]
        random.shuffle(keys)
        return keys


def _keys(n: int, pool: list[rsa.RSAPrivateKey], cls: type[KeySet] = KeySet) -> KeySet:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    return cls(
        SealingKey(
            certificate=make_certificate(
                k, valid_for=timedelta(days=3650), now=base + timedelta(days=30 * i)
            ),
            decrypter=MemoryDecrypter(k),
        )
        for i, k in enumerate(pool[:n])
    )


def _rate(keys: KeySet, blobs: list[tuple[bytes, str]], *, hint: bool) -> tuple[float, float]:
    keys.rsa_operations = 0
    start = time.perf_counter()
    for blob, fp in blobs:
        opened = keys.open(blob, label=LABEL, prefer=[fp] if hint else [])
        assert opened.plaintext == VALUE
    elapsed = time.perf_counter() - start
    return len(blobs) / elapsed, keys.rsa_operations / len(blobs)


def bench_unseal(n_values: int) -> None:
    print("generating 20 RSA-4096 keys ...", flush=True)
    pool = [rsa.generate_private_key(public_exponent=65537, key_size=4096) for _ in range(20)]
    rows = []
    for size in (1, 5, 20):
        memory = _keys(size, pool)
        shuffled = _keys(size, pool, _Shuffled)
        for which in ("random key", "oldest key"):
            blobs = []
            for _ in range(n_values):
                key = random.choice(pool[:size]) if which == "random key" else pool[0]
                blobs.append(
                    (_hybrid.encrypt(key.public_key(), VALUE, label=LABEL), fingerprint(key.public_key()))
                )
            # three interleaved rounds, best of each: the machine is shared, so the best round is the
            # least disturbed one
            runs = [
                (
                    _rate(shuffled, blobs, hint=False),
                    _rate(memory, blobs, hint=False),
                    _rate(memory, blobs, hint=True),
                )
                for _ in range(3)
            ]
            (floor, floor_ops), (newest, newest_ops), (hinted, hinted_ops) = (
                max((r[i] for r in runs), key=lambda x: x[0]) for i in range(3)
            )
            rows.append((size, which, floor, floor_ops, newest, newest_ops, hinted, hinted_ops))
    print()
    print("unseal throughput, 1 KiB values, values/s on one core (RSA ops per value)")
    print(
        f"{'keys':>4}  {'sealed with':<11}  {'bitnami order (floor)':>22}  {'newest first':>18}  {'hint':>18}"
        f"  {'hint/floor':>10}  {'newest/floor':>12}"
    )
    for size, which, floor, fo, newest, no, hinted, ho in rows:
        print(
            f"{size:>4}  {which:<11}  {floor:>12.1f} ({fo:>5.2f})  {newest:>9.1f} ({no:>5.2f})"
            f"  {hinted:>9.1f} ({ho:>5.2f})  {hinted / floor:>9.2f}x  {newest / floor:>11.2f}x"
        )


def bench_custody(n_values: int) -> None:
    from tests.support.softhsm import SOFTHSM_MODULE, SoftHsm

    if not Path(SOFTHSM_MODULE).is_file() or shutil.which("softhsm2-util") is None:
        print("custody: SoftHSM2 is not installed (apt-get install -y softhsm2); not measured")
        raise SystemExit(1)
    root = Path(tempfile.mkdtemp(prefix="seal-bench-hsm-"))
    try:
        (root / "tokens").mkdir()
        conf = root / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        SoftHsm(root=root, conf=conf).init_token("bench", pin=b"bench-pin")
        code = f"""
import json, os, sys, time
from datetime import UTC, datetime, timedelta
from cryptography.hazmat.primitives.asymmetric import rsa
from kubeshield.seal import _hybrid
from kubeshield.seal.keyset import KeySet, MemoryDecrypter, SealingKey
from kubeshield.seal.certs import make_certificate
from kubeshield.seal.token import Pkcs11TokenStore
value = os.urandom(1024)
label = b"bench/value"
store = Pkcs11TokenStore(module={SOFTHSM_MODULE!r}, token="bench", pin=b"bench-pin")
key_id, cert = store.generate(
    key_size=4096, valid_for=timedelta(days=10), common_name="", now=datetime.now(UTC), rng=os.urandom
)
token = KeySet([SealingKey(cert, store.decrypter(key_id, cert.public_key()))])
mem_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
mem_cert = make_certificate(mem_key, valid_for=timedelta(days=10))
memory = KeySet([SealingKey(mem_cert, MemoryDecrypter(mem_key))])
out = {{"mechanism": store.probe.mechanism}}
for name, keys in (("memory", memory), ("token", token)):
    pub = keys.latest.public_key
    blobs = [_hybrid.encrypt(pub, value, label=label) for _ in range({n_values})]
    start = time.perf_counter()
    for b in blobs:
        assert keys.open(b, label=label).plaintext == value
    out[name] = len(blobs) / (time.perf_counter() - start)
store.close()
print(json.dumps(out))
"""
        env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            raise SystemExit(1)
        import json

        res = json.loads(proc.stdout)
        print()
        print("custody-held vs in-memory sealing key, 1 key, RSA-4096, 1 KiB values, values/s on one core")
        print(f"{'in-memory (floor)':>18}  {'SoftHSM2 token':>15}  {'token/memory':>12}  mechanism")
        print(
            f"{res['memory']:>18.1f}  {res['token']:>15.1f}  "
            f"{res['token'] / res['memory']:>11.2f}x  {res['mechanism']}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_controller(n_objects: int) -> None:
    import importlib

    try:
        module = importlib.import_module("bench._seal_controller")
    except ModuleNotFoundError as exc:
        print(f"controller: {exc.name} is not available in this build; not measured")
        raise SystemExit(1) from None
    module.run(n_objects)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--values", type=int, default=30, help="values per scenario")
    parser.add_argument(
        "--objects", type=int, default=1000, help="SealedSecrets for the controller cold start"
    )
    parser.add_argument("--skip-controller", action="store_true")
    args = parser.parse_args()
    bench_unseal(args.values)
    bench_custody(args.values)
    if not args.skip_controller:
        bench_controller(args.objects)
    return 0


if __name__ == "__main__":
    sys.exit(main())
