"""``LocalProxy``: kubectl's https endpoint on loopback, forwarding to the apiserver with the agent's
credential, so the client key or token never reaches kubectl.

    proxy = LocalProxy(credential=lambda: cred, bearer=secret, serving_cert_pem=..., serving_key_pem=...)
    host, port = await proxy.start()          # 127.0.0.1, a free port
    ... kubectl --server proxy.url --token <secret> --certificate-authority <local CA> ...
    await proxy.stop()

Per connection from kubectl (HTTP/1.1 over TLS; ALPN offers only http/1.1, so Go does not try h2):

1. the request head is read (bounded) and parsed strictly by ``kubeshield.access._http1``; anything
   ambiguous (CL and TE, two CLs, obs-fold, bare CR/LF...) gets ``400`` and the connection is closed;
2. ``Authorization: Bearer <session secret>`` is checked in constant time and REMOVED; a missing or
   wrong one gets ``401``. The agent's credential (client certificate on the TLS connection, or a
   token header) authenticates upstream instead. ``Impersonate-*`` headers are forwarded as they are:
   ``kubectl --as`` keeps working, and the apiserver authorizes the impersonation against the real
   user, so forwarding them grants nothing the credential's owner could not do directly;
3. a body is read up to ``max_request_bytes`` (``413`` beyond it, before reading it when
   Content-Length says so); chunked bodies are de-chunked and forwarded with a Content-Length;
4. the request goes out on a pooled keep-alive TLS connection (a fresh one for upgrades); an
   idempotent request on a reused connection the apiserver had closed is retried once on a new one
   (idle connections are dropped after 30 s, well before the apiserver's own idle timeout);
5. the response is relayed as it arrives: Content-Length bodies in 256 KiB reads, chunked bodies
   (watches) chunk by chunk with no buffering, and ``101 Switching Protocols`` (exec, attach,
   port-forward, cp over SPDY or WebSocket) turns the two connections into a byte splice both ways
   until either side closes.

Requests that touch Secrets (``kubeshield.access.redact.secret_access``) are written to the audit log
when one is given. With ``redact_secrets`` on, their JSON answers have every ``data``/``stringData``
value replaced (``redact.MARKER``) unless the request carries ``X-Kubeshield-Reveal: 1`` or its path
starts with ``/kubeshield/reveal`` (so plain kubectl can ask: ``kubectl --server <proxy
URL>/kubeshield/reveal get secret NAME``; the prefix is removed before forwarding), which is
recorded as a reveal; upstream is asked for JSON (not protobuf) and no content coding, and an answer
that still cannot be read as JSON is refused (``502``) rather than passed through.

Refusals are Kubernetes ``Status`` objects, which kubectl prints. One client failing or going away
never touches another: every connection is its own task, and every error on one ends only that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import ssl
import time
import traceback
import weakref
from collections.abc import Callable

from kubeshield.access import _http1
from kubeshield.access._http1 import ChunkedScanner, HttpError, RequestHead, ResponseHead
from kubeshield.access.audit import AuditLog
from kubeshield.access.credential import ClusterCredential
from kubeshield.access.redact import (
    REVEAL_HEADER,
    REVEAL_PREFIX,
    RedactingLineStream,
    SecretAccess,
    redact_json,
    secret_access,
)
from kubeshield.access.upstream import Upstream, UpstreamConnection, UpstreamError, load_chain_from_memory

__all__ = ["LocalProxy"]

log = logging.getLogger(__name__)

_READ = 256 * 1024
_IDLE_TIMEOUT = 600.0
_RESPONSE_TIMEOUT = 300.0
_MAX_REDACT_BODY = 256 * 1024 * 1024
# hop-by-hop (RFC 9110 §7.6.1) and what the proxy sets itself
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        "authorization",
        REVEAL_HEADER.lower(),
    }
)
# retried once on a fresh connection when a pooled one turns out closed (RFC 9110 §9.2.2)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_REASONS = {
    400: ("Bad Request", "BadRequest"),
    401: ("Unauthorized", "Unauthorized"),
    413: ("Request Entity Too Large", "RequestEntityTooLarge"),
    431: ("Request Header Fields Too Large", "BadRequest"),
    501: ("Not Implemented", "BadRequest"),
    502: ("Bad Gateway", "ServiceUnavailable"),
    503: ("Service Unavailable", "ServiceUnavailable"),
    504: ("Gateway Timeout", "Timeout"),
    505: ("HTTP Version Not Supported", "BadRequest"),
}


class _ClientGone(Exception):
    """kubectl closed its connection; end this connection quietly."""


class _UpstreamBroken(Exception):
    """The apiserver's connection failed mid-response: nothing more can be sent to this client."""


def status_response(code: int, message: str, *, close: bool = True) -> bytes:
    """A complete HTTP response carrying a Kubernetes ``Status`` (what kubectl prints)."""
    phrase, reason = _REASONS.get(code, ("Error", "InternalError"))
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"kubeshield proxy: {message}",
            "reason": reason,
            "code": code,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


async def _close(writer: asyncio.StreamWriter, timeout: float = 10.0) -> None:
    """Close after what is buffered has been sent (abort() would drop it: an exec's last frames)."""
    transport = writer.transport
    if transport.is_closing():
        transport.abort()
        return
    writer.close()
    try:
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    except (TimeoutError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        transport.abort()


def _closer(conn: UpstreamConnection) -> Callable[[asyncio.Task[bytes]], None]:
    """A done-callback for the task that waits on kubectl during a stream: kubectl closing (or
    sending anything) ends the upstream stream at once, rather than at the next event."""

    def done(task: asyncio.Task[bytes]) -> None:
        if not task.cancelled():
            conn.close()

    return done


def _json_only(accept: str | None) -> str:
    """Keep only the JSON media ranges of an Accept header (redaction reads JSON only)."""
    ranges = [r.strip() for r in (accept or "").split(",")]
    kept = [r for r in ranges if r.split(";")[0].strip().lower() == "application/json"]
    return ", ".join(kept) or "application/json"


class LocalProxy:
    """One cluster's local https proxy (see the module docstring)."""

    def __init__(
        self,
        *,
        credential: Callable[[], ClusterCredential],
        bearer: bytes,
        serving_cert_pem: bytes,
        serving_key_pem: bytes,
        audit: AuditLog | None = None,
        redact_secrets: bool = False,
        max_request_bytes: int = 3 * 1024 * 1024,
    ) -> None:
        if len(bearer) < 16:
            raise ValueError("the proxy's bearer secret must be at least 16 bytes")
        if not all(0x21 <= b <= 0x7E for b in bearer):
            raise ValueError("the proxy's bearer secret must be visible ASCII (it travels in a header)")
        if max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be positive")
        self._credential = credential
        # compared as SHA-256 digests: equal lengths, so not even the secret's length leaks by timing
        self._bearer_digest = hashlib.sha256(bearer).digest()
        self._audit = audit
        self._redact = redact_secrets
        self._max_request = max_request_bytes
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._tls.set_alpn_protocols(["http/1.1"])
        try:
            load_chain_from_memory(self._tls, cert_pem=serving_cert_pem, key_pem=serving_key_pem)
        except ssl.SSLError:
            raise ValueError("the proxy's serving certificate or key cannot be loaded") from None
        self._upstream = Upstream(credential=credential)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._host = ""
        self._port = 0
        # deadlines (waiting for kubectl's next request, for the apiserver's answer) as a dict that one
        # sweeper checks each second: far cheaper per request than an asyncio.timeout() scope
        self._deadlines: dict[asyncio.WriteTransport, float] = {}
        self._expired: weakref.WeakSet[asyncio.WriteTransport] = weakref.WeakSet()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop_time: Callable[[], float] = time.monotonic

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the proxy listens on a loopback address only, not {host!r}")
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self._tls, limit=_http1.MAX_HEAD_BYTES + 1024
        )
        self._loop_time = asyncio.get_running_loop().time
        self._sweeper = asyncio.ensure_future(self._sweep())
        sockname = self._server.sockets[0].getsockname()
        self._host, self._port = sockname[0], sockname[1]
        return self._host, self._port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._upstream.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("the proxy is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self._loop_time()
            for transport, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    self._deadlines.pop(transport, None)
                    self._expired.add(transport)
                    transport.abort()

    # --- one client connection ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        graceful = False
        try:
            while await self._one_request(reader, writer):
                pass
            graceful = True
        except (_ClientGone, _UpstreamBroken, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # one connection's bug must not take the proxy down
            # the type and the frames only: an exception's message could quote request or response bytes
            log.error(
                "kubeshield proxy: a connection failed (%s)\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if graceful:
                await _close(writer)
            else:
                writer.transport.abort()

    async def _refuse(self, writer: asyncio.StreamWriter, code: int, message: str) -> bool:
        if not writer.transport.is_closing():
            writer.write(status_response(code, message))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return False

    def _authorized(self, head: RequestHead) -> bool:
        values = head.get_all("authorization")
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = hashlib.sha256(token.strip().encode("latin-1")).digest()
        return hmac.compare_digest(presented, self._bearer_digest)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True when the connection may carry another."""
        transport = writer.transport
        self._deadlines[transport] = self._loop_time() + _IDLE_TIMEOUT
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if transport in self._expired:
                return False
            if exc.partial.strip():
                return await self._refuse(writer, 400, "the request head is incomplete")
            return False
        except asyncio.LimitOverrunError:
            self._deadlines.pop(transport, None)
            return await self._refuse(
                writer, 431, f"the request head is larger than {_http1.MAX_HEAD_BYTES} bytes"
            )
        except BaseException:
            self._deadlines.pop(transport, None)
            raise
        try:
            return await self._handle(reader, writer, raw)
        finally:
            self._deadlines.pop(transport, None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> bool:
        """One request whose head arrived (the idle deadline still covers reading its body)."""
        transport = writer.transport
        try:
            head = _http1.parse_request_head(raw)
        except HttpError as exc:
            return await self._refuse(writer, exc.status, exc.message)
        if head.version != "HTTP/1.1":
            return await self._refuse(writer, 505, "the proxy speaks HTTP/1.1 (as kubectl does)")
        if not self._authorized(head):
            return await self._refuse(
                writer,
                401,
                "a missing or wrong bearer secret; kubectl must use the kubeconfig from "
                "`kubeshield access kubeconfig` (its exec entry asks the agent for the secret)",
            )
        if head.content_length is not None and head.content_length > self._max_request:
            return await self._refuse(
                writer, 413, f"the request body is larger than the limit of {self._max_request} bytes"
            )
        expect = head.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                return await self._refuse(writer, 400, "only Expect: 100-continue is understood")
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await self._read_body(reader, head)
        except HttpError as exc:
            return await self._refuse(writer, exc.status, exc.message)
        self._deadlines.pop(transport, None)
        reveal = head.get(REVEAL_HEADER) == "1"
        if head.target.startswith(REVEAL_PREFIX + "/"):  # kubectl --server https://.../kubeshield/reveal
            head.target = head.target[len(REVEAL_PREFIX) :]
            reveal = True
        access = secret_access(head.method, head.path, head.query)
        reveal = reveal and access is not None
        redact = self._redact and access is not None and not reveal
        try:
            return await self._forward(reader, writer, head, body, access, redact, reveal)
        except UpstreamError as exc:
            return await self._refuse(writer, exc.status, exc.message)

    async def _read_body(self, reader: asyncio.StreamReader, head: RequestHead) -> bytes:
        if head.content_length:
            return await reader.readexactly(head.content_length)
        if not head.chunked:
            return b""
        scanner = ChunkedScanner(decode=True, limit=self._max_request)
        while not scanner.done:
            data = await reader.read(_READ)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            used = scanner.feed(data)
            if used < len(data):
                raise HttpError(400, "data after the end of a chunked body (pipelining is not served)")
        return scanner.take()

    def _record(
        self, access: SecretAccess | None, cred: ClusterCredential | None, status: int, reveal: bool
    ) -> None:
        if self._audit is None or access is None:
            return
        if cred is None:
            try:
                cred = self._upstream.current()
            except UpstreamError:
                cred = None
        subject = (cred.subject or "") if cred is not None else ""
        context = cred.context if cred is not None else ""
        self._audit.record(
            subject=subject,
            context=context,
            verb=access.verb,
            namespace=access.namespace,
            name=access.name,
            status=status,
            # every verb's answer can carry the values (delete and deletecollection return the objects)
            revealed=status < 300 and (reveal or not self._redact),
        )

    def _upstream_head(self, conn: UpstreamConnection, head: RequestHead, body: bytes, redact: bool) -> bytes:
        named = head.get_all("connection")
        tokens = {t.strip().lower() for v in named for t in v.split(",") if t.strip()} if named else ()
        out = [head.method, " ", head.target, " HTTP/1.1\r\nHost: ", conn.host, "\r\n"]
        for (name, value), lower in zip(head.headers, head.names, strict=True):
            if lower in _DROP_REQUEST or lower in tokens:
                continue
            if redact and lower in ("accept", "accept-encoding"):
                continue
            out += (name, ": ", value, "\r\n")
        if redact:
            out += ("Accept: ", _json_only(head.get("accept")), "\r\nAccept-Encoding: identity\r\n")
        if head.upgrade:
            out += ("Connection: Upgrade\r\nUpgrade: ", head.get("upgrade") or "", "\r\n")
        elif body or head.method in ("POST", "PUT", "PATCH"):
            out += ("Content-Length: ", str(len(body)), "\r\n")
        # one encode of the whole head (the parser admitted only latin-1 text: field values are bytes)
        return "".join(out).encode("latin-1") + self._upstream.authorization(conn) + b"\r\n"

    async def _send(
        self, head: RequestHead, body: bytes, redact: bool
    ) -> tuple[UpstreamConnection, ResponseHead, bytes]:
        """Send the request and read the response head (retrying once on a stale pooled connection)."""
        for attempt in (0, 1):
            conn = await (self._upstream.connect() if head.upgrade else self._upstream.acquire())
            try:
                conn.writer.write(self._upstream_head(conn, head, body, redact) + body)
                self._deadlines[conn.writer.transport] = self._loop_time() + _RESPONSE_TIMEOUT
                raw = await conn.reader.readuntil(b"\r\n\r\n")
                # interim answers (100, 103) other than an upgrade's 101: the final one follows
                while raw[9:10] == b"1" and not raw.startswith(b"HTTP/1.1 101") and len(raw) > 12:
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if conn.writer.transport in self._expired:
                    raise UpstreamError(504, "the apiserver did not answer in time") from None
                stale = conn.reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial)
                if stale and attempt == 0 and head.method in _IDEMPOTENT:
                    continue
                raise UpstreamError(502, "the apiserver closed the connection before answering") from None
            except asyncio.LimitOverrunError:
                conn.close()
                raise UpstreamError(502, "the apiserver's response head is too large") from None
            except BaseException:
                conn.close()
                raise
            finally:
                self._deadlines.pop(conn.writer.transport, None)
            try:
                return conn, _http1.parse_response_head(raw), raw
            except HttpError as exc:
                conn.close()
                raise UpstreamError(502, f"the apiserver's response cannot be read: {exc.message}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _client_head(resp: ResponseHead, framing: bytes, close: bool) -> bytes:
        named = resp.get("connection")
        tokens = {t.strip().lower() for t in named.split(",")} if named else ()
        out = ["HTTP/1.1 ", str(resp.status), " ", resp.reason, "\r\n"]
        for (name, value), lower in zip(resp.headers, resp.names, strict=True):
            if lower not in _DROP_RESPONSE and lower not in tokens:
                out += (name, ": ", value, "\r\n")
        return "".join(out).encode("latin-1") + framing + (b"Connection: close\r\n\r\n" if close else b"\r\n")

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: RequestHead,
        body: bytes,
        access: SecretAccess | None,
        redact: bool,
        reveal: bool,
    ) -> bool:
        try:
            conn, resp, _ = await self._send(head, body, redact)
        except UpstreamError as exc:
            self._record(access, None, exc.status, reveal)
            raise
        self._record(access, conn.credential, resp.status, reveal)
        try:
            if head.upgrade and resp.status == 101:
                await self._splice(reader, writer, conn, resp)
                return False
            no_body = head.method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            keep = head.keep_alive and resp.keep_alive and not head.upgrade
            if no_body:
                framing = (
                    f"Content-Length: {resp.content_length}\r\n".encode()
                    if resp.content_length is not None
                    else b""
                )
                writer.write(self._client_head(resp, framing, not keep))
                await self._drain(writer)
                self._finish(conn, resp, clean=True)
                return keep
            if redact and resp.status < 300:
                return await self._relay_redacted(reader, writer, head, conn, resp, access, keep)
            if resp.content_length is not None:
                await self._relay_length(writer, conn, resp, keep)
            elif resp.chunked:
                await self._relay_chunked(reader, writer, conn, resp, keep)
            else:
                await self._relay_until_close(writer, conn, resp)
                return False
            return keep
        except BaseException:
            conn.close()
            raise

    def _finish(self, conn: UpstreamConnection, resp: ResponseHead, *, clean: bool) -> None:
        if clean and resp.keep_alive and not conn.writer.transport.is_closing():
            self._upstream.release(conn)
        else:
            conn.close()

    @staticmethod
    async def _drain(writer: asyncio.StreamWriter) -> None:
        if writer.transport.is_closing():
            raise _ClientGone
        try:
            await writer.drain()
        except ConnectionError:
            raise _ClientGone from None

    async def _up_read(self, conn: UpstreamConnection, size: int) -> bytes:
        try:
            data = await conn.reader.read(size)
        except ConnectionError:
            raise _UpstreamBroken from None
        if not data:
            raise _UpstreamBroken
        return data

    async def _relay_length(
        self, writer: asyncio.StreamWriter, conn: UpstreamConnection, resp: ResponseHead, keep: bool
    ) -> None:
        remaining = resp.content_length or 0
        head = self._client_head(resp, f"Content-Length: {remaining}\r\n".encode(), not keep)
        if remaining <= _READ:
            try:
                data = await conn.reader.readexactly(remaining)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise _UpstreamBroken from None
            writer.write(head + data)
            await self._drain(writer)
        else:
            writer.write(head)
            while remaining:
                data = await self._up_read(conn, min(remaining, _READ))
                remaining -= len(data)
                writer.write(data)
                await self._drain(writer)
        self._finish(conn, resp, clean=True)

    async def _relay_chunked(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: UpstreamConnection,
        resp: ResponseHead,
        keep: bool,
    ) -> None:
        scanner = ChunkedScanner()
        pending = self._client_head(resp, b"Transfer-Encoding: chunked\r\n", not keep)
        watcher: asyncio.Task[bytes] | None = None
        try:
            while True:
                data = await self._up_read(conn, _READ)
                try:
                    used = scanner.feed(data)
                except HttpError:
                    raise _UpstreamBroken from None
                writer.write(pending + data[:used] if pending else data[:used])
                pending = b""
                await self._drain(writer)
                if scanner.done:
                    self._finish(conn, resp, clean=used == len(data))
                    return
                if watcher is None:
                    # a long stream (a watch): notice kubectl going away even while no event comes
                    watcher = asyncio.ensure_future(reader.read(1))
                    watcher.add_done_callback(_closer(conn))
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher

    async def _relay_until_close(
        self, writer: asyncio.StreamWriter, conn: UpstreamConnection, resp: ResponseHead
    ) -> None:
        writer.write(self._client_head(resp, b"", True))
        try:
            while True:
                data = await conn.reader.read(_READ)
                if not data:
                    break
                writer.write(data)
                await self._drain(writer)
        finally:
            conn.close()

    async def _read_all(self, conn: UpstreamConnection, resp: ResponseHead) -> bytes:
        if resp.content_length is not None:
            if resp.content_length > _MAX_REDACT_BODY:
                raise UpstreamError(502, "the Secret response is too large to redact")
            try:
                return await conn.reader.readexactly(resp.content_length)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise _UpstreamBroken from None
        if resp.chunked:
            scanner = ChunkedScanner(decode=True, limit=_MAX_REDACT_BODY)
            while not scanner.done:
                data = await self._up_read(conn, _READ)
                try:
                    scanner.feed(data)
                except HttpError:
                    raise _UpstreamBroken from None
            return scanner.take()
        parts = []
        size = 0
        while data := await conn.reader.read(_READ):
            size += len(data)
            if size > _MAX_REDACT_BODY:
                raise UpstreamError(502, "the Secret response is too large to redact")
            parts.append(data)
        return b"".join(parts)

    async def _relay_redacted(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: RequestHead,
        conn: UpstreamConnection,
        resp: ResponseHead,
        access: SecretAccess | None,
        keep: bool,
    ) -> bool:
        encoding = (resp.get("content-encoding") or "identity").lower()
        ctype = (resp.get("content-type") or "").split(";")[0].strip().lower()
        if encoding != "identity" or ctype != "application/json":
            conn.close()
            raise UpstreamError(
                502, "the apiserver's Secret response is not plain JSON, so it cannot be redacted"
            )
        if access is not None and access.watch and resp.chunked:
            await self._relay_redacted_watch(reader, writer, conn, resp, keep)
            return keep
        raw = await self._read_all(conn, resp)
        try:
            out = redact_json(raw)
        except ValueError:
            conn.close()
            raise UpstreamError(
                502, "the apiserver's Secret response is not valid JSON, so it cannot be redacted"
            ) from None
        self._finish(conn, resp, clean=resp.content_length is not None or resp.chunked)
        writer.write(self._client_head(resp, f"Content-Length: {len(out)}\r\n".encode(), not keep) + out)
        await self._drain(writer)
        return keep

    async def _relay_redacted_watch(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: UpstreamConnection,
        resp: ResponseHead,
        keep: bool,
    ) -> None:
        scanner = ChunkedScanner(decode=True)
        lines = RedactingLineStream()
        writer.write(self._client_head(resp, b"Transfer-Encoding: chunked\r\n", not keep))
        watcher = asyncio.ensure_future(reader.read(1))
        watcher.add_done_callback(_closer(conn))
        try:
            while not scanner.done:
                data = await self._up_read(conn, _READ)
                try:
                    scanner.feed(data)
                    out = lines.feed(scanner.take())
                    if scanner.done:
                        out += lines.finish()
                except (HttpError, ValueError):
                    raise _UpstreamBroken from None
                if out:
                    writer.write(b"%x\r\n%s\r\n" % (len(out), out))
                await self._drain(writer)
            writer.write(b"0\r\n\r\n")
            await self._drain(writer)
            self._finish(conn, resp, clean=True)
        finally:
            if not watcher.done():
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher

    async def _splice(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: UpstreamConnection,
        resp: ResponseHead,
    ) -> None:
        out = [f"HTTP/1.1 101 {resp.reason}\r\n".encode("latin-1")]
        for name, value in resp.headers:
            lower = name.lower()
            if lower not in _DROP_RESPONSE or lower in ("connection", "upgrade"):
                out.append(f"{name}: {value}\r\n".encode("latin-1"))
        out.append(b"\r\n")
        writer.write(b"".join(out))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(_READ):
                dst.write(data)
                await dst.drain()

        tasks = [
            asyncio.ensure_future(pump(conn.reader, writer)),
            asyncio.ensure_future(pump(reader, conn.writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _close(conn.writer)
