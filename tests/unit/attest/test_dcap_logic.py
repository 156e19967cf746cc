"""TCB level selection and status convergence (Intel's rules), on synthetic TCB info: no real TDX TCB info
exists in the vectors, so the TDX paths are pinned here by construction."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kubeshield.attest.dcap import PckExtension, _check_attributes, _converge, _platform_level
from kubeshield.attest.dcap_collateral import parse_tcb_info
from kubeshield.attest.dcap_quote import TdReport, parse_quote
from kubeshield.attest.errors import AttestationError
from tests.unit.attest._vectors import vector

TDX = parse_quote(vector("tdx_quote_4.dat"))  # tee_tcb_svn 03 00 05 00 ...
assert isinstance(TDX.report, TdReport)
TD: TdReport = TDX.report
SGX = parse_quote(vector("sgx_quote"))


def info(levels, tee="TDX"):
    doc = {
        "id": tee,
        "version": 3,
        "issueDate": "2025-01-01T00:00:00Z",
        "nextUpdate": "2026-01-01T00:00:00Z",
        "fmspc": "50806F000000",
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tcbLevels": levels,
    }
    return parse_tcb_info(json.dumps(doc).encode())


def level(sgx, pce, tdx, status, adv=()):
    tcb = {"sgxtcbcomponents": [{"svn": s} for s in sgx], "pcesvn": pce}
    if tdx is not None:
        tcb["tdxtcbcomponents"] = [{"svn": s} for s in tdx]
    return {"tcb": tcb, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": status, "advisoryIDs": list(adv)}


PCK = PckExtension(fmspc=bytes.fromhex("50806F000000"), pce_id=b"\0\0", cpu_svn=bytes([5] * 16), pce_svn=13)


def test_first_level_whose_every_component_is_met_wins():
    tcb = info(
        [
            level([6] * 16, 13, [3] + [0] * 15, "UpToDate"),  # cpu_svn too low
            level([5] * 16, 14, [3] + [0] * 15, "UpToDate"),  # pcesvn too low
            level([5] * 16, 13, [4] + [0] * 15, "SWHardeningNeeded"),  # tee_tcb_svn[0] too low
            level([5] * 16, 13, [3, 0, 5] + [0] * 13, "OutOfDate", ["INTEL-SA-1"]),  # matches
            level([0] * 16, 0, [0] * 16, "OutOfDate"),
        ]
    )
    chosen = _platform_level(TDX, PCK, tcb)
    assert chosen.status == "OutOfDate" and chosen.advisory_ids == ("INTEL-SA-1",)


def test_components_compare_one_by_one_not_lexicographically():
    # lexicographic order would accept [6, 0, ...] >= [5, 9, ...]; Intel's rule is per component
    pck = dataclasses.replace(PCK, cpu_svn=bytes([6] + [0] * 15))
    tcb = info(
        [level([5, 9] + [0] * 14, 13, [0] * 16, "UpToDate"), level([0] * 16, 0, [0] * 16, "OutOfDate")]
    )
    assert _platform_level(TDX, pck, tcb).status == "OutOfDate"


def test_tdx_module_svn_bytes_are_skipped_when_tee_tcb_svn_1_is_set():
    report = dataclasses.replace(TD, tee_tcb_svn=bytes([0, 1, 5] + [0] * 13))
    quote = dataclasses.replace(TDX, report=report)
    tcb = info([level([5] * 16, 13, [9, 9, 5] + [0] * 13, "UpToDate")])
    assert _platform_level(quote, PCK, tcb).status == "UpToDate"  # indexes 0-1 belong to the module identity
    tcb = info([level([5] * 16, 13, [9, 9, 6] + [0] * 13, "UpToDate")])
    with pytest.raises(AttestationError, match="no TCB level"):
        _platform_level(quote, PCK, tcb)


def test_a_tdx_level_without_tdx_components_is_an_error():
    with pytest.raises(AttestationError, match="no TDX components"):
        _platform_level(TDX, PCK, info([level([5] * 16, 13, None, "UpToDate")]))


@pytest.mark.parametrize(
    ("platform", "qe", "result"),
    [
        ("UpToDate", "UpToDate", "UpToDate"),
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("OutOfDate", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"),
    ],
)
def test_qe_status_converges_as_intels_qvl(platform, qe, result):
    assert _converge(platform, qe) == result


def test_debug_and_reserved_td_attributes_are_refused():
    with pytest.raises(AttestationError, match="debug"):
        _check_attributes(TD)  # the Trustee sample is a debug TD
    ok = dataclasses.replace(TD, td_attributes=bytes([0, 0, 0, 0x10, 0, 0, 0, 0]))
    _check_attributes(ok)
    for attrs, needle in [(bytes([0, 1, 0, 0x10, 0, 0, 0, 0]), "reserved"), (bytes(8), "SEPT_VE_DISABLE")]:
        with pytest.raises(AttestationError, match=needle):
            _check_attributes(dataclasses.replace(TD, td_attributes=attrs))
    _check_attributes(SGX.report)
    with pytest.raises(AttestationError, match="debug"):
        _check_attributes(parse_quote(vector("occlum_quote.dat")).report)
