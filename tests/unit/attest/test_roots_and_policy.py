"""The pinned roots are the published ones, and the policy names every failed rule."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubeshield.attest import parse_policy
from kubeshield.attest._amd_roots import AMD_GENERATIONS
from kubeshield.attest._intel_root import INTEL_SGX_ROOT_CA, INTEL_SGX_ROOT_PUBLIC_KEY
from kubeshield.attest.result import Verification
from kubeshield.errors import ConfigError
from tests.unit.attest._vectors import vector


def test_intel_root_is_the_one_in_real_pck_chains_and_has_the_pinned_key():
    key = INTEL_SGX_ROOT_CA.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert key == INTEL_SGX_ROOT_PUBLIC_KEY
    in_quote = x509.load_pem_x509_certificates(vector("sgx_quote")[1052:4599])[-1]
    assert in_quote == INTEL_SGX_ROOT_CA
    INTEL_SGX_ROOT_CA.verify_directly_issued_by(INTEL_SGX_ROOT_CA)


@pytest.mark.parametrize("gen", ["Milan", "Genoa", "Turin"])
def test_amd_roots_equal_trustees_files_and_chain_to_their_ark(gen):
    roots = AMD_GENERATIONS[gen]
    published = x509.load_pem_x509_certificates(vector(f"{gen.lower()}_ask_ark_asvk.pem"))
    assert {roots.ark, roots.ask, roots.asvk} == set(published)
    roots.ark.verify_directly_issued_by(roots.ark)
    roots.ask.verify_directly_issued_by(roots.ark)
    roots.asvk.verify_directly_issued_by(roots.ark)


def result(**claims) -> Verification:
    return Verification(
        tee="sgx",
        ok=True,
        status="SWHardeningNeeded",
        advisory_ids=("INTEL-SA-00615",),
        claims={"mr_signer": "AB" * 32, "isv_svn": 3, "debug": False, **claims},
    )


POLICY = """
version: 1
tee: [sgx]
tcbStatus: [UpToDate, SWHardeningNeeded]
claims:
  mr_signer: {in: [%s]}
  isv_svn: {min: 2}
  debug: {equals: false}
""" % ("ab" * 32)


def test_policy_allows_matching_claims():
    decision = parse_policy(POLICY).evaluate(result())
    assert decision.allowed and decision.failures == ()


def test_policy_names_every_failed_rule():
    decision = parse_policy(POLICY + "rejectAdvisories: [INTEL-SA-00615]\n").evaluate(
        Verification(
            tee="sgx",
            ok=True,
            status="OutOfDate",
            advisory_ids=("INTEL-SA-00615",),
            claims={"mr_signer": "00" * 32, "isv_svn": 1, "debug": True},
        )
    )
    assert not decision.allowed
    text = decision.reason
    for name in (
        "tcbStatus",
        "rejectAdvisories",
        "claims.mr_signer.in",
        "claims.isv_svn.min",
        "claims.debug.equals",
    ):
        assert name in text


def test_policy_never_allows_unverified_evidence_or_missing_claims():
    decision = parse_policy(POLICY).evaluate(result().failed("bad signature"))
    assert not decision.allowed and "not verified" in decision.reason
    d2 = parse_policy("version: 1\nclaims: {pcr7: {equals: '00'}}\n").evaluate(result())
    assert not d2.allowed and "no claim 'pcr7'" in d2.reason


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version: 2\n", "version"),
        ("version: 1\nfoo: 1\n", "foo"),
        ("version: 1\ntee: [x]\n", "tee"),
        ("version: 1\nclaims: {a: {gt: 1}}\n", "claims.a.gt"),
        ("version: 1\nclaims: {a: {min: x}}\n", "claims.a.min"),
        ("[", "YAML"),
    ],
)
def test_bad_policies_name_the_field(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_policy(text, source="p.yaml")
