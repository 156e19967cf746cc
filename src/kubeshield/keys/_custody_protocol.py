"""The wire protocol between the custody process and the ``enclave`` key backend.

Both sides import this module, so it lives in ``kubeshield.keys`` (layer 1). It is deliberately tiny:
five operations, no general-purpose RPC surface, and one strict decoder.

A connection (version 2)::

    server -> client   greeting: a response frame, status OK, one field b"kubeshield-custody"
                       (or a refusal instead: PERMISSION_DENIED, UNAVAILABLE or PROTOCOL_ERROR with a
                       short message, and the server closes the connection)
    client -> server   request      } repeated; one answer per request, in order
    server -> client   response     }

The client sends nothing before it has read the greeting. The server measures the caller before it
sends the greeting and refuses a connection whose first bytes arrived before that: those bytes may
have been written by whatever the connecting process ran before an ``execve`` (docs/custody.md).
Version 1 had no greeting; a version-1 frame is refused ("unsupported protocol version").

Byte layout (every integer big-endian)::

    frame    = length(u32) || body                  length = len(body), 3 <= length <= MAX_BODY
    request  = version(u8) || op(u8)     || count(u8) || field * count
    response = version(u8) || status(u8) || count(u8) || field * count
    field    = flen(u32) || fbytes(flen)

``version`` is :data:`VERSION` (2). A body must be consumed exactly by its fields: trailing bytes, a
field running past the end, an unknown version, op or status, a field count above :data:`MAX_FIELDS`
or a frame longer than :data:`MAX_BODY` (64 KiB) is a protocol error. The server answers a protocol
error with ``status = PROTOCOL_ERROR`` (no fields) and closes the connection; the client treats any
protocol error as a broken connection.

Requests and the fields they carry:

=========  ==================================================  =====================================
op         request fields                                      OK response fields
=========  ==================================================  =====================================
WRAP 1     plaintext, aad                                      ciphertext, key_id, (ann_key, ann_val)*
UNWRAP 2   ciphertext, key_id, aad, (ann_key, ann_val)*        plaintext
KEY_ID 3   (none)                                              key_id
HEALTH 4   (none)                                              ok (b"1"/b"0"), key_id, detail
ROTATE 5   (none)                                              key_id
=========  ==================================================  =====================================

A response with any other status carries exactly one field: a short, secret-free message.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "GREETING",
    "HEADER_SIZE",
    "MAX_BODY",
    "MAX_FIELDS",
    "VERSION",
    "Op",
    "ProtocolError",
    "Request",
    "Response",
    "Status",
    "decode_body_length",
    "decode_request",
    "decode_response",
    "encode_greeting",
    "encode_request",
    "encode_response",
    "read_body",
    "read_greeting",
]

VERSION = 2
GREETING = b"kubeshield-custody"
MAX_BODY = 64 * 1024
MAX_FIELDS = 64
HEADER_SIZE = 4
_LEN = struct.Struct(">I")


class Op(enum.IntEnum):
    """The five operations the custody process offers."""

    WRAP = 1
    UNWRAP = 2
    KEY_ID = 3
    HEALTH = 4
    ROTATE = 5


class Status(enum.IntEnum):
    """Response status. Each maps to one kubeshield error on the client side."""

    OK = 0
    PROTOCOL_ERROR = 1
    PERMISSION_DENIED = 2
    INVALID_CIPHERTEXT = 3
    KEY_NOT_FOUND = 4
    UNAVAILABLE = 5
    INVALID_REQUEST = 6
    INTERNAL = 7


class ProtocolError(Exception):
    """A frame is malformed or oversized. The connection must be closed."""


@dataclass(frozen=True, slots=True)
class Request:
    op: Op
    fields: tuple[bytes, ...] = ()

    def __repr__(self) -> str:  # fields may hold plaintext: never print them
        return f"Request(op={self.op.name}, fields=<{len(self.fields)}>)"


@dataclass(frozen=True, slots=True)
class Response:
    status: Status
    fields: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"Response(status={self.status.name}, fields=<{len(self.fields)}>)"


def _encode(version: int, code: int, fields: tuple[bytes, ...]) -> bytes:
    if len(fields) > MAX_FIELDS:
        raise ProtocolError("too many fields")
    parts = [bytes((version, code, len(fields)))]
    for f in fields:
        if not isinstance(f, bytes | bytearray | memoryview):
            raise TypeError("protocol fields must be bytes")
        parts.append(_LEN.pack(len(f)))
        parts.append(bytes(f))
    body = b"".join(parts)
    if len(body) > MAX_BODY:
        raise ProtocolError("frame too large")
    return _LEN.pack(len(body)) + body


def encode_request(request: Request) -> bytes:
    """``length || version || op || count || fields`` (see the module docstring)."""
    return _encode(VERSION, int(request.op), request.fields)


def encode_response(response: Response) -> bytes:
    """``length || version || status || count || fields`` (see the module docstring)."""
    return _encode(VERSION, int(response.status), response.fields)


def decode_body_length(header: bytes) -> int:
    """Validate a 4-byte frame header and return the body length it announces."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError("truncated header")
    length: int = _LEN.unpack(header)[0]
    if length < 3:
        raise ProtocolError("frame too short")
    if length > MAX_BODY:
        raise ProtocolError("frame too large")
    return length


def _decode_body(body: bytes) -> tuple[int, tuple[bytes, ...]]:
    if len(body) < 3 or len(body) > MAX_BODY:
        raise ProtocolError("bad body length")
    if body[0] != VERSION:
        raise ProtocolError("unsupported protocol version")
    code, count = body[1], body[2]
    if count > MAX_FIELDS:
        raise ProtocolError("too many fields")
    fields: list[bytes] = []
    pos = 3
    view = memoryview(body)
    for _ in range(count):
        if pos + 4 > len(body):
            raise ProtocolError("truncated field header")
        (flen,) = _LEN.unpack_from(body, pos)
        pos += 4
        if flen > len(body) - pos:
            raise ProtocolError("field runs past the end of the frame")
        fields.append(bytes(view[pos : pos + flen]))
        pos += flen
    if pos != len(body):
        raise ProtocolError("trailing bytes after the last field")
    return code, tuple(fields)


def decode_request(body: bytes) -> Request:
    """Decode a request body (the bytes after the length header). Raises only ``ProtocolError``."""
    code, fields = _decode_body(body)
    try:
        op = Op(code)
    except ValueError:
        raise ProtocolError("unknown op") from None
    return Request(op=op, fields=fields)


def decode_response(body: bytes) -> Response:
    """Decode a response body (the bytes after the length header). Raises only ``ProtocolError``."""
    code, fields = _decode_body(body)
    try:
        status = Status(code)
    except ValueError:
        raise ProtocolError("unknown status") from None
    return Response(status=status, fields=fields)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionError("connection closed in the middle of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_body(sock: socket.socket) -> bytes | None:
    """Read one frame and return its body; ``None`` on a clean end of stream before a frame.

    Raises ``ProtocolError`` for a bad header (before reading an oversized body) and
    ``ConnectionError`` when the peer closes in the middle of a frame.
    """
    first = sock.recv(HEADER_SIZE)
    if not first:
        return None
    header = first if len(first) == HEADER_SIZE else first + _recv_exact(sock, HEADER_SIZE - len(first))
    length = decode_body_length(header)
    return _recv_exact(sock, length)


def encode_greeting() -> bytes:
    """The server's first frame on a connection it admits: status OK, one field :data:`GREETING`."""
    return encode_response(Response(Status.OK, (GREETING,)))


def read_greeting(sock: socket.socket) -> Response | None:
    """Read the server's first frame: ``None`` for the greeting, else the refusal it sent instead.

    Raises ``ProtocolError`` for a frame that is neither (an OK frame with other fields, a version-1
    server's frame) and ``ConnectionError`` when the server closes before a whole frame.
    """
    body = read_body(sock)
    if body is None:
        raise ConnectionError("the custody process closed the connection before its greeting")
    response = decode_response(body)
    if response.status == Status.OK:
        if response.fields != (GREETING,):
            raise ProtocolError("the first frame is not a greeting")
        return None
    return response
