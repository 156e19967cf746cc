"""A minimal strict DER reader for the one structure no library decodes: Intel's SGX PCK certificate
extension (OID 1.2.840.113741.1.13.1), a SEQUENCE of SEQUENCE { OID, value }, nested once for the TCB.

Only definite, minimal lengths are accepted; anything else is an ``EvidenceFormatError``.
"""

from __future__ import annotations

from kubeshield.attest.errors import EvidenceFormatError

__all__ = ["decode_oid", "read_tlv", "sequence_items", "signature_is_whole_octets"]

SEQUENCE = 0x30
OID = 0x06
INTEGER = 0x02
OCTET_STRING = 0x04
ENUMERATED = 0x0A
BOOLEAN = 0x01
BIT_STRING = 0x03


def read_tlv(data: bytes, pos: int, *, what: str) -> tuple[int, bytes, int]:
    """(tag, value, next position) of the TLV at ``pos``."""
    if pos + 2 > len(data):
        raise EvidenceFormatError(f"{what}: truncated DER")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise EvidenceFormatError(f"{what}: unsupported DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise EvidenceFormatError(f"{what}: non-minimal DER length")
        pos += n
    if pos + length > len(data):
        raise EvidenceFormatError(f"{what}: truncated DER value")
    return tag, data[pos : pos + length], pos + length


def sequence_items(data: bytes, *, what: str) -> list[tuple[int, bytes]]:
    """The (tag, value) items of a DER SEQUENCE that is the whole of ``data``."""
    tag, value, end = read_tlv(data, 0, what=what)
    if tag != SEQUENCE or end != len(data):
        raise EvidenceFormatError(f"{what}: expected one DER SEQUENCE")
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(value):
        t, v, pos = read_tlv(value, pos, what=what)
        items.append((t, v))
    return items


def decode_oid(value: bytes, *, what: str) -> str:
    """Dotted string of a DER OBJECT IDENTIFIER value."""
    if not value or value[-1] & 0x80:
        raise EvidenceFormatError(f"{what}: malformed OID")
    arcs: list[int] = []
    acc = 0
    start = True
    for b in value:
        if start and b == 0x80:
            raise EvidenceFormatError(f"{what}: non-minimal OID")
        acc = (acc << 7) | (b & 0x7F)
        start = not b & 0x80
        if start:
            arcs.append(acc)
            acc = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def signature_is_whole_octets(der: bytes) -> bool:
    """True when a signed X.509 structure (``SEQUENCE { tbs, algorithm, BIT STRING signature }``: a
    certificate or a CRL) is exactly one SEQUENCE whose signature BIT STRING has no unused bits.

    A signature is a whole number of octets; a BIT STRING that claims unused bits is malformed (DER
    verifiers such as dcap-qvl's refuse it, while cryptography reads the octets and ignores the count).
    """
    try:
        items = sequence_items(der, what="signed structure")
    except EvidenceFormatError:
        return False
    if len(items) != 3 or items[2][0] != BIT_STRING:
        return False
    bits = items[2][1]
    return len(bits) >= 1 and bits[0] == 0
