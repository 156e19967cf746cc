"""The access agent's socket protocol: length-prefixed JSON requests and answers over a unix socket.

Wire format (one frame per message, in both directions)::

    +----------------------+-----------------------------------------------+
    | length: 4 bytes, BE  | body: ``length`` bytes of UTF-8 JSON (object) |
    +----------------------+-----------------------------------------------+

``length`` counts the body only, 1..:data:`MAX_MESSAGE_BYTES`; a header announcing more is refused
before any of the body is read. Each connection carries any number of request/answer pairs, strictly
in turn (the client waits for the answer before it sends the next request).

A request is ``{"v": 1, "op": "<name>", ...arguments}``; an answer is ``{"v": 1, "ok": true,
"result": <value>}`` or ``{"v": 1, "ok": false, "error": {"type": "<name>", "message": "<text>"}}``.
Error types: ``protocol`` (malformed frame or JSON, unknown op, wrong argument), ``refused`` (the caller
is not allowed), ``not-found`` (no such context, key handle or proxy), ``expired``, ``locked``,
``invalid`` (the request is understood but refused, e.g. a certificate that does not match its key),
``unavailable`` (a part of the agent is missing, e.g. the proxy), ``internal`` (a fixed message; the
agent logs the cause). An error message never holds a credential.

Bytes (PEM certificates and keys, CSRs) travel as base64 text (:func:`b64`/:func:`unb64`); times as
RFC 3339 UTC text. Ops and their arguments (``AgentClient`` in ``agent_client`` wraps each one):

=======================  ==============================================  ================================
op                       arguments                                       result
=======================  ==============================================  ================================
``status``               -                                               agent facts (pid, uid, contexts,
                                                                         proxies, store, hardening)
``add``                  ``credential`` (:func:`credential_to_wire`)     null
``contexts``             -                                               list of {context, server, kind,
                                                                         expires, subject, source, proxy}
``remove``               ``context``                                     null
``lock``                 -                                               null (every credential dropped)
``unlock``               ``passphrase`` (b64; absent: the agent's key)   {"loaded": [context...]}
``new_key``              -                                               {"handle", "csr"}
``install_certificate``  ``handle`` ``cert`` ``clusters`` ``subject``    {"contexts": [...]}
``exec_credential``      ``context``, ``proxy`` (bool), ``listen``       ExecCredential ``status`` object
``start_proxy``          ``context``, ``listen`` ("127.0.0.1:0")         {"url", "ca", "expires"}
``stop_proxy``           ``context``                                     null
=======================  ==============================================  ================================
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubeshield.access.credential import ClusterCredential, ClusterEndpoint
from kubeshield.errors import InvalidRequest

__all__ = [
    "ERROR_TYPES",
    "HEADER",
    "MAX_MESSAGE_BYTES",
    "OPS",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "b64",
    "credential_from_wire",
    "credential_to_wire",
    "decode_body",
    "decode_length",
    "encode_frame",
    "endpoint_from_wire",
    "endpoint_to_wire",
    "format_time",
    "parse_time",
    "recv_message",
    "send_message",
    "unb64",
]

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1024 * 1024
HEADER = struct.Struct(">I")
OPS = frozenset(
    {
        "status",
        "add",
        "contexts",
        "remove",
        "lock",
        "unlock",
        "new_key",
        "install_certificate",
        "exec_credential",
        "start_proxy",
        "stop_proxy",
    }
)
ERROR_TYPES = frozenset(
    {"protocol", "refused", "not-found", "expired", "locked", "invalid", "unavailable", "internal"}
)


class ProtocolError(InvalidRequest):
    """A frame or message that does not follow the protocol. The message names what is wrong."""


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame: the 4-byte length and the compact JSON of ``message``. Too large: ``ProtocolError``."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")
    return HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    """The body length a 4-byte header announces; refused when 0 or above the limit."""
    if len(header) != HEADER.size:
        raise ProtocolError("truncated frame header")
    (length,) = HEADER.unpack(header)
    if length == 0:
        raise ProtocolError("empty message")
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {length} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")
    return int(length)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object a frame's body holds. Anything else (not UTF-8, not JSON, not an object, another
    protocol version) is a ``ProtocolError`` naming the problem, never another exception."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("message is not a JSON object")
    version = value.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this agent speaks {PROTOCOL_VERSION})"
        )
    return value


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        data = sock.recv(min(remaining, 1 << 16))
        if not data:
            if not chunks and remaining == n:
                return None
            raise ConnectionError("the connection closed in the middle of a message")
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def send_message(sock: socket.socket, message: Mapping[str, Any]) -> None:
    """Write one message on a blocking socket."""
    sock.sendall(encode_frame(message))


def recv_message(sock: socket.socket) -> dict[str, Any] | None:
    """Read one message from a blocking socket; ``None`` when the peer closed cleanly between messages."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exact(sock, decode_length(header))
    if body is None:  # pragma: no cover - only the first read can see a clean end
        raise ConnectionError("the connection closed in the middle of a message")
    return decode_body(body)


# --- values ---------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: object, *, field: str) -> bytes:
    """Bytes from a base64 text field; anything else is a ``ProtocolError`` naming ``field``."""
    if not isinstance(value, str):
        raise ProtocolError(f"{field}: expected base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ProtocolError(f"{field}: not valid base64") from None


def format_time(when: datetime | None) -> str | None:
    """RFC 3339 UTC with a ``Z``, second precision (what client-go parses), or None."""
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, *, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{field}: expected RFC 3339 text")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"{field}: not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ProtocolError(f"{field}: the time needs a timezone")
    return parsed.astimezone(UTC)


def _opt_bytes(value: object, *, field: str) -> bytes | None:
    return None if value is None else unb64(value, field=field)


def _opt_str(value: object, *, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(f"{field}: expected text")


def _req_str(value: object, *, field: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise ProtocolError(f"{field}: expected non-empty text")


def credential_to_wire(credential: ClusterCredential) -> dict[str, Any]:
    """The JSON form of a credential (holds its secret: only ever sent over the agent socket)."""

    def opt(data: bytes | None) -> str | None:
        return None if data is None else b64(data)

    return {
        "context": credential.context,
        "server": credential.server,
        "ca": opt(credential.ca_pem),
        "tlsServerName": credential.tls_server_name,
        "clientCertificate": opt(credential.client_cert_pem),
        "clientKey": opt(credential.client_key_pem),
        "token": credential.token,
        "expires": format_time(credential.expires_at),
        "subject": credential.subject,
    }


def credential_from_wire(value: object, *, field: str = "credential") -> ClusterCredential:
    """The credential a JSON object describes; a malformed one is a ``ProtocolError`` naming the field."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{field}: expected an object")
    known = {"context", "server", "ca", "tlsServerName", "clientCertificate", "clientKey", "token"}
    known |= {"expires", "subject"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ProtocolError(f"{field}: unknown field {unknown[0]!r}")
    try:
        return ClusterCredential(
            context=_req_str(value.get("context"), field=f"{field}.context"),
            server=_req_str(value.get("server"), field=f"{field}.server"),
            ca_pem=_opt_bytes(value.get("ca"), field=f"{field}.ca"),
            tls_server_name=_opt_str(value.get("tlsServerName"), field=f"{field}.tlsServerName"),
            client_cert_pem=_opt_bytes(value.get("clientCertificate"), field=f"{field}.clientCertificate"),
            client_key_pem=_opt_bytes(value.get("clientKey"), field=f"{field}.clientKey"),
            token=_opt_str(value.get("token"), field=f"{field}.token"),
            expires_at=parse_time(value.get("expires"), field=f"{field}.expires"),
            subject=_opt_str(value.get("subject"), field=f"{field}.subject"),
        )
    except ValueError as exc:  # ClusterCredential's own checks name the context, never a secret
        raise ProtocolError(f"{field}: {exc}") from None


def endpoint_to_wire(endpoint: ClusterEndpoint) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "server": endpoint.server,
        "ca": None if endpoint.ca_pem is None else b64(endpoint.ca_pem),
        "tlsServerName": endpoint.tls_server_name,
    }


def endpoint_from_wire(value: object, *, field: str) -> ClusterEndpoint:
    if not isinstance(value, dict):
        raise ProtocolError(f"{field}: expected an object")
    return ClusterEndpoint(
        name=_req_str(value.get("name"), field=f"{field}.name"),
        server=_req_str(value.get("server"), field=f"{field}.server"),
        ca_pem=_opt_bytes(value.get("ca"), field=f"{field}.ca"),
        tls_server_name=_opt_str(value.get("tlsServerName"), field=f"{field}.tlsServerName"),
    )
