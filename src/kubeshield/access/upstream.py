"""The proxy's side towards the apiserver: TLS with the agent's credential, and a keep-alive pool.

``credential()`` is called for every new connection, so a renewed certificate is used from then on;
the TLS context is rebuilt only when it returns a different ``ClusterCredential``. Idle connections
made with an older credential are dropped rather than reused.

The client key never touches a disk: Python's ``ssl`` loads a certificate chain only from a path, so
the key and certificate go into an anonymous ``memfd_create`` file, loaded through
``/proc/self/fd/N`` and closed at once (the memory is freed with the last descriptor). The server
certificate is checked against ``ca_pem`` (the system store when None) and the host name (or
``tls_server_name``). A bearer-token credential sets ``Authorization`` on each forwarded request.

Failures become ``UpstreamError`` with the HTTP status the proxy answers kubectl with and a message
that names the problem and the server, never a key, a token or OpenSSL's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from kubeshield.access.credential import ClusterCredential

__all__ = ["Upstream", "UpstreamConnection", "UpstreamError", "load_chain_from_memory"]

_READ_LIMIT = 256 * 1024
log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The apiserver could not be reached or trusted; ``status`` is what the proxy answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def load_chain_from_memory(context: ssl.SSLContext, *, cert_pem: bytes, key_pem: bytes) -> None:
    """``context.load_cert_chain`` from PEM bytes through an anonymous memory file (never a disk)."""
    fd = os.memfd_create("kubeshield-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem.rstrip(b"\n") + b"\n" + cert_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@dataclass
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    credential: ClusterCredential
    host: str
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    @property
    def usable(self) -> bool:
        return not self.writer.transport.is_closing() and not self.reader.at_eof()


class Upstream:
    """Connections to one apiserver; ``acquire`` reuses an idle one when it can."""

    def __init__(
        self,
        *,
        credential: Callable[[], ClusterCredential],
        connect_timeout: float = 15.0,
        max_idle: int = 32,
        idle_timeout: float = 30.0,
    ) -> None:
        self._credential = credential
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: list[UpstreamConnection] = []
        self._ctx: ssl.SSLContext | None = None
        self._ctx_for: ClusterCredential | None = None
        self._closed = False

    def _context(self, cred: ClusterCredential) -> ssl.SSLContext:
        if self._ctx is not None and self._ctx_for is cred:
            return self._ctx
        if cred.ca_pem is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                ctx.load_verify_locations(cadata=cred.ca_pem.decode("ascii"))
            except (ssl.SSLError, ValueError, UnicodeDecodeError):
                raise UpstreamError(
                    502, f"context {cred.context!r}: the CA bundle of the apiserver is not valid PEM"
                ) from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["http/1.1"])
        if cred.client_cert_pem is not None and cred.client_key_pem is not None:
            try:
                load_chain_from_memory(ctx, cert_pem=cred.client_cert_pem, key_pem=cred.client_key_pem)
            except ssl.SSLError:
                raise UpstreamError(
                    502, f"context {cred.context!r}: the client certificate or key cannot be loaded"
                ) from None
        self._ctx, self._ctx_for = ctx, cred
        return ctx

    def current(self) -> ClusterCredential:
        """``credential()``; an ``UpstreamError`` it raises passes (the agent's refusal, e.g. locked),
        anything else becomes a 503 that names no detail (it could hold a secret)."""
        try:
            return self._credential()
        except UpstreamError:
            raise
        except Exception as exc:
            log.error("kubeshield proxy: the credential source failed (%s)", type(exc).__name__)
            raise UpstreamError(503, "the agent could not provide this context's credential") from None

    async def acquire(self) -> UpstreamConnection:
        if self._closed:
            raise UpstreamError(503, "the proxy is stopping")
        cred = self.current()
        fresh_after = time.monotonic() - self._idle_timeout
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and conn.credential is cred and conn.idle_since > fresh_after:
                conn.reused = True
                return conn
            conn.close()
        return await self.connect(cred)

    async def connect(self, cred: ClusterCredential | None = None) -> UpstreamConnection:
        """A new connection (never pooled until ``release``d)."""
        cred = cred or self.current()
        if cred.expired():
            raise UpstreamError(
                401,
                f"the credential of context {cred.context!r} has expired: log in again "
                f"(kubeshield access login, or kubeshield access unlock)",
            )
        ctx = self._context(cred)
        parts = urlsplit(cred.server)
        host = parts.hostname or ""
        port = parts.port or 443
        server_name = cred.tls_server_name or host
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=server_name, limit=_READ_LIMIT
                )
        except ssl.SSLCertVerificationError:
            raise UpstreamError(
                502,
                f"the apiserver's certificate is not trusted (context {cred.context!r}, server "
                f"{cred.server}): it is not signed by the context's CA or does not name {server_name}",
            ) from None
        except ssl.SSLError:
            raise UpstreamError(
                502, f"the TLS handshake with the apiserver failed (context {cred.context!r}, {cred.server})"
            ) from None
        except TimeoutError:
            raise UpstreamError(
                504, f"the apiserver did not answer in time (context {cred.context!r}, {cred.server})"
            ) from None
        except OSError as exc:
            raise UpstreamError(
                502,
                f"the apiserver cannot be reached (context {cred.context!r}, {cred.server}): "
                f"{exc.strerror or type(exc).__name__}",
            ) from None
        return UpstreamConnection(reader, writer, cred, parts.netloc)

    def release(self, conn: UpstreamConnection) -> None:
        """Give a connection whose response was read to the end back to the pool."""
        if self._closed or not conn.usable or len(self._idle) >= self._max_idle or conn.reader._buffer:  # type: ignore[attr-defined]
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def authorization(self, conn: UpstreamConnection) -> bytes:
        """The header line the credential adds (a token), or b"" for a client certificate."""
        token = conn.credential.token
        if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
            raise UpstreamError(
                502, f"context {conn.credential.context!r}: the token is not a valid header value"
            )
        return b"Authorization: Bearer " + token.encode("ascii") + b"\r\n" if token is not None else b""

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
        await asyncio.sleep(0)
