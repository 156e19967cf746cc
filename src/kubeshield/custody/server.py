"""The custody server: holds the KEK versions and answers five operations over a unix socket.

One thread per connection. For every connection:

1. the peer's (pid, uid, gid) come from the kernel (``SO_PEERCRED``) and a pidfd is opened on that
   pid at once (``os.pidfd_open``);
2. the peer is measured (:mod:`kubeshield.custody.measure`) and checked against the policy;
   a denied peer gets ``PERMISSION_DENIED`` for its first request, the connection is closed, and the
   refusal is logged with the measured identity;
3. every request is decoded strictly (:mod:`kubeshield.keys._custody_protocol`); a protocol error is
   answered with ``PROTOCOL_ERROR`` and the connection is closed;
4. after the operation and before the answer is sent, the pid-reuse guard checks that the pidfd still
   refers to a live process whose start time (``/proc/<pid>/stat`` field 22) is the measured one. If
   not, the answer is dropped and the connection closed.

Backend calls are serialised by one lock: the custody process values simplicity over parallelism.

A :class:`~kubeshield.keys.base.Refreshable` key store (the local and tpm keyrings) is refreshed before
every KEY_ID and HEALTH answer (one ``stat`` when the keyring file is unchanged), so a rotation made
with ``kubeshield keys rotate`` on the keyring file reaches the plugin at its next key_id refresh. A
failed reload keeps the old keys and is logged (the error type and its path-only message).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.custody.measure import PeerIdentity, measure_pid, peer_credentials, process_start_time
from kubeshield.custody.policy import Policy, Rule
from kubeshield.errors import (
    BackendError,
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
    encode_response,
    read_body,
)
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


def bind_unix_socket(path: str, *, mode: int = 0o660, backlog: int = 64) -> socket.socket:
    """Create a listening unix socket at ``path`` with ``mode`` (a stale socket file is replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


@dataclass
class _Peer:
    identity: PeerIdentity
    pidfd: int
    rule: Rule | None


class CustodyServer:
    """Serve a :class:`KeyBackend` to the callers the policy allows."""

    def __init__(
        self,
        *,
        backend: KeyBackend,
        policy: Policy,
        listener: socket.socket,
        measure: Callable[[int, int, int], PeerIdentity] = measure_pid,
        idle_timeout: float = 300.0,
    ) -> None:
        self._backend = backend
        self._policy = policy
        self._listener = listener
        self._measure = measure
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._lock_conns = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    # ---- lifecycle -------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`."""
        self._listener.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            with self._lock_conns:
                self._conns.add(conn)
                thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
                self._threads.add(thread)
            thread.start()

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
    def _admit(self, conn: socket.socket) -> _Peer | None:
        pid, uid, gid = peer_credentials(conn)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            log.warning(
                "custody: refused a caller that exited before it was measured (pid=%d uid=%d)", pid, uid
            )
            return None
        try:
            identity = self._measure(pid, uid, gid)
        except OSError:
            os.close(pidfd)
            log.warning("custody: refused a caller that could not be measured (pid=%d uid=%d)", pid, uid)
            return None
        if not self._same_process(pidfd, identity):
            os.close(pidfd)
            log.warning("custody: refused a caller whose pid changed while measured (pid=%d)", pid)
            return None
        rule = self._policy.match(identity)
        if rule is None:
            log.warning("custody: PERMISSION DENIED, no policy rule matches %s", identity.describe())
        else:
            log.info("custody: allowed by rule %r: %s", rule.name, identity.describe())
        return _Peer(identity=identity, pidfd=pidfd, rule=rule)

    @staticmethod
    def _same_process(pidfd: int, identity: PeerIdentity) -> bool:
        """The pidfd's process is alive and is the one measured (same start time)."""
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if poller.poll(0):  # readable pidfd: the process has exited
            return False
        try:
            return process_start_time(identity.pid) == identity.start_time
        except (OSError, ValueError, IndexError):
            return False

    def _serve_connection(self, conn: socket.socket) -> None:
        peer: _Peer | None = None
        try:
            conn.settimeout(self._idle_timeout)
            peer = self._admit(conn)
            while True:
                try:
                    body = read_body(conn)
                except ProtocolError:
                    self._send(conn, Response(Status.PROTOCOL_ERROR, (b"malformed frame",)))
                    return
                if body is None:
                    return
                if peer is None or peer.rule is None:
                    self._send(conn, Response(Status.PERMISSION_DENIED, (b"caller not allowed by policy",)))
                    return
                try:
                    request = decode_request(body)
                except ProtocolError:
                    self._send(conn, Response(Status.PROTOCOL_ERROR, (b"malformed frame",)))
                    return
                op_name = _OP_NAMES[request.op]
                if op_name not in peer.rule.ops:
                    log.warning("custody: PERMISSION DENIED for op %s: %s", op_name, peer.identity.describe())
                    self._send(
                        conn, Response(Status.PERMISSION_DENIED, (b"operation not allowed by policy",))
                    )
                    return
                response = self._dispatch(request)
                if not self._same_process(peer.pidfd, peer.identity):
                    log.warning(
                        "custody: caller process changed (pid reuse?), answer dropped: pid=%d",
                        peer.identity.pid,
                    )
                    return
                self._send(conn, response)
                if response.status == Status.PROTOCOL_ERROR:
                    return
        except (OSError, ConnectionError):
            return
        finally:
            if peer is not None:
                os.close(peer.pidfd)
            conn.close()
            with self._lock_conns:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

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
