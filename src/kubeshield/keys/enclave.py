"""The ``enclave`` key backend: the plugin side of the custody process.

The KEK never enters this process. Every operation is one request/response on the custody unix socket
(:mod:`kubeshield.keys._custody_protocol`). A new connection first reads the custody process's greeting
(sent once it has measured and admitted us; a refusal instead raises at once, e.g. ``PolicyDenied``),
and only then sends requests. One connection is kept and reused under a lock; any transport failure
(the custody process died, a truncated or malformed answer, a timeout) closes it and raises
``BackendUnavailable`` or ``BackendTimeout``, and the next call reconnects. Any other exception that
interrupts a call (``KeyboardInterrupt``, a signal handler's) also closes the connection, then
propagates. Because a broken or interrupted connection is never reused, a late answer can never be
taken for the answer of a later request: a caller gets the plaintext of a complete ``OK`` frame for
its own request, or an error.

Status mapping: PERMISSION_DENIED -> ``PolicyDenied``; INVALID_CIPHERTEXT -> ``InvalidCiphertext``;
KEY_NOT_FOUND -> ``KeyNotFound``; INVALID_REQUEST -> ``InvalidRequest``; UNAVAILABLE, INTERNAL and
PROTOCOL_ERROR -> ``BackendUnavailable``.
"""

from __future__ import annotations

import socket as _socket_mod
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from kubeshield.config.settings import CustodySettings
from kubeshield.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    PolicyDenied,
)
from kubeshield.keys._custody_protocol import (
    Op,
    ProtocolError,
    Request,
    Response,
    Status,
    decode_response,
    encode_request,
    read_body,
    read_greeting,
)
from kubeshield.keys.base import Health, Wrapped

__all__ = ["EnclaveKeyBackend"]


class EnclaveKeyBackend:
    """A :class:`~kubeshield.keys.base.KeyBackend` whose KEKs live in the custody process."""

    name = "enclave"

    def __init__(self, *, socket: str, timeout: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        if not socket:
            raise ValueError("socket must be a path")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._path = socket
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: _socket_mod.socket | None = None
        self._key_id: str | None = None

    @classmethod
    def from_settings(cls, settings: CustodySettings) -> EnclaveKeyBackend:
        """The backend for ``keys.backend: custody``: the custody process at ``keys.custody.socket``."""
        return cls(socket=str(settings.socket))

    # ---- transport -------------------------------------------------------------------------------
    def _connect(self) -> _socket_mod.socket:
        """Connect and read the greeting; a refusal sent instead of it raises its mapped error.

        The new socket is closed on every way out but a successful return, including exceptions that
        are not ours (``KeyboardInterrupt`` while waiting for the greeting).
        """
        sock = _socket_mod.socket(_socket_mod.AF_UNIX, _socket_mod.SOCK_STREAM)
        try:
            self._greet(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _greet(self, sock: _socket_mod.socket) -> None:
        sock.settimeout(self._timeout)
        try:
            sock.connect(self._path)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot reach the custody process at {self._path}: {exc.strerror}"
            ) from None
        try:
            refusal = read_greeting(sock)
        except TimeoutError:
            raise BackendTimeout(
                f"the custody process at {self._path} sent no greeting within {self._timeout:g}s "
                "(a custody process older than this plugin speaks protocol 1: upgrade both)"
            ) from None
        except (OSError, ConnectionError, ProtocolError):
            raise BackendUnavailable(
                "the custody process closed the connection before its greeting"
            ) from None
        if refusal is not None:
            self._raise_for(refusal)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _call(self, op: Op, *fields: bytes) -> tuple[bytes, ...]:
        frame = encode_request(Request(op, tuple(fields)))
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(frame)
                body = read_body(self._sock)
                if body is None:
                    raise ConnectionError("closed")
                response = decode_response(body)
            except TimeoutError:
                self._drop()
                raise BackendTimeout("the custody process did not answer in time") from None
            except (OSError, ConnectionError, ProtocolError):
                self._drop()
                raise BackendUnavailable("the connection to the custody process broke") from None
            except BaseException:
                # interrupted (KeyboardInterrupt, a signal handler's exception, a test timeout) between
                # sending the request and reading all of its answer: that answer may still arrive, so
                # the connection must not be reused (it would be read as the answer of the next request)
                self._drop()
                raise
            if response.status != Status.OK:
                self._drop()  # the server closes after an error too; start fresh next time
        if response.status == Status.OK:
            return response.fields
        self._raise_for(response)

    @staticmethod
    def _raise_for(response: Response) -> NoReturn:
        status, out = response.status, response.fields
        if status == Status.PERMISSION_DENIED:
            raise PolicyDenied(
                "the custody process refused this caller (see its log for the measured identity)"
            )
        if status == Status.INVALID_CIPHERTEXT:
            raise InvalidCiphertext()
        if status == Status.KEY_NOT_FOUND:
            raise KeyNotFound("unknown key_id")
        if status == Status.INVALID_REQUEST:
            message = out[0].decode("utf-8", "replace")[:200] if out else "invalid request"
            raise InvalidRequest(message)
        detail = out[0].decode("utf-8", "replace")[:200] if len(out) == 1 else ""
        raise BackendUnavailable(
            f"the custody process answered {status.name}" + (f": {detail}" if detail else "")
        )

    @staticmethod
    def _expect(fields: tuple[bytes, ...], n: int) -> tuple[bytes, ...]:
        if len(fields) != n:
            raise BackendUnavailable("the custody process sent a malformed answer")
        return fields

    # ---- KeyBackend ------------------------------------------------------------------------------
    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        if not isinstance(plaintext, bytes) or not isinstance(aad, bytes):
            raise TypeError("plaintext and aad must be bytes")
        out = self._call(Op.WRAP, plaintext, aad)
        if len(out) < 2 or len(out) % 2:
            raise BackendUnavailable("the custody process sent a malformed answer")
        try:
            annotations = {out[i].decode(): out[i + 1] for i in range(2, len(out), 2)}
            key_id = out[1].decode("ascii")
        except UnicodeDecodeError:
            raise BackendUnavailable("the custody process sent a malformed answer") from None
        self._key_id = key_id
        return Wrapped(ciphertext=out[0], key_id=key_id, annotations=annotations)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        if not isinstance(wrapped, Wrapped) or not isinstance(aad, bytes):
            raise TypeError("wrapped must be a Wrapped and aad bytes")
        ann: list[bytes] = []
        for k, v in wrapped.annotations.items():
            ann += [k.encode(), bytes(v)]
        (plaintext,) = self._expect(
            self._call(Op.UNWRAP, wrapped.ciphertext, wrapped.key_id.encode(), aad, *ann), 1
        )
        return plaintext

    def _fetch_key_id(self) -> str:
        (raw,) = self._expect(self._call(Op.KEY_ID), 1)
        self._key_id = raw.decode("ascii", "replace")
        return self._key_id

    def key_id(self) -> str:
        """The primary key_id, as last seen (fetched once; :meth:`refresh` updates it)."""
        return self._key_id if self._key_id is not None else self._fetch_key_id()

    def rotate(self) -> str:
        (raw,) = self._expect(self._call(Op.ROTATE), 1)
        self._key_id = raw.decode("ascii", "replace")
        return self._key_id

    def refresh(self) -> bool:
        """Ask the custody process for its current key_id; True when it changed since we last saw it."""
        before = self._key_id
        return self._fetch_key_id() != before and before is not None

    def check_health(self) -> Health:
        start = self._clock()
        try:
            ok, key_id, detail = self._expect(self._call(Op.HEALTH), 3)
        except Exception as exc:
            return Health(False, None, type(exc).__name__, start, self._clock() - start)
        return Health(
            ok == b"1",
            key_id.decode("ascii", "replace") or None,
            detail.decode("utf-8", "replace")[:200],
            start,
            self._clock() - start,
        )

    def close(self) -> None:
        with self._lock:
            self._drop()
