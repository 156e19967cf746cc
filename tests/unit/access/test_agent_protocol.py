"""The agent's framing and message codec: round trips, and every malformed input is a ProtocolError."""

from __future__ import annotations

import datetime as dt
import json
import socket
import struct
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.access.agent_protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    credential_from_wire,
    credential_to_wire,
    decode_body,
    decode_length,
    encode_frame,
    recv_message,
    send_message,
)
from kubeshield.access.credential import ClusterCredential
from tests.support.access_agent import cert_credential, token_credential

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
messages = st.dictionaries(st.text(max_size=12), json_values, max_size=6).map(
    lambda d: {**d, "v": PROTOCOL_VERSION}
)


@given(messages)
def test_a_message_round_trips_through_a_frame(message: dict[str, Any]) -> None:
    frame = encode_frame(message)
    length = decode_length(frame[:4])
    assert length == len(frame) - 4
    assert decode_body(frame[4:]) == message


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_any_body_decodes_to_an_object_or_a_protocol_error(body: bytes) -> None:
    try:
        value = decode_body(body)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(value, dict) and value["v"] == PROTOCOL_VERSION


@given(st.integers(0, 2**32 - 1))
def test_a_header_is_refused_when_empty_or_over_the_cap(length: int) -> None:
    header = struct.pack(">I", length)
    if 0 < length <= MAX_MESSAGE_BYTES:
        assert decode_length(header) == length
    else:
        with pytest.raises(ProtocolError):
            decode_length(header)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"op": "status"}', "protocol version"),
        (b'{"v": 2, "op": "status"}', "protocol version"),
        (b'{"v": true, "op": "status"}', "protocol version"),
        (b'{"v": 1, "x": NaN}', "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    ],
)
def test_malformed_bodies_name_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_body(body)


def test_a_message_over_the_cap_is_refused_before_sending() -> None:
    with pytest.raises(ProtocolError, match="larger than"):
        encode_frame({"v": 1, "blob": "x" * MAX_MESSAGE_BYTES})


def test_frames_travel_over_a_real_socket_pair_in_pieces() -> None:
    a, b = socket.socketpair()
    try:
        message = {"v": 1, "op": "status", "text": "é" * 70000}  # larger than the socket buffer
        sender = threading.Thread(target=send_message, args=(a, message))
        sender.start()
        assert recv_message(b) == message
        sender.join(30)
        frame = encode_frame({"v": 1, "op": "lock"})
        for i in range(len(frame)):  # one byte at a time still reads one message
            a.sendall(frame[i : i + 1])
        assert recv_message(b) == {"v": 1, "op": "lock"}
        a.sendall(frame[:6])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError):
            recv_message(b)
    finally:
        a.close()
        b.close()


def test_a_clean_close_between_messages_is_none() -> None:
    a, b = socket.socketpair()
    try:
        a.close()
        assert recv_message(b) is None
    finally:
        b.close()


@pytest.mark.parametrize("make", [cert_credential, token_credential])
def test_a_credential_round_trips_through_its_wire_form(make: Any) -> None:
    original: ClusterCredential = make(
        expires_at=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC), subject="alice"
    )
    back = credential_from_wire(json.loads(json.dumps(credential_to_wire(original))))
    assert back == original
    assert back.client_key_pem == original.client_key_pem and back.token == original.token


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"server": "http://x"}, "must be https"),
        ({"token": "t"}, "exactly one"),
        ({"clientKey": None}, "needs both"),
        ({"ca": "***"}, "not valid base64"),
        ({"expires": "yesterday"}, "RFC 3339"),
        ({"expires": "2030-01-01T00:00:00"}, "timezone"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"context": ""}, "non-empty"),
    ],
)
def test_a_malformed_credential_names_the_field(change: dict[str, Any], reason: str) -> None:
    wire = credential_to_wire(cert_credential())
    wire.update(change)
    with pytest.raises(ProtocolError, match=reason) as caught:
        credential_from_wire(wire)
    assert "PRIVATE KEY" not in str(caught.value)
