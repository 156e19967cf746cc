"""The stand-in's SPDY/3.1 codec (tests/support/kubeapi/_spdy) and server session (_streams).

Real kubectl speaking SPDY to the stand-in is the interop proof (tests/integration/kube/
test_standin_streams.py); these pin the codec's own properties: every frame round-trips through
any split of the byte stream, arbitrary bytes are refused with FrameError only, header blocks keep
one zlib stream per direction."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.kubeapi import _spdy
from tests.support.kubeapi._streams import SpdySession

ids = st.integers(min_value=1, max_value=(1 << 31) - 1)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
values = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=30)
headers = st.dictionaries(names, st.lists(values, min_size=1, max_size=3), max_size=6).map(
    lambda d: tuple((k, tuple(v)) for k, v in d.items())
)
frames = st.one_of(
    st.builds(_spdy.DataFrame, ids, st.binary(max_size=300), st.booleans()),
    st.builds(
        _spdy.SynStream,
        ids,
        headers,
        st.integers(0, (1 << 31) - 1),
        st.integers(0, 7),
        st.integers(0, 255),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(_spdy.SynReply, ids, headers, st.booleans()),
    st.builds(_spdy.RstStream, ids, st.integers(1, 0xFFFFFFFF)),
    st.builds(
        _spdy.Settings,
        st.lists(st.tuples(st.integers(0, 255), st.integers(0, (1 << 24) - 1), u32), max_size=4).map(tuple),
    ),
    st.builds(_spdy.Ping, st.integers(1, 0xFFFFFFFF)),
    st.builds(_spdy.GoAway, st.integers(0, (1 << 31) - 1), u32),
    st.builds(_spdy.HeadersFrame, ids, headers, st.booleans()),
    st.builds(_spdy.WindowUpdate, ids, ids),
)


def test_the_dictionary_is_the_spdy3_one() -> None:
    # chromium's kV3DictionarySize; the words run from "options" to the tail "enq=0."
    assert len(_spdy.DICTIONARY) == 1423
    assert _spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert _spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    block = _spdy.FrameEncoder().encode(_spdy.SynReply(1, (("a", ("b",)),)))[12:]
    assert block[0] == 0x78 and block[1] & 0x20  # zlib header with FDICT set ...
    assert struct.unpack(">I", block[2:6])[0] == zlib.adler32(_spdy.DICTIONARY)  # ... naming this dictionary


@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 4000), max_size=8))
def test_frames_round_trip_through_any_split(sent: list[_spdy.Frame], cuts: list[int]) -> None:
    wire = _encode(sent)
    decoder = _spdy.FrameDecoder()
    got: list[_spdy.Frame] = []
    start = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts):
        got += decoder.feed(wire[start:cut])
        start = max(start, cut)
    got += decoder.feed(wire[start:])
    assert got == sent
    assert decoder.pending == 0


def _encode(sent: list[_spdy.Frame]) -> bytes:
    encoder = _spdy.FrameEncoder()  # one zlib stream for the whole direction, as a session has
    return b"".join(encoder.encode(f) for f in sent)


@given(headers)
def test_header_blocks_round_trip(block: _spdy.Headers) -> None:
    assert _spdy.decode_header_block(_spdy.encode_header_block(block)) == block


@given(st.binary(max_size=200))
def test_arbitrary_header_blocks_are_refused_cleanly(raw: bytes) -> None:
    try:
        _spdy.decode_header_block(raw)
    except _spdy.FrameError:
        pass


@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_frames_or_frame_error_only(raw: bytes) -> None:
    try:
        _spdy.FrameDecoder().feed(raw)
    except _spdy.FrameError:
        pass


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (struct.pack(">HHI", 0x8002, 6, 4) + b"\x00\x00\x00\x01", "SPDY version 2 is not supported"),
        (struct.pack(">II", 0, 0), "names stream 0"),
        (struct.pack(">HHI", 0x8003, 6, 4) + b"\x00\x00\x00\x00", "PING id must be non-zero"),
        (struct.pack(">HHI", 0x8003, 7, 4) + b"\x00\x00\x00\x01", "GOAWAY frame must be 8 bytes"),
        (struct.pack(">HHI", 0x8003, 42, 0), "type 42 is unknown"),
        (struct.pack(">HHI", 0x8003, 4, 4) + b"\x00\x00\x00\x05", "length does not match"),
        (struct.pack(">HHI", 0x8003, 2, 6) + b"\x00\x00\x00\x01xx", "does not decompress"),
    ],
)
def test_malformed_frames_name_the_problem(wire: bytes, message: str) -> None:
    with pytest.raises(_spdy.FrameError, match=message):
        _spdy.FrameDecoder().feed(wire)


def test_a_header_block_with_another_dictionary_is_refused() -> None:
    # (one with no dictionary at all is read, as Go's zlib.NewReaderDict reads it)
    other = zlib.compressobj(zdict=b"not the spdy dictionary")
    block = other.compress(_spdy.encode_header_block((("a", ("b",)),))) + other.flush(zlib.Z_SYNC_FLUSH)
    wire = struct.pack(">HHI", 0x8003, 2, 4 + len(block)) + struct.pack(">I", 1) + block
    with pytest.raises(_spdy.FrameError, match="does not decompress"):
        _spdy.FrameDecoder().feed(wire)


def test_oversized_frames_and_bad_header_names_are_refused() -> None:
    with pytest.raises(_spdy.FrameError, match="larger than the limit"):
        _spdy.FrameDecoder(max_frame=10).feed(struct.pack(">II", 1, 11))
    with pytest.raises(_spdy.FrameError, match="lowercase"):
        _spdy.encode_header_block((("Upper", ("x",)),))
    raw = struct.pack(">I", 1) + struct.pack(">I", 1) + b"A" + struct.pack(">I", 0)
    with pytest.raises(_spdy.FrameError, match="lowercase"):
        _spdy.decode_header_block(raw)
    with pytest.raises(_spdy.FrameError, match="truncated"):
        _spdy.decode_header_block(struct.pack(">I", 2))
    with pytest.raises(_spdy.FrameError, match="stream id"):
        _spdy.FrameEncoder().encode(_spdy.DataFrame(0, b""))


def test_the_session_replies_echoes_pings_delivers_data_and_ends_on_goaway() -> None:
    async def scenario() -> tuple[list[_spdy.Frame], bytes, bytes, bool]:
        out = bytearray()

        async def write(data: bytes) -> None:
            out.extend(data)

        session = SpdySession(write)
        client = _spdy.FrameEncoder()
        session.feed(client.encode(_spdy.SynStream(1, (("streamtype", ("stdin",)),))))
        session.feed(client.encode(_spdy.Ping(7)))
        stream = await session.accept()
        assert stream is not None and stream.headers == {"streamtype": "stdin"}
        wire = client.encode(_spdy.DataFrame(1, b"hello ")) + client.encode(
            _spdy.DataFrame(1, b"world", True)
        )
        session.feed(wire[:5])
        session.feed(wire[5:])
        first = await stream.read()
        second = await stream.read()
        end = await stream.read()
        await stream.write(b"reply")
        stream.close()
        session.feed(client.encode(_spdy.GoAway(0)))
        closed = session.closed.is_set()
        await session.aclose()
        return _spdy.FrameDecoder().feed(bytes(out)), first + second, end, closed

    got, data, end, closed = asyncio.run(scenario())
    assert got == [
        _spdy.SynReply(1),
        _spdy.Ping(7),
        _spdy.DataFrame(1, b"reply"),
        _spdy.DataFrame(1, b"", True),
    ]
    assert data == b"hello world" and end == b"" and closed


def test_the_session_answers_garbage_with_goaway_protocol_error() -> None:
    async def scenario() -> tuple[list[_spdy.Frame], bool]:
        out = bytearray()

        async def write(data: bytes) -> None:
            out.extend(data)

        session = SpdySession(write)
        session.feed(struct.pack(">HHI", 0x8003, 42, 0))
        await session.aclose()
        return _spdy.FrameDecoder().feed(bytes(out)), session.closed.is_set()

    got, closed = asyncio.run(scenario())
    assert got == [_spdy.GoAway(0, 1)] and closed
