"""The proxy's strict HTTP/1.1 parser: examples of each refusal, and hypothesis properties (it never
crashes, never accepts ambiguous framing, round-trips what it accepts; the chunked scanner decodes
any chunking fed in any pieces)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kubeshield.access import _http1
from kubeshield.access._http1 import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ChunkedScanner,
    HttpError,
    RequestHead,
    parse_request_head,
    parse_response_head,
)

OK = b"GET /api/v1/namespaces/a/secrets/b?x=1 HTTP/1.1\r\nHost: h\r\nAccept: application/json\r\n\r\n"


def test_a_plain_request_is_parsed() -> None:
    head = parse_request_head(OK)
    assert (head.method, head.path, head.query, head.version) == (
        "GET",
        "/api/v1/namespaces/a/secrets/b",
        "x=1",
        "HTTP/1.1",
    )
    assert head.get("accept") == "application/json"
    assert head.get("ACCEPT") == "application/json"
    assert head.content_length is None and not head.chunked and head.keep_alive and not head.upgrade


def test_content_length_and_chunked_framing() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n")
    assert head.content_length == 12 and not head.chunked
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
    assert head.chunked and head.content_length is None


def test_connection_close_and_http10_and_upgrade() -> None:
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive
    assert not parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_request_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    up = parse_request_head(
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert up.upgrade
    # Upgrade without the Connection token is not an upgrade
    assert not parse_request_head(b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n").upgrade


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            400,
            "more than once",
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n", 400, "decimal"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n", 400, "decimal"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n", 400, "decimal"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "chunked"),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "more than once",
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "token"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400, "bare CR or LF"),
        (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400, "bare CR or LF"),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request line"),
        (b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "origin-form"),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "HTTP/1.1"),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400, "control character"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nnocolon\r\n\r\n", 400, "colon"),
        (b"GET / HTTP/1.1\r\nHost: h\r\n", 400, "empty line"),
        (
            b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 4\r\n\r\n",
            400,
            "upgrade",
        ),
    ],
)
def test_ambiguous_or_malformed_heads_are_refused(raw: bytes, status: int, words: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(raw)
    assert info.value.status == status
    assert words in info.value.message


def test_limits_on_head_size_and_field_count() -> None:
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    with pytest.raises(HttpError) as info:
        parse_request_head(big)
    assert info.value.status == 431
    many = (
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n"
    )
    with pytest.raises(HttpError) as info:
        parse_request_head(many)
    assert info.value.status == 431


def test_a_refusal_never_quotes_a_header_value() -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sekrit\x01\r\n\r\n")
    assert "sekrit" not in str(info.value)


def test_response_heads() -> None:
    resp = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    assert (resp.status, resp.reason, resp.content_length, resp.keep_alive) == (200, "OK", 2, True)
    resp = parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert resp.status == 101 and resp.get("upgrade") == "websocket"
    assert not parse_response_head(b"HTTP/1.0 200\r\n\r\n").keep_alive
    for bad in (
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ):
        with pytest.raises(HttpError):
            parse_response_head(bad)


# --- the chunked scanner ----------------------------------------------------------------------------


def _chunk(body: bytes, sizes: list[int], *, ext: bool = False, trailers: bytes = b"") -> bytes:
    out = []
    pos = 0
    for size in sizes:
        piece = body[pos : pos + size]
        if not piece:
            break
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";name=v" if ext else b"", piece))
        pos += len(piece)
    if pos < len(body):
        out.append(b"%X\r\n%s\r\n" % (len(body) - pos, body[pos:]))
    out.append(b"0\r\n" + trailers + b"\r\n")
    return b"".join(out)


def test_chunked_body_decodes_and_stops_at_its_end() -> None:
    wire = _chunk(b"hello world", [5, 6], ext=True, trailers=b"X-T: 1\r\n") + b"NEXT"
    scanner = ChunkedScanner(decode=True)
    used = scanner.feed(wire)
    assert scanner.done and scanner.take() == b"hello world"
    assert wire[used:] == b"NEXT"


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"5\nhello\r\n0\r\n\r\n", 400),  # bare LF after the size
        (b"5\r\nhelloX\r\n0\r\n\r\n", 400),  # data longer than its size
        (b"-5\r\nhello\r\n0\r\n\r\n", 400),
        (b"0x5\r\nhello\r\n0\r\n\r\n", 400),
        (b"1234567890abcdef0\r\n", 400),  # a size that does not fit 15 hex digits
        (b"0\r\n folded: x\r\n\r\n", 400),
        (b"0\r\nno-colon\r\n\r\n", 400),
        (b"f" * 2000, 400),  # an unbounded size line
    ],
)
def test_malformed_chunking_is_refused(wire: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        ChunkedScanner().feed(wire)
    assert info.value.status == status


def test_chunked_limit() -> None:
    with pytest.raises(HttpError) as info:
        ChunkedScanner(decode=True, limit=10).feed(_chunk(b"x" * 11, [4]))
    assert info.value.status == 413


@given(
    body=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 700), max_size=12),
    cuts=st.lists(st.integers(1, 400), max_size=40),
    ext=st.booleans(),
    tail=st.binary(max_size=20),
)
def test_chunked_decodes_any_chunking_fed_in_any_pieces(
    body: bytes, sizes: list[int], cuts: list[int], ext: bool, tail: bytes
) -> None:
    wire = _chunk(body, sizes, ext=ext)
    stream = wire + tail
    scanner = ChunkedScanner(decode=True)
    consumed = 0
    pos = 0
    for cut in [*cuts, len(stream)]:
        piece = stream[pos : pos + cut]
        pos += len(piece)
        if not piece:
            continue
        used = scanner.feed(piece)
        consumed += used
        if scanner.done:
            break
        assert used == len(piece)
    assert scanner.done
    assert consumed == len(wire)
    assert scanner.take() == body


@given(st.binary(max_size=400))
def test_chunked_scanner_never_crashes(data: bytes) -> None:
    scanner = ChunkedScanner(decode=True, limit=1000)
    try:
        used = scanner.feed(data)
    except HttpError as exc:
        assert exc.status in (400, 413, 431)
    else:
        assert 0 <= used <= len(data)


# --- request heads: fuzzing --------------------------------------------------------------------------

_NAMES = [
    b"Host",
    b"Content-Length",
    b"content-length",
    b"CONTENT-LENGTH",
    b"Content-Length ",
    b" Content-Length",
    b"Transfer-Encoding",
    b"transfer-encoding",
    b"Transfer-Encoding\t",
    b"Connection",
    b"Upgrade",
    b"X-Thing",
    b"Authorization",
    b"Expect",
    b"",
]
_VALUES = [
    b"0",
    b"12",
    b" 12 ",
    b"12, 12",
    b"-1",
    b"1e3",
    b"chunked",
    b"Chunked",
    b"chunked, identity",
    b"identity",
    b"xchunked",
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"websocket",
    b"SPDY/3.1",
    b"Bearer abc",
    b"a\x00b",
    b"\xff\xfe",
    b"",
]
_ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"]
_CLEAN_LINE = st.tuples(
    st.sampled_from(
        [
            b"Content-Length",
            b"content-length",
            b"Transfer-Encoding",
            b"X-Thing",
            b"X-Thing",
            b"Accept",
            b"Host",
        ]
    ),
    st.sampled_from([b"0", b"12", b"chunked", b"Chunked", b"x", b"close"]),
).map(lambda t: t[0] + b": " + t[1])
_TRICKY_LINE = st.tuples(
    st.sampled_from(_NAMES), st.sampled_from([b": "] * 6 + [b":", b" :", b""]), st.sampled_from(_VALUES)
).map(lambda t: t[0] + t[1] + t[2])
_LINE = st.one_of(
    _CLEAN_LINE,
    _CLEAN_LINE,
    _CLEAN_LINE,
    _CLEAN_LINE,
    _CLEAN_LINE,
    _CLEAN_LINE,
    _TRICKY_LINE,
    _TRICKY_LINE,
    st.sampled_from([b" folded", b"\tfolded", b""]),
    st.binary(max_size=30),
)
_REQUEST_LINE_OK = [b"GET / HTTP/1.1", b"POST /api/v1/namespaces/a/secrets HTTP/1.1", b"GET / HTTP/1.0"]
_REQUEST_LINE = st.one_of(
    st.sampled_from(
        [
            b"GET / HTTP/1.1",
            b"POST /api/v1/namespaces/a/secrets HTTP/1.1",
            b"GET / HTTP/1.0",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/1.1 ",
            b"GET /\x7f HTTP/1.1",
            b"GET * HTTP/1.1",
            b"get / http/1.1",
        ]
    ),
    st.binary(max_size=40),
)


@st.composite
def _heads(draw: st.DrawFn) -> bytes:
    """Mostly well-formed heads (so that many are accepted) with the smuggling ingredients mixed in."""
    good = draw(st.integers(0, 9)) < 8
    start = draw(st.sampled_from(_REQUEST_LINE_OK)) if good else draw(_REQUEST_LINE)
    crlf = st.sampled_from([b"\r\n"] * 12 + _ENDS) if good else st.sampled_from(_ENDS)
    lines = [(b"Host: h", b"\r\n")] if good else []
    lines += draw(st.lists(st.tuples(_LINE, crlf), max_size=8))
    order = draw(st.permutations(lines))
    body = start + draw(crlf) + b"".join(a + b for a, b in order)
    return body + (b"\r\n" if good else draw(st.sampled_from([b"\r\n", b"\n", b""])))


def _oracle_field_names(raw: bytes) -> list[bytes]:
    """An independent reading of the field names: every line after the first split on CRLF or LF."""
    text = raw.replace(b"\r\n", b"\n").split(b"\n")[1:]
    return [line.split(b":", 1)[0].strip().lower() for line in text if b":" in line]


@settings(max_examples=500)
@given(_heads())
def test_fuzz_the_request_parser_never_crashes_nor_accepts_ambiguity(raw: bytes) -> None:
    try:
        head = parse_request_head(raw)
    except HttpError as exc:
        assert exc.status in (400, 413, 431, 501, 505)
        return
    # accepted: CRLF only, no fold, framing unambiguous by an independent reading
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert not any(line[:1] in (b" ", b"\t") for line in raw.split(b"\r\n")[1:-2])
    names = _oracle_field_names(raw)
    lengths = names.count(b"content-length")
    codings = names.count(b"transfer-encoding")
    assert lengths <= 1 and codings <= 1 and not (lengths and codings)
    assert (head.content_length is not None) == (lengths == 1)
    assert head.chunked == (codings == 1)
    assert names.count(b"host") <= 1


@given(st.binary(max_size=600))
def test_fuzz_random_bytes(raw: bytes) -> None:
    for candidate in (raw, raw + b"\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n" + raw + b"\r\n\r\n"):
        try:
            parse_request_head(candidate)
        except HttpError:
            pass
        try:
            parse_response_head(candidate)
        except HttpError:
            pass


_TOKEN_CHARS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
    min_size=1,
    max_size=20,
)
_VALUE_TEXT = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@given(
    method=_TOKEN_CHARS,
    path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
    fields=st.lists(
        st.tuples(
            _TOKEN_CHARS.filter(
                lambda n: (
                    n.lower() not in ("host", "content-length", "transfer-encoding", "connection", "upgrade")
                )
            ),
            _VALUE_TEXT,
        ),
        max_size=15,
    ),
    length=st.none() | st.integers(0, 10**12),
)
def test_accepted_requests_round_trip(
    method: str, path: str, fields: list[tuple[str, str]], length: int | None
) -> None:
    all_fields = [("Host", "127.0.0.1:1"), *fields]
    if length is not None:
        all_fields.append(("Content-Length", str(length)))
    raw = (
        f"{method} /{path} HTTP/1.1\r\n".encode()
        + b"".join(f"{n}: {v}\r\n".encode() for n, v in all_fields)
        + b"\r\n"
    )
    head = parse_request_head(raw)
    assert head.method == method and head.target == "/" + path
    assert list(head.headers) == all_fields
    assert head.content_length == length and not head.chunked


# --- differential: what we accept, h11 (a strict, independent HTTP/1.1 parser) reads the same way ------


def _h11_reading(raw: bytes, body: bytes) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    """h11's reading of ``raw`` + ``body``: (method, target, headers, body) or None when it refuses."""
    import h11

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES * 2)
    conn.receive_data(raw + body)
    try:
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            return None
        data = b""
        while True:
            nxt = conn.next_event()
            if isinstance(nxt, h11.Data):
                data += nxt.data
            elif isinstance(nxt, h11.EndOfMessage):
                break
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
    return event.method.decode(), event.target.decode(), headers, data


@settings(max_examples=500)
@given(_heads(), st.binary(min_size=0, max_size=20))
@example(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n", b"")  # found by the fuzz
def test_fuzz_what_we_accept_h11_reads_the_same_way(raw: bytes, payload: bytes) -> None:
    try:
        head = parse_request_head(raw)
    except HttpError:
        return
    if head.version != "HTTP/1.1":
        return
    if head.chunked:
        body = (b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b"") + b"0\r\n\r\n"
    else:
        payload = payload[: head.content_length or 0].ljust(head.content_length or 0, b"x")
        body = payload
    reading = _h11_reading(raw, body)
    assert reading is not None, raw
    method, target, headers, data = reading
    assert (method, target) == (head.method, head.target)
    # h11 lowercases a Transfer-Encoding value (coding names are case-insensitive, RFC 9112 §7)
    ours = [(n.lower(), v.lower() if n.lower() == "transfer-encoding" else v) for n, v in head.headers]
    assert headers == ours
    assert data == payload


# --- the one-pass fast path and the line-by-line reading agree on every head -----------------------


def _reading(parse: Callable[[bytes], object], raw: bytes) -> object:
    try:
        return parse(raw)
    except HttpError as exc:
        return (exc.status, exc.message)


def _as_response(raw: bytes) -> bytes:
    """The same field lines under a status line (a valid one, or the request line's bytes)."""
    first, sep, rest = raw.partition(b"\r\n")
    return (b"HTTP/1.1 200 OK" if first.startswith(b"GET") else first) + sep + rest


@settings(max_examples=500)
@given(_heads())
@example(b"GET / HTTP/1.1\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: h\r\nX: \t a b \t\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * MAX_HEADERS + b"\r\n")
@example(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nX: y\r\n\r\n")
def test_fast_path_reads_every_head_as_the_line_by_line_reading(raw: bytes) -> None:
    ours = _reading(parse_request_head, raw)
    assert ours == _reading(_http1._parse_request_head_lines, raw)
    if isinstance(ours, RequestHead):
        assert ours.names == tuple(n.lower() for n, _ in ours.headers)
        assert ours._index == _http1._parse_request_head_lines(raw)._index
    response = _as_response(raw)
    theirs = _reading(_http1._parse_response_head_lines, response)
    assert _reading(parse_response_head, response) == theirs
