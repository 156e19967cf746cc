"""The per-message sender check: a frame is accepted only with the admitted sender's kernel credentials."""

from __future__ import annotations

import os
import socket

import pytest

from kubeshield.custody.peer import ForeignSender, read_frame
from kubeshield.keys._custody_protocol import Op, ProtocolError, Request, decode_request, encode_request

ME = (os.getpid(), os.getuid(), os.getgid())


def _pair(*, passcred: bool) -> tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if passcred:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    server.settimeout(5)
    return server, client


def test_a_frame_with_the_senders_credentials_is_read() -> None:
    server, client = _pair(passcred=True)
    with server, client:
        frame = encode_request(Request(Op.WRAP, (b"x" * 1000, b"aad")))
        for i in range(0, len(frame), 7):  # many small writes: every chunk is checked
            client.sendall(frame[i : i + 7])
        body = read_frame(server, sender=ME)
        assert body is not None and decode_request(body).fields == (b"x" * 1000, b"aad")
        client.close()
        assert read_frame(server, sender=ME) is None  # clean end of stream


def test_a_frame_without_kernel_credentials_is_refused() -> None:
    """Fail closed where no credentials arrive (no SO_PASSCRED; Gramine passes no ancillary data)."""
    server, client = _pair(passcred=False)
    with server, client:
        client.sendall(encode_request(Request(Op.KEY_ID)))
        with pytest.raises(ForeignSender) as info:
            read_frame(server, sender=ME)
        assert info.value.creds is None


def test_a_frame_from_another_sender_is_refused() -> None:
    server, client = _pair(passcred=True)
    with server, client:
        client.sendall(encode_request(Request(Op.KEY_ID)))
        with pytest.raises(ForeignSender) as info:
            read_frame(server, sender=(ME[0] + 1, ME[1], ME[2]))
        assert info.value.creds == ME


def test_a_frame_written_half_by_a_child_is_refused() -> None:
    server, client = _pair(passcred=True)
    with server, client:
        frame = encode_request(Request(Op.WRAP, (b"dek", b"")))
        client.sendall(frame[:5])
        child = os.fork()
        if child == 0:  # pragma: no cover - the child writes the rest of the frame
            client.sendall(frame[5:])
            os._exit(0)
        os.waitpid(child, 0)
        with pytest.raises(ForeignSender) as info:
            read_frame(server, sender=ME)
        assert info.value.creds is not None and info.value.creds[0] == child


def test_an_oversized_header_is_refused_before_its_body() -> None:
    server, client = _pair(passcred=True)
    with server, client:
        client.sendall(b"\xff\xff\xff\xff")
        with pytest.raises(ProtocolError):
            read_frame(server, sender=ME)
