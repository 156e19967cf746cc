# ruff: noqa: F811  (pytest fixtures imported from tests.support are re-bound as arguments)
"""Attestation between login and relay with a real swtpm: the relay requiring a TPM quote over its
nonce and the CSR, and the login requiring the relay's quote over its nonce and the relay CA."""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509.oid import NameOID

from kubeshield.access.login import login
from kubeshield.access.oidc import LoginError, tls_context
from kubeshield.access.relay_attest import (
    RelayAttestation,
    RelayEvidenceCheck,
    login_binding,
    login_evidence,
)
from kubeshield.attest import parse_policy
from kubeshield.attest.policy import Policy
from kubeshield.attest.tpm import ak_fingerprint
from kubeshield.errors import PolicyDenied
from kubeshield.keys.tpm import TpmSealer
from kubeshield.keys.tpm_attest import TpmAttester
from tests.support.access_agent import start_agent_process
from tests.support.access_relay import (
    DevicePerson,
    RunningRelay,
    TestKeyHolder,
    start_relay,
    write_relay_config,
)
from tests.support.kubeapi._server import KubeAPI
from tests.support.oidc_provider import OidcProvider, complete_device_login, oidc_provider  # noqa: F401
from tests.support.swtpm import SwTpm, start_swtpm


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwTpm]:
    t = start_swtpm(tmp_path_factory.mktemp("tpm-relay"))
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture(scope="module")
def pinned(tpm: SwTpm) -> Policy:
    """A policy pinning this TPM's attestation key (enrolled out of band) and its PCR 7."""
    quote = TpmSealer(tcti=tpm.tcti).quote(nonce=b"enrol", pcrs=[7])
    ak = ak_fingerprint(load_pem_public_key(quote.ak_public_pem))
    return parse_policy(
        f"version: 1\ntee: [tpm]\nclaims: {{ak_sha256: {{in: ['{ak}']}}, pcr7: {{equals: '{'00' * 32}'}}}}\n"
    )


@pytest.fixture(scope="module")
def other_tpm_policy() -> Policy:
    return parse_policy(f"version: 1\ntee: [tpm]\nclaims: {{ak_sha256: {{in: ['{'ab' * 32}']}}}}\n")


def csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def gated(
    tmp_path: Path, oidc_provider: OidcProvider, pinned: Policy
) -> Iterator[tuple[RunningRelay, RelayAttestation]]:
    attestation = RelayAttestation(policy=pinned)
    running = start_relay(
        tmp_path / "relay",
        provider=oidc_provider,
        attest=attestation.verify_login,
        challenge=attestation.new_challenge,
    )
    try:
        yield running, attestation
    finally:
        running.stop()


def device_login(relay: RunningRelay, provider: OidcProvider, **kw: Any) -> Any:
    person = DevicePerson(provider)
    try:
        return login(
            relay_url=relay.url,
            holder=kw.pop("holder", TestKeyHolder()),
            relay_context=tls_context(ca_file=relay.tls_ca),
            show=person.show,
            **kw,
        )
    finally:
        person.join()


def test_a_relay_requiring_attestation_issues_to_a_login_whose_tpm_quote_passes(
    gated: tuple[RunningRelay, RelayAttestation], oidc_provider: OidcProvider, tpm: SwTpm
) -> None:
    relay, _ = gated
    result = device_login(relay, oidc_provider, evidence=login_evidence(tpm.tcti, pcrs=(7,)))
    assert result.user == "alice@example.test"


def test_a_login_without_evidence_is_refused_before_the_flow(
    gated: tuple[RunningRelay, RelayAttestation], oidc_provider: OidcProvider
) -> None:
    relay, _ = gated
    with pytest.raises(LoginError, match="requires attestation evidence from the login side"):
        device_login(relay, oidc_provider)


def test_the_relay_refuses_missing_unissued_replayed_and_misbound_evidence(
    gated: tuple[RunningRelay, RelayAttestation], tpm: SwTpm
) -> None:
    _, attestation = gated
    attester = TpmAttester(tcti=tpm.tcti, pcrs=(7,))
    csr = csr_pem()
    # a nonce the relay never issued
    forged_nonce = "A" * 43
    with pytest.raises(PolicyDenied, match="not a challenge this relay issued"):
        attestation.verify_login({"nonce": forged_nonce, "tpm": {}}, csr)
    # a good quote, then the same evidence again
    nonce = attestation.new_challenge()["nonce"]
    make = login_evidence(tpm.tcti, pcrs=(7,))
    evidence = make(nonce.encode(), csr)
    assert attestation.verify_login(evidence, csr).startswith("tpm ak sha256:")
    with pytest.raises(PolicyDenied, match="used already"):
        attestation.verify_login(evidence, csr)
    # a quote over the right nonce but for another CSR's key (someone else's request)
    nonce = attestation.new_challenge()["nonce"]
    evidence = make(nonce.encode(), csr_pem())
    with pytest.raises(PolicyDenied, match="report data is not the expected nonce binding"):
        attestation.verify_login(evidence, csr)
    # a quote over the nonce, but not bound with the CSR at all
    nonce = attestation.new_challenge()["nonce"]
    raw = attester.evidence(b"\x00" * 32)
    with pytest.raises(PolicyDenied, match="report data"):
        attestation.verify_login({"nonce": nonce, "tpm": json.loads(raw)}, csr)


def test_a_quote_from_a_tpm_the_policy_does_not_pin_is_refused(
    tmp_path: Path, oidc_provider: OidcProvider, tpm: SwTpm, other_tpm_policy: Policy
) -> None:
    attestation = RelayAttestation(policy=other_tpm_policy)
    csr = csr_pem()
    nonce = attestation.new_challenge()["nonce"]
    evidence = login_evidence(tpm.tcti, pcrs=(7,))(nonce.encode(), csr)
    with pytest.raises(PolicyDenied, match=r"refused by the policy: claims\.ak_sha256\.in"):
        attestation.verify_login(evidence, csr)
    assert login_binding(b"n", csr) != login_binding(b"m", csr)


def test_over_https_a_certificate_request_without_evidence_is_403(
    gated: tuple[RunningRelay, RelayAttestation],
) -> None:
    relay, _ = gated
    with httpx.Client(verify=ssl.create_default_context(cafile=str(relay.tls_ca)), timeout=30) as client:
        challenge = client.post(relay.url + "/v1/challenge")
        assert challenge.status_code == 200 and len(challenge.json()["nonce"]) == 43
        assert client.get(relay.url + "/v1/config").json()["attestation"]["loginEvidenceRequired"] is True
        # the relay verifies the ID token first; a fake token is refused before evidence is looked at
        reply = client.post(
            relay.url + "/v1/certificates", json={"idToken": "a.b.c", "csr": csr_pem().decode()}
        )
        assert reply.status_code == 401


# --- the login checks the relay ---------------------------------------------------------------------


@pytest.fixture
def attested_relay(tmp_path: Path, oidc_provider: OidcProvider, tpm: SwTpm) -> Iterator[RunningRelay]:
    attestation = RelayAttestation(attester=TpmAttester(tcti=tpm.tcti, pcrs=(7,)))
    running = start_relay(tmp_path / "relay", provider=oidc_provider, own_evidence=attestation.own_evidence)
    attestation.ca_pem = running.ca_pem
    try:
        yield running
    finally:
        running.stop()


def test_login_checks_the_relay_s_quote_before_anything_is_sent(
    attested_relay: RunningRelay, oidc_provider: OidcProvider, pinned: Policy
) -> None:
    result = device_login(attested_relay, oidc_provider, expect_relay=RelayEvidenceCheck(pinned))
    assert result.relay_attestation is not None and result.relay_attestation.startswith("tpm ak sha256:")


def test_login_refuses_a_relay_whose_tpm_is_not_pinned_without_starting_the_flow(
    attested_relay: RunningRelay, oidc_provider: OidcProvider, other_tpm_policy: Policy
) -> None:
    person = DevicePerson(oidc_provider)
    with pytest.raises(PolicyDenied, match="relay attestation: refused by the policy"):
        login(
            relay_url=attested_relay.url,
            holder=TestKeyHolder(),
            relay_context=tls_context(ca_file=attested_relay.tls_ca),
            show=person.show,
            expect_relay=RelayEvidenceCheck(other_tpm_policy),
        )
    assert person.lines == []  # no device code was ever shown: nothing was sent to the provider


def test_login_refuses_a_relay_without_evidence(
    tmp_path: Path, oidc_provider: OidcProvider, pinned: Policy
) -> None:
    plain = start_relay(tmp_path / "plain", provider=oidc_provider)
    try:
        with pytest.raises(LoginError, match="serves no attestation evidence"):
            login(
                relay_url=plain.url,
                holder=TestKeyHolder(),
                relay_context=tls_context(ca_file=plain.tls_ca),
                show=print,
                expect_relay=RelayEvidenceCheck(pinned),
            )
    finally:
        plain.stop()


def test_login_refuses_a_certificate_from_another_ca_than_the_attested_one(
    tmp_path: Path, oidc_provider: OidcProvider, tpm: SwTpm, pinned: Policy
) -> None:
    # the attested machine names CA A; the certificate comes signed by CA B (the relay's real one)
    decoy = start_relay(tmp_path / "decoy", provider=oidc_provider)
    attestation = RelayAttestation(attester=TpmAttester(tcti=tpm.tcti, pcrs=(7,)))
    attestation.ca_pem = decoy.ca_pem
    relay = start_relay(tmp_path / "relay", provider=oidc_provider, own_evidence=attestation.own_evidence)
    try:
        with pytest.raises(LoginError, match="not signed by the relay's CA"):
            device_login(relay, oidc_provider, expect_relay=RelayEvidenceCheck(pinned))
    finally:
        relay.stop()
        decoy.stop()


# --- the commands -----------------------------------------------------------------------------------


def test_the_commands_attest_both_ways(tmp_path: Path, oidc_provider: OidcProvider, tpm: SwTpm) -> None:
    kubeshield = str(Path(sys.executable).parent / "kubeshield")
    quote = TpmSealer(tcti=tpm.tcti).quote(nonce=b"enrol", pcrs=[7])
    ak = ak_fingerprint(load_pem_public_key(quote.ak_public_pem))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\ntee: [tpm]\nclaims: {{ak_sha256: {{in: ['{ak}']}}}}\n")
    api = KubeAPI(tmp_path / "kubeapi").start()
    config, tls_ca = write_relay_config(
        tmp_path / "relay",
        provider=oidc_provider,
        clusters=[("standin", api.url, api.ca_path)],
        extra={"attestation": {"policy": str(policy), "tcti": tpm.tcti, "pcrs": [7]}},
    )
    env = {**os.environ}
    assert subprocess.run([kubeshield, "access", "relay", "init-ca", "--config", str(config)],
                          capture_output=True, env=env, timeout=120).returncode == 0  # fmt: skip
    relay = subprocess.Popen(
        [kubeshield, "access", "relay", "--config", str(config)],
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    runtime = Path(tempfile.mkdtemp(prefix="ks-att-", dir="/tmp"))  # a unix socket path must stay short
    agent = start_agent_process(runtime / "agent.sock")
    login_proc: subprocess.Popen[str] | None = None
    try:
        assert relay.stderr is not None
        line = relay.stderr.readline()
        match = re.search(r"serving on (https://\S+)", line)
        assert match is not None, line
        login_proc = subprocess.Popen(
            [kubeshield, "access", "login", "--relay", match.group(1), "--relay-ca", str(tls_ca),
             "--socket", str(runtime / "agent.sock"), "--expect-relay-attestation", str(policy),
             "--attest-tcti", tpm.tcti],
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        assert login_proc.stderr is not None
        seen = ""
        while "enter the code" not in seen:
            got = login_proc.stderr.readline()
            assert got, f"login ended early: {seen}"
            seen += got
        assert "relay attestation verified: tpm ak sha256:" + ak in seen
        code = re.search(r"open (\S+) and enter the code (\S+)", seen)
        assert code is not None
        complete_device_login(oidc_provider, code.group(1), code.group(2))
        assert login_proc.wait(120) == 0
        assert [c["context"] for c in agent.client().contexts()] == ["standin"]
    finally:
        if login_proc is not None:
            if login_proc.poll() is None:
                login_proc.kill()
            login_proc.wait(30)
            for stream in (login_proc.stdout, login_proc.stderr):
                if stream is not None:
                    stream.close()
        agent.stop()
        relay.terminate()
        relay.wait(30)
        if relay.stderr is not None:
            relay.stderr.close()
        api.stop()
        shutil.rmtree(runtime, ignore_errors=True)
