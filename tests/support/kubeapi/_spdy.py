"""A SPDY/3.1 frame codec (sans-IO), as kubectl's SPDY transport (moby/spdystream) speaks it.

kubectl v1.35 still falls back to SPDY for exec/attach/cp when a server refuses the WebSocket
upgrade, uses it for port-forward with ``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``, and tunnels it
inside a WebSocket (subprotocol ``SPDY/3.1+portforward.k8s.io``) for port-forward by default. So the
stand-in needs the frame layer; the session logic (streams, replies, pings) lives in ``_streams``.

Byte format (draft-mbelshe-httpbis-spdy-00 §2.2, version 3; big-endian)::

    control frame: |1| version(15)=3 | type(16) | flags(8) | length(24) | payload
    data frame:    |0| stream-id(31)            | flags(8) | length(24) | data

    SYN_STREAM(1): |X| stream-id(31) |X| associated-id(31) | pri(3) unused(5) | slot(8) | headers
    SYN_REPLY(2):  |X| stream-id(31) | headers
    RST_STREAM(3): |X| stream-id(31) | status(32)
    SETTINGS(4):   count(32) then count x (flags(8) id(24) value(32))
    PING(6):       id(32)
    GOAWAY(7):     |X| last-good-stream-id(31) | status(32)
    HEADERS(8):    |X| stream-id(31) | headers
    WINDOW_UPDATE(9): |X| stream-id(31) | |X| delta(31)

``headers`` is a name/value block, ``count(32)`` then ``len(32) name len(32) value`` pairs (several
values of one name joined by NUL), compressed with zlib seeded with the SPDY/3 dictionary. Each
direction keeps ONE zlib stream for the whole session: every block is a sync-flushed continuation of
the previous one, so a decoder must see every header block of its direction, in order.

Flags: FIN 0x01 (data and SYN_STREAM/SYN_REPLY/HEADERS), UNIDIRECTIONAL 0x02 (SYN_STREAM).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DICTIONARY",
    "FLAG_FIN",
    "FLAG_UNIDIRECTIONAL",
    "MAX_DATA_LENGTH",
    "DataFrame",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "FrameError",
    "GoAway",
    "Headers",
    "HeadersFrame",
    "Ping",
    "RstStream",
    "Settings",
    "SynReply",
    "SynStream",
    "WindowUpdate",
    "decode_header_block",
    "encode_header_block",
]

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
MAX_DATA_LENGTH = (1 << 24) - 1
_MAX_HEADER_BLOCK = 1 << 20  # decompressed; a bound against zlib bombs
_MAX_STREAM_ID = (1 << 31) - 1

# The SPDY/3 header dictionary (draft 3 §2.6.10.1): length-prefixed header names and common values,
# then a run of status codes, reason phrases, dates and media types. Built here from its words; its
# adler32 is the dictionary id every header block's zlib header carries, so a wrong byte fails at
# once against real kubectl ("zlib: invalid dictionary").
_DICT_WORDS = [
    *(
        "options head post put delete trace accept accept-charset accept-encoding accept-language "
        "accept-ranges age allow authorization cache-control connection content-base content-encoding "
        "content-language content-length content-location content-md5 content-range content-type date "
        "etag expect expires from host if-match if-modified-since if-none-match if-range "
        "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
        "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
        "user-agent vary via warning www-authenticate method get status"
    ).split(),
    *("200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"),
]
_DICT_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICT_WORDS) + _DICT_TAIL.encode()

# name -> values, names lowercase (SPDY requires it), in a stable order
Headers = tuple[tuple[str, tuple[str, ...]], ...]


class FrameError(ValueError):
    """A malformed frame or header block; the message names what is wrong (never any payload)."""


def _headers(value: Mapping[str, Sequence[str]] | Headers) -> Headers:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((name, tuple(values)) for name, values in items)


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = ()
    associated_id: int = 0
    priority: int = 0
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = field(default=())  # (flags, id, value)


@dataclass(frozen=True)
class Ping:
    id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = 0


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block; names must be lowercase, non-empty and unique."""
    out = [struct.pack(">I", len(headers))]
    seen: set[str] = set()
    for name, values in headers:
        if not name or name != name.lower() or name in seen:
            raise FrameError("a SPDY header name must be non-empty, lowercase and unique")
        seen.add(name)
        raw_name = name.encode()
        raw_value = b"\x00".join(v.encode() for v in values)
        out += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(out)


def decode_header_block(raw: bytes) -> Headers:
    """The inverse of ``encode_header_block``; the block must be consumed exactly."""
    view = memoryview(raw)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n > len(view) - pos:
            raise FrameError("the SPDY header block is truncated")
        chunk = bytes(view[pos : pos + n])
        pos += n
        return chunk

    (count,) = struct.unpack(">I", take(4))
    out: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for _ in range(count):
        (n,) = struct.unpack(">I", take(4))
        try:
            name = take(n).decode()
        except UnicodeDecodeError:
            raise FrameError("a SPDY header name is not UTF-8") from None
        if not name or name != name.lower() or name in seen:
            raise FrameError("a SPDY header name must be non-empty, lowercase and unique")
        seen.add(name)
        (n,) = struct.unpack(">I", take(4))
        try:
            value = take(n).decode()
        except UnicodeDecodeError:
            raise FrameError(f"the value of SPDY header {name!r} is not UTF-8") from None
        out.append((name, tuple(value.split("\x00"))))
    if pos != len(view):
        raise FrameError("the SPDY header block has trailing bytes")
    return tuple(out)


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_DATA_LENGTH:
        raise FrameError("a SPDY control frame cannot carry more than 2^24-1 bytes")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def _stream_id(value: int) -> int:
    if not 0 < value <= _MAX_STREAM_ID:
        raise FrameError("a SPDY stream id must be in 1..2^31-1")
    return value


class FrameEncoder:
    """Frames to bytes for one direction of one session (it owns that direction's zlib stream)."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8, zdict=DICTIONARY)

    def _compress(self, headers: Headers) -> bytes:
        return self._zlib.compress(encode_header_block(headers)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            if len(frame.data) > MAX_DATA_LENGTH:
                raise FrameError("a SPDY data frame cannot carry more than 2^24-1 bytes")
            flags = FLAG_FIN if frame.fin else 0
            head = struct.pack(">II", _stream_id(frame.stream_id), (flags << 24) | len(frame.data))
            return head + frame.data
        if isinstance(frame, SynStream):
            flags = (FLAG_FIN if frame.fin else 0) | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            if not 0 <= frame.associated_id <= _MAX_STREAM_ID or not 0 <= frame.priority <= 7:
                raise FrameError("a SYN_STREAM's associated id or priority is out of range")
            if not 0 <= frame.slot <= 255:
                raise FrameError("a SYN_STREAM's slot is out of range")
            payload = struct.pack(
                ">IIBB", _stream_id(frame.stream_id), frame.associated_id, frame.priority << 5, frame.slot
            )
            return _control(1, flags, payload + self._compress(frame.headers))
        if isinstance(frame, SynReply):
            payload = struct.pack(">I", _stream_id(frame.stream_id)) + self._compress(frame.headers)
            return _control(2, FLAG_FIN if frame.fin else 0, payload)
        if isinstance(frame, RstStream):
            if not 0 < frame.status <= 0xFFFFFFFF:
                raise FrameError("a RST_STREAM status must be non-zero")
            return _control(3, 0, struct.pack(">II", _stream_id(frame.stream_id), frame.status))
        if isinstance(frame, Settings):
            body = [struct.pack(">I", len(frame.entries))]
            for flags, ident, value in frame.entries:
                if not (0 <= flags <= 255 and 0 <= ident < 1 << 24 and 0 <= value <= 0xFFFFFFFF):
                    raise FrameError("a SETTINGS entry is out of range")
                body.append(struct.pack(">II", (flags << 24) | ident, value))
            return _control(4, 0, b"".join(body))
        if isinstance(frame, Ping):
            if not 0 < frame.id <= 0xFFFFFFFF:
                raise FrameError("a PING id must be non-zero")
            return _control(6, 0, struct.pack(">I", frame.id))
        if isinstance(frame, GoAway):
            if not 0 <= frame.last_good_stream_id <= _MAX_STREAM_ID or not 0 <= frame.status <= 0xFFFFFFFF:
                raise FrameError("a GOAWAY field is out of range")
            return _control(7, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
        if isinstance(frame, HeadersFrame):
            payload = struct.pack(">I", _stream_id(frame.stream_id)) + self._compress(frame.headers)
            return _control(8, FLAG_FIN if frame.fin else 0, payload)
        if isinstance(frame, WindowUpdate):
            if not 0 < frame.delta <= _MAX_STREAM_ID:
                raise FrameError("a WINDOW_UPDATE delta must be in 1..2^31-1")
            return _control(9, 0, struct.pack(">II", _stream_id(frame.stream_id), frame.delta))
        raise FrameError(f"not a SPDY frame: {type(frame).__name__}")


class FrameDecoder:
    """Bytes to frames for one direction of one session: ``feed`` any split of the byte stream.

    After a ``FrameError`` the session is unusable (the zlib stream may be out of step): the caller
    must send GOAWAY with PROTOCOL_ERROR and close, as spdystream does."""

    def __init__(self, *, max_frame: int = MAX_DATA_LENGTH) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)
        self._buffer = bytearray()
        self._max_frame = max_frame

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def _headers(self, compressed: bytes) -> Headers:
        try:
            raw = self._zlib.decompress(compressed, _MAX_HEADER_BLOCK)
        except zlib.error:
            raise FrameError("a SPDY header block does not decompress with the SPDY/3 dictionary") from None
        if self._zlib.unconsumed_tail:
            raise FrameError("a SPDY header block is larger than the stand-in accepts (1 MiB)")
        return decode_header_block(raw)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= 8:
            first, second = struct.unpack_from(">II", self._buffer)
            length = second & 0xFFFFFF
            if length > self._max_frame:
                raise FrameError(f"a SPDY frame of {length} bytes is larger than the limit")
            if len(self._buffer) < 8 + length:
                break
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            frames.append(self._frame(first, second >> 24, payload))
        return frames

    def _frame(self, first: int, flags: int, payload: bytes) -> Frame:
        if not first & 0x80000000:
            stream = first & 0x7FFFFFFF
            if stream == 0:
                raise FrameError("a SPDY data frame names stream 0")
            return DataFrame(stream, payload, bool(flags & FLAG_FIN))
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise FrameError(f"SPDY version {version} is not supported (only 3)")

        def need(n: int, name: str) -> None:
            if len(payload) < n:
                raise FrameError(f"a SPDY {name} frame is too short")

        def exactly(n: int, name: str) -> None:
            if len(payload) != n:
                raise FrameError(f"a SPDY {name} frame must be {n} bytes")

        if kind == 1:
            need(10, "SYN_STREAM")
            stream, assoc, pri, slot = struct.unpack_from(">IIBB", payload)
            stream &= 0x7FFFFFFF
            if stream == 0:
                raise FrameError("a SYN_STREAM names stream 0")
            return SynStream(
                stream,
                self._headers(payload[10:]),
                assoc & 0x7FFFFFFF,
                pri >> 5,
                slot,
                bool(flags & FLAG_FIN),
                bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if kind in (2, 8):
            name = "SYN_REPLY" if kind == 2 else "HEADERS"
            need(4, name)
            stream = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                raise FrameError(f"a {name} names stream 0")
            headers = self._headers(payload[4:])
            fin = bool(flags & FLAG_FIN)
            return SynReply(stream, headers, fin) if kind == 2 else HeadersFrame(stream, headers, fin)
        if kind == 3:
            exactly(8, "RST_STREAM")
            stream, status = struct.unpack(">II", payload)
            if stream & 0x7FFFFFFF == 0 or status == 0:
                raise FrameError("a RST_STREAM needs a stream id and a non-zero status")
            return RstStream(stream & 0x7FFFFFFF, status)
        if kind == 4:
            need(4, "SETTINGS")
            (count,) = struct.unpack_from(">I", payload)
            if len(payload) != 4 + 8 * count:
                raise FrameError("a SPDY SETTINGS frame's length does not match its entry count")
            entries = tuple(
                (word >> 24, word & 0xFFFFFF, value) for word, value in struct.iter_unpack(">II", payload[4:])
            )
            return Settings(entries)
        if kind == 6:
            exactly(4, "PING")
            (ident,) = struct.unpack(">I", payload)
            if ident == 0:
                raise FrameError("a PING id must be non-zero")
            return Ping(ident)
        if kind == 7:
            exactly(8, "GOAWAY")
            last, status = struct.unpack(">II", payload)
            return GoAway(last & 0x7FFFFFFF, status)
        if kind == 9:
            exactly(8, "WINDOW_UPDATE")
            stream, delta = struct.unpack(">II", payload)
            if stream & 0x7FFFFFFF == 0 or delta & 0x7FFFFFFF == 0:
                raise FrameError("a WINDOW_UPDATE needs a stream id and a non-zero delta")
            return WindowUpdate(stream & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        raise FrameError(f"SPDY control frame type {kind} is unknown")
