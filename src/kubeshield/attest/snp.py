"""AMD SEV-SNP attestation reports (SEV-SNP Firmware ABI, ATTESTATION_REPORT, 1184 bytes, little-endian):

    0x000 version u32 (2..5) | 0x004 guest_svn u32 | 0x008 policy u64 | 0x010 family_id 16
    0x020 image_id 16 | 0x030 vmpl u32 | 0x034 signature_algo u32 (1 = ECDSA P-384 with SHA-384)
    0x038 current_tcb u64 | 0x040 platform_info u64 | 0x048 flags u32 (bit 0 author_key_en,
    bit 1 mask_chip_key, bits 2..4 signing_key: 0 VCEK, 1 VLEK) | 0x04C reserved u32
    0x050 report_data 64 | 0x090 measurement 48 | 0x0C0 host_data 32 | 0x0E0 id_key_digest 48
    0x110 author_key_digest 48 | 0x140 report_id 32 | 0x160 report_id_ma 32 | 0x180 reported_tcb u64
    0x188 cpuid_fam_id u8, cpuid_mod_id u8, cpuid_step u8 (version >= 3; zero before) | 0x1A0 chip_id 64
    0x1E0 committed_tcb u64 | 0x1E8 current build/minor/major | 0x1EC committed build/minor/major
    0x1F0 launch_tcb u64 | 0x2A0 signature: r 72 bytes LE, s 72 bytes LE (of which 48 are used)

TCB_VERSION bytes: Milan/Genoa ``bootloader, tee, 0, 0, 0, 0, snp, microcode``; Turin ``fmc, bootloader,
tee, snp, 0, 0, 0, microcode``.

Verification: the report signature (bytes 0..0x2A0) under the VEK's P-384 key; the VEK (a VCEK signed
by the generation's ASK, or a VLEK signed by its ASVK, RSASSA-PSS SHA-384) and the ASK/ASVK signed by
the pinned ARK (:mod:`kubeshield.attest._amd_roots`), every certificate valid at ``at``; the report's
signing_key field matching the kind of VEK; ``reported_tcb`` equal to the VEK's TCB extensions
(blSPL .3.1, teeSPL .3.2, snpSPL .3.3, ucodeSPL .3.8, fmcSPL .3.9 on Turin); for a VCEK, ``chip_id``
equal to its hwID (.4, raw or as a DER OCTET STRING) unless the chip id is masked. The generation comes
from the report (cpuid family/model, version >= 3) or from the VEK's productName (.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kubeshield.attest import _der
from kubeshield.attest._amd_roots import AMD_GENERATIONS, AmdRoots
from kubeshield.attest._binary import Reader
from kubeshield.attest._x509 import ChainError, load_certificate, verify_signed_by
from kubeshield.attest.errors import AttestationError, EvidenceFormatError
from kubeshield.attest.result import ClaimValue, Verification

__all__ = ["REPORT_BYTES", "SnpReport", "TcbVersion", "looks_like_snp_report", "parse_report", "verify_snp"]

REPORT_BYTES = 1184
SIGNED_BYTES = 0x2A0
_OID = "1.3.6.1.4.1.3704.1."
_CPUID = {
    (0x19, 0x00): "Milan",
    (0x19, 0x01): "Milan",
    (0x19, 0x10): "Genoa",
    (0x19, 0x11): "Genoa",
    (0x19, 0xA0): "Genoa",
    (0x1A, 0x00): "Turin",
    (0x1A, 0x01): "Turin",
    (0x1A, 0x02): "Turin",
}


@dataclass(frozen=True, slots=True)
class TcbVersion:
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def as_dict(self) -> dict[str, str]:
        out = {
            "bootloader": str(self.bootloader),
            "tee": str(self.tee),
            "snp": str(self.snp),
            "microcode": str(self.microcode),
        }
        if self.fmc:
            out["fmc"] = str(self.fmc)
        return out


@dataclass(frozen=True, slots=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    reported_tcb: int
    cpuid: tuple[int, int, int]
    chip_id: bytes
    committed_tcb: int
    launch_tcb: int
    sig_r: int
    sig_s: int

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 0x7

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 0x2)

    def claims(self, *, turin: bool = False) -> dict[str, ClaimValue]:
        return {
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "host_data": self.host_data.hex(),
            "chip_id": self.chip_id.hex(),
            "policy": f"{self.policy:#x}",
            "guest_svn": self.guest_svn,
            "vmpl": self.vmpl,
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "version": self.version,
            "debug": bool(self.policy >> 19 & 1),
            "reported_tcb": TcbVersion.decode(self.reported_tcb, turin=turin).as_dict(),
            "current_tcb": TcbVersion.decode(self.current_tcb, turin=turin).as_dict(),
            "committed_tcb": TcbVersion.decode(self.committed_tcb, turin=turin).as_dict(),
            "launch_tcb": TcbVersion.decode(self.launch_tcb, turin=turin).as_dict(),
        }


def looks_like_snp_report(data: bytes) -> bool:
    return len(data) == REPORT_BYTES and 2 <= int.from_bytes(data[0:4], "little") <= 5


def parse_report(data: bytes) -> SnpReport:
    """Parse an attestation report (layout in the module docstring). Raises EvidenceFormatError."""
    if not isinstance(data, bytes | bytearray):
        raise EvidenceFormatError("snp report: expected bytes")
    if len(data) != REPORT_BYTES:
        raise EvidenceFormatError(
            f"snp report: size {len(data)}, an attestation report is {REPORT_BYTES} bytes"
        )
    r = Reader(bytes(data), what="snp report")
    version = r.u32le("version")
    if not 2 <= version <= 5:
        raise r.error("version", f"unsupported report version {version} (supported: 2..5)")
    guest_svn = r.u32le("guest_svn")
    policy = r.u64le("policy")
    family, image = r.take(16, "family_id"), r.take(16, "image_id")
    vmpl = r.u32le("vmpl")
    algo = r.u32le("signature_algo")
    current_tcb = r.u64le("current_tcb")
    platform_info = r.u64le("platform_info")
    flags = r.u32le("flags")
    r.take(4, "reserved0")
    report_data, measurement = r.take(64, "report_data"), r.take(48, "measurement")
    host_data, id_key = r.take(32, "host_data"), r.take(48, "id_key_digest")
    author_key, report_id = r.take(48, "author_key_digest"), r.take(32, "report_id")
    r.take(32, "report_id_ma")
    reported_tcb = r.u64le("reported_tcb")
    cpuid = (r.u8("cpuid_fam_id"), r.u8("cpuid_mod_id"), r.u8("cpuid_step"))
    r.take(21, "reserved1")
    chip_id = r.take(64, "chip_id")
    committed_tcb = r.u64le("committed_tcb")
    r.take(8, "versions")
    launch_tcb = r.u64le("launch_tcb")
    r.take(SIGNED_BYTES - r.pos, "reserved2")
    sig_r = int.from_bytes(r.take(72, "signature.r"), "little")
    sig_s = int.from_bytes(r.take(72, "signature.s"), "little")
    r.take(REPORT_BYTES - r.pos, "signature.reserved")
    return SnpReport(
        bytes(data),
        version,
        guest_svn,
        policy,
        family,
        image,
        vmpl,
        algo,
        current_tcb,
        platform_info,
        flags,
        report_data,
        measurement,
        host_data,
        id_key,
        author_key,
        report_id,
        reported_tcb,
        cpuid,
        chip_id,
        committed_tcb,
        launch_tcb,
        sig_r,
        sig_s,
    )


def _ext_int(cert: x509.Certificate, suffix: str) -> int | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == _OID + suffix:
            value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
            tag, body, end = _der.read_tlv(value, 0, what=f"vek extension {suffix}")
            if tag != _der.INTEGER or end != len(value) or not body or body[0] & 0x80:
                raise EvidenceFormatError(f"vek certificate: extension {_OID}{suffix} is not an INTEGER")
            return int.from_bytes(body, "big")
    return None


def _ext_raw(cert: x509.Certificate, suffix: str) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == _OID + suffix and isinstance(ext.value, x509.UnrecognizedExtension):
            return ext.value.value
    return None


def _hw_id(cert: x509.Certificate) -> bytes | None:
    raw = _ext_raw(cert, "4")
    if raw is None:
        return None
    if len(raw) == 64:
        return raw
    tag, body, end = _der.read_tlv(raw, 0, what="vek hwID")
    if tag == _der.OCTET_STRING and end == len(raw) and len(body) == 64:
        return body
    raise EvidenceFormatError("vek certificate: hwID (1.3.6.1.4.1.3704.1.4) is not 64 bytes")


def _generation(report: SnpReport, vek: x509.Certificate) -> AmdRoots:
    if report.version >= 3 and report.cpuid != (0, 0, 0):
        name = _CPUID.get(report.cpuid[:2])
        if name is None:
            raise AttestationError(
                f"snp report: unknown CPU family/model {report.cpuid[0]:#x}/{report.cpuid[1]:#x}"
            )
        return AMD_GENERATIONS[name]
    product = _ext_raw(vek, "2")
    if product is not None:
        try:
            tag, body, _ = _der.read_tlv(product, 0, what="vek productName")
            text = body.decode("ascii") if tag in (0x16, 0x0C, 0x13) else product.decode("ascii")
        except (EvidenceFormatError, UnicodeDecodeError):
            text = ""
        name = text.split("-")[0]
        if name in AMD_GENERATIONS:
            return AMD_GENERATIONS[name]
    issuer_cn = vek.issuer.rfc4514_string().split(",")[0]
    for roots in AMD_GENERATIONS.values():
        if issuer_cn in (
            roots.ask.subject.rfc4514_string().split(",")[0],
            roots.asvk.subject.rfc4514_string().split(",")[0],
        ):
            return roots
    raise AttestationError("vek certificate: cannot tell the AMD generation (productName, issuer)")


def _valid(cert: x509.Certificate, at: datetime, name: str) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise ChainError(
            f"{name} certificate validity {cert.not_valid_before_utc.isoformat()}.."
            f"{cert.not_valid_after_utc.isoformat()} does not cover the verification time {at.isoformat()}"
            f"{' (expired)' if at > cert.not_valid_after_utc else ' (not yet valid)'}"
        )


def _check(report: SnpReport, vek_der: bytes, at: datetime) -> bool:
    try:
        vek = load_certificate(vek_der, allow_zero_serial=True)
    except ValueError:
        raise EvidenceFormatError(
            "collateral: the VCEK/VLEK certificate does not parse (DER expected)"
        ) from None
    roots = _generation(report, vek)
    is_vlek = "VLEK" in vek.subject.rfc4514_string()
    signer = roots.asvk if is_vlek else roots.ask
    kind = "VLEK" if is_vlek else "VCEK"
    try:
        verify_signed_by(signer, roots.ark)
        verify_signed_by(vek, signer)
    except ChainError as exc:
        raise ChainError(f"{kind} certificate chain: {exc}") from None
    for cert, name in ((roots.ark, "ARK"), (signer, "ASVK" if is_vlek else "ASK"), (vek, kind)):
        _valid(cert, at, name)
    if report.signature_algo != 1:
        raise AttestationError(
            f"snp report: signature_algo {report.signature_algo} is unsupported (1 = ECDSA P-384)"
        )
    if report.signing_key != (1 if is_vlek else 0):
        raise AttestationError(f"snp report: signing_key {report.signing_key} does not name a {kind}")
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError(f"{kind} key is not ECDSA P-384")
    try:
        key.verify(
            encode_dss_signature(report.sig_r, report.sig_s),
            report.raw[:SIGNED_BYTES],
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise AttestationError(f"snp report signature does not verify under the {kind} key") from None
    turin = roots.generation == "Turin"
    tcb = TcbVersion.decode(report.reported_tcb, turin=turin)
    for name, suffix, value in (
        ("bootloader", "3.1", tcb.bootloader),
        ("tee", "3.2", tcb.tee),
        ("snp", "3.3", tcb.snp),
        ("microcode", "3.8", tcb.microcode),
    ) + ((("fmc", "3.9", tcb.fmc),) if turin else ()):
        expected = _ext_int(vek, suffix)
        if expected is None:
            raise AttestationError(f"{kind} certificate has no {name} TCB extension ({_OID}{suffix})")
        if expected != value:
            raise AttestationError(
                f"reported_tcb.{name} {value} differs from the {kind}'s TCB {name} {expected}"
            )
    if not is_vlek and not report.mask_chip_key:
        hw = _hw_id(vek)
        if hw != report.chip_id:
            raise AttestationError("snp report chip_id is not the VCEK's hwID (the VCEK is for another chip)")
    return turin


def verify_snp(report_bytes: bytes, vek_der: bytes | None, *, at: datetime) -> Verification:
    """Verify an SNP report with its VCEK/VLEK (DER) at ``at``; raises EvidenceFormatError only when the
    report does not parse."""
    if at.tzinfo is None:
        raise ValueError("at must be a timezone-aware datetime")
    report = parse_report(report_bytes)
    base = Verification(tee="snp", ok=False, claims=report.claims())
    if vek_der is None:
        return base.failed("no collateral: give the VCEK or VLEK certificate (DER) as --collateral")
    try:
        turin = _check(report, vek_der, at)
    except AttestationError as exc:
        return base.failed(str(exc))
    return Verification(tee="snp", ok=True, claims=report.claims(turin=turin))
