"""Intel DCAP quotes: SGX quote v3, TDX quote v4 and v5 (Intel SGX/TDX DCAP Quote Library API,
"Quote Format"), parsed by hand. All integers are little-endian.

    header (48):  version u16 | attestation_key_type u16 (2 = ECDSA-256-with-P-256) | tee_type u32
                  (0x00 SGX, 0x81 TDX) | qe_svn u16 | pce_svn u16 | qe_vendor_id 16 | user_data 20
    v3, v4:       report body: SGX enclave report (384) or, v4 with tee_type 0x81, TD report 1.0 (584)
    v5:           body_type u16 (1 SGX, 2 TD 1.0, 3 TD 1.5 = TD 1.0 + tee_tcb_svn2 16 + mr_servicetd 48)
                  | body_size u32 | body
    then:         auth_data_size u32 | auth data (only its first auth_data_size bytes are read; bytes
                  after it are ignored, as dcap-qvl does)
    auth data v3: isv_signature 64 (r||s over header..body) | attestation_key 64 (P-256 x||y)
                  | qe_report 384 | qe_report_signature 64 | qe_auth_data (u16 size, bytes)
                  | certification data (u16 type, u32 size, bytes)
    auth data v4/v5: isv_signature 64 | attestation_key 64 | certification data of type 6 whose bytes
                  are: qe_report 384 | qe_report_signature 64 | qe_auth_data | certification data

The certification data that the verifier uses must be type 5 (the PCK certificate chain, PEM).
Evidence larger than :data:`MAX_QUOTE_BYTES` is refused before parsing.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeshield.attest._binary import Reader
from kubeshield.attest.errors import EvidenceFormatError
from kubeshield.attest.result import ClaimValue

__all__ = [
    "ATTESTATION_KEY_ECDSA_P256",
    "MAX_QUOTE_BYTES",
    "TEE_SGX",
    "TEE_TDX",
    "EnclaveReport",
    "Quote",
    "TdReport",
    "looks_like_dcap_quote",
    "parse_enclave_report",
    "parse_quote",
]

MAX_QUOTE_BYTES = 1 << 20
HEADER_BYTES = 48
ENCLAVE_REPORT_BYTES = 384
TD10_BYTES = 584
TD15_BYTES = 648
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
ATTESTATION_KEY_ECDSA_P256 = 2
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
_BODY_TYPES = {1: ENCLAVE_REPORT_BYTES, 2: TD10_BYTES, 3: TD15_BYTES}


@dataclass(frozen=True, slots=True)
class EnclaveReport:
    """An SGX enclave report body (the ISV enclave's, or the QE's)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)

    def claims(self) -> dict[str, ClaimValue]:
        return {
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "report_data": self.report_data.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "attributes": self.attributes.hex(),
            "flags": self.attributes[:8].hex(),
            "xfrm": self.attributes[8:].hex(),
            "debug": self.debug,
            "cpu_svn": self.cpu_svn.hex(),
            "misc_select": f"{self.misc_select:08x}",
            "config_id": self.config_id.hex(),
            "config_svn": self.config_svn,
            "isv_family_id": self.isv_family_id.hex(),
        }


@dataclass(frozen=True, slots=True)
class TdReport:
    """A TD report body, 1.0 or (with ``tee_tcb_svn2``/``mr_service_td``) 1.5."""

    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        """TUD bits (7:0 of TD attributes) set: the TD is under debug and not trustworthy."""
        return self.td_attributes[0] != 0

    def claims(self) -> dict[str, ClaimValue]:
        out: dict[str, ClaimValue] = {
            "mr_td": self.mr_td.hex(),
            "rtmr0": self.rtmrs[0].hex(),
            "rtmr1": self.rtmrs[1].hex(),
            "rtmr2": self.rtmrs[2].hex(),
            "rtmr3": self.rtmrs[3].hex(),
            "report_data": self.report_data.hex(),
            "mr_config_id": self.mr_config_id.hex(),
            "mr_owner": self.mr_owner.hex(),
            "mr_owner_config": self.mr_owner_config.hex(),
            "mr_seam": self.mr_seam.hex(),
            "mr_signer_seam": self.mr_signer_seam.hex(),
            "seam_attributes": self.seam_attributes.hex(),
            "td_attributes": self.td_attributes.hex(),
            "xfam": self.xfam.hex(),
            "tee_tcb_svn": self.tee_tcb_svn.hex(),
            "debug": self.debug,
        }
        if self.tee_tcb_svn2 is not None and self.mr_service_td is not None:
            out["tee_tcb_svn2"] = self.tee_tcb_svn2.hex()
            out["mr_service_td"] = self.mr_service_td.hex()
        return out


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed DCAP quote. ``signed`` is the header and body the ISV signature covers."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    report: EnclaveReport | TdReport
    signed: bytes
    isv_signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.report, TdReport)

    def claims(self) -> dict[str, ClaimValue]:
        out = self.report.claims()
        out["qe_svn"] = self.qe_svn
        out["pce_svn"] = self.pce_svn
        out["qe_vendor_id"] = self.qe_vendor_id.hex()
        return out


def parse_enclave_report(data: bytes, *, what: str) -> EnclaveReport:
    r = Reader(data, what=what)
    cpu_svn = r.take(16, "cpu_svn")
    misc = r.u32le("misc_select")
    r.take(28, "reserved1")
    attributes = r.take(16, "attributes")
    mr_enclave = r.take(32, "mr_enclave")
    r.take(32, "reserved2")
    mr_signer = r.take(32, "mr_signer")
    r.take(32, "reserved3")
    config_id = r.take(64, "config_id")
    prod = r.u16le("isv_prod_id")
    svn = r.u16le("isv_svn")
    config_svn = r.u16le("config_svn")
    r.take(42, "reserved4")
    family = r.take(16, "isv_family_id")
    report_data = r.take(64, "report_data")
    r.end()
    return EnclaveReport(
        bytes(data),
        cpu_svn,
        misc,
        attributes,
        mr_enclave,
        mr_signer,
        config_id,
        prod,
        svn,
        config_svn,
        family,
        report_data,
    )


def _td_report(data: bytes, *, what: str, v15: bool) -> TdReport:
    r = Reader(data, what=what)
    tee_tcb_svn = r.take(16, "tee_tcb_svn")
    mr_seam, mr_signer_seam = r.take(48, "mr_seam"), r.take(48, "mr_signer_seam")
    seam_attributes, td_attributes = r.take(8, "seam_attributes"), r.take(8, "td_attributes")
    xfam, mr_td, mr_config_id = r.take(8, "xfam"), r.take(48, "mr_td"), r.take(48, "mr_config_id")
    mr_owner, mr_owner_config = r.take(48, "mr_owner"), r.take(48, "mr_owner_config")
    rtmrs = (r.take(48, "rtmr0"), r.take(48, "rtmr1"), r.take(48, "rtmr2"), r.take(48, "rtmr3"))
    report_data = r.take(64, "report_data")
    svn2 = r.take(16, "tee_tcb_svn2") if v15 else None
    service = r.take(48, "mr_service_td") if v15 else None
    r.end()
    return TdReport(
        bytes(data),
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attributes,
        td_attributes,
        xfam,
        mr_td,
        mr_config_id,
        mr_owner,
        mr_owner_config,
        rtmrs,
        report_data,
        svn2,
        service,
    )


def looks_like_dcap_quote(data: bytes) -> bool:
    """Cheap sniff: a DCAP quote header (version 3..5, ECDSA key type field, a known TEE type)."""
    if len(data) < HEADER_BYTES:
        return False
    version = int.from_bytes(data[0:2], "little")
    tee = int.from_bytes(data[4:8], "little")
    return 3 <= version <= 5 and tee in (TEE_SGX, TEE_TDX)


def _qe_part(r: Reader) -> tuple[bytes, bytes, bytes, int, bytes]:
    qe_report = r.take(ENCLAVE_REPORT_BYTES, "qe_report")
    qe_sig = r.take(64, "qe_report_signature")
    auth = r.take(r.u16le("qe_auth_data.size"), "qe_auth_data")
    cert_type = r.u16le("certification_data.type")
    cert = r.take(r.u32le("certification_data.size"), "certification_data")
    return qe_report, qe_sig, auth, cert_type, cert


def parse_quote(data: bytes) -> Quote:
    """Parse an SGX v3 or TDX v4/v5 quote (layout in the module docstring). Raises EvidenceFormatError."""
    if not isinstance(data, bytes | bytearray):
        raise EvidenceFormatError("dcap quote: expected bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_BYTES:
        raise EvidenceFormatError(f"dcap quote: oversized ({len(data)} bytes, at most {MAX_QUOTE_BYTES})")
    r = Reader(data, what="dcap quote")
    version = r.u16le("header.version")
    if version not in (3, 4, 5):
        raise r.error("header.version", f"unsupported quote version {version} (supported: 3, 4, 5)")
    key_type = r.u16le("header.attestation_key_type")
    tee = r.u32le("header.tee_type")
    qe_svn = r.u16le("header.qe_svn")
    pce_svn = r.u16le("header.pce_svn")
    vendor = r.take(16, "header.qe_vendor_id")
    user = r.take(20, "header.user_data")
    if tee not in (TEE_SGX, TEE_TDX):
        raise r.error("header.tee_type", f"unknown TEE type 0x{tee:x}")
    if version == 3 and tee != TEE_SGX:
        raise r.error("header.tee_type", "a version 3 quote must be an SGX quote")
    report: EnclaveReport | TdReport
    if version == 5:
        body_type = r.u16le("body.type")
        body_size = r.u32le("body.size")
        expected = _BODY_TYPES.get(body_type)
        if expected is None:
            raise r.error("body.type", f"unsupported body type {body_type}")
        if body_size != expected:
            raise r.error("body.size", f"{body_size} does not match body type {body_type} ({expected})")
        if (body_type == 1) != (tee == TEE_SGX):
            raise r.error("body.type", f"body type {body_type} does not match tee_type 0x{tee:x}")
        body = r.take(body_size, "body")
        if body_type == 1:
            report = parse_enclave_report(body, what="dcap quote: sgx report body")
        else:
            report = _td_report(body, what="dcap quote: td report body", v15=body_type == 3)
    elif tee == TEE_SGX:
        report = parse_enclave_report(
            r.take(ENCLAVE_REPORT_BYTES, "body"), what="dcap quote: sgx report body"
        )
    else:
        report = _td_report(r.take(TD10_BYTES, "body"), what="dcap quote: td report body", v15=False)
    signed = data[: r.pos]
    auth = Reader(r.take(r.u32le("auth_data.size"), "auth_data"), what="dcap quote: auth_data")
    isv_sig = auth.take(64, "isv_signature")
    att_key = auth.take(64, "attestation_key")
    if version == 3:
        qe_report, qe_sig, qe_auth, cert_type, cert = _qe_part(auth)
    else:
        outer_type = auth.u16le("certification_data.type")
        if outer_type != CERT_QE_REPORT:
            raise auth.error("certification_data.type", f"{outer_type}, expected 6 (QE report certification)")
        inner = auth.take(auth.u32le("certification_data.size"), "certification_data")
        qe_report, qe_sig, qe_auth, cert_type, cert = _qe_part(
            Reader(inner, what="dcap quote: qe report certification data")
        )
    return Quote(
        version=version,
        attestation_key_type=key_type,
        tee_type=tee,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=vendor,
        user_data=user,
        report=report,
        signed=signed,
        isv_signature=isv_sig,
        attestation_key=att_key,
        qe_report=parse_enclave_report(qe_report, what="dcap quote: qe_report"),
        qe_report_signature=qe_sig,
        qe_auth_data=qe_auth,
        cert_type=cert_type,
        cert_data=cert,
    )
