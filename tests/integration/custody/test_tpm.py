"""TPM sealing and attestation against real swtpm instances (one pair per module)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.custody.attest import (
    AttestationError,
    binding,
    parse_quote,
    statement_body,
    verify_statement,
)
from kubeshield.errors import BackendUnavailable
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.tpm import TpmSealer, TpmUnsealError
from tests.support.swtpm import start_swtpm

from ._support import CUSTODY_CLI, REPO, allow_policy, env, start_custody, write_keyring


@pytest.fixture(scope="module")
def tpms(tmp_path_factory):
    a = start_swtpm(tmp_path_factory.mktemp("tpm-a"))
    b = start_swtpm(tmp_path_factory.mktemp("tpm-b"))
    yield a, b
    a.stop()
    b.stop()


def test_seal_unseal_round_trip_without_and_with_pcr_policy(tpms) -> None:
    a, _ = tpms
    secret = os.urandom(32)
    for pcrs in ((), (16,), (7, 16)):
        sealer = TpmSealer(tcti=a.tcti, pcrs=pcrs)
        blob = sealer.seal(secret)
        assert secret not in blob
        assert sealer.unseal(blob) == secret


def test_sealed_blob_does_not_unseal_on_another_tpm(tpms) -> None:
    a, b = tpms
    blob = TpmSealer(tcti=a.tcti).seal(b"k" * 32)
    with pytest.raises(TpmUnsealError, match="sealed by another TPM"):
        TpmSealer(tcti=b.tcti).unseal(blob)


def test_changed_pcr_state_fails_with_a_clear_error(tpms) -> None:
    a, _ = tpms
    sealer = TpmSealer(tcti=a.tcti, pcrs=(23,))
    blob = sealer.seal(b"p" * 32)
    assert sealer.unseal(blob) == b"p" * 32
    sealer.extend(23, b"a new boot component")
    with pytest.raises(TpmUnsealError, match="PCR 23 changed since sealing"):
        sealer.unseal(blob)


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_damaged_blob_is_refused(tpms, cut: int) -> None:
    a, _ = tpms
    blob = TpmSealer(tcti=a.tcti).seal(b"d" * 32)
    with pytest.raises(TpmUnsealError):
        TpmSealer(tcti=a.tcti).unseal(blob[:-cut])
    flipped = blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:]
    with pytest.raises(TpmUnsealError):
        TpmSealer(tcti=a.tcti).unseal(flipped)


def test_absent_tpm_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="cannot open the TPM"):
        TpmSealer(tcti="swtpm:host=127.0.0.1,port=1").seal(b"x")


@pytest.fixture
def custody(tmp_path: Path):
    write_keyring(tmp_path / "keyring")
    proc = start_custody(
        keyring=tmp_path / "keyring", socket=tmp_path / "c.sock", policy=allow_policy(tmp_path / "p.yaml")
    )
    proc.key_id = KeyringFile(tmp_path / "keyring").read_info().primary.key_id  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUSTODY_CLI, *args], capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=60
    )


def test_attest_and_verify_round_trip_and_reject_a_wrong_nonce(tpms, custody, tmp_path: Path) -> None:
    a, b = tpms
    nonce = os.urandom(32).hex()
    out = _cli(
        "attest", "--socket", str(custody.socket), "--tcti", a.tcti, "--nonce", nonce, "--pcrs", "7,16"
    )
    assert out.returncode == 0, out.stderr
    statement = json.loads(out.stdout)
    assert statement["measurement"]["pid"] == custody.proc.pid
    assert statement["keyIds"] == [custody.key_id]
    info = parse_quote(base64.b64decode(statement["quote"]))
    assert info.pcrs == (7, 16)
    # the quote's qualifying data binds the nonce AND the statement body
    body = {k: v for k, v in statement.items() if k not in ("quote", "signature", "akPublicKey")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert info.extra_data == hashlib.sha256(bytes.fromhex(nonce) + canonical).digest()

    path = tmp_path / "statement.json"
    path.write_text(out.stdout)
    ok = _cli("verify", "--statement", str(path), "--nonce", nonce)
    assert ok.returncode == 0 and ok.stdout.startswith("verified"), ok.stderr
    ak = tmp_path / "ak.pem"
    ak.write_text(statement["akPublicKey"])
    assert _cli("verify", "--statement", str(path), "--nonce", nonce, "--ak-public", str(ak)).returncode == 0

    replay = _cli("verify", "--statement", str(path), "--nonce", os.urandom(32).hex())
    assert replay.returncode == 1 and "not our nonce" in replay.stderr

    # the same statement checked against another TPM's attestation key is refused
    other_ak = TpmSealer(tcti=b.tcti).quote(nonce=b"x", pcrs=(7,)).ak_public_pem
    with pytest.raises(AttestationError, match="another attestation key"):
        verify_statement(statement, nonce=bytes.fromhex(nonce), ak_public_pem=other_ak)


def _quoted_statement(tcti: str, nonce: bytes) -> dict[str, object]:
    """A version-2 statement quoted by the TPM at ``tcti`` (a made-up body; no custody process needed)."""
    body = {
        "version": 2, "nonce": nonce.hex(), "keyIds": ["local:v3:0123456789abcdef"], "pcrs": [7],
        "measurement": {"pid": 4242, "uid": 0, "gid": 0, "exe": "/usr/bin/python3.11",
                        "exeSha256": "ab" * 32, "cgroup": "0::/", "packageDigest": None, "startTime": 1},
    }  # fmt: skip
    q = TpmSealer(tcti=tcti).quote(nonce=binding(nonce, body), pcrs=(7,))
    return {
        **body, "akPublicKey": q.ak_public_pem.decode(),
        "quote": base64.b64encode(q.attest).decode(), "signature": base64.b64encode(q.signature).decode(),
    }  # fmt: skip


def test_tampered_quote_or_signature_is_rejected(tpms) -> None:
    a, _ = tpms
    nonce = b"n" * 20
    good = _quoted_statement(a.tcti, nonce)
    assert verify_statement(good, nonce=nonce).pcrs == (7,)
    attest = base64.b64decode(good["quote"])  # type: ignore[arg-type]
    bad_quote = dict(good, quote=base64.b64encode(attest[:-1] + bytes([attest[-1] ^ 1])).decode())
    with pytest.raises(AttestationError, match="signature does not verify"):
        verify_statement(bad_quote, nonce=nonce)
    with pytest.raises(AttestationError, match="malformed"):
        verify_statement(dict(good, quote="***"), nonce=nonce)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: s["measurement"].update(exeSha256="cd" * 32), id="measurement-exe"),
        pytest.param(lambda s: s["measurement"].update(uid=1000), id="measurement-uid"),
        pytest.param(lambda s: s.update(keyIds=["local:v4:fedcba9876543210"]), id="key-ids"),
        pytest.param(lambda s: s["keyIds"].append("local:v4:fedcba9876543210"), id="key-id-added"),
        pytest.param(lambda s: s.update(extra="claim"), id="field-added"),
        pytest.param(lambda s: s.pop("measurement"), id="field-removed"),
    ],
)
def test_a_tampered_statement_body_fails_verification(tpms, edit) -> None:
    a, _ = tpms
    nonce = os.urandom(32)
    statement = _quoted_statement(a.tcti, nonce)
    assert verify_statement(statement, nonce=nonce).pcrs == (7,)
    tampered = json.loads(json.dumps(statement))
    edit(tampered)
    assert statement_body(tampered) != statement_body(statement)
    with pytest.raises(AttestationError, match="does not cover this statement body"):
        verify_statement(tampered, nonce=nonce)


def test_statement_pcrs_must_match_the_quoted_selection(tpms) -> None:
    a, _ = tpms
    nonce = b"p" * 16
    statement = _quoted_statement(a.tcti, nonce)
    with pytest.raises(AttestationError, match="does not cover this statement body"):
        verify_statement(dict(statement, pcrs=[7, 16]), nonce=nonce)


def test_a_version_1_statement_is_refused(tpms) -> None:
    a, _ = tpms
    statement = dict(_quoted_statement(a.tcti, b"v" * 8), version=1)
    with pytest.raises(AttestationError, match="unsupported statement version"):
        verify_statement(statement, nonce=b"v" * 8)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_quote_parser_any_bytes_parse_or_raise_attestation_error(data: bytes) -> None:
    try:
        info = parse_quote(data)
    except AttestationError:
        return
    assert len(info.extra_data) <= 64 and all(0 <= p < 2048 for p in info.pcrs)


def test_ak_command_gives_the_key_attest_signs_with_and_verify_pins_its_fingerprint(
    tpms, custody, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    a, b = tpms
    pem_out = _cli("ak", "--tcti", a.tcti)
    assert pem_out.returncode == 0, pem_out.stderr
    record = json.loads(_cli("ak", "--tcti", a.tcti, "-o", "json").stdout)
    assert record["akPublicKey"] == pem_out.stdout  # the same TPM always gives the same AK
    der = load_pem_public_key(pem_out.stdout.encode()).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    assert record["fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert f"fingerprint {record['fingerprint']}" in pem_out.stderr  # stdout stays a plain PEM

    nonce = os.urandom(16).hex()
    out = _cli("attest", "--socket", str(custody.socket), "--tcti", a.tcti, "--nonce", nonce)
    assert out.returncode == 0, out.stderr
    statement_file = tmp_path / "statement.json"
    statement_file.write_text(out.stdout)
    assert json.loads(out.stdout)["akPublicKey"] == pem_out.stdout  # attest signs with that AK

    pinned = _cli("verify", "--statement", str(statement_file), "--nonce", nonce,
                  "--ak-fingerprint", record["fingerprint"])  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    assert f"by AK {record['fingerprint']}" in pinned.stdout and "NOT pinned" not in pinned.stdout
    ak_file = tmp_path / "ak.pem"
    ak_file.write_text(pem_out.stdout)
    by_pem = _cli("verify", "--statement", str(statement_file), "--nonce", nonce, "--ak-public", str(ak_file))
    assert by_pem.returncode == 0, by_pem.stderr

    other = json.loads(_cli("ak", "--tcti", b.tcti, "-o", "json").stdout)["fingerprint"]
    assert other != record["fingerprint"]
    wrong = _cli("verify", "--statement", str(statement_file), "--nonce", nonce, "--ak-fingerprint", other)
    assert wrong.returncode == 1 and "not by the pinned" in wrong.stderr
    both = _cli("verify", "--statement", str(statement_file), "--nonce", nonce,
                "--ak-fingerprint", other, "--ak-public", str(ak_file))  # fmt: skip
    assert both.returncode == 2
