"""A strict, bounded HTTP/1.1 message-head parser and chunked-body scanner for the local proxy.

Why our own: the proxy stands between kubectl and the apiserver, so any disagreement between how it
and the apiserver frame a message is a request-smuggling hole. This parser accepts only one reading
of every message and refuses everything RFC 9112 calls ambiguous, with a ``400`` (or ``413``/``431``/
``501``) that names the problem:

- lines end in CRLF exactly; a bare CR or a bare LF anywhere in the head is refused;
- obs-fold (a header line starting with SP or HTAB) is refused (RFC 9112 §5.2 allows a server to);
- a header name is a token with no whitespace before the colon; values hold no control characters;
- ``Content-Length`` is decimal digits only, at most once; ``Transfer-Encoding`` is exactly
  ``chunked`` (one coding, once); both together are refused (RFC 9112 §6.3 item 3);
- HTTP/1.1 requests carry exactly one ``Host``;
- the head is at most ``MAX_HEAD_BYTES`` with at most ``MAX_HEADERS`` fields; a chunk-size line and
  the trailer section are bounded too.

``ChunkedScanner`` walks a chunked body incrementally: it reports where the body ends (so a keep-alive
connection can carry the next message) and can hand back the decoded payload, which redaction needs.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "ChunkedScanner",
    "HttpError",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
]

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
MAX_CHUNK_LINE = 1024
MAX_TRAILER_BYTES = 16 * 1024
_MAX_CL_DIGITS = 18

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHOD = _TOKEN
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
# field-value: VCHAR / obs-text / SP / HTAB (no CR, LF, NUL or other controls)
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
# one well-formed field line, whole: the fast path (anything else is diagnosed line by line)
_FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[\t ]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[\t ]*"
)
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\Z")
# The one-pass fast path works on the head decoded as latin-1 (a bijection of bytes, so every class
# below means the same bytes as its bytes twin): one C-level fullmatch validates the whole field block,
# one findall extracts it. A head it does not accept goes through the line-by-line path, which either
# accepts it the same way or names the problem.
_NAME_TEXT = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE_TEXT = r"(?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?"
_FIELD_LINES = re.compile(rf"({_NAME_TEXT}):[\t ]*({_VALUE_TEXT})[\t ]*\r\n")
_FIELD_BLOCK = re.compile(rf"(?:{_NAME_TEXT}:[\t ]*{_VALUE_TEXT}[\t ]*\r\n)*")
_REQUEST_LINE_TEXT = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) (HTTP/1\.[01])")
_STATUS_LINE_TEXT = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[\t ]*;[\t\x20-\x7e\x80-\xff]*)?\Z")


class HttpError(Exception):
    """A message we refuse. ``status`` is the HTTP status to answer with; the message names the problem
    (it never quotes header values, which can hold credentials)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Framing:
    content_length: int | None
    chunked: bool


@dataclass(slots=True)
class RequestHead:
    """One parsed request head. ``headers`` keeps order and the client's spelling of the names."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    upgrade: bool
    _index: dict[str, list[str]] = field(repr=False, compare=False, default_factory=dict)
    # the field names lowercased, in the order of ``headers`` (what the proxy filters by)
    names: tuple[str, ...] = field(repr=False, compare=False, default=())

    def get(self, name: str) -> str | None:
        """The single value of ``name`` (case-insensitive), the first when repeated, None if absent."""
        found = self._index.get(name.lower())
        return found[0] if found else None

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass(slots=True)
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    _index: dict[str, list[str]] = field(repr=False, compare=False, default_factory=dict)
    names: tuple[str, ...] = field(repr=False, compare=False, default=())

    def get(self, name: str) -> str | None:
        found = self._index.get(name.lower())
        return found[0] if found else None


def _split_lines(head: bytes) -> list[bytes]:
    """The head's lines, without the final empty line; refuses anything but CRLF line ends."""
    if len(head) > MAX_HEAD_BYTES:
        raise HttpError(431, f"the message head is larger than {MAX_HEAD_BYTES} bytes")
    if not head.endswith(b"\r\n\r\n"):
        raise HttpError(400, "the message head does not end with an empty line (CRLF CRLF)")
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise HttpError(400, "the message head has a bare CR or LF (lines must end in CRLF)")
    return head[:-4].split(b"\r\n")


def _parse_fields(lines: list[bytes]) -> tuple[tuple[tuple[str, str], ...], dict[str, list[str]]]:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"the message has more than {MAX_HEADERS} header fields")
    fields: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    fast = _FIELD.fullmatch
    for line in lines:
        matched = fast(line)
        if matched is not None:
            key = matched.group(1).decode("ascii")
            text = matched.group(2).decode("latin-1")
            fields.append((key, text))
            index.setdefault(key.lower(), []).append(text)
            continue
        if not line:
            raise HttpError(400, "the message head has an empty header line")
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding (a header line starting with whitespace) is refused")
        name, colon, value = line.partition(b":")
        if not colon:
            raise HttpError(400, "a header line has no colon")
        if not _TOKEN.match(name):
            raise HttpError(400, "a header name is not a token (whitespace before the colon is refused)")
        value = value.strip(b" \t")
        if not _VALUE.match(value):
            raise HttpError(400, f"the value of header {name.decode()} holds a control character")
        raise AssertionError("a field line neither matched nor was refused")  # pragma: no cover
    return tuple(fields), index


def _framing(index: dict[str, list[str]]) -> _Framing:
    lengths = index.get("content-length", [])
    codings = index.get("transfer-encoding", [])
    if lengths and codings:
        raise HttpError(400, "both Content-Length and Transfer-Encoding are set (ambiguous framing)")
    if len(lengths) > 1:
        raise HttpError(400, "Content-Length is given more than once")
    if len(codings) > 1:
        raise HttpError(400, "Transfer-Encoding is given more than once")
    if lengths:
        text = lengths[0]
        if not text.isascii() or not text.isdigit() or len(text) > _MAX_CL_DIGITS:
            raise HttpError(400, "Content-Length is not a decimal number")
        return _Framing(int(text), False)
    if codings:
        if codings[0].strip().lower() != "chunked":
            raise HttpError(501, "only Transfer-Encoding: chunked is supported")
        return _Framing(None, True)
    return _Framing(None, False)


def _connection_tokens(index: dict[str, list[str]]) -> set[str]:
    return {t.strip().lower() for v in index.get("connection", []) for t in v.split(",") if t.strip()}


def _fast_fields(
    text: str, start: int
) -> tuple[tuple[tuple[str, str], ...], dict[str, list[str]], tuple[str, ...]] | None:
    """The field block ``text[start:-2]`` (each line ending in CRLF) in one pass, or None when any line
    is not a plain well-formed field line (then the line-by-line path decides and names the problem)."""
    end = len(text) - 2
    if _FIELD_BLOCK.fullmatch(text, start, end) is None:
        return None
    fields: list[tuple[str, str]] = _FIELD_LINES.findall(text, start, end)
    if len(fields) > MAX_HEADERS:
        return None
    index: dict[str, list[str]] = {}
    names = []
    for name, value in fields:
        lower = name.lower()
        names.append(lower)
        found = index.get(lower)
        if found is None:
            index[lower] = [value]
        else:
            found.append(value)
    return tuple(fields), index, tuple(names)


def _lowered(fields: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(name.lower() for name, _ in fields)


def _request(
    method: str,
    target: str,
    version: str,
    fields: tuple[tuple[str, str], ...],
    index: dict[str, list[str]],
    names: tuple[str, ...],
) -> RequestHead:
    """The checks on a request's fields (Host, framing, Connection), shared by both parsing paths."""
    hosts = index.get("host", ())
    if version == "HTTP/1.1" and len(hosts) != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if len(hosts) > 1:
        raise HttpError(400, "Host is given more than once")
    framing = _framing(index)
    tokens = _connection_tokens(index) if "connection" in index else set()
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    upgrade = "upgrade" in tokens and bool(index.get("upgrade"))
    if upgrade and (framing.chunked or framing.content_length):
        raise HttpError(400, "an upgrade request cannot carry a body")
    return RequestHead(
        method=method,
        target=target,
        version=version,
        headers=fields,
        content_length=framing.content_length,
        chunked=framing.chunked,
        keep_alive=keep_alive,
        upgrade=upgrade,
        _index=index,
        names=names,
    )


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (request line, fields, the final CRLF CRLF) or raise ``HttpError``."""
    if len(head) <= MAX_HEAD_BYTES and head.endswith(b"\r\n\r\n"):
        text = head.decode("latin-1")
        line_end = text.find("\r\n")
        line = _REQUEST_LINE_TEXT.fullmatch(text, 0, line_end)
        if line is not None:
            parsed = _fast_fields(text, line_end + 2)
            if parsed is not None:
                return _request(line.group(1), line.group(2), line.group(3), *parsed)
    return _parse_request_head_lines(head)


def _parse_request_head_lines(head: bytes) -> RequestHead:
    """The line-by-line reading: the reference the fast path must agree with, and the one that names
    what is wrong with a head the fast path did not accept."""
    lines = _split_lines(head)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "the request line is not METHOD SP TARGET SP VERSION")
    method, target, version = parts
    if not _METHOD.match(method):
        raise HttpError(400, "the request method is not a token")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(505 if version.startswith(b"HTTP/") else 400, "only HTTP/1.1 and HTTP/1.0 are served")
    if not _TARGET.match(target):
        raise HttpError(400, "the request target must be an absolute path (origin-form) of visible ASCII")
    fields, index = _parse_fields(lines[1:])
    return _request(
        method.decode("ascii"),
        target.decode("ascii"),
        version.decode("ascii"),
        fields,
        index,
        _lowered(fields),
    )


def _response(
    minor: str,
    status: str,
    reason: str | None,
    fields: tuple[tuple[str, str], ...],
    index: dict[str, list[str]],
    names: tuple[str, ...],
) -> ResponseHead:
    framing = _framing(index)
    tokens = _connection_tokens(index) if "connection" in index else set()
    keep_alive = ("close" not in tokens) if minor == "1" else ("keep-alive" in tokens)
    return ResponseHead(
        version=f"HTTP/1.{minor}",
        status=int(status),
        reason=reason or "",
        headers=fields,
        content_length=framing.content_length,
        chunked=framing.chunked,
        keep_alive=keep_alive,
        _index=index,
        names=names,
    )


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse an upstream response head or raise ``HttpError`` (the proxy answers 502 then)."""
    if len(head) <= MAX_HEAD_BYTES and head.endswith(b"\r\n\r\n"):
        text = head.decode("latin-1")
        line_end = text.find("\r\n")
        line = _STATUS_LINE_TEXT.fullmatch(text, 0, line_end)
        if line is not None:
            parsed = _fast_fields(text, line_end + 2)
            if parsed is not None:
                return _response(line.group(1), line.group(2), line.group(3), *parsed)
    return _parse_response_head_lines(head)


def _parse_response_head_lines(head: bytes) -> ResponseHead:
    """The line-by-line reading of a response head (the reference; names the problem)."""
    lines = _split_lines(head)
    matched = _STATUS_LINE.match(lines[0])
    if matched is None:
        raise HttpError(502, "the apiserver's status line is malformed")
    fields, index = _parse_fields(lines[1:])
    reason = matched.group(3)
    return _response(
        matched.group(1).decode(),
        matched.group(2).decode(),
        reason.decode("latin-1") if reason is not None else None,
        fields,
        index,
        _lowered(fields),
    )


class ChunkedScanner:
    """Incremental reader of a chunked body (RFC 9112 §7.1).

    ``feed(data)`` consumes bytes and returns how many of them belong to the body (the rest, if the
    body ended inside ``data``, is the next message). ``done`` tells whether the last chunk and the
    trailer section were seen. With ``decode=True`` the chunk payload is collected; ``take()`` hands
    it back. ``limit`` bounds the decoded size (``HttpError(413)`` beyond it). Strict: CRLF only,
    hex sizes of at most 15 digits, a bounded chunk-size line and trailer section.
    """

    def __init__(self, *, decode: bool = False, limit: int | None = None) -> None:
        self._decode = decode
        self._limit = limit
        self._total = 0
        self._state = "size"  # size | data | data-crlf | trailer
        self._line = bytearray()
        self._remaining = 0
        self._trailer = 0
        self._payload: list[bytes] = []
        self.done = False

    def take(self) -> bytes:
        out = b"".join(self._payload)
        self._payload.clear()
        return out

    def _line_end(self, data: bytes, pos: int) -> tuple[int, bytes | None]:
        """Accumulate a CRLF-ended line; returns (new position, the line or None if incomplete)."""
        end = data.find(b"\n", pos, pos + MAX_CHUNK_LINE + 1)
        if end < 0:
            self._line += data[pos : pos + MAX_CHUNK_LINE + 1]
            if len(self._line) > MAX_CHUNK_LINE:
                raise HttpError(400, "a chunk-size or trailer line is too long")
            return len(data), None
        if self._line:
            self._line += data[pos : end + 1]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = data[pos : end + 1]
        if len(line) > MAX_CHUNK_LINE:
            raise HttpError(400, "a chunk-size or trailer line is too long")
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise HttpError(400, "a chunk line does not end in CRLF")
        return end + 1, line[:-2]

    def feed(self, data: bytes) -> int:
        view = data
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            if self._state == "size":
                pos, line = self._line_end(view, pos)
                if line is None:
                    break
                matched = _CHUNK_SIZE.match(line)
                if matched is None:
                    raise HttpError(400, "a chunk size is not a hexadecimal number")
                size = int(matched.group(1), 16)
                self._total += size
                if self._limit is not None and self._total > self._limit:
                    raise HttpError(413, f"the body is larger than {self._limit} bytes")
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "data"
            elif self._state == "data":
                take = min(self._remaining, n - pos)
                if self._decode:
                    self._payload.append(view[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data-crlf"
            elif self._state == "data-crlf":
                pos, line = self._line_end(view, pos)
                if line is None:
                    break
                if line:
                    raise HttpError(400, "a chunk's data is not followed by CRLF")
                self._state = "size"
            else:  # trailer
                pos, line = self._line_end(view, pos)
                if line is None:
                    break
                if not line:
                    self.done = True
                    break
                self._trailer += len(line) + 2
                if self._trailer > MAX_TRAILER_BYTES:
                    raise HttpError(431, "the chunked trailer section is too large")
                if line[:1] in (b" ", b"\t") or b":" not in line or not _TOKEN.match(line.split(b":")[0]):
                    raise HttpError(400, "a trailer line is malformed")
        return pos
