"""DCAP collateral: dcap-qvl's ``QuoteCollateralV3`` JSON (what a PCCS serves, bundled in one file).

    {"tcb_info_issuer_chain": PEM, "tcb_info": "<TCB info JSON text, signed as is>",
     "tcb_info_signature": HEX(r||s), "qe_identity_issuer_chain": PEM, "qe_identity": "<JSON text>",
     "qe_identity_signature": HEX(r||s), "root_ca_crl": HEX(DER), "pck_crl": HEX(DER),
     "pck_crl_issuer_chain": PEM}

``tcb_info`` and ``qe_identity`` are the exact signed texts (Intel PCS API v3/v4 ``tcbInfo`` /
``enclaveIdentity`` bodies); they are parsed only after their signatures verify, but their dates are
read first to report an expired collateral precisely. ``pck_crl_issuer_chain`` is read but not needed:
the PCK CRL is verified with the key of the PCK CA that the quote's own chain (verified to the pinned
root) names, which is the same key.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubeshield.attest.errors import EvidenceFormatError

__all__ = [
    "Collateral",
    "QeIdentity",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "parse_collateral",
    "parse_qe_identity",
    "parse_rfc3339",
    "parse_tcb_info",
]

_FIELDS = (
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
    "root_ca_crl",
    "pck_crl",
)
_MAX_COLLATERAL = 1 << 20


@dataclass(frozen=True, slots=True)
class Collateral:
    tcb_info_issuer_chain: bytes
    tcb_info: bytes
    tcb_info_signature: bytes
    qe_identity_issuer_chain: bytes
    qe_identity: bytes
    qe_identity_signature: bytes
    root_ca_crl: bytes
    pck_crl: bytes


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QeTcbLevel:
    isv_svn: int
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[QeTcbLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    levels: tuple[TcbLevel, ...]
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]


@dataclass(frozen=True, slots=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    levels: tuple[QeTcbLevel, ...]


def parse_rfc3339(text: object, *, what: str) -> datetime:
    if not isinstance(text, str):
        raise EvidenceFormatError(f"{what}: expected an RFC 3339 date string")
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EvidenceFormatError(f"{what}: {text!r} is not an RFC 3339 date") from None
    if value.tzinfo is None:
        raise EvidenceFormatError(f"{what}: {text!r} has no time zone")
    return value.astimezone(UTC)


def _hex(value: object, *, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"{what}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise EvidenceFormatError(f"{what}: not hex") from None
    if size is not None and len(raw) != size:
        raise EvidenceFormatError(f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def _int(value: object, *, what: str, lo: int = 0, hi: int = 0xFFFF) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise EvidenceFormatError(f"{what}: expected an integer {lo}..{hi}")
    return value


def _obj(value: object, *, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceFormatError(f"{what}: expected a JSON object")
    return value


def _list(value: object, *, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise EvidenceFormatError(f"{what}: expected a JSON list")
    return value


def _str(value: object, *, what: str) -> str:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"{what}: expected a string")
    return value


def _advisories(level: Mapping[str, Any], what: str) -> tuple[str, ...]:
    raw = level.get("advisoryIDs", [])
    return tuple(_str(a, what=f"{what}.advisoryIDs[]") for a in _list(raw, what=f"{what}.advisoryIDs"))


def _load_json(text: bytes, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise EvidenceFormatError(f"{what}: not JSON") from None
    return _obj(value, what=what)


@functools.lru_cache(maxsize=64)
def tcb_info_dates(text: bytes) -> tuple[datetime, datetime]:
    """(issueDate, nextUpdate) of a TCB info or QE identity text."""
    doc = _load_json(text, "collateral")
    return (
        parse_rfc3339(doc.get("issueDate"), what="collateral: issueDate"),
        parse_rfc3339(doc.get("nextUpdate"), what="collateral: nextUpdate"),
    )


def _components(raw: object, what: str) -> tuple[int, ...]:
    items = _list(raw, what=what)
    if len(items) != 16:
        raise EvidenceFormatError(f"{what}: {len(items)} components, expected 16")
    return tuple(
        _int(_obj(c, what=f"{what}[{i}]").get("svn"), what=f"{what}[{i}].svn", hi=255)
        for i, c in enumerate(items)
    )


def _qe_levels(raw: object, what: str) -> tuple[QeTcbLevel, ...]:
    out = []
    for i, item in enumerate(_list(raw, what=what)):
        lvl = _obj(item, what=f"{what}[{i}]")
        tcb = _obj(lvl.get("tcb"), what=f"{what}[{i}].tcb")
        out.append(
            QeTcbLevel(
                isv_svn=_int(tcb.get("isvsvn"), what=f"{what}[{i}].tcb.isvsvn"),
                status=_str(lvl.get("tcbStatus"), what=f"{what}[{i}].tcbStatus"),
                advisory_ids=_advisories(lvl, f"{what}[{i}]"),
            )
        )
    return tuple(out)


def _module(raw: Mapping[str, Any], what: str, *, with_id: bool) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=_str(raw.get("id"), what=f"{what}.id") if with_id else "",
        mr_signer=_hex(raw.get("mrsigner"), what=f"{what}.mrsigner", size=48),
        attributes=_hex(raw.get("attributes"), what=f"{what}.attributes", size=8),
        attributes_mask=_hex(raw.get("attributesMask"), what=f"{what}.attributesMask", size=8),
        levels=_qe_levels(raw.get("tcbLevels", []), f"{what}.tcbLevels"),
    )


@functools.lru_cache(maxsize=64)
def parse_tcb_info(text: bytes) -> TcbInfo:
    """Parse a TCB info (version 2: sgxtcbcompNNsvn fields; version 3: component lists, TDX)."""
    w = "collateral: tcb_info"
    doc = _load_json(text, w)
    version = _int(doc.get("version"), what=f"{w}.version")
    if version not in (2, 3):
        raise EvidenceFormatError(f"{w}.version: unsupported version {version} (supported: 2, 3)")
    tee_id = _str(doc.get("id", "SGX"), what=f"{w}.id")
    levels = []
    for i, item in enumerate(_list(doc.get("tcbLevels"), what=f"{w}.tcbLevels")):
        lw = f"{w}.tcbLevels[{i}]"
        lvl = _obj(item, what=lw)
        tcb = _obj(lvl.get("tcb"), what=f"{lw}.tcb")
        if version == 2:
            sgx = tuple(
                _int(tcb.get(f"sgxtcbcomp{n:02d}svn"), what=f"{lw}.tcb.sgxtcbcomp{n:02d}svn", hi=255)
                for n in range(1, 17)
            )
            tdx: tuple[int, ...] = ()
        else:
            sgx = _components(tcb.get("sgxtcbcomponents"), f"{lw}.tcb.sgxtcbcomponents")
            tdx = (
                _components(tcb.get("tdxtcbcomponents"), f"{lw}.tcb.tdxtcbcomponents")
                if "tdxtcbcomponents" in tcb
                else ()
            )
        levels.append(
            TcbLevel(
                sgx_components=sgx,
                pce_svn=_int(tcb.get("pcesvn"), what=f"{lw}.tcb.pcesvn"),
                tdx_components=tdx,
                status=_str(lvl.get("tcbStatus"), what=f"{lw}.tcbStatus"),
                advisory_ids=_advisories(lvl, lw),
            )
        )
    module = doc.get("tdxModule")
    identities = doc.get("tdxModuleIdentities", [])
    return TcbInfo(
        id=tee_id,
        version=version,
        issue_date=parse_rfc3339(doc.get("issueDate"), what=f"{w}.issueDate"),
        next_update=parse_rfc3339(doc.get("nextUpdate"), what=f"{w}.nextUpdate"),
        fmspc=_hex(doc.get("fmspc"), what=f"{w}.fmspc", size=6),
        pce_id=_hex(doc.get("pceId"), what=f"{w}.pceId", size=2),
        levels=tuple(levels),
        tdx_module=_module(_obj(module, what=f"{w}.tdxModule"), f"{w}.tdxModule", with_id=False)
        if module is not None
        else None,
        tdx_module_identities=tuple(
            _module(
                _obj(m, what=f"{w}.tdxModuleIdentities[{i}]"), f"{w}.tdxModuleIdentities[{i}]", with_id=True
            )
            for i, m in enumerate(_list(identities, what=f"{w}.tdxModuleIdentities"))
        ),
    )


@functools.lru_cache(maxsize=64)
def parse_qe_identity(text: bytes) -> QeIdentity:
    w = "collateral: qe_identity"
    doc = _load_json(text, w)
    return QeIdentity(
        id=_str(doc.get("id"), what=f"{w}.id"),
        version=_int(doc.get("version"), what=f"{w}.version"),
        issue_date=parse_rfc3339(doc.get("issueDate"), what=f"{w}.issueDate"),
        next_update=parse_rfc3339(doc.get("nextUpdate"), what=f"{w}.nextUpdate"),
        miscselect=int.from_bytes(_hex(doc.get("miscselect"), what=f"{w}.miscselect", size=4), "big"),
        miscselect_mask=int.from_bytes(
            _hex(doc.get("miscselectMask"), what=f"{w}.miscselectMask", size=4), "big"
        ),
        attributes=_hex(doc.get("attributes"), what=f"{w}.attributes", size=16),
        attributes_mask=_hex(doc.get("attributesMask"), what=f"{w}.attributesMask", size=16),
        mr_signer=_hex(doc.get("mrsigner"), what=f"{w}.mrsigner", size=32),
        isv_prod_id=_int(doc.get("isvprodid"), what=f"{w}.isvprodid"),
        levels=_qe_levels(doc.get("tcbLevels"), f"{w}.tcbLevels"),
    )


def parse_collateral(data: bytes) -> Collateral:
    """Parse the collateral JSON file (module docstring). Raises EvidenceFormatError naming the field."""
    if len(data) > _MAX_COLLATERAL:
        raise EvidenceFormatError(f"collateral: oversized ({len(data)} bytes)")
    doc = _load_json(data, "collateral")
    missing = [f for f in _FIELDS if f not in doc]
    if missing:
        raise EvidenceFormatError(f"collateral: missing field(s) {', '.join(missing)}")

    def text(name: str) -> bytes:
        return _str(doc[name], what=f"collateral: {name}").encode("utf-8")

    return Collateral(
        tcb_info_issuer_chain=text("tcb_info_issuer_chain"),
        tcb_info=text("tcb_info"),
        tcb_info_signature=_hex(doc["tcb_info_signature"], what="collateral: tcb_info_signature"),
        qe_identity_issuer_chain=text("qe_identity_issuer_chain"),
        qe_identity=text("qe_identity"),
        qe_identity_signature=_hex(doc["qe_identity_signature"], what="collateral: qe_identity_signature"),
        root_ca_crl=_hex(doc["root_ca_crl"], what="collateral: root_ca_crl"),
        pck_crl=_hex(doc["pck_crl"], what="collateral: pck_crl"),
    )
