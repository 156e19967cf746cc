"""Property tests: for every parser, any byte string either parses or raises the one parse error
(``EvidenceFormatError``), never another exception; and bad input errors name the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.attest import EvidenceFormatError, verify_evidence
from kubeshield.attest._x509 import parse_pem_blocks
from kubeshield.attest.dcap_collateral import parse_collateral
from kubeshield.attest.dcap_quote import parse_quote
from kubeshield.attest.snp import parse_report
from kubeshield.attest.tdx_eventlog import parse_ccel
from kubeshield.attest.tpm import parse_attest, parse_evidence, parse_signature
from tests.unit.attest._vectors import mutate, vector

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC)


def parses_or_format_error(fn, data) -> bool:
    try:
        fn(data)
    except EvidenceFormatError as exc:
        assert str(exc)
        return False
    return True


def around(base: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, and the real structure truncated, extended or with bytes changed."""
    edits = st.tuples(st.integers(0, max(len(base) - 1, 0)), st.integers(0, 255))
    return st.one_of(
        st.binary(max_size=2 * len(base) + 8),
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.binary(max_size=64).map(lambda tail: base + tail),
        st.lists(edits, min_size=1, max_size=4).map(lambda es: _apply(base, es)),
    )


def _apply(base: bytes, edits) -> bytes:
    b = bytearray(base)
    for off, val in edits:
        b[off] = val
    return bytes(b)


@SETTINGS
@given(around(vector("sgx_quote")) | around(vector("tdx_quote_4.dat")))
def test_dcap_quote_parser(data):
    parses_or_format_error(parse_quote, data)


@SETTINGS
@given(around(vector("test-report.bin")))
def test_snp_report_parser(data):
    parses_or_format_error(parse_report, data)


@SETTINGS
@given(around(vector("CCEL_data")[:2048]))
def test_ccel_parser(data):
    parses_or_format_error(parse_ccel, data)


TPM = json.loads(vector("tpm_evidence.json"))


@SETTINGS
@given(st.binary(max_size=300))
def test_tpm_structures(data):
    parses_or_format_error(parse_attest, data)
    parses_or_format_error(parse_signature, data)


@SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=10,
    )
)
def test_tpm_evidence_json_of_any_shape(doc):
    parses_or_format_error(parse_evidence, doc)
    parses_or_format_error(parse_evidence, {"ak_public": doc, "tpm_quote": doc})


@SETTINGS
@given(around(vector("sgx_quote")[1052:2700]))
def test_pem_framing(data):
    parses_or_format_error(lambda d: parse_pem_blocks(d, what="t"), data)


@SETTINGS
@given(around(vector("sgx_quote_collateral.json")[:4000]) | st.binary(max_size=200))
def test_collateral_parser(data):
    parses_or_format_error(parse_collateral, data)


@SETTINGS
@given(
    st.one_of(
        around(vector("sgx_quote")),
        around(vector("test-report.bin")),
        around(vector("tpm_evidence.json")),
        st.binary(max_size=128),
    )
)
def test_verify_evidence_never_raises_anything_else(data):
    try:
        result = verify_evidence(data, at=NOW)
    except EvidenceFormatError:
        return
    assert result.ok or result.reason


@pytest.mark.parametrize(
    ("parser", "data", "field"),
    [
        (parse_quote, mutate(vector("sgx_quote"), 0, value=7), "header.version"),
        (parse_quote, vector("sgx_quote")[:1000], "truncated"),
        (parse_quote, mutate(vector("sgx_quote"), 4, value=0x99), "header.tee_type"),
        (parse_report, vector("test-report.bin")[:-1], "size"),
        (parse_report, mutate(vector("test-report.bin"), 0, value=9), "version"),
        (None, b"\x00" * 47, "unknown TEE type"),
        (None, b'{"foo": 1}', "unknown TEE type"),
        (None, b"x" * (5 << 20), "oversized"),
    ],
)
def test_bad_evidence_errors_name_the_field(parser, data, field):
    with pytest.raises(EvidenceFormatError, match=field.replace(".", r"\.")):
        if parser is None:
            verify_evidence(data, at=NOW)
        else:
            parser(data)


def test_sample_evidence_is_refused_unless_enabled():
    from kubeshield.attest.sample import encode_sample

    ev = encode_sample(report_data=b"nonce")
    refused = verify_evidence(ev, at=NOW)
    assert not refused.ok and "no protection" in refused.reason and "--allow-sample" in refused.reason
    allowed = verify_evidence(ev, at=NOW, allow_sample=True)
    assert allowed.ok and allowed.tee == "sample" and allowed.claims["protection"] == "none"
    assert allowed.claims["report_data"] == (b"nonce" + bytes(59)).hex()


def _as_v5(v4: bytes, *, td15: bool) -> bytes:
    """The TDX v4 sample re-laid as a v5 quote (body type 2 = TD 1.0, or 3 = TD 1.5 with 64 more bytes)."""
    header, body, rest = v4[:48], v4[48 : 48 + 584], v4[48 + 584 :]
    extra = bytes(64) if td15 else b""
    body_type = 3 if td15 else 2
    return (
        (5).to_bytes(2, "little")
        + header[2:]
        + body_type.to_bytes(2, "little")
        + (584 + len(extra)).to_bytes(4, "little")
        + body
        + extra
        + rest
    )


@pytest.mark.parametrize("td15", [False, True])
def test_tdx_v5_layouts_parse(td15):
    v4 = vector("tdx_quote_4.dat")
    q = parse_quote(_as_v5(v4, td15=td15))
    base = parse_quote(v4)
    assert q.version == 5 and q.is_tdx
    assert q.report.report_data == base.report.report_data
    assert q.claims()["mr_td"] == base.claims()["mr_td"]
    assert ("mr_service_td" in q.claims()) is td15
    assert len(q.signed) == 48 + 6 + 584 + (64 if td15 else 0)
    bad = bytearray(_as_v5(v4, td15=td15))
    bad[48] = 9  # unknown body type
    with pytest.raises(EvidenceFormatError, match=r"body\.type"):
        parse_quote(bytes(bad))
    bad = bytearray(_as_v5(v4, td15=td15))
    bad[50] ^= 1  # body size that does not match the type
    with pytest.raises(EvidenceFormatError, match=r"body\.size"):
        parse_quote(bytes(bad))
