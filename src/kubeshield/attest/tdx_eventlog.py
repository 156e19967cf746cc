"""The TDX CC event log (ACPI CCEL area; TCG PC Client crypto-agile format) and its replay into RTMRs.

Layout (little-endian): one legacy TCG_PCR_EVENT header (``mr_index u32 | event_type u32 | sha1 20 |
event_size u32 | event``, its event the ``Spec ID Event03`` naming the digest algorithms and sizes),
then TCG_PCR_EVENT2 records ``mr_index u32 | event_type u32 | digest_count u32 | (alg_id u16 | digest)
* count | event_size u32 | event``. The area is padded to its end with 0xFF (or zero) bytes, where the
log stops. CC MR index 1..4 are RTMR0..3 (index 0 is MRTD, measured by the TDX module, not extended
here); EV_NO_ACTION (3) events are not extended. Replay: ``RTMR = SHA-384(RTMR || digest)`` from 48
zero bytes, with the SHA-384 (alg 0x000C) digest of each event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kubeshield.attest._binary import Reader
from kubeshield.attest.errors import AttestationError, EvidenceFormatError

__all__ = ["EV_NO_ACTION", "Event", "EventLog", "check_rtmrs", "parse_ccel", "replay"]

EV_NO_ACTION = 0x00000003
_SHA384 = 0x000C
_MAX_LOG = 16 << 20
_MAX_EVENTS = 100_000
_MAX_EVENT_DATA = 1 << 20


@dataclass(frozen=True, slots=True)
class Event:
    mr_index: int
    event_type: int
    digests: dict[int, bytes]
    data: bytes


@dataclass(frozen=True, slots=True)
class EventLog:
    digest_sizes: dict[int, int]
    events: tuple[Event, ...]


def _spec_id(event: bytes) -> dict[int, int]:
    r = Reader(event, what="cc eventlog: Spec ID event")
    if r.take(16, "signature") != b"Spec ID Event03\x00":
        raise r.error("signature", "not a 'Spec ID Event03' (not a crypto-agile log)")
    r.take(4, "platformClass")
    r.take(3, "specVersion")
    r.take(1, "uintnSize")
    count = r.u32le("numberOfAlgorithms")
    if not 1 <= count <= 16:
        raise r.error("numberOfAlgorithms", f"{count} is out of range 1..16")
    sizes = {}
    for i in range(count):
        alg = r.u16le(f"digestSizes[{i}].algorithmId")
        sizes[alg] = r.u16le(f"digestSizes[{i}].digestSize")
    if _SHA384 not in sizes or sizes[_SHA384] != 48:
        raise r.error("digestSizes", "no SHA-384 digests (a TDX log extends RTMRs with SHA-384)")
    return sizes


def parse_ccel(data: bytes) -> EventLog:
    """Parse a CC event log area. Raises EvidenceFormatError naming the event and field."""
    if not isinstance(data, bytes | bytearray) or len(data) > _MAX_LOG:
        raise EvidenceFormatError("cc eventlog: expected bytes of at most 16 MiB")
    r = Reader(bytes(data), what="cc eventlog")
    r.u32le("header.mr_index")
    if r.u32le("header.event_type") != EV_NO_ACTION:
        raise r.error("header.event_type", "the first event must be EV_NO_ACTION (Spec ID)")
    r.take(20, "header.digest")
    sizes = _spec_id(r.take(r.u32le("header.event_size"), "header.event"))
    events: list[Event] = []
    while r.remaining >= 8:
        rest = data[r.pos :]
        if rest.count(0xFF) == len(rest) or rest.count(0) == len(rest):
            break
        n = len(events)
        mr = r.u32le(f"event[{n}].mr_index")
        if mr == 0xFFFFFFFF:
            break
        etype = r.u32le(f"event[{n}].event_type")
        count = r.u32le(f"event[{n}].digest_count")
        if count > len(sizes):
            raise r.error(
                f"event[{n}].digest_count", f"{count} digests, the log declares {len(sizes)} algorithms"
            )
        digests = {}
        for i in range(count):
            alg = r.u16le(f"event[{n}].digests[{i}].alg")
            if alg not in sizes:
                raise r.error(
                    f"event[{n}].digests[{i}].alg", f"algorithm 0x{alg:04x} not in the Spec ID event"
                )
            digests[alg] = r.take(sizes[alg], f"event[{n}].digests[{i}]")
        size = r.u32le(f"event[{n}].event_size")
        if size > _MAX_EVENT_DATA:
            raise r.error(f"event[{n}].event_size", f"{size} bytes is oversized")
        events.append(Event(mr, etype, digests, r.take(size, f"event[{n}].event")))
        if len(events) > _MAX_EVENTS:
            raise r.error("events", f"more than {_MAX_EVENTS} events")
    return EventLog(sizes, tuple(events))


def replay(log: EventLog) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 as the log's events extend them (module docstring)."""
    rtmrs = [bytes(48)] * 4
    for n, event in enumerate(log.events):
        if event.event_type == EV_NO_ACTION or event.mr_index == 0:
            continue
        if not 1 <= event.mr_index <= 4:
            raise EvidenceFormatError(f"cc eventlog: event[{n}].mr_index {event.mr_index} is not 0..4")
        digest = event.digests.get(_SHA384)
        if digest is None:
            raise EvidenceFormatError(f"cc eventlog: event[{n}] has no SHA-384 digest")
        i = event.mr_index - 1
        rtmrs[i] = hashlib.sha384(rtmrs[i] + digest).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def check_rtmrs(log: EventLog, quoted: tuple[bytes, bytes, bytes, bytes]) -> None:
    """Raise AttestationError naming the first RTMR whose replayed value differs from the quote's."""
    for i, (calc, want) in enumerate(zip(replay(log), quoted, strict=True)):
        if calc != want:
            raise AttestationError(
                f"event log replay mismatch for RTMR{i} (CC MR index {i + 1}): the log gives {calc.hex()}, "
                f"the quote says {want.hex()}"
            )
