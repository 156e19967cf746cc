"""Reaching one service replica over mTLS: the relay's grpc.aio upstream and a plain synchronous client.

* :class:`AioUpstream` is what the relay uses: one long-lived grpc.aio HTTP/2 channel per replica (grpc
  reconnects with a backoff capped at ``max_reconnect_backoff_ms``; calls do not wait for a connection,
  so a dead replica fails fast). The channel is opened on first use, inside the event loop that serves
  the relay. Decrypt (v2 and v1) is forwarded as the bytes the relay received and its reply returned as
  the bytes the replica sent (``unary_unary(path, request_serializer=None, response_deserializer=None)``),
  after checking that those bytes parse as the reply message; Status and Encrypt replies are parsed and
  checked as kube-apiserver checks them (key_id, ciphertext and annotation limits).
  :meth:`AioUpstream.use_credentials` switches to new client credentials (the relay's certificate was
  renewed): new calls go over a new channel, the old channel is closed once its calls finish.
* :func:`failure_reason` says why a call to a replica failed, in the operator's terms: ``dns`` (the name
  does not resolve), ``refused`` (nothing listens), ``tls`` (handshake failed: unknown CA, name mismatch,
  expired), ``closed`` (the replica closed the connection in the handshake, typically because it refused
  our client certificate), ``timeout``, ``network``, ``denied`` (our identity is not on its allow-list),
  ``unhealthy`` (it answered, but its key backend is unhealthy), ``contract``, ``error``.

Failures raise the kubeshield error tree (:func:`kubeshield.kms.client.error_from_rpc`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, TypeVar

import grpc
import grpc.aio

from kubeshield.envelope.limits import validate_annotations, validate_encrypted_dek_source, validate_key_id
from kubeshield.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnavailable,
    ContractViolation,
    InvalidCiphertext,
    KeyNotFound,
)
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.client import V2_VERSIONS, error_from_rpc
from kubeshield.kms.service import EncryptReply, StatusReply

__all__ = ["AioUpstream", "channel_options", "encrypt_reply", "failure_reason", "status_reply"]

_T = TypeVar("_T")
_V2 = "/v2.KeyManagementService/"
_V1 = "/v1beta1.KeyManagementService/"
_OUR_METADATA = "kubeshield-"  # the only trailing metadata passed on (keys/identity.py)
_MAX_METADATA = 1024


def channel_options(*, server_name: str | None, max_reconnect_backoff_ms: int) -> list[tuple[str, Any]]:
    """The channel options of every upstream channel (fast reconnects, keepalive, optional SNI name)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 2_000),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


_MAX_DETAIL = 300
# Transport texts of the grpc library (grpc core), lower-cased, and what they mean.
_TRANSPORT = (
    (("errors resolving", "dns resolution failed", "domain name not found", "name or service not known"),
     "dns", "the name does not resolve (DNS)"),
    (("connection refused",), "refused", "connection refused: nothing listens on that address and port"),
    (("handshake failed", "certificate_verify_failed", "hostname verification", "ssl_error", "tls handshake"),
     "tls", "TLS handshake failed (unknown CA, name not in the replica's certificate, or expired)"),
    (("socket closed", "connection reset", "broken pipe", "end of tcp stream"), "closed",
     "the replica closed the connection (did it refuse our client certificate? check its --client-ca)"),
    (("no route to host", "network is unreachable", "host is unreachable"), "network",
     "the network cannot reach that address"),
)  # fmt: skip


def failure_reason(exc: BaseException) -> tuple[str, str]:
    """``(reason, explanation)`` for a failed call to a replica (the reasons are in the module docstring)."""
    text = str(exc)
    if isinstance(exc, BackendTimeout):
        return "timeout", "no answer within the deadline (hung, overloaded, or a network black hole)"
    if isinstance(exc, BackendAuthError):
        return "denied", "the replica refused our client identity (PERMISSION_DENIED: check its --allow)"
    if isinstance(exc, BackendUnavailable):
        low = text.lower()
        for needles, reason, meaning in _TRANSPORT:
            if any(n in low for n in needles):
                return reason, f"{meaning}: {text}"[:_MAX_DETAIL]
        return "unhealthy", f"the replica answered but is unavailable: {text}"[:_MAX_DETAIL]
    if isinstance(exc, ContractViolation):
        return "contract", f"the replica's reply breaks the KMS contract: {text}"[:_MAX_DETAIL]
    if isinstance(exc, (InvalidCiphertext, KeyNotFound)):
        return "refused-request", type(exc).__name__
    return "error", f"{type(exc).__name__}: {text}"[:_MAX_DETAIL]


def status_reply(reply: Any) -> StatusReply:
    """A replica's v2 StatusResponse judged as the apiserver does (ContractViolation, BackendUnavailable)."""
    if reply.version not in V2_VERSIONS:
        raise ContractViolation("replica Status version is not v2")
    if reply.healthz != "ok":
        raise BackendUnavailable("replica Status healthz is not ok")
    validate_key_id(reply.key_id)
    return StatusReply(version=reply.version, healthz=reply.healthz, key_id=reply.key_id)


def encrypt_reply(reply: Any) -> EncryptReply:
    """A replica's v2 EncryptResponse checked against the KMS v2 limits. Raises ContractViolation."""
    validate_encrypted_dek_source(reply.ciphertext)
    validate_key_id(reply.key_id)
    annotations = dict(reply.annotations)
    validate_annotations(annotations)
    return EncryptReply(ciphertext=reply.ciphertext, key_id=reply.key_id, annotations=annotations)


def _parse(message_type: Any, data: bytes, *, what: str) -> Any:
    try:
        return message_type.FromString(data)
    except Exception:  # google.protobuf.message.DecodeError and friends
        raise ContractViolation(f"replica {what} reply is not a valid protobuf message") from None


def _check_parses(message_type: Any, data: bytes, *, what: str) -> bytes:
    _parse(message_type, data, what=what)
    return data


class AioUpstream:
    """One replica over one reused grpc.aio mTLS channel, opened lazily in the running event loop."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials,
        server_name: str | None = None,
        max_reconnect_backoff_ms: int = 1000,
    ) -> None:
        self.name = target
        self._credentials = credentials
        self._options = channel_options(
            server_name=server_name, max_reconnect_backoff_ms=max_reconnect_backoff_ms
        )
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    async def use_credentials(self, credentials: grpc.ChannelCredentials, *, grace: float = 5.0) -> None:
        """New calls use ``credentials`` (a new channel); the old channel closes once its calls end."""
        old, self._channel = self._channel, None
        self._credentials = credentials
        self._calls = {}
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(grace), name=f"retire-{self.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _call(self, path: str) -> Any:
        """The raw (bytes in, bytes out) multicallable for ``path``; opens the channel on first use."""
        call = self._calls.get(path)
        if call is None:
            if self._channel is None:
                self._channel = grpc.aio.secure_channel(self.name, self._credentials, options=self._options)
            call = self._channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            self._calls[path] = call
        return call

    async def _forward(self, operation: str, path: str, request: bytes, timeout: float) -> bytes:
        try:
            reply: bytes = await self._call(path)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, operation=operation) from None
        return reply

    async def status(self, *, timeout: float) -> StatusReply:
        """Status, with the replica's ``kubeshield-*`` trailing metadata (its keyring's identity)."""
        call = self._call(_V2 + "Status")(b"", timeout=timeout)  # StatusRequest has no fields
        try:
            data: bytes = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, operation="Status") from None
        reply = status_reply(_parse(v2_pb2.StatusResponse, data, what="Status"))
        kept = tuple(
            (str(k), v)
            for k, v in (trailing or ())
            if str(k).startswith(_OUR_METADATA) and isinstance(v, str) and len(v) <= _MAX_METADATA
        )
        return dataclasses.replace(reply, metadata=kept)

    async def encrypt(self, plaintext: bytes, *, uid: str, timeout: float) -> EncryptReply:
        request = v2_pb2.EncryptRequest(plaintext=plaintext, uid=uid).SerializeToString()
        data = await self._forward("Encrypt", _V2 + "Encrypt", request, timeout)
        return encrypt_reply(_parse(v2_pb2.EncryptResponse, data, what="Encrypt"))

    async def decrypt(self, request: bytes, *, timeout: float) -> bytes:
        """Forward a serialized v2 DecryptRequest; the serialized DecryptResponse (checked to parse)."""
        data = await self._forward("Decrypt", _V2 + "Decrypt", request, timeout)
        return _check_parses(v2_pb2.DecryptResponse, data, what="Decrypt")

    async def v1_encrypt(self, plain: bytes, *, timeout: float) -> bytes:
        request = v1_pb2.EncryptRequest(version="v1beta1", plain=plain).SerializeToString()
        data = await self._forward("Encrypt", _V1 + "Encrypt", request, timeout)
        cipher: bytes = _parse(v1_pb2.EncryptResponse, data, what="v1 Encrypt").cipher
        return cipher

    async def v1_decrypt(self, request: bytes, *, timeout: float) -> bytes:
        """Forward a serialized v1beta1 DecryptRequest; the serialized DecryptResponse (checked to parse)."""
        data = await self._forward("Decrypt", _V1 + "Decrypt", request, timeout)
        return _check_parses(v1_pb2.DecryptResponse, data, what="v1 Decrypt")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._calls = {}
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
