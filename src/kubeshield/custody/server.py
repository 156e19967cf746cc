"""The custody server: holds the KEK versions and answers five operations over a unix socket.

One thread per connection, at most ``max_connections`` at once (a connection beyond that gets
``UNAVAILABLE`` and is closed at once). For every connection (mechanism and reasons in
:mod:`kubeshield.custody.peer`):

1. the caller is pinned and measured: ``SO_PEERCRED``, a pidfd, an exec tracker, the measurement;
   then checked against the policy. A caller that is denied, cannot be measured, changed while it
   was measured, or wrote before the greeting gets one refusal frame (``PERMISSION_DENIED`` or
   ``PROTOCOL_ERROR``) and the connection is closed at once; the refusal is logged with the measured
   identity;
2. an admitted caller gets the greeting, then sends requests. Every byte of every request must come
   from the admitted process (``SCM_CREDENTIALS``); each request is decoded strictly
   (:mod:`kubeshield.keys._custody_protocol`; a protocol error is answered with ``PROTOCOL_ERROR``
   and the connection is closed) and its op checked against the rule;
3. before the operation the caller is re-checked (alive, no exec since it was measured, and the
   same executable and cgroup where its rule pins them); after it and before the answer, alive and
   no exec again. If not, the request is refused or the answer dropped, and the connection closed.

Backend calls are serialised by one lock: the custody process values simplicity over parallelism.
``accept()`` errors (``EMFILE`` and the like) are logged and retried with a backoff; only a listener
that is no longer a socket (closed under us) ends :meth:`CustodyServer.serve_forever`.

A :class:`~kubeshield.keys.base.Refreshable` key store (the local and tpm keyrings) is refreshed before
every KEY_ID and HEALTH answer (one ``stat`` when the keyring file is unchanged), so a rotation made
with ``kubeshield keys rotate`` on the keyring file reaches the plugin at its next key_id refresh. A
failed reload keeps the old keys and is logged (the error type and its path-only message).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from kubeshield.custody.measure import ExeDigests, PeerIdentity, measure_pid
from kubeshield.custody.peer import (
    ForeignSender,
    Peer,
    PeerRefused,
    enable_sender_credentials,
    pending_input,
    read_frame,
)
from kubeshield.custody.policy import Policy, Rule
from kubeshield.errors import (
    BackendError,
    ConfigError,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    KubeshieldError,
)
from kubeshield.keys._custody_protocol import (
    Op,
    ProtocolError,
    Request,
    Response,
    Status,
    decode_request,
    encode_greeting,
    encode_response,
)
from kubeshield.keys._unix_socket import prepare_socket_path
from kubeshield.keys.base import KeyBackend, Refreshable, Rotatable, Wrapped

__all__ = ["CustodyServer", "bind_unix_socket"]

log = logging.getLogger("kubeshield.custody")

_OP_NAMES = {
    Op.WRAP: "wrap",
    Op.UNWRAP: "unwrap",
    Op.KEY_ID: "key_id",
    Op.HEALTH: "health",
    Op.ROTATE: "rotate",
}
# accept() errors after which the listener is gone: serving cannot continue
_FATAL_ACCEPT = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})
_DENIED = Response(Status.PERMISSION_DENIED, (b"caller not allowed by policy",))


def bind_unix_socket(path: str, *, mode: int = 0o660, backlog: int = 64) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode``; every message will carry sender credentials.

    A stale socket file is replaced; a live socket (another custody process serving), any other file
    or a missing directory is a :class:`~kubeshield.errors.ConfigError` (the same rule as
    ``kms serve``). The socket is never, even briefly, more open than ``mode``.
    """
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        enable_sender_credentials(sock)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"another process bound {path!r} at the same moment; refusing to share it"
            ) from None
        raise ConfigError(f"cannot listen on {path!r}: {exc.strerror}") from None
    return sock


class CustodyServer:
    """Serve a :class:`KeyBackend` to the callers the policy allows."""

    def __init__(
        self,
        *,
        backend: KeyBackend,
        policy: Policy,
        listener: socket.socket,
        measure: Callable[[int, int, int], PeerIdentity] | None = None,
        idle_timeout: float = 300.0,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._backend = backend
        self._policy = policy
        self._listener = listener
        self._measure = measure or functools.partial(measure_pid, digests=ExeDigests())
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._clock = clock
        self._lock = threading.Lock()
        self._lock_conns = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._last_busy_log = float("-inf")
        enable_sender_credentials(listener)

    # ---- lifecycle -------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`. Survives ``accept()`` errors (logged, backoff)."""
        self._listener.settimeout(0.2)
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                if exc.errno in _FATAL_ACCEPT or self._listener.fileno() < 0:
                    log.error("custody: the listening socket is gone (%s); stopping", _errname(exc))
                    raise
                backoff = min(max(backoff * 2, 0.05), 1.0)
                log.warning("custody: accept failed (%s); retrying in %.2fs", _errname(exc), backoff)
                self._stopping.wait(backoff)
                continue
            backoff = 0.0
            self._start_connection(conn)

    def _start_connection(self, conn: socket.socket) -> None:
        with self._lock_conns:
            busy = len(self._conns) >= self._max_connections
            if not busy:
                self._conns.add(conn)
        if busy:
            self._refuse_busy(conn)
            return
        thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
        with self._lock_conns:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread can be started right now: refuse, keep serving
            with self._lock_conns:
                self._threads.discard(thread)
                self._conns.discard(conn)
            self._refuse_busy(conn)

    def _refuse_busy(self, conn: socket.socket) -> None:
        now = self._clock()
        if now - self._last_busy_log >= 1.0:
            self._last_busy_log = now
            log.warning(
                "custody: refused a connection: %d connections open (the limit)", self._max_connections
            )
        try:
            conn.settimeout(0.1)
            conn.sendall(encode_response(Response(Status.UNAVAILABLE, (b"too many connections",))))
        except OSError:
            pass
        finally:
            conn.close()

    def shutdown(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, end open connections (in-flight operations finish first) and wait for them."""
        self._stopping.set()
        with self._lock_conns:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # ---- one connection --------------------------------------------------------------------------
    def _admit(self, conn: socket.socket) -> tuple[Peer, Rule] | None:
        """Pin, measure and judge the caller; send the greeting or a refusal. None: refused and closed."""
        try:
            peer = Peer.open(conn, measure=self._measure)
        except PeerRefused as exc:
            if exc.transient:
                log.warning("custody: UNAVAILABLE, %s", exc)
                self._send(
                    conn, Response(Status.UNAVAILABLE, (b"the custody process is short of resources",))
                )
            else:
                log.warning("custody: PERMISSION DENIED, %s", exc)
                self._send(conn, _DENIED)
            return None
        rule = self._policy.match(peer.identity)
        if rule is None:
            log.warning("custody: PERMISSION DENIED, no policy rule matches %s", peer.identity.describe())
            peer.close()
            self._send(conn, _DENIED)
            return None
        waiting = pending_input(conn)
        if waiting == "closed":  # e.g. another server's liveness probe of this socket
            log.info(
                "custody: the caller closed the connection before its greeting: pid=%d", peer.identity.pid
            )
            peer.close()
            return None
        if waiting == "data":
            log.warning(
                "custody: PROTOCOL ERROR, the caller wrote before the greeting (a protocol-1 client, or "
                "bytes written before an exec): %s",
                peer.identity.describe(),
            )
            peer.close()
            self._send(conn, Response(Status.PROTOCOL_ERROR, (b"request sent before the greeting",)))
            return None
        log.info("custody: allowed by rule %r: %s", rule.name, peer.identity.describe())
        try:
            conn.sendall(encode_greeting())
        except OSError:
            peer.close()
            raise
        return peer, rule

    def _serve_connection(self, conn: socket.socket) -> None:
        peer: Peer | None = None
        try:
            conn.settimeout(self._idle_timeout)
            admitted = self._admit(conn)
            if admitted is None:
                return
            peer, rule = admitted
            while self._serve_one(conn, peer, rule):
                pass
        except (OSError, ConnectionError):
            return
        finally:
            if peer is not None:
                peer.close()
            conn.close()
            with self._lock_conns:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _serve_one(self, conn: socket.socket, peer: Peer, rule: Rule) -> bool:
        """Read and answer one request. False: the connection is to be closed."""
        try:
            body = read_frame(conn, sender=peer.creds)
        except ForeignSender as exc:
            log.warning(
                "custody: PERMISSION DENIED, a request on this connection was written by another "
                "process (sender pid/uid/gid %s) than the admitted one: %s",
                exc.creds,
                peer.identity.describe(),
            )
            self._send(conn, _DENIED)
            return False
        except ProtocolError:
            self._send(conn, Response(Status.PROTOCOL_ERROR, (b"malformed frame",)))
            return False
        if body is None:
            return False
        try:
            request = decode_request(body)
        except ProtocolError:
            self._send(conn, Response(Status.PROTOCOL_ERROR, (b"malformed frame",)))
            return False
        op_name = _OP_NAMES[request.op]
        if op_name not in rule.ops:
            log.warning("custody: PERMISSION DENIED for op %s: %s", op_name, peer.identity.describe())
            self._send(conn, Response(Status.PERMISSION_DENIED, (b"operation not allowed by policy",)))
            return False
        reason = peer.changed(exe=rule.exe_sha256 is not None, cgroup=rule.cgroup_prefix is not None)
        if reason is not None:
            log.warning(
                "custody: PERMISSION DENIED, the caller changed (%s): %s", reason, peer.identity.describe()
            )
            self._send(conn, _DENIED)
            return False
        response = self._dispatch(request)
        reason = peer.changed()
        if reason is not None:
            log.warning(
                "custody: answer dropped, the caller changed during the operation (%s): pid=%d",
                reason,
                peer.identity.pid,
            )
            return False
        self._send(conn, response)
        return response.status != Status.PROTOCOL_ERROR

    @staticmethod
    def _send(conn: socket.socket, response: Response) -> None:
        conn.sendall(encode_response(response))

    # ---- operations ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Reload a Refreshable key store if its source changed; keep the old keys if that fails."""
        if not isinstance(self._backend, Refreshable):
            return
        try:
            if self._backend.refresh():
                log.info("custody: key store reloaded, primary key_id is now %s", self._backend.key_id())
        except KubeshieldError as exc:  # messages of our errors hold no secrets (paths, reasons)
            log.warning("custody: key store reload failed, old keys kept: %s: %s", type(exc).__name__, exc)
        except Exception as exc:
            log.warning("custody: key store reload failed, old keys kept: %s", type(exc).__name__)

    def _dispatch(self, request: Request) -> Response:
        f = request.fields
        try:
            with self._lock:
                if request.op == Op.WRAP:
                    if len(f) != 2:
                        raise ProtocolError("wrap takes 2 fields")
                    wrapped = self._backend.wrap(f[0], aad=f[1])
                    ann: list[bytes] = []
                    for k, v in wrapped.annotations.items():
                        ann += [k.encode(), bytes(v)]
                    return Response(Status.OK, (wrapped.ciphertext, wrapped.key_id.encode(), *ann))
                if request.op == Op.UNWRAP:
                    if len(f) < 3 or (len(f) - 3) % 2:
                        raise ProtocolError("unwrap takes 3 fields and annotation pairs")
                    annotations = {f[i].decode(): f[i + 1] for i in range(3, len(f), 2)}
                    w = Wrapped(ciphertext=f[0], key_id=f[1].decode(), annotations=annotations)
                    return Response(Status.OK, (self._backend.unwrap(w, aad=f[2]),))
                if f:
                    raise ProtocolError("this op takes no fields")
                if request.op in (Op.KEY_ID, Op.HEALTH):
                    self._refresh()
                if request.op == Op.KEY_ID:
                    return Response(Status.OK, (self._backend.key_id().encode(),))
                if request.op == Op.HEALTH:
                    h = self._backend.check_health()
                    return Response(
                        Status.OK, (b"1" if h.ok else b"0", (h.key_id or "").encode(), h.detail.encode())
                    )
                if not isinstance(self._backend, Rotatable):
                    return Response(Status.INVALID_REQUEST, (b"this key store cannot rotate",))
                return Response(Status.OK, (self._backend.rotate().encode(),))
        except ProtocolError:
            return Response(Status.PROTOCOL_ERROR, (b"malformed request",))
        except UnicodeDecodeError:
            return Response(Status.PROTOCOL_ERROR, (b"key_id and annotation keys must be UTF-8",))
        except InvalidCiphertext:
            return Response(Status.INVALID_CIPHERTEXT, (b"invalid ciphertext",))
        except KeyNotFound:
            return Response(Status.KEY_NOT_FOUND, (b"unknown key_id",))
        except InvalidRequest as exc:
            return Response(Status.INVALID_REQUEST, (str(exc).encode()[:512],))
        except BackendError as exc:
            return Response(Status.UNAVAILABLE, (type(exc).__name__.encode(),))
        except Exception as exc:  # never leak internals; log the type only
            log.error("custody: internal error in %s: %s", request.op.name, type(exc).__name__)
            return Response(Status.INTERNAL, (b"internal error",))


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
