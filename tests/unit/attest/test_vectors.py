"""Every file of ../shared/vectors/attest verifies to the verdict and claims its README states, and every
negative case listed there is rejected with a reason of the right class. Driven through the CLI
(``kubeshield attest verify -o json``), as the README's checks call it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from kubeshield.cli import main
from tests.unit.attest._vectors import SGX_AT, SNP_AT, VECTORS, collateral_json, mutate, vector

# the README's reason classes: a reason must contain one of the words (case-insensitive)
CLASSES = {
    "signature": ["signature", "signed", "ecdsa"],
    "qe": ["qe", "quoting", "attestation key", "hash", "report data", "signature"],
    "certificate": ["cert", "chain", "pck", "issuer"],
    "crl": ["crl", "revocation", "revoked", "cert", "chain"],
    "time": [
        "expired",
        "future",
        "not yet",
        "validity",
        "not before",
        "not after",
        "window",
        "time",
        "date",
        "next update",
        "stale",
    ],
    "collateral-sig": ["signature", "tcb info", "qe identity", "collateral"],
    "parse": [
        "parse",
        "decode",
        "truncated",
        "short",
        "length",
        "size",
        "version",
        "malformed",
        "format",
        "unsupported",
        "unknown",
    ],
    "collateral": ["collateral"],
    "snp-tcb": ["signature", "tcb", "microcode", "bootloader", "version"],
    "snp-key": ["signature", "vcek", "vlek", "key", "chip"],
    "snp-cert": [
        "cert",
        "chain",
        "vcek",
        "vlek",
        "ask",
        "ark",
        "asvk",
        "signature",
        "algorithm",
        "oid",
        "hash",
    ],
    "replay": ["rtmr0", "replay"],
    "nonce": ["nonce", "report data"],
}


def run(
    tmp_path: Path, capsys, evidence: bytes, collateral: bytes | None = None, *args: str
) -> tuple[int, dict]:
    ev = tmp_path / "evidence"
    ev.write_bytes(evidence)
    argv = ["attest", "verify", "--evidence", str(ev), "-o", "json", *args]
    if collateral is not None:
        col = tmp_path / "collateral"
        col.write_bytes(collateral)
        argv += ["--collateral", str(col)]
    capsys.readouterr()
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def assert_rejected(code: int, doc: dict, cls: str) -> None:
    assert code == 1
    assert doc["ok"] is False
    reason = doc["reason"].lower()
    assert reason, "a failure must carry a reason"
    assert any(word in reason for word in CLASSES[cls]), f"reason {doc['reason']!r} is not of class {cls}"


# ---- SGX: sgx_quote + collateral -------------------------------------------------------------------------

SGX_CLAIMS = {
    "mr_enclave": "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
    "mr_signer": "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
    "report_data": "48656c6c6f2c20776f726c6421" + "00" * 51,
    "isv_prod_id": 0,
    "isv_svn": 0,
    "attributes": "0500000000000000e700000000000000",
    "debug": False,
    "qe_svn": 10,
    "pce_svn": 15,
}


def test_sgx_quote_verifies_with_its_collateral(tmp_path, capsys):
    code, doc = run(
        tmp_path, capsys, vector("sgx_quote"), vector("sgx_quote_collateral.json"), "--at", SGX_AT
    )
    assert code == 0, doc
    assert doc["tee"] == "sgx" and doc["ok"] is True and doc["reason"] == ""
    assert doc["status"] == "ConfigurationAndSWHardeningNeeded"
    assert doc["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    for key, value in SGX_CLAIMS.items():
        assert doc["claims"][key] == value, key


@pytest.mark.parametrize(
    ("offset", "cls"),
    [
        (112, "signature"),
        (368, "signature"),
        (40, "signature"),
        (446, "signature"),
        (510, "qe"),
        (884, "qe"),
        (958, "qe"),
    ],
)
def test_sgx_quote_bit_flips_are_rejected(tmp_path, capsys, offset, cls):
    code, doc = run(
        tmp_path,
        capsys,
        mutate(vector("sgx_quote"), offset, xor=1),
        vector("sgx_quote_collateral.json"),
        "--at",
        SGX_AT,
    )
    assert_rejected(code, doc, cls)
    assert doc["tee"] == "sgx" and doc["claims"]["mr_signer"]  # claims parsed, unverified


def test_sgx_pck_leaf_signature_edit_breaks_the_chain(tmp_path, capsys):
    quote = vector("sgx_quote")
    assert quote[2625:2626] == b"H"
    code, doc = run(
        tmp_path,
        capsys,
        mutate(quote, 2625, value=ord("A")),
        vector("sgx_quote_collateral.json"),
        "--at",
        SGX_AT,
    )
    assert_rejected(code, doc, "certificate")


@pytest.mark.parametrize("evidence", ["version7", "cut1000"])
def test_sgx_quote_that_does_not_parse(tmp_path, capsys, evidence):
    quote = vector("sgx_quote")
    data = mutate(quote, 0, value=7) if evidence == "version7" else quote[:1000]
    code, doc = run(tmp_path, capsys, data, vector("sgx_quote_collateral.json"), "--at", SGX_AT)
    assert_rejected(code, doc, "parse")


def test_sgx_tcb_info_edit_breaks_its_signature(tmp_path, capsys):
    col = collateral_json()
    assert '"tcbEvaluationDataNumber":17' in col["tcb_info"]
    col["tcb_info"] = col["tcb_info"].replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":117')
    code, doc = run(tmp_path, capsys, vector("sgx_quote"), json.dumps(col).encode(), "--at", SGX_AT)
    assert_rejected(code, doc, "collateral-sig")


def test_sgx_pck_crl_edit_breaks_its_signature(tmp_path, capsys):
    col = collateral_json()
    col["pck_crl"] = mutate(bytes.fromhex(col["pck_crl"]), 292, xor=1).hex()
    code, doc = run(tmp_path, capsys, vector("sgx_quote"), json.dumps(col).encode(), "--at", SGX_AT)
    assert_rejected(code, doc, "crl")


@pytest.mark.parametrize("when", ["2025-07-20T10:01:18Z", "2025-06-18T10:56:11Z"])
def test_sgx_collateral_outside_its_window(tmp_path, capsys, when):
    code, doc = run(tmp_path, capsys, vector("sgx_quote"), vector("sgx_quote_collateral.json"), "--at", when)
    assert_rejected(code, doc, "time")


@pytest.mark.parametrize("when", ["2025-06-19T10:56:11Z", "2025-07-19T10:01:18Z"])
def test_sgx_collateral_window_edges_verify(tmp_path, capsys, when):
    code, doc = run(tmp_path, capsys, vector("sgx_quote"), vector("sgx_quote_collateral.json"), "--at", when)
    assert code == 0 and doc["ok"] is True


# ---- occlum_quote.dat (no collateral exists) -------------------------------------------------------------


def test_occlum_quote_parses_but_is_not_verified_without_collateral(tmp_path, capsys):
    code, doc = run(tmp_path, capsys, vector("occlum_quote.dat"))
    assert_rejected(code, doc, "collateral")
    c = doc["claims"]
    assert c["mr_enclave"] == "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
    assert c["mr_signer"] == "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"
    assert c["report_data"] == "74657374" + "00" * 60
    assert (c["isv_prod_id"], c["isv_svn"], c["qe_svn"], c["pce_svn"]) == (0, 0, 8, 13)
    assert c["flags"] == "0700000000000000" and c["debug"] is True
    assert c["xfrm"] == "e700000000000000"
    assert c["cpu_svn"] == "06060c0cffff00000000000000000000"


def test_occlum_quote_with_another_platforms_collateral_is_rejected(tmp_path, capsys):
    code, doc = run(
        tmp_path, capsys, vector("occlum_quote.dat"), vector("sgx_quote_collateral.json"), "--at", SGX_AT
    )
    assert_rejected(code, doc, "crl")


# ---- TDX: tdx_quote_4.dat, CCEL_data ---------------------------------------------------------------------


def test_tdx_quote_claims_equal_trustees_golden_file(tmp_path, capsys):
    code, doc = run(tmp_path, capsys, vector("tdx_quote_4.dat"))
    assert_rejected(code, doc, "collateral")
    assert doc["tee"] == "tdx"
    golden = json.loads(vector("parse_tdx_claims_expected.json"))["quote"]["body"]
    c = doc["claims"]
    for ours, theirs in [
        ("mr_td", "mr_td"),
        ("rtmr0", "rtmr_0"),
        ("rtmr1", "rtmr_1"),
        ("rtmr2", "rtmr_2"),
        ("rtmr3", "rtmr_3"),
        ("report_data", "report_data"),
        ("mr_config_id", "mr_config_id"),
        ("mr_seam", "mr_seam"),
        ("mr_owner", "mr_owner"),
        ("mr_owner_config", "mr_owner_config"),
        ("tee_tcb_svn", "tcb_svn"),
        ("xfam", "xfam"),
        ("td_attributes", "td_attributes"),
        ("seam_attributes", "seam_attributes"),
        ("mr_signer_seam", "mrsigner_seam"),
    ]:
        assert c[ours] == golden[theirs].lower(), ours
    assert c["td_attributes"] == "0100001000000000" and c["debug"] is True
    assert c["mr_td"].startswith("705ee9381b8633a9")


def test_tdx_quote_with_the_ccel_log_fails_the_replay_naming_rtmr0(tmp_path, capsys):
    log = tmp_path / "ccel"
    log.write_bytes(vector("CCEL_data"))
    code, doc = run(tmp_path, capsys, vector("tdx_quote_4.dat"), None, "--event-log", str(log))
    assert_rejected(code, doc, "replay")
    assert "rtmr0" in doc["reason"].lower()
    assert doc["claims"]["eventlog_rtmr0"].startswith("2dc712306a963ead")
    assert doc["claims"]["eventlog_rtmr1"].startswith("0fa3be56af61208b")
    assert doc["claims"]["eventlog_rtmr2"] == doc["claims"]["eventlog_rtmr3"] == "00" * 48


def test_trustee_style_tdx_json_evidence_carries_the_log(tmp_path, capsys):
    doc_in = {
        "quote": base64.b64encode(vector("tdx_quote_4.dat")).decode(),
        "cc_eventlog": base64.b64encode(vector("CCEL_data")).decode(),
    }
    code, doc = run(tmp_path, capsys, json.dumps(doc_in).encode())
    assert_rejected(code, doc, "replay")


# ---- SEV-SNP ---------------------------------------------------------------------------------------------


def test_snp_report_verifies_with_its_vcek(tmp_path, capsys):
    code, doc = run(tmp_path, capsys, vector("test-report.bin"), vector("test-vcek.der"), "--at", SNP_AT)
    assert code == 0, doc
    c = doc["claims"]
    assert doc["tee"] == "snp" and doc["ok"] is True
    assert c["measurement"] == (
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
    )
    assert c["report_data"] == "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2" + "00" * 32
    assert c["host_data"] == "00" * 32
    assert c["chip_id"].startswith("c38427a30d4c7af9") and c["chip_id"].endswith("e477524e")
    assert c["policy"] == "0x3001f" and c["guest_svn"] == 4 and c["vmpl"] == 0
    assert c["reported_tcb"] == {"bootloader": "3", "tee": "0", "snp": "8", "microcode": "115"}
    assert c["family_id"] == "01" + "00" * 15 and c["image_id"] == "02" + "00" * 15


@pytest.mark.parametrize(
    ("target", "offset", "cls"),
    [("report", 42, "signature"), ("report", 384, "snp-tcb"), ("vcek", 42, "snp-cert")],
)
def test_snp_edits_are_rejected(tmp_path, capsys, target, offset, cls):
    report, vcek = vector("test-report.bin"), vector("test-vcek.der")
    if target == "report":
        report = mutate(report, offset, add=1)
    else:
        vcek = mutate(vcek, offset, add=1)
    code, doc = run(tmp_path, capsys, report, vcek, "--at", SNP_AT)
    assert_rejected(code, doc, cls)


@pytest.mark.parametrize("name", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_snp_invalid_vceks_are_rejected(tmp_path, capsys, name):
    code, doc = run(tmp_path, capsys, vector("test-report.bin"), vector(name), "--at", SNP_AT)
    assert_rejected(code, doc, "snp-cert")


def test_snp_vcek_expired(tmp_path, capsys):
    code, doc = run(
        tmp_path, capsys, vector("test-report.bin"), vector("test-vcek.der"), "--at", "2030-01-25T17:58:26Z"
    )
    assert_rejected(code, doc, "time")


def test_snp_report_without_vek_is_parsed_not_verified(tmp_path, capsys):
    code, doc = run(tmp_path, capsys, vector("test-report.bin"))
    assert_rejected(code, doc, "collateral")
    assert doc["claims"]["guest_svn"] == 4


# ---- TPM -------------------------------------------------------------------------------------------------


def tpm_doc() -> dict:
    return json.loads(vector("tpm_evidence.json"))


def test_tpm_evidence_verifies(tmp_path, capsys):
    code, doc = run(tmp_path, capsys, vector("tpm_evidence.json"))
    assert code == 0, doc
    c = doc["claims"]
    assert (
        c["report_data"]
        == (
            "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393ef0e41a18b3569ab678f1497fbc5c120"
        )
        + "00" * 16
    )
    assert c["pcr_digest"] == "019de64c9318655e422c3d03831169896e31f02a1d74e4d8fef575bf4e0d75fa"
    assert all(c[f"pcr{i}"] == "00" * 32 for i in [*range(17), 23])
    assert all(c[f"pcr{i}"] == "ff" * 32 for i in range(17, 23))
    assert (c["clock"], c["reset_count"], c["firmware_version"]) == (1913548331, 2, "0x2019102300163636")


def test_tpm_message_edits_are_rejected(tmp_path, capsys):
    d = tpm_doc()
    message = base64.b64decode(d["tpm_quote"]["message"])
    assert len(message) == 177
    for offset in (0, 40, 100, 176):
        d["tpm_quote"]["message"] = base64.b64encode(mutate(message, offset, xor=1)).decode()
        code, doc = run(tmp_path, capsys, json.dumps(d).encode())
        assert_rejected(code, doc, "signature")


def test_tpm_pcr_edit_is_a_digest_mismatch(tmp_path, capsys):
    d = tpm_doc()
    d["tpm_quote"]["pcrs"][7] = "01" * 32
    code, doc = run(tmp_path, capsys, json.dumps(d).encode())
    assert code == 1 and re.search("pcr digest", doc["reason"].lower())


def test_tpm_wrong_nonce_is_rejected_and_right_nonce_accepted(tmp_path, capsys):
    right = "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393ef0e41a18b3569ab678f1497fbc5c120"
    code, doc = run(tmp_path, capsys, vector("tpm_evidence.json"), None, "--report-data", right)
    assert code == 0
    code, doc = run(tmp_path, capsys, vector("tpm_evidence.json"), None, "--report-data", "00" + right[2:])
    assert_rejected(code, doc, "nonce")


def test_vectors_dir_is_the_shared_one():
    assert (VECTORS / "README.md").is_file()
