"""Attestation verifiers and attested key release, measured in one run.

* verifications/s for the SGX quote with collateral (kubeshield vs dcap-qvl 0.7.0 on the same input:
  the ratio), the TDX quote (no TDX collateral exists in the vectors, so this is *parsing*, kubeshield vs
  dcap-qvl's parse_quote), the SNP report with its VCEK and the TPM quote; each also against a floor
  measured here: the raw signature verifications the evidence needs at least (cryptography alone);
* the key-release round trip (challenge, evidence, policy, JWE) on loopback, p50/p99, with the sample
  attester and with a real swtpm quote, against a floor of two bare HTTP POSTs to the same server.

    .venv/bin/python bench/attest_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dcap_qvl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from kubeshield.attest import _cache
from kubeshield.attest import tpm as attest_tpm
from kubeshield.attest.dcap import verify_dcap
from kubeshield.attest.dcap_quote import parse_quote
from kubeshield.attest.sample import SampleAttester
from kubeshield.attest.snp import verify_snp
from kubeshield.attest_release.client import request_resource
from kubeshield.attest_release.server import ReleaseServer, load_release_config
from kubeshield.keys.local import LocalKeyBackend
from tests.unit.attest._vectors import vector

SGX_AT = datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC)
SNP_AT = datetime(2030, 1, 24, 17, 58, 25, tzinfo=UTC)


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def latencies(fn: Callable[[], object], seconds: float, at_least: int = 20) -> list[float]:
    fn()
    out: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(out) < at_least:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def floors() -> dict[str, Callable[[], object]]:
    k256 = ec.generate_private_key(ec.SECP256R1())
    sig256 = k256.sign(b"m", ec.ECDSA(hashes.SHA256()))
    k384 = ec.generate_private_key(ec.SECP384R1())
    sig384 = k384.sign(b"m", ec.ECDSA(hashes.SHA384()))
    from cryptography.hazmat.primitives.asymmetric import rsa

    r4096 = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    sig_pss = r4096.sign(b"m", pss, hashes.SHA384())
    tpm_doc = json.loads(vector("tpm_evidence.json"))
    ev = attest_tpm.parse_evidence(tpm_doc)

    def ecdsa256() -> None:
        k256.public_key().verify(sig256, b"m", ec.ECDSA(hashes.SHA256()))

    def dcap_floor() -> None:  # 7 P-256 verifications: 3 chains x 2 + QE report + ISV report, roughly
        for _ in range(8):
            ecdsa256()

    def snp_floor() -> None:  # report (P-384) + VCEK and ASK (RSA-4096 PSS)
        k384.public_key().verify(sig384, b"m", ec.ECDSA(hashes.SHA384()))
        for _ in range(2):
            r4096.public_key().verify(sig_pss, b"m", pss, hashes.SHA384())

    def tpm_floor() -> None:
        ev.ak_public.verify(ev.signature.signature, ev.message, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]

    return {"dcap": dcap_floor, "snp": snp_floor, "tpm": tpm_floor}


def verifier_table(seconds: float) -> None:
    quote, col = vector("sgx_quote"), vector("sgx_quote_collateral.json")
    tdx = vector("tdx_quote_4.dat")
    report, vcek = vector("test-report.bin"), vector("test-vcek.der")
    tpm_doc = json.loads(vector("tpm_evidence.json"))
    oracle_col = dcap_qvl.QuoteCollateralV3.from_json(col.decode())
    now = int(SGX_AT.timestamp())
    assert verify_dcap(quote, col, at=SGX_AT).ok and verify_snp(report, vcek, at=SNP_AT).ok
    assert attest_tpm.verify_tpm(tpm_doc).ok
    fl = floors()
    oracle_sgx = rate(lambda: dcap_qvl.verify(quote, oracle_col, now), seconds)
    _cache.set_size(0)
    cold = rate(lambda: verify_dcap(quote, col, at=SGX_AT), seconds)
    _cache.set_size(4096)
    rows = [
        ("SGX quote + collateral, cold", cold, "dcap-qvl", oracle_sgx),
        (
            "SGX quote + collateral, warm memo",
            rate(lambda: verify_dcap(quote, col, at=SGX_AT), seconds),
            "dcap-qvl",
            oracle_sgx,
        ),
        (
            "TDX quote (parse only)",
            rate(lambda: parse_quote(tdx), seconds),
            "dcap-qvl parse",
            rate(lambda: dcap_qvl.parse_quote(tdx), seconds),
        ),
        (
            "SNP report + VCEK (verify)",
            rate(lambda: verify_snp(report, vcek, at=SNP_AT), seconds),
            "floor: 1 P-384 + 2 RSA-PSS",
            rate(fl["snp"], seconds),
        ),
        (
            "TPM quote (verify)",
            rate(lambda: attest_tpm.verify_tpm(tpm_doc), seconds),
            "floor: 1 RSA-2048",
            rate(fl["tpm"], seconds),
        ),
    ]
    dcap_floor = rate(fl["dcap"], seconds)
    print(f"{'evidence':34} {'kubeshield/s':>13} {'reference':>28} {'ref/s':>10} {'ratio':>7}")
    for name, ours, ref_name, ref in rows:
        print(f"{name:34} {ours:13.0f} {ref_name:>28} {ref:10.0f} {ours / ref:7.2f}")
    print(
        f"{'SGX floor: 8 raw P-256 verifies':34} {'':13} {'':>28} {dcap_floor:10.0f} "
        f"{rows[0][1] / dcap_floor:7.2f}  (kubeshield SGX cold / floor)"
    )
    print(
        "cold: signature memo off; warm: collateral and PCK chain signatures remembered "
        "(kubeshield.attest._cache),"
    )
    print("as a verifier serving many quotes of one platform runs; every time check is still made per call.")


def release_table(seconds: float) -> None:
    from tests.support.swtpm import start_swtpm

    tmp = Path(tempfile.mkdtemp(prefix="attest-bench-"))
    LocalKeyBackend.create(path=tmp / "keyring").close()
    (tmp / "release.yaml").write_text(
        json.dumps(
            {
                "listen": "127.0.0.1:0",
                "allowSample": True,
                "maxSessions": 100000,
                "resources": {
                    "sample": {"keyring": str(tmp / "keyring"), "policy": {"version": 1, "tee": ["sample"]}},
                    "tpm": {"keyring": str(tmp / "keyring"), "policy": {"version": 1, "tee": ["tpm"]}},
                },
            }
        )
    )
    server = ReleaseServer(load_release_config(tmp / "release.yaml"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.address

    def bare() -> None:
        for _ in range(2):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("POST", "/kbs/v0/auth", body=b'{"version":"0.1.0","tee":"sample","resource":"nope"}')
            conn.getresponse().read()
            conn.close()

    rows = [
        ("2 bare HTTP POSTs (floor)", latencies(bare, seconds)),
        (
            "release, sample attester",
            latencies(lambda: request_resource(server.url, "sample", attester=SampleAttester()), seconds),
        ),
    ]
    tpm = None
    try:
        tpm = start_swtpm(tmp / "tpm")
        from kubeshield.keys.tpm_attest import TpmAttester

        attester = TpmAttester(tcti=tpm.tcti, pcrs=range(24))
        rows.append(
            (
                "release, swtpm quote (24 PCRs)",
                latencies(
                    lambda: request_resource(server.url, "tpm", attester=attester), seconds, at_least=10
                ),
            )
        )
    except RuntimeError as exc:
        print(f"(swtpm round trip not measured: {exc})")
    finally:
        if tpm is not None:
            tpm.stop()
        server.shutdown()
    floor = statistics.median(rows[0][1])
    print(f"{'key release round trip (loopback)':34} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'p50/floor':>10}")
    for name, lat in rows:
        print(
            f"{name:34} {len(lat):6d} {pct(lat, 0.5) * 1e3:9.2f} {pct(lat, 0.99) * 1e3:9.2f} "
            f"{statistics.median(lat) / floor:10.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    verifier_table(args.seconds)
    print()
    release_table(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
